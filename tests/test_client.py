"""The API client's pure parts: when a request would carry the token across a network in clear."""

from __future__ import annotations

import pytest

from autopack.client import sends_in_clear


@pytest.mark.parametrize(("url", "clear"), [
    ("http://127.0.0.1:8000", False),
    ("http://127.8.9.10:8000", False),
    ("http://localhost:8000", False),
    ("http://[::1]:8000", False),
    ("https://api.example.com", False),
    ("https://10.0.0.5:8443", False),
    ("http://api.example.com:8000", True),
    ("http://web:8000", True),
    ("http://10.0.0.5:8000", True),
    ("http://0.0.0.0:8000", True),
    ("http://[2001:db8::1]:8000", True),
    ("http://localhost.example.com", True),
    ("ftp://127.0.0.1", False),
    ("http://[::1", False),
    ("http://10.0.0.5:80x", False),  # refused as a URL, no warning first
])
def test_plain_http_off_this_machine_is_in_clear(url: str, clear: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert sends_in_clear(url) is clear


def test_through_an_http_proxy_even_loopback_is_in_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    assert sends_in_clear("http://127.0.0.1:8000") is True
    assert sends_in_clear("https://api.example.com") is False  # the tunnel is encrypted end to end
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert sends_in_clear("http://127.0.0.1:8000") is False
