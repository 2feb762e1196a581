"""A small HTTP client for the CLI (standard library only)."""

from __future__ import annotations

import http.client
import ipaddress
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any


class ClientError(Exception):
    """A request the API did not answer with success (catch this for any of the below)."""


class ApiUnreachable(ClientError):
    """No HTTP answer at all: connection refused or reset, a timeout, a name that does not resolve."""


class ApiError(ClientError):
    """The API answered with an HTTP error status; ``body`` is its JSON error."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        msg = body.get("message") or body
        field = body.get("field")
        super().__init__(f"HTTP {status}: {msg}" + (f" (field: {field})" if field else ""))
        self.status = status
        self.body = body


def sends_in_clear(base_url: str) -> bool:
    """Whether a request to ``base_url`` crosses a network unencrypted: plain http to a host that is
    not this machine's loopback (``localhost``, 127.0.0.0/8, ``::1``), or through an http proxy
    (``http_proxy``, which urllib uses for loopback too unless ``no_proxy`` names it)."""
    try:
        parts = urllib.parse.urlsplit(base_url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:  # a malformed URL: request() refuses it
        return False
    if parts.scheme != "http":
        return False
    if urllib.request.getproxies().get("http") and not urllib.request.proxy_bypass(host):
        return True
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: it may resolve anywhere
        return True


def _seg(value: str) -> str:
    """``value`` as one path segment: a run id or phase name with a space, '/' or '?' in it names
    that run or phase (which the API then does not know), not another URL."""
    return urllib.parse.quote(value, safe="")


class ApiClient:
    def __init__(self, base_url: str, timeout: float = 30.0, token: str | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self._auth = {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
        try:
            parts = urllib.parse.urlsplit(self.base)
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ClientError(f"invalid API URL {self.base!r}: give it as http://host:port")
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json", **self._auth, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310 - operator-given API URL
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read() or b"{}")
            except json.JSONDecodeError:
                payload = {"message": exc.reason}
            raise ApiError(exc.code, payload) from None
        except (OSError, http.client.HTTPException) as exc:  # URLError; socket errors, timeouts, a cut or garbled answer
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else (str(exc) or type(exc).__name__)
            raise ApiUnreachable(f"cannot reach the API at {self.base}: {reason}") from None
        try:
            return status, json.loads(raw or b"{}")
        except json.JSONDecodeError:
            raise ClientError(f"{self.base}{path} answered HTTP {status} with something that is not JSON: is it Autopack's API?") from None

    def submit(self, plan: dict[str, Any], dry_run: bool = False, idempotency_key: str | None = None) -> dict[str, Any]:
        """POST the plan. With ``idempotency_key``, sending it again (the answer was lost) returns the
        run the first request made instead of starting a second one."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", "/runs" + ("?dry_run=true" if dry_run else ""), plan, headers)[1]

    def run(self, run_id: str) -> dict[str, Any]:
        return self.request("GET", f"/runs/{_seg(run_id)}")[1]

    def events(self, run_id: str, after: int) -> dict[str, Any]:
        return self.request("GET", f"/runs/{_seg(run_id)}/events?after={after}")[1]

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self.request("POST", f"/runs/{_seg(run_id)}/cancel")[1]

    def builder_result(self, run_id: str, phase: str, edits: str, by: str | None = None,
                       idempotency_key: str | None = None) -> dict[str, Any]:
        """POST an external Builder's edits. With ``idempotency_key``, sending them again (the answer
        was lost) returns the attempt the first request went to instead of feeding the next one."""
        body: dict[str, Any] = {"edits": edits}
        if by is not None:
            body["by"] = by
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self.request("POST", f"/runs/{_seg(run_id)}/phases/{_seg(phase)}/builder_result", body, headers)[1]
