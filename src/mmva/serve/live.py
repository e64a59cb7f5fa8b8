"""``WS /stream``: live analysis over a WebSocket (the server side of :mod:`mmva.analyze.stream`).

The protocol (documented for clients in docs/serve.md):

- client -> server, JSON text messages: ``{"type": "start", "sample_rate": 16000, "top_k": 3,
  "api_key": "..."}`` first (every field optional; ``api_key`` for browsers, which cannot send
  headers on a WebSocket), ``{"type": "frame", "time": 1.25}`` announcing that the next binary
  message is a JPEG frame seen at that stream time (seconds of audio sent so far when ``time`` is
  left out), and ``{"type": "stop"}`` to finish: the open utterance is analysed, then ``done``;
- client -> server, binary messages: 16-bit little-endian mono PCM at ``sample_rate`` (resampled to
  16 kHz here), or the JPEG announced by a ``frame`` message;
- server -> client, JSON: ``ready``, ``partial`` (the words of the utterance being spoken),
  ``utterance`` (one per finished utterance, in the analyze JSON's form), ``problem`` (a frame that
  is no image; the session goes on), ``error`` (then the socket closes) and ``done`` (then it closes
  with 1000).

Each session runs its :class:`~mmva.analyze.stream.LiveAnalyzer` on a thread of its own. Backpressure:
when more than ``backlog_s`` seconds of audio wait for that thread, the server stops reading the
socket until it catches up, so a client that sends faster than real time is slowed down by TCP, not
buffered without bound; partial transcripts are skipped while audio waits.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from starlette.websockets import WebSocket, WebSocketDisconnect

from mmva.serve.auth import presented_key
from mmva.serve.origin import cross_origin, host_allowed

log = logging.getLogger("mmva.serve")

SAMPLE_RATE = 16000
# WebSocket close codes (RFC 6455 section 7.4.1)
CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TOO_BIG, CLOSE_ERROR, CLOSE_TRY_LATER = 1000, 1008, 1009, 1011, 1013


@dataclass(frozen=True)
class LiveLimits:
    """What live sessions may cost.

    >>> LiveLimits(max_message_kb=64).max_message_bytes
    65536
    """

    max_sessions: int = 4  # live sessions at once; more get an error and close 1013 (try later)
    max_seconds: float = 3600.0  # of audio per session; then it finishes as if stopped
    max_message_kb: float = 512.0  # one message (audio chunk, JPEG frame or JSON)
    idle_timeout_s: float = 30.0  # no message for this long: the session finishes
    start_timeout_s: float = 10.0  # the first message must arrive within this
    backlog_s: float = 10.0  # seconds of audio waiting for analysis before the server stops reading

    @property
    def max_message_bytes(self) -> int:
        return int(self.max_message_kb * 1024)


class SessionError(Exception):
    """Ends a session with ``{"type": "error", "error": message, "status": status}`` and a close code."""

    def __init__(self, status: int, message: str, code: int = CLOSE_POLICY) -> None:
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class LiveSessions:
    """Counts live sessions against ``limits.max_sessions`` (figures for ``GET /info``)."""

    def __init__(self, limits: LiveLimits) -> None:
        self.limits = limits
        self.active = 0
        self.total = 0
        self.refused = 0
        self._lock = threading.Lock()

    def acquire(self) -> bool:
        with self._lock:
            if self.active >= self.limits.max_sessions:
                self.refused += 1
                return False
            self.active += 1
            self.total += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.active -= 1

    def stats(self) -> dict[str, Any]:
        return {"active": self.active, "total": self.total, "refused_busy": self.refused,
                "max_sessions": self.limits.max_sessions}


class _Worker(threading.Thread):
    """Feeds one session's analyzer from a queue and posts its events to the event loop."""

    def __init__(self, live: Any, emit: Callable[[dict[str, Any] | None], None]) -> None:
        super().__init__(name="mmva-live", daemon=True)
        self.live = live
        self.emit = emit
        self.items: queue.Queue = queue.Queue()
        self.backlog = 0.0  # seconds of audio queued and not yet analysed
        self.failed = threading.Event()
        self._lock = threading.Lock()

    def put_audio(self, audio: np.ndarray) -> None:
        with self._lock:
            self.backlog += audio.size / SAMPLE_RATE
        self.items.put(("audio", audio, time.monotonic()))

    def put_frame(self, t: float | None, data: bytes) -> None:
        self.items.put(("frame", t, data))

    def stop(self, flush: bool) -> None:
        self.items.put(("stop", flush))

    def run(self) -> None:
        from mmva.analyze.stream import decode_jpeg

        live = self.live
        try:
            while True:
                item = self.items.get()
                events: list[Any] = []
                if item[0] == "audio":
                    events = live.feed_audio(item[1], partials=self.items.empty(), received_at=item[2])
                    with self._lock:
                        self.backlog -= item[1].size / SAMPLE_RATE
                elif item[0] == "frame":
                    try:
                        frame = decode_jpeg(item[2], live.options.max_side)
                    except ValueError as exc:
                        self.emit({"type": "problem", "error": f"frame ignored: {exc}"})
                        continue
                    live.feed_frame(live.time if item[1] is None else item[1], frame)
                else:
                    if item[1]:
                        events = live.finish()
                    break
                for event in events:
                    self.emit(event.to_dict())
        except Exception as exc:  # noqa: BLE001 - the client gets a reference, the log the details
            ref = uuid.uuid4().hex[:12]
            log.exception("live session failed (reference %s)", ref)
            self.emit({"type": "error", "status": 500,
                       "error": f"internal error {type(exc).__name__} (reference {ref}; the server log has the details)"})
            self.failed.set()
        finally:
            self.emit(None)


async def serve_stream(ws: WebSocket, service: Any, sessions: LiveSessions) -> None:
    """Run one ``WS /stream`` session to its end (stop, limit, error or the client leaving)."""
    settings = service.settings
    headers = {k.lower(): v for k, v in ws.headers.items()}
    host = headers.get("host")
    # Browsers let any page open a WebSocket to any host (no CORS): the Host and Origin checks that
    # OriginGuard makes for HTTP are made here.
    if (host is not None and not host_allowed(host, settings.allowed_hosts)) or cross_origin(headers):
        await ws.close(CLOSE_POLICY)  # before accept: the client gets HTTP 403
        return
    await ws.accept()
    acquired = False
    try:
        if not service.ready:
            raise SessionError(503, f"not ready: {service.model_error and 'the model could not be loaded' or 'the model is still loading'}",
                               CLOSE_TRY_LATER)
        limits = sessions.limits
        first = await _receive(ws, limits, limits.start_timeout_s, "the first message")
        if first is None:
            return
        start = _start_message(first)
        _check_key(settings.api_key, presented_key(headers) or start.get("api_key"))
        if not sessions.acquire():
            raise SessionError(503, f"too many live sessions ({limits.max_sessions}); retry later", CLOSE_TRY_LATER)
        acquired = True
        await _session(ws, service, limits, start, first if "bytes" in first and first["bytes"] else None)
    except SessionError as err:
        await _close(ws, {"type": "error", "error": err.message, "status": err.status}, err.code)
    except WebSocketDisconnect:
        pass
    finally:
        if acquired:
            sessions.release()


async def _session(ws: WebSocket, service: Any, limits: LiveLimits, start: dict[str, Any],
                   first_audio: dict[str, Any] | None) -> None:
    from mmva.analyze.stream import LiveOptions

    settings = service.settings
    rate = start.get("sample_rate", SAMPLE_RATE)
    if not isinstance(rate, int) or not 8000 <= rate <= 48000:
        raise SessionError(400, '"sample_rate" must be an integer from 8000 to 48000')
    top_k = start.get("top_k", settings.top_k)
    if not isinstance(top_k, int) or not 1 <= top_k <= 7:
        raise SessionError(400, '"top_k" must be an integer from 1 to 7')
    live = await asyncio.to_thread(_analyzer, service.model, settings.asr_model, LiveOptions(top_k=top_k))
    loop = asyncio.get_running_loop()
    out: asyncio.Queue = asyncio.Queue()
    worker = _Worker(live, lambda item: loop.call_soon_threadsafe(out.put_nowait, item))
    worker.start()
    sender = asyncio.ensure_future(_send_events(ws, out))
    resample = _resampler(rate)
    await ws.send_json({"type": "ready", "sample_rate": rate, "model": live.describe(),
                        "limits": {"max_seconds": limits.max_seconds, "max_message_bytes": limits.max_message_bytes,
                                   "idle_timeout_s": limits.idle_timeout_s}})
    reason, flush, seconds, frame_time = "stop", True, 0.0, None
    pending_frame = False
    try:
        message = first_audio
        while True:
            if message is None:
                message = await _receive(ws, limits, limits.idle_timeout_s, "a message", worker.failed)
            if message is None:  # the client left
                flush = False
                return
            if worker.failed.is_set():
                break
            if message.get("timeout"):
                reason = "idle"
                break
            data, text = message.get("bytes"), message.get("text")
            message = None
            if data is not None:
                if pending_frame:
                    worker.put_frame(frame_time, data)
                    pending_frame = False
                    continue
                if len(data) % 2:
                    raise SessionError(400, "audio must be 16-bit PCM: a binary message had an odd number of bytes")
                audio = resample(np.frombuffer(data, "<i2").astype(np.float32) / 32768.0)
                worker.put_audio(audio)
                seconds += len(data) / 2 / rate
                if seconds >= limits.max_seconds:
                    reason = "max_seconds"
                    break
                while worker.backlog > limits.backlog_s and not worker.failed.is_set():
                    await asyncio.sleep(0.05)  # stop reading: TCP slows the client down
            elif text is not None:
                control = _json(text)
                kind = control.get("type")
                if kind == "stop":
                    break
                if kind == "frame":
                    t = control.get("time")
                    if t is not None and (not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0):
                        raise SessionError(400, '"time" of a frame must be a number of seconds >= 0')
                    frame_time, pending_frame = (None if t is None else float(t)), True
                elif kind != "ping":
                    raise SessionError(400, f"unknown message type {kind!r} (start, frame, stop, ping)")
    except BaseException:
        flush = False  # an error or a cancelled server: nothing more is sent but the error
        raise
    finally:
        worker.stop(flush)
        if not flush:
            sender.cancel()
    await sender  # every utterance of the flushed speech is sent before "done"
    if worker.failed.is_set():
        await _close(ws, None, CLOSE_ERROR)
        return
    await _close(ws, {"type": "done", "reason": reason, "duration": round(live.time, 3),
                      "n_utterances": live.utterances_emitted}, CLOSE_NORMAL)


def _analyzer(model: Any, asr_model: str | None, options: Any) -> Any:
    from mmva.analyze.stream import LiveAnalyzer

    live = LiveAnalyzer(model, asr_model=asr_model, options=options)
    live.warm_up()  # the first session pays for loading the heads before "ready", not in its first delay
    return live


async def _send_events(ws: WebSocket, out: asyncio.Queue) -> None:
    while True:
        item = await out.get()
        if item is None:
            return
        try:
            await ws.send_json(item)
        except (WebSocketDisconnect, RuntimeError):
            return  # the client left; the worker is stopped by the receive side


async def _receive(ws: WebSocket, limits: LiveLimits, timeout: float, what: str,
                   failed: threading.Event | None = None) -> dict[str, Any] | None:
    """The next message, ``{"timeout": True}`` after ``timeout`` seconds of silence, or None when
    the client has gone. Oversized messages end the session (1009)."""
    receive = asyncio.ensure_future(ws.receive())
    waited = 0.0
    try:
        while True:
            done, _ = await asyncio.wait({receive}, timeout=0.25)
            if done:
                break
            waited += 0.25
            if failed is not None and failed.is_set():
                return {"timeout": False}
            if waited >= timeout:
                if failed is None:
                    raise SessionError(408, f"{what} did not arrive within {timeout:g} s")
                return {"timeout": True}
    finally:
        if not receive.done():
            receive.cancel()
    message = receive.result()
    if message["type"] == "websocket.disconnect":
        return None
    size = len(message.get("bytes") or b"") + len((message.get("text") or "").encode())
    if size > limits.max_message_bytes:
        raise SessionError(413, f"a message of {size} bytes is over the limit of {limits.max_message_bytes} bytes",
                           CLOSE_TOO_BIG)
    return message


def _json(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SessionError(400, f"a text message is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise SessionError(400, 'a text message must be a JSON object such as {"type": "stop"}')
    return value


def _start_message(first: dict[str, Any]) -> dict[str, Any]:
    """The start message's fields ({} when the client began with audio)."""
    if first.get("bytes") is not None:
        return {}
    start = _json(first.get("text") or "")
    if start.get("type") != "start":
        raise SessionError(400, 'the first message must be {"type": "start", ...} or audio')
    return start


def _check_key(expected: str | None, given: Any) -> None:
    if not expected:
        return
    if not isinstance(given, str) or not given:
        raise SessionError(401, "this server needs an API key: send the X-API-Key header, or "
                                '"api_key" in the start message')
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise SessionError(401, "invalid API key")


def _resampler(rate: int) -> Callable[[np.ndarray], np.ndarray]:
    if rate == SAMPLE_RATE:
        return lambda x: x
    import soxr

    stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32")
    return lambda x: stream.resample_chunk(x)


async def _close(ws: WebSocket, message: dict[str, Any] | None, code: int) -> None:
    try:
        if message is not None:
            await ws.send_json(message)
        await ws.close(code)
    except (WebSocketDisconnect, RuntimeError):
        pass  # already gone


def add_stream_route(app: Any, service: Any) -> None:
    """Register ``WS /stream`` on the app; ``service.live`` (:class:`LiveSessions`) counts the sessions."""

    @app.websocket("/stream")
    async def stream(ws: WebSocket) -> None:
        await serve_stream(ws, service, service.live)
