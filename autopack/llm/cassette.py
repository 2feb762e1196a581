"""Cassettes: record model exchanges to JSONL and replay them offline; and a scripted client.

A cassette is a JSON Lines file, one exchange a line::

    {"key": "<sha256>", "request": {LLMRequest fields}, "response": {LLMResponse fields}}

Only the request (model, system, messages, max_tokens, temperature) and the normalised response are
written: never a key, a header or a base URL. Several processes may record into one file at once:
each line is appended with a single ``write`` on a descriptor opened with ``O_APPEND``.

Replay matches on ``request_key``. When the same request was recorded several times (a retried
phase asking the same thing twice), the recorded answers are served in recording order, and the last
one is repeated once they are used up, so a replay that asks one more time than the recording did
still gets an answer. A request not in the cassette raises ``CassetteMiss`` naming the key, the model,
the start of the last user message and the nearest recorded request with a diff against it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from autopack.errors import CassetteMiss
from autopack.llm._common import estimate_input_tokens, estimate_tokens
from autopack.llm.base import LLMClient, LLMRequest, LLMResponse, Usage

def _request_dict(req: LLMRequest) -> dict[str, Any]:
    return {
        "model": req.model,
        "system": req.system,
        "messages": [{"role": m.role, "content": m.content} for m in req.messages],
        "max_tokens": req.max_tokens,
        "temperature": req.temperature,
    }


def request_key(req: LLMRequest) -> str:
    """sha256 (hex) of the canonical JSON of model, system, messages, max_tokens and temperature.
    A lone surrogate (an ``LLMRequest`` built without validation) is hashed as its UTF-16 code unit
    rather than failing the key of a call that may have been paid for."""
    canonical = json.dumps(
        _request_dict(req), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8", errors="surrogatepass")).hexdigest()


def _last_user_message(req: LLMRequest) -> str:
    for message in reversed(req.messages):
        if message.role == "user":
            return message.content
    return ""


# -- recording ----------------------------------------------------------------------------------


def append_exchange(path: Path, request: LLMRequest, response: LLMResponse) -> None:
    """Append one exchange as one JSON line, in one ``write`` on an ``O_APPEND`` descriptor."""
    line = json.dumps(
        {"key": request_key(request), "request": _request_dict(request), "response": response.model_dump()},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    # A lone surrogate (an answer's JSON may escape one) only occurs inside a JSON string, where
    # backslashreplace writes it as the JSON escape it came from: the line still reads back as it was.
    data = (line + "\n").encode("utf-8", errors="backslashreplace")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):  # not seen on local file systems; never leave half a line silently
            raise OSError(f"short write to cassette {path}: {written} of {len(data)} bytes")
    finally:
        os.close(fd)


class RecordingClient:
    """Calls ``inner`` and appends every successful exchange to the cassette at ``path``.

    Failed calls (``ProviderError`` and friends) propagate and are not recorded.
    """

    def __init__(self, inner: LLMClient, path: Path | str) -> None:
        self.inner = inner
        self.path = Path(path)
        self.provider = inner.provider

    def __repr__(self) -> str:
        return f"RecordingClient({self.inner!r}, path={str(self.path)!r})"

    def complete(self, request: LLMRequest) -> LLMResponse:
        response = self.inner.complete(request)
        append_exchange(self.path, request, response)
        return response


# -- replay -------------------------------------------------------------------------------------


class ReplayClient:
    """Answers from one or more cassettes, without any network.

    ``provider`` is the name this client reports (default: the single provider recorded in the
    cassettes, else ``"replay"``); each response keeps the provider it was recorded from.
    A missing cassette file raises ``FileNotFoundError`` and a malformed line ``ValueError`` naming
    ``file:line``, at construction. Safe to share between threads.
    """

    def __init__(self, path: Path | str | Sequence[Path | str], provider: str | None = None) -> None:
        paths = [Path(path)] if isinstance(path, (str, Path)) else [Path(p) for p in path]
        self.paths = paths
        self._requests: dict[str, LLMRequest] = {}
        self._answers: dict[str, list[LLMResponse]] = {}
        self._served: dict[str, int] = {}
        self._lock = threading.Lock()
        recorded_providers: set[str] = set()
        for p in paths:
            for key, req, resp in _read_cassette(p):
                self._requests.setdefault(key, req)
                self._answers.setdefault(key, []).append(resp)
                recorded_providers.add(resp.provider)
        if provider is None:
            provider = recorded_providers.pop() if len(recorded_providers) == 1 else "replay"
        self.provider = provider

    def __repr__(self) -> str:
        return f"ReplayClient({[str(p) for p in self.paths]!r}, provider={self.provider!r})"

    def __len__(self) -> int:
        """Number of recorded exchanges."""
        return sum(len(v) for v in self._answers.values())

    def complete(self, request: LLMRequest) -> LLMResponse:
        key = request_key(request)
        with self._lock:
            answers = self._answers.get(key)
            if not answers:
                raise CassetteMiss(self._miss_message(key, request))
            index = self._served.get(key, 0)
            self._served[key] = index + 1
        return answers[min(index, len(answers) - 1)].model_copy(deep=True)

    def _miss_message(self, key: str, request: LLMRequest) -> str:
        last_user = _last_user_message(request)
        lines = [
            f"no recorded exchange for request {key}",
            f"  model: {request.model}",
            f"  last user message: {last_user[:200]!r}",
            f"  cassette(s): {', '.join(str(p) for p in self.paths)}",
        ]
        nearest = _nearest(request, list(self._requests.items()))
        if nearest is None:
            lines.append("  the cassette is empty")
        else:
            near_key, near_req = nearest
            lines.append(f"  nearest recorded request: {near_key} (model {near_req.model})")
            lines.append("  diff (recorded -> requested):")
            lines.extend("    " + line for line in _diff(near_req, request))
        return "\n".join(lines)


def _read_cassette(path: Path) -> Iterable[tuple[str, LLMRequest, LLMResponse]]:
    with path.open(encoding="utf-8") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw)
                request = LLMRequest.model_validate(entry["request"])
                response = LLMResponse.model_validate(entry["response"])
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{lineno}: not a cassette exchange: {err}") from err
            # The key is recomputed rather than trusted: a hand-edited request stays findable.
            yield request_key(request), request, response


def _similarity(a: str, b: str) -> float:
    a, b = a[:4000], b[:4000]
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    if matcher.real_quick_ratio() == 0.0:
        return 0.0
    return matcher.ratio()


def _nearest(
    request: LLMRequest, recorded: list[tuple[str, LLMRequest]]
) -> tuple[str, LLMRequest] | None:
    if not recorded:
        return None
    target = _last_user_message(request)

    def score(item: tuple[str, LLMRequest]) -> tuple[float, int, int]:
        other = item[1]
        return (
            _similarity(target, _last_user_message(other)),
            int(other.model == request.model),
            int(other.system == request.system),
        )

    return max(recorded, key=score)


def _render(req: LLMRequest) -> list[str]:
    lines = [
        f"model: {req.model}",
        f"max_tokens: {req.max_tokens}",
        f"temperature: {req.temperature}",
        "system:",
    ]
    lines.extend("  " + line for line in req.system.splitlines())
    for i, message in enumerate(req.messages):
        lines.append(f"messages[{i}] {message.role}:")
        lines.extend("  " + line for line in message.content.splitlines())
    return lines


def _diff(recorded: LLMRequest, requested: LLMRequest, max_lines: int = 40) -> list[str]:
    diff = list(
        difflib.unified_diff(
            _render(recorded), _render(requested), "recorded", "requested", n=1, lineterm=""
        )
    )
    if not diff:
        return ["(no difference in the rendered request)"]
    if len(diff) > max_lines:
        diff = diff[:max_lines] + [f"... {len(diff) - max_lines} more diff lines"]
    return [line if len(line) <= 240 else line[:240] + "..." for line in diff]


# -- scripted -----------------------------------------------------------------------------------


class ScriptedClient:
    """A deterministic in-process client for tests and for authoring cassettes.

    ``responses`` is either a callable that maps a request to a text or a full ``LLMResponse``, or a
    sequence of those, served in order (the last repeated once used up). A text becomes a response
    with ``stop_reason="end"``, the given ``model`` (default: the requested one), and usage that is
    only an *estimate*: four characters a token for the input (system + messages) and the output.
    A text longer than ``max_tokens`` such tokens is cut there and marked ``"max_tokens"``, as a
    real model would. Every request is kept in ``calls``.
    """

    def __init__(
        self,
        responses: Callable[[LLMRequest], str | LLMResponse] | Sequence[str | LLMResponse],
        provider: str = "scripted",
        model: str | None = None,
    ) -> None:
        if callable(responses):
            self._script: Callable[[LLMRequest], str | LLMResponse] = responses
        else:
            items = list(responses)
            if not items:
                raise ValueError("ScriptedClient needs at least one response")
            self._script = self._from_sequence(items)
        self.provider = provider
        self.model = model
        self.calls: list[LLMRequest] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ScriptedClient(provider={self.provider!r}, model={self.model!r})"

    @staticmethod
    def _from_sequence(items: list[str | LLMResponse]) -> Callable[[LLMRequest], str | LLMResponse]:
        position = {"next": 0}

        def script(_req: LLMRequest) -> str | LLMResponse:
            index = min(position["next"], len(items) - 1)
            position["next"] += 1
            return items[index]

        return script

    def complete(self, request: LLMRequest) -> LLMResponse:
        with self._lock:
            self.calls.append(request)
            answer = self._script(request)
        if isinstance(answer, LLMResponse):
            return answer.model_copy(deep=True)
        text = str(answer)
        stop_reason = "end"
        limit = request.max_tokens * 4
        if len(text) > limit:
            text, stop_reason = text[:limit], "max_tokens"
        return LLMResponse(
            text=text,
            stop_reason=stop_reason,
            usage=Usage(input_tokens=estimate_input_tokens(request), output_tokens=estimate_tokens(text)),
            model=self.model or request.model,
            provider=self.provider,
        )


__all__ = [
    "RecordingClient",
    "ReplayClient",
    "ScriptedClient",
    "append_exchange",
    "request_key",
]
