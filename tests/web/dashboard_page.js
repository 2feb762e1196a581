// Runs the dashboard's web/static/run.js in Node against a live API, with just enough of a page
// around it: the events list element it reads its run from, and a window whose reload ends this
// program, printing the event types the script appended. Usage: node dashboard_page.js SCRIPT BASE RUN AFTER
"use strict";
const fs = require("fs");
const [script, base, runId, after] = process.argv.slice(2);

function element(tag) {
  return { tag, children: [], className: "", textContent: "", dataset: {}, appendChild(c) { this.children.push(c); } };
}
const list = element("ol");
list.dataset = { run: runId, after: after, live: "true" };
global.document = {
  getElementById: (id) => (id === "events" ? list : null),
  createElement: element,
};
const realFetch = global.fetch;
global.fetch = (url, opts) => realFetch(base + url, opts);
global.window = {
  setTimeout: setTimeout,
  location: {
    reload() {
      const types = list.children.map((li) => li.children[0].textContent);
      const values = list.children.map((li) => li.value);
      console.log(JSON.stringify({ types, values, text: list.children.map((li) => li.children.map((c) => c.textContent).join("")) }));
      process.exit(0);
    },
  },
};
eval(fs.readFileSync(script, "utf8"));
setTimeout(() => { console.error("the script never reloaded the page"); process.exit(3); }, 30000);
