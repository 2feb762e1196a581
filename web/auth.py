"""The API token: with ``AUTOPACK_API_TOKEN`` set, every request but ``/health`` must carry it, as
``Authorization: Bearer <token>`` (the CLI, scripts) or, for reads only, as the password of HTTP
basic auth (a browser on the dashboard asks for it; the user name is not checked). Writes take the
bearer token only: a browser sends cached basic credentials with a cross-site form's POST too."""

from __future__ import annotations

import base64
import binascii
import hmac

OPEN_PATHS = frozenset({"/health"})  # healthchecks (compose, load balancers) carry no credentials


def presented_token(authorization: str | None) -> str | None:
    """The token an ``Authorization`` header carries (bearer, or basic auth's password), or None."""
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):  # not base64 (a non-ASCII value raises ValueError), or not UTF-8
            return None
        _user, sep, password = decoded.partition(":")
        return password if sep else None
    return None


def token_matches(authorization: str | None, token: str, *, allow_basic: bool = True) -> bool:
    """Whether the header carries ``token`` (compared in constant time); with ``allow_basic=False``
    only as a bearer token."""
    if not allow_basic and (authorization or "").strip().lower().startswith("basic"):
        return False
    given = presented_token(authorization)
    return given is not None and hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))
