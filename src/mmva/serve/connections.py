"""Connection-level limits uvicorn lacks: a stranger's idle sockets must not lock anyone out.

uvicorn waits forever for a request's headers and counts every open connection against
``limit_concurrency``, so a few sockets that send half a request line and then nothing (slow loris)
fill the server until ``GET /ping`` answers 503 to everyone. :func:`guarded_protocol` makes an h11
protocol class that

- gives each request ``header_timeout_s`` to deliver its headers, from the moment the connection can
  take one (opened, or its previous response sent), then answers 408 and closes;
- when the open connections reach ``max_connections``, closes the oldest connection that is only
  waiting (no request in progress), so newcomers get in and only requests at work count as busy.

Example::

    uvicorn.run(app, http=guarded_protocol(header_timeout_s=10, max_connections=256),
                limit_concurrency=256, timeout_keep_alive=5)
"""

from __future__ import annotations

import asyncio
import json
import time
import h11
from uvicorn.protocols.http.h11_impl import H11Protocol


def guarded_protocol(header_timeout_s: float, max_connections: int) -> type[H11Protocol]:
    """An :class:`H11Protocol` subclass with a header-read time limit and idle-connection eviction."""

    class GuardedH11Protocol(H11Protocol):
        header_timeout = header_timeout_s
        capacity = max_connections

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            self._header_timer: asyncio.TimerHandle | None = None
            self._waiting_since = time.monotonic()
            super().connection_made(transport)
            self._make_room()
            self._watch_headers()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_header_timer()
            super().connection_lost(exc)

        def handle_events(self) -> None:
            super().handle_events()
            self._watch_headers()

        def on_response_complete(self) -> None:
            self._waiting_since = time.monotonic()
            super().on_response_complete()  # ready for the next request: its headers get a new deadline
            self._watch_headers()

        # -- headers --------------------------------------------------------------------------------

        def _waiting(self) -> bool:
            """True while no request is in progress (before its headers have all arrived)."""
            return self.conn.their_state is h11.IDLE

        def _watch_headers(self) -> None:
            if self.transport is None or self.transport.is_closing():
                return
            if not self._waiting():
                self._stop_header_timer()
            elif self._header_timer is None:
                self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or not self._waiting():
                return
            started = bool(self.conn.trailing_data[0])  # part of a request came: say why it ends
            self._close(408, f"the request's headers did not arrive within {self.header_timeout:g} s"
                        if started else None)

        def _close(self, status: int | None, message: str | None) -> None:
            if status is not None and message is not None:
                body = json.dumps({"error": message, "status": status}).encode()
                self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                     b"Content-Length: %d\r\n\r\n%s" % (status, _PHRASES.get(status, b""),
                                                                        len(body), body))
            self._stop_header_timer()
            self._unset_keepalive_if_required()
            self.connections.discard(self)  # counted out now, not when the loop gets to connection_lost
            self.transport.close()

        # -- capacity -------------------------------------------------------------------------------

        def _make_room(self) -> None:
            """At capacity, close the longest-waiting idle connection (never one with a request at work)."""
            if len(self.connections) < self.capacity:
                return
            idle = [c for c in self.connections
                    if c is not self and isinstance(c, GuardedH11Protocol) and c._waiting()]
            if idle:
                oldest = min(idle, key=lambda c: c._waiting_since)
                started = bool(oldest.conn.trailing_data[0])
                oldest._close(503 if started else None,
                              "too many connections: this one waited longest for its request's headers")

    return GuardedH11Protocol


_PHRASES = {408: b"Request Timeout", 503: b"Service Unavailable"}
