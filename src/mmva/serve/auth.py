"""Optional API-key authentication.

Clients send the key as ``X-API-Key: <key>`` or ``Authorization: Bearer <key>``. ``/ping`` and the
web page stay open (SageMaker's health check and the browser must reach them without a key); every
API route checks the key when the server was started with one.
"""

from __future__ import annotations

import hmac
from typing import Any

from mmva.serve.limits import RequestError

API_KEY_HEADER = "X-API-Key"


def presented_key(headers: Any) -> str | None:
    """The key a request carries, from X-API-Key or a Bearer token."""
    key = headers.get(API_KEY_HEADER.lower())
    if key:
        return key.strip()
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def check_api_key(headers: Any, expected: str | None) -> None:
    """Raise 401 unless ``expected`` is unset or the request carries it.

    >>> check_api_key({"x-api-key": "s3cret"}, "s3cret")  # passes silently
    """
    if not expected:
        return
    given = presented_key(headers)
    if given is None:
        raise RequestError(401, f"this server needs an API key: send it in the {API_KEY_HEADER} header",
                           {"WWW-Authenticate": "Bearer"})
    # Constant-time comparison: the time taken must not reveal how much of the key matched.
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise RequestError(401, "invalid API key", {"WWW-Authenticate": "Bearer"})
