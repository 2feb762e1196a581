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
])
def test_plain_http_off_this_machine_is_in_clear(url: str, clear: bool) -> None:
    assert sends_in_clear(url) is clear
