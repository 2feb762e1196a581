"""A local HTTP server that speaks the Anthropic and OpenAI wire formats, for adapter tests.

Real HTTP on 127.0.0.1 (``http.server`` in a thread), so the adapters are exercised through the real
SDKs: their request building, auth headers, retry loop and error classes.

* ``POST /v1/messages``          — Anthropic Messages API
* ``POST /v1/chat/completions``  — OpenAI Chat Completions

Each request takes the next ``Behaviour`` from a scripted queue (``ok`` when the queue is empty) and
is recorded (path, headers, JSON body) in ``requests``. Error answers carry ``retry-after: 0`` and
``retry-after-ms: 1`` by default: both SDKs prefer ``retry-after-ms`` and wait exactly that long
(``retry-after: 0`` alone would make them fall back to their 0.5 s exponential backoff), so retries
in tests cost a millisecond.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_ids = itertools.count(1)


@dataclass(frozen=True)
class Behaviour:
    kind: str  # "ok" | "truncated" | "error" | "disconnect"
    text: str = "Hello from the fake provider."
    status: int = 200
    # Anthropic error type, e.g. "rate_limit_error"; the OpenAI body is derived from it.
    error_type: str = ""
    error_message: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    # Anthropic prompt-cache counters (billed input besides ``input_tokens``).
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0
    headers: tuple[tuple[str, str], ...] = ()
    # OpenAI side only: False leaves ``usage`` out of the answer, as some compatible servers do.
    report_usage: bool = True
    # For the error body only: copy the credential the request carried into the message, as
    # some real APIs do with (part of) a rejected key.
    echo_key: bool = False
    delay_s: float = 0.0  # wait this long before answering (a client with a shorter timeout gives up)


_FAST_RETRY = (("retry-after", "0"), ("retry-after-ms", "1"))


def ok(text: str = "Hello from the fake provider.", input_tokens: int | None = None,
       output_tokens: int | None = None, cache_creation_input_tokens: int = 0,
       cache_read_input_tokens: int = 0) -> Behaviour:
    return Behaviour("ok", text=text, input_tokens=input_tokens, output_tokens=output_tokens,
                     cache_creation_input_tokens=cache_creation_input_tokens,
                     cache_read_input_tokens=cache_read_input_tokens)


def truncated(text: str = "This answer was cut", output_tokens: int | None = None) -> Behaviour:
    return Behaviour("truncated", text=text, output_tokens=output_tokens)


def rate_limited(headers: tuple[tuple[str, str], ...] = _FAST_RETRY) -> Behaviour:
    return Behaviour("error", status=429, error_type="rate_limit_error",
                     error_message="Number of request tokens has exceeded your per-minute rate limit.",
                     headers=headers)


def server_error(headers: tuple[tuple[str, str], ...] = _FAST_RETRY) -> Behaviour:
    return Behaviour("error", status=500, error_type="api_error",
                     error_message="Internal server error", headers=headers)


def overloaded(headers: tuple[tuple[str, str], ...] = _FAST_RETRY) -> Behaviour:
    return Behaviour("error", status=529, error_type="overloaded_error",
                     error_message="Overloaded", headers=headers + (("x-should-retry", "true"),))


def bad_request(message: str = "max_tokens: must be greater than or equal to 1") -> Behaviour:
    return Behaviour("error", status=400, error_type="invalid_request_error", error_message=message,
                     headers=_FAST_RETRY)


def unauthorized(echo_key: bool = False) -> Behaviour:
    return Behaviour("error", status=401, error_type="authentication_error",
                     error_message="invalid x-api-key", echo_key=echo_key)


def slow(delay_s: float) -> Behaviour:
    """Answer, but only after ``delay_s``: the provider generates (and bills) what a client that
    timed out never reads."""
    return Behaviour("ok", delay_s=delay_s)


def disconnect() -> Behaviour:
    """Close the connection without answering (the client sees a connection error)."""
    return Behaviour("disconnect")


_OPENAI_ERROR = {
    "rate_limit_error": ("requests", "rate_limit_exceeded"),
    "api_error": ("server_error", None),
    "overloaded_error": ("server_error", "overloaded"),
    "invalid_request_error": ("invalid_request_error", None),
    "authentication_error": ("invalid_request_error", "invalid_api_key"),
}


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]
    raw: bytes = field(repr=False, default=b"")


def _words(text: str) -> int:
    return len(text.split())


class FakeProvider:
    """Start with ``FakeProvider()`` (or as a context manager); ``close()`` when done."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self._queue: list[Behaviour] = []
        self._lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except ValueError:
                    body = {}
                record = RecordedRequest(
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                    raw=raw,
                )
                behaviour = provider._next(record)
                provider._answer(self, record, behaviour)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name="fake-provider", daemon=True
        )
        self._thread.start()

    # -- control --------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    @property
    def openai_base_url(self) -> str:
        return self.url + "/v1"

    def queue(self, *behaviours: Behaviour) -> None:
        with self._lock:
            self._queue.extend(behaviours)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> FakeProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- serving --------------------------------------------------------------------------------

    def _next(self, record: RecordedRequest) -> Behaviour:
        with self._lock:
            self.requests.append(record)
            return self._queue.pop(0) if self._queue else ok()

    def _answer(self, handler: BaseHTTPRequestHandler, record: RecordedRequest, b: Behaviour) -> None:
        if b.delay_s:
            time.sleep(b.delay_s)
        if b.kind == "disconnect":
            handler.close_connection = True
            handler.connection.close()
            return
        if record.path == "/v1/messages":
            status, payload, headers = self._anthropic(record, b)
        elif record.path == "/v1/chat/completions":
            status, payload, headers = self._openai(record, b)
        else:
            status, payload, headers = 404, {"error": {"message": f"no route {record.path}"}}, []
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("content-type", "application/json")
        handler.send_header("content-length", str(len(data)))
        for name, value in headers:
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()

    @staticmethod
    def _credential(record: RecordedRequest) -> str:
        auth = record.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        return record.headers.get("x-api-key", "")

    def _error_message(self, record: RecordedRequest, b: Behaviour) -> str:
        if b.echo_key:
            return f"invalid api key provided: {self._credential(record)}"
        return b.error_message

    def _input_tokens(self, record: RecordedRequest, b: Behaviour) -> int:
        if b.input_tokens is not None:
            return b.input_tokens
        system = record.body.get("system", "")
        texts = [system if isinstance(system, str) else ""]
        texts += [m.get("content", "") for m in record.body.get("messages", []) if isinstance(m.get("content"), str)]
        return sum(_words(t) for t in texts) + 3

    def _anthropic(self, record: RecordedRequest, b: Behaviour) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        n = next(_ids)
        request_id = f"req_fake{n:06d}"
        headers = [("request-id", request_id), *b.headers]
        if b.kind == "error":
            body = {
                "type": "error",
                "error": {"type": b.error_type, "message": self._error_message(record, b)},
                "request_id": request_id,
            }
            return b.status, body, headers
        body = {
            "id": f"msg_fake{n:06d}",
            "type": "message",
            "role": "assistant",
            "model": record.body.get("model", "unknown"),
            "content": [{"type": "text", "text": b.text, "citations": None}],
            "stop_reason": "max_tokens" if b.kind == "truncated" else "end_turn",
            "stop_sequence": None,
            "usage": {
                "input_tokens": self._input_tokens(record, b),
                "cache_creation_input_tokens": b.cache_creation_input_tokens,
                "cache_read_input_tokens": b.cache_read_input_tokens,
                "output_tokens": b.output_tokens if b.output_tokens is not None else _words(b.text),
                "service_tier": "standard",
            },
        }
        return 200, body, headers

    def _openai(self, record: RecordedRequest, b: Behaviour) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        n = next(_ids)
        headers = [("x-request-id", f"req_fake{n:06d}"), *b.headers]
        if b.kind == "error":
            etype, code = _OPENAI_ERROR.get(b.error_type, ("server_error", None))
            body = {"error": {"message": self._error_message(record, b), "type": etype, "param": None, "code": code}}
            return b.status, body, headers
        prompt = self._input_tokens(record, b)
        completion = b.output_tokens if b.output_tokens is not None else _words(b.text)
        body = {
            "id": f"chatcmpl-fake{n:06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": record.body.get("model", "unknown"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": b.text, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": "length" if b.kind == "truncated" else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                              "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
            },
            "service_tier": "default",
            "system_fingerprint": None,
        }
        if not b.report_usage:
            del body["usage"]
        return 200, body, headers
