"""`WS /stream` on a real `mmva serve` process: a generated talking clip sent in real-time 100 ms chunks
(with JPEG frames) gives the utterances `mmva analyze` gives for the file; limits, keys and disconnects."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.media import face_frames, silence, speak, write_video
from tests.serve_server import SERVE_KEY, SERVE_LIVE_MAX_SECONDS, SERVE_LIVE_SESSIONS, ServerProcess
from tests.test_stream import FIRST, SECOND, assert_same_utterances

websockets = pytest.importorskip("websockets")
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

CHUNK_S = 0.1


@pytest.fixture()
def server(serve_server: ServerProcess) -> ServerProcess:
    return serve_server


def ws_url(server: ServerProcess) -> str:
    return server.url.replace("http://", "ws://") + "/stream"


def until_closed(ws: Any, timeout: float = 120.0) -> tuple[list[dict[str, Any]], int | None]:
    """Every message the server sends until it closes, and its close code."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            got.append(json.loads(ws.recv(timeout=deadline - time.monotonic())))
    except ConnectionClosed as closed:
        return got, closed.rcvd.code if closed.rcvd else None
    raise TimeoutError(f"the server did not close within {timeout} s: {got}")


def drain(ws: Any, into: list[dict[str, Any]]) -> None:
    try:
        while True:
            into.append(json.loads(ws.recv(timeout=0)))
    except TimeoutError:
        pass


def live_sessions(server: ServerProcess) -> dict[str, Any]:
    return httpx.get(f"{server.url}/info", headers={"X-API-Key": SERVE_KEY}, timeout=30).json()["live"]


def wait_idle(server: ServerProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while live_sessions(server)["active"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert live_sessions(server)["active"] == 0


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    audio = np.concatenate([silence(0.5), speak(FIRST), silence(1.0), speak(SECOND), silence(1.0)])
    n = int(len(audio) / 16000 * 10) + 1
    return write_video(tmp_path_factory.mktemp("live") / "talk.mp4", face_frames(n, 96), fps=10, audio=audio)


def test_stream_gives_the_utterances_of_analyze(server: ServerProcess, clip: Path) -> None:
    import cv2

    from mmva.analyze.stream import media_chunks

    offline = httpx.post(f"{server.url}/invocations", content=clip.read_bytes(), timeout=300,
                         headers={"Content-Type": "video/mp4", "X-API-Key": SERVE_KEY}).json()["utterances"]
    got: list[dict[str, Any]] = []
    with connect(ws_url(server), open_timeout=30) as ws:
        ws.send(json.dumps({"type": "start", "api_key": SERVE_KEY}))  # as a browser: the key in the message
        ready = json.loads(ws.recv(timeout=60))
        assert ready["type"] == "ready" and ready["sample_rate"] == 16000 and ready["model"]["asr"]
        started = time.monotonic()
        for kind, t, data in media_chunks(str(clip), chunk_seconds=CHUNK_S):
            if kind == "frame":
                ok, jpeg = cv2.imencode(".jpg", np.ascontiguousarray(data[:, :, ::-1]))
                ws.send(json.dumps({"type": "frame", "time": t}))
                ws.send(jpeg.tobytes())
                continue
            time.sleep(max(0.0, started + t - time.monotonic()))  # captured in real time
            ws.send((np.clip(data, -1, 1) * 32767).astype("<i2").tobytes())
            drain(ws, got)
        ws.send(json.dumps({"type": "stop"}))
        rest, code = until_closed(ws)
    got += rest
    assert code == 1000 and got[-1]["type"] == "done" and got[-1]["reason"] == "stop"
    utterances = [m for m in got if m["type"] == "utterance"]
    assert any(m["type"] == "partial" for m in got)
    assert_same_utterances([m["utterance"] for m in utterances], offline)
    # Each utterance came within a stated delay of its last audio (generous: 2 shared, busy cores).
    assert all(0 <= m["delay"] <= 10.0 for m in utterances), [m["delay"] for m in utterances]
    assert all("video" in m["utterance"]["modalities"] for m in utterances) == all(
        "video" in u["modalities"] for u in offline)
    wait_idle(server)


def test_stream_needs_the_key_and_a_same_site_page(server: ServerProcess) -> None:
    for start in ({"type": "start"}, {"type": "start", "api_key": "wrong"}):
        with connect(ws_url(server)) as ws:
            ws.send(json.dumps(start))
            msgs, code = until_closed(ws, 30)
        assert code == 1008 and msgs[-1]["status"] == 401, msgs
    with connect(ws_url(server), additional_headers={"X-API-Key": SERVE_KEY}) as ws:  # a header works too
        ws.send(json.dumps({"type": "start"}))
        assert json.loads(ws.recv(timeout=60))["type"] == "ready"
        ws.send(json.dumps({"type": "stop"}))
        msgs, code = until_closed(ws)
        assert code == 1000 and msgs[-1] == {"type": "done", "reason": "stop", "duration": 0.0, "n_utterances": 0}
    with pytest.raises(InvalidStatus) as refused:  # another site's page cannot open a session
        connect(ws_url(server), origin="http://evil.example", additional_headers={"X-API-Key": SERVE_KEY})
    assert refused.value.response.status_code == 403
    wait_idle(server)


def test_stream_limits(server: ServerProcess) -> None:
    headers = {"X-API-Key": SERVE_KEY}
    # Too big a message: 413 and close 1009.
    with connect(ws_url(server), additional_headers=headers, max_size=None) as ws:
        ws.send(json.dumps({"type": "start"}))
        json.loads(ws.recv(timeout=60))
        ws.send(bytes(600 * 1024))
        msgs, code = until_closed(ws)
    assert code == 1009 and msgs[-1]["status"] == 413
    # Not a known message: 400 and close 1008.
    with connect(ws_url(server), additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
        json.loads(ws.recv(timeout=60))
        ws.send("not json")
        msgs, code = until_closed(ws)
    assert code == 1008 and msgs[-1]["status"] == 400
    # Sessions at once: one more than the limit is told to come back later (1013).
    open_ = [connect(ws_url(server), additional_headers=headers) for _ in range(SERVE_LIVE_SESSIONS)]
    try:
        for ws in open_:
            ws.send(json.dumps({"type": "start"}))
            assert json.loads(ws.recv(timeout=60))["type"] == "ready"
        with connect(ws_url(server), additional_headers=headers) as extra:
            extra.send(json.dumps({"type": "start"}))
            msgs, code = until_closed(extra)
        assert code == 1013 and msgs[-1]["status"] == 503 and "too many live sessions" in msgs[-1]["error"]
        assert live_sessions(server)["active"] == SERVE_LIVE_SESSIONS
    finally:
        for ws in open_:
            ws.close()  # a client that leaves without "stop"
    wait_idle(server)
    # The duration limit: audio past it ends the session as a stop would (here sent faster than real time,
    # 48 kHz resampled by the server).
    with connect(ws_url(server), additional_headers=headers) as ws:
        ws.send(json.dumps({"type": "start", "sample_rate": 48000}))
        json.loads(ws.recv(timeout=60))
        second = bytes(2 * 48000)
        sent = 0
        try:
            while sent < SERVE_LIVE_MAX_SECONDS + 5:
                ws.send(second)
                sent += 1
        except ConnectionClosed:
            pass
        msgs, code = until_closed(ws)
    assert code == 1000 and msgs[-1]["reason"] == "max_seconds"
    assert msgs[-1]["duration"] == pytest.approx(SERVE_LIVE_MAX_SECONDS, abs=0.5)


def test_client_leaving_mid_utterance_frees_its_session(server: ServerProcess) -> None:
    speech = (speak(FIRST) * 32767).astype("<i2")
    with connect(ws_url(server), additional_headers={"X-API-Key": SERVE_KEY}) as ws:
        ws.send(json.dumps({"type": "start"}))
        json.loads(ws.recv(timeout=60))
        ws.send(speech[: len(speech) // 2].tobytes())
        assert live_sessions(server)["active"] == 1
    wait_idle(server)
    assert httpx.get(f"{server.url}/ping").status_code == 200
