"""Which requests a web page elsewhere can make the server run: Host names and cross-origin posts.

A server without an API key on loopback is still reachable from any web page its user opens: the
page can post a form to it (a "simple" request needs no CORS permission), or point a name of its own
at 127.0.0.1 (DNS rebinding) and then read the answers as same-origin. :class:`OriginGuard` closes
both:

- the ``Host`` header must name this server (``allowed_hosts``; by default the names of the address
  it is bound to, :func:`allowed_hosts_for`); anything else gets 400;
- a request that changes something (``POST``, ``DELETE``, ...) sent by a browser from another origin
  (an ``Origin`` that is not the ``Host``, or ``Sec-Fetch-Site: cross-site``/``same-site``) gets 403.
  Clients that are not browsers (curl, SDKs, SageMaker) send neither header and pass.

>>> allowed_hosts_for("127.0.0.1")
('localhost', '127.0.0.1', '::1')
>>> host_allowed("localhost:8080", ("localhost",)), host_allowed("evil.example:8080", ("localhost",))
(True, False)
"""

from __future__ import annotations

import ipaddress
import json
import socket
from typing import Any
from urllib.parse import urlsplit

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
ANY_IP = "<ip>"  # an allowed-hosts entry: any IP address literal (a rebinding attack needs a name)
_WILDCARD_BINDS = ("0.0.0.0", "::", "")
_SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def allowed_hosts_for(bind_host: str) -> tuple[str, ...]:
    """The Host names served by default when bound to ``bind_host``.

    Loopback: its names. All interfaces (``0.0.0.0``, ``::``): any IP address, ``localhost`` and this
    machine's host names. A named address: that name and the loopback names.
    """
    if bind_host in LOOPBACK_HOSTS:
        return LOOPBACK_HOSTS
    if bind_host in _WILDCARD_BINDS:
        names = {socket.gethostname().lower(), socket.getfqdn().lower()} - {""}
        return (ANY_IP, "localhost", *sorted(names))
    return (bind_host.lower(), *LOOPBACK_HOSTS)


def parse_hosts(value: str | None, bind_host: str) -> tuple[str, ...]:
    """``--allowed-hosts`` (comma-separated names, ``*.example.com``, ``<ip>``, ``*``); empty: the default."""
    names = tuple(n.strip().lower() for n in (value or "").split(",") if n.strip())
    return names or allowed_hosts_for(bind_host)


def _hostname(host_header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower-case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host_header: str, allowed: tuple[str, ...]) -> bool:
    """Whether a Host header names one of ``allowed`` (exact, ``*.suffix``, ``<ip>`` or ``*``)."""
    name = _hostname(host_header)
    for pattern in allowed:
        if pattern == "*" or pattern == name:
            return True
        if pattern == ANY_IP and _is_ip(name):
            return True
        if pattern.startswith("*.") and name.endswith(pattern[1:]):
            return True
    return False


def cross_origin(headers: dict[str, str]) -> str | None:
    """Why a browser request comes from another origin, or None when it does not (or is no browser's)."""
    origin = headers.get("origin")
    if origin is not None:
        if origin == "null":
            return "Origin null (a sandboxed or local page)"
        served = {headers.get("host", "").lower(), headers.get("x-forwarded-host", "").lower()} - {""}
        if urlsplit(origin).netloc.lower() not in served:
            return f"Origin {origin}"
        return None
    site = headers.get("sec-fetch-site")
    if site in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site {site}"
    return None


class OriginGuard:
    """ASGI middleware applying :func:`host_allowed` and :func:`cross_origin` to every HTTP request."""

    def __init__(self, app: Any, allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS) -> None:
        self.app = app
        self.allowed_hosts = tuple(allowed_hosts)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host")
        if host is not None and not host_allowed(host, self.allowed_hosts):
            return await _refuse(send, 400, f"Host {host!r} is not served here (mmva serve --allowed-hosts)")
        if scope["method"] not in _SAFE_METHODS:
            why = cross_origin(headers)
            if why:
                return await _refuse(send, 403, f"{scope['method']} from another site refused ({why}); "
                                                "use this server's own page, or a client that is not a browser")
        await self.app(scope, receive, send)


async def _refuse(send: Any, status: int, message: str) -> None:
    body = json.dumps({"error": message, "status": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
