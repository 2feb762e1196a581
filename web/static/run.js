// Keeps a live run's page current: polls the events API for what came after the last event shown,
// appends it to the list, and reloads the page (tables included) once the run has ended.
(function () {
  "use strict";
  var list = document.getElementById("events");
  if (!list || list.dataset.live !== "true") return;
  var runId = list.dataset.run;
  var after = parseInt(list.dataset.after, 10) || 0;
  var ending = /^run\.(finished|cancelled)$/;

  function add(ev) {
    var li = document.createElement("li");
    li.value = ev.seq;
    var type = document.createElement("span");
    type.className = "type";
    type.textContent = ev.type;
    li.appendChild(type);
    if (ev.phase) {
      var where = document.createElement("span");
      where.className = "where";
      where.textContent = " [" + ev.phase + "]";
      li.appendChild(where);
    }
    var payload = document.createElement("span");
    payload.className = "payload";
    var text = " " + JSON.stringify(ev.payload);
    payload.textContent = text.length > 240 ? text.slice(0, 239) + "\u2026" : text;
    li.appendChild(payload);
    list.appendChild(li);
  }

  function poll() {
    fetch("/runs/" + encodeURIComponent(runId) + "/events?after=" + after, { headers: { Accept: "application/json" } })
      .then(function (resp) { return resp.ok ? resp.json() : { events: [] }; })
      .then(function (body) {
        var ended = false;
        body.events.forEach(function (ev) {
          add(ev);
          after = ev.seq;
          if (ending.test(ev.type)) ended = true;
        });
        if (ended) { window.location.reload(); return; }
        window.setTimeout(poll, 2000);
      })
      .catch(function () { window.setTimeout(poll, 5000); });  // the API is away: try again later
  }
  window.setTimeout(poll, 2000);
})();
