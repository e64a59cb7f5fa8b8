"""`mmva serve` as users meet it: a real uvicorn process on loopback, real media, a real S3 (moto).

The session's shared server (tests/serve_server.py: API key, 2 workers, a queue of 2, 2 MB uploads)
serves these tests; the restart test stops it and starts a new one on the same work dir through the
container's entry script, to check that finished jobs survive and interrupted ones re-run.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import time
from pathlib import Path
from typing import AsyncIterator, Iterator

import httpx
import pytest

from mmva.serve.app import ServeSettings, Service
from mmva.serve.jobs import JobInput, JobManager
from mmva.serve.limits import Limits, RequestError
from tests.media import random_bytes_file, talking_head
from tests.s3 import aws_environment
from tests.serve_server import (SERVE_ARGS, SERVE_HEADER_TIMEOUT, SERVE_KEY, SERVE_MAX_UPLOAD_MB, ServerProcess,
                                wait_job)

KEY = SERVE_KEY
MAX_UPLOAD_MB = SERVE_MAX_UPLOAD_MB


@pytest.fixture()
def server(serve_server: ServerProcess) -> ServerProcess:
    return serve_server


@pytest.fixture()
def client(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client(headers={"X-API-Key": KEY}) as c:
        yield c


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About two seconds of a face saying a sentence (espeak-ng), H.264/AAC."""
    return talking_head(tmp_path_factory.mktemp("media") / "talk.mp4", "I am so happy to see you today")


def uploads_left(server: ServerProcess) -> list[str]:
    folder = server.work_dir / "uploads"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_analyze_json(body: dict, source: str) -> None:
    """The reply is the analyze JSON; the original client's fields are there."""
    assert body["schema_version"] and body["source"] == source
    assert body["utterances"], body
    for utt in body["utterances"]:
        assert utt["end_time"] > utt["start_time"] >= 0
        assert utt["emotions"][0]["label"] and 0 <= utt["emotions"][0]["confidence"] <= 1
        assert utt["sentiments"][0]["label"] in ("negative", "neutral", "positive")
        assert utt["modalities"]


def test_ping_page_and_errors_are_json(server: ServerProcess) -> None:
    with server.client() as anon:
        assert anon.get("/ping").status_code == 200
        page = anon.get("/")
        assert page.status_code == 200 and "<svg" not in page.text  # the timeline is drawn by app.js
        for asset in ("/static/app.js", "/static/style.css"):
            r = anon.get(asset)
            assert r.status_code == 200 and "https://" not in r.text  # no CDN: works offline
        assert "https://" not in page.text and "http://" not in page.text
        missing = anon.get("/no/such/route")
        assert missing.status_code == 404 and missing.json()["error"]
        unauth = anon.post("/invocations", json={"text": "hello"})
        assert unauth.status_code == 401 and "API key" in unauth.json()["error"]
        wrong = anon.post("/invocations", json={"text": "hello"}, headers={"X-API-Key": "nope"})
        assert wrong.status_code == 401


def test_text_invocation(client: httpx.Client) -> None:
    r = client.post("/invocations", json={"text": ["I love this, it is wonderful!", "This is awful, I hate it."]})
    assert r.status_code == 200, r.text
    body = r.json()
    joyful, angry = body["utterances"]
    assert joyful["text"] == "I love this, it is wonderful!" and joyful["modalities"] == ["text"]
    assert joyful["sentiments"][0]["label"] == "positive"
    assert angry["sentiments"][0]["label"] == "negative"
    confidences = [e["confidence"] for e in joyful["emotions"]]
    assert confidences == sorted(confidences, reverse=True) and len(confidences) == 3
    assert 3 / 7 - 1e-3 <= sum(confidences) <= 1 + 1e-3  # the top 3 of a distribution over 7 emotions
    bearer = client.post("/invocations", json={"text": "hi", "top_k": 1},
                         headers={"X-API-Key": "", "Authorization": f"Bearer {KEY}"})
    assert bearer.status_code == 200 and len(bearer.json()["utterances"][0]["emotions"]) == 1
    assert client.post("/invocations", json={"text": 42}).status_code == 400
    assert client.post("/invocations", json={"text": "hi", "top_k": 99}).status_code == 400


def test_raw_and_multipart_upload(client: httpx.Client, server: ServerProcess, video: Path) -> None:
    data = video.read_bytes()
    raw = client.post("/invocations", content=data, headers={"Content-Type": "video/mp4", "X-Filename": "talk.mp4"})
    assert raw.status_code == 200, raw.text
    assert_analyze_json(raw.json(), "talk.mp4")
    assert "text" in raw.json()["utterances"][0]["modalities"]
    multi = client.post("/invocations", files={"file": ("my clip.mp4", data, "video/mp4")},
                        headers={"Accept": "text/vtt"})  # Accept picks the reply format
    assert multi.status_code == 200, multi.text
    assert multi.headers["content-type"].startswith("text/vtt") and multi.text.startswith("WEBVTT")
    assert "-->" in multi.text
    assert uploads_left(server) == []  # temp files are always removed


def test_audio_upload(client: httpx.Client, tmp_path: Path) -> None:
    from tests.media import speak, write_wav

    wav = write_wav(tmp_path / "voice.wav", speak("this is only my voice"))
    r = client.post("/invocations", content=wav.read_bytes(), headers={"Content-Type": "audio/wav"})
    assert r.status_code == 200, r.text
    utts = r.json()["utterances"]
    assert utts and "video" not in utts[0]["modalities"]


def test_original_client_s3_request(client: httpx.Client, s3_bucket: str, video: Path) -> None:
    import boto3

    bucket = s3_bucket.removeprefix("s3://")
    boto3.client("s3").upload_file(str(video), bucket, "in/talk.mp4")
    uri = f"s3://{bucket}/in/talk.mp4"
    # Exactly what the original system's clients send.
    r = client.post("/invocations", content=json.dumps({"video_path": uri}),
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    assert_analyze_json(r.json(), uri)
    job = client.post("/jobs", json={"s3_uri": uri})
    assert job.status_code == 202, job.text
    assert wait_job(client, job.json()["id"])["state"] == "done"
    missing = client.post("/invocations", json={"s3_uri": f"s3://{bucket}/nope.mp4"})
    assert missing.status_code == 404 and "nope.mp4" in missing.json()["error"]


@pytest.mark.parametrize("body", [{"video_path": "/etc/passwd"}, {"s3_uri": "file:///etc/hosts"},
                                  {"video_path": "../../secret.mp4"}, {"s3_uri": "s3://bucket-only"}])
def test_server_side_paths_are_refused(client: httpx.Client, body: dict) -> None:
    r = client.post("/invocations", json=body)
    assert r.status_code == 400 and "s3://" in r.json()["error"]


def test_content_type_and_bad_media(client: httpx.Client, server: ServerProcess, tmp_path: Path) -> None:
    r = client.post("/invocations", content=b"hello", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "text/plain" in r.json()["error"]
    r = client.post("/jobs", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert r.status_code == 415
    r = client.post("/invocations", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and "JSON" in r.json()["error"]
    junk = random_bytes_file(tmp_path / "junk.mp4", 4096)
    r = client.post("/invocations", content=junk.read_bytes(), headers={"Content-Type": "video/mp4", "X-Filename": "junk.mp4"})
    assert r.status_code == 422, r.text
    assert r.json()["error"].startswith("junk.mp4") and str(server.work_dir) not in r.json()["error"]
    assert client.post("/invocations", content=b"", headers={"Content-Type": "video/mp4"}).status_code == 400
    assert uploads_left(server) == []


def test_upload_size_limit(client: httpx.Client, server: ServerProcess) -> None:
    too_big = b"\0" * (MAX_UPLOAD_MB * 1024 * 1024 + 1)
    declared = client.post("/invocations", content=too_big, headers={"Content-Type": "video/mp4"})
    assert declared.status_code == 413 and "limit" in declared.json()["error"]
    multipart = client.post("/jobs", files={"file": ("big.mp4", too_big, "video/mp4")})
    assert multipart.status_code == 413

    # No Content-Length (chunked, 40 MB offered): the 413 comes while the body is still streaming,
    # after about the limit plus what the kernel's socket buffers hold, not after the whole body.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32768)
        sock.settimeout(30)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: video/mp4\r\nX-API-Key: " + KEY.encode()
                     + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk, sent, reply = b"\0" * 65536, 0, b""
        while sent < 40 * 1024 * 1024 and not reply:
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:  # the server closed the connection after answering
                break
            sent += len(chunk)
            if select.select([sock], [], [], 0)[0]:
                reply = sock.recv(4096)
        reply = reply or sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < (MAX_UPLOAD_MB + 12) * 1024 * 1024, sent
    assert uploads_left(server) == []
    assert not any((server.work_dir / "jobs").glob("*/input*"))


def test_declared_length_refused_before_body(server: ServerProcess) -> None:
    """A 10 GB Content-Length gets its 413 without the server waiting for (or storing) the body."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: video/mp4\r\n"
                     b"X-API-Key: " + KEY.encode() + b"\r\nContent-Length: 10000000000\r\n\r\n")
        reply = sock.recv(4096).decode()
    assert reply.startswith("HTTP/1.1 413"), reply


# -- issue 20: a stranger cannot stall the server, errors are the client's, origins are checked -----


def _raw(server: ServerProcess, request: bytes, timeout: float = 10) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout)
    sock.sendall(request)
    return sock


def _read_reply(sock: socket.socket) -> bytes:
    reply = b""
    try:
        while chunk := sock.recv(65536):
            reply += chunk
    except OSError:  # reset after the reply: what came is the reply
        pass
    return reply


def test_partial_headers_neither_lock_out_nor_linger(server: ServerProcess) -> None:
    """Slow loris: 300 sockets that send half a request and stop (more than --max-connections, 256).
    /ping still answers 200 at once (the longest-idle socket makes room for a newcomer), and every
    stalled socket is answered 408 and closed once --header-timeout has passed."""
    partial = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    socks = [_raw(server, partial) for _ in range(300)]
    try:
        started = time.monotonic()
        with server.client() as anon:
            for _ in range(5):
                r = anon.get("/ping")
                assert r.status_code == 200, r.text
        assert time.monotonic() - started < SERVE_HEADER_TIMEOUT
        idle = socket.create_connection(("127.0.0.1", server.port), timeout=10)  # sends nothing at all
        last = socks[-1]
        last.settimeout(SERVE_HEADER_TIMEOUT + 8)
        reply = _read_reply(last)
        waited = time.monotonic() - started
        assert reply.startswith(b"HTTP/1.1 408") and b"did not arrive within" in reply, reply[:300]
        assert SERVE_HEADER_TIMEOUT - 0.5 <= waited < SERVE_HEADER_TIMEOUT + 8, waited
        evicted = socks[0]  # among the oldest: closed to make room, told why
        assert _read_reply(evicted).startswith(b"HTTP/1.1 503")
        idle.settimeout(SERVE_HEADER_TIMEOUT + 8)
        assert idle.recv(100) == b""  # closed without a word: it never started a request
        idle.close()
    finally:
        for sock in socks:
            sock.close()
    with server.client() as anon:
        assert anon.get("/ping").status_code == 200


@pytest.fixture(scope="module")
def long_context() -> str:
    return "I told you a hundred times, and you never listen to a single word I say. " * 11_500  # ~0.85 MB


def test_one_megabyte_text_request_costs_what_is_kept(client: httpx.Client, long_context: str) -> None:
    """128 texts sharing a 0.85 MB context: answered in seconds (the context was cleaned and tokenized
    in full once per text: about 0.75 s each, minutes in all), with the whole texts echoed."""
    texts = [f"Why would you do that, number {i}?" for i in range(128)]
    body = json.dumps({"text": texts, "context": ["hello", long_context]})
    assert 0.8e6 < len(body) < 1024 * 1024
    started = time.monotonic()
    r = client.post("/invocations", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text[:300]
    assert time.monotonic() - started < 60
    assert [u["text"] for u in r.json()["utterances"]] == texts


def test_text_work_stops_when_the_client_leaves(server: ServerProcess, client: httpx.Client,
                                                long_context: str) -> None:
    texts = [f"{i}: {long_context[:300]}" for i in range(512)]  # 16 chunks of work, seconds each here
    body = json.dumps({"text": texts, "context": [long_context[:200_000]]}).encode()
    before = client.get("/info").json()["text"]
    sock = _raw(server, b"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                        b"X-API-Key: " + KEY.encode() + b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    deadline = time.monotonic() + 30
    while client.get("/info").json()["text"]["running"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    sock.close()  # the client gives up
    left = time.monotonic()
    while client.get("/info").json()["text"]["running"] and time.monotonic() < left + 15:
        time.sleep(0.1)
    after = client.get("/info").json()["text"]
    assert after["running"] == 0 and after["stopped_client_gone"] == before["stopped_client_gone"] + 1, after
    assert time.monotonic() - left < 15


@pytest.mark.parametrize("body, says", [
    (b"[" * 100_000 + b"]" * 100_000, "deeper than"),  # RecursionError in the parser
    (b'{"text": ' + b"[" * 40 + b'"hi"' + b"]" * 40 + b"}", "deeper than"),  # parses; too deep to use
    (b'{"text": "\\ud800"}', "surrogate"),
    (b'{"text": ["fine", "x\\udfff y"], "context": ["a"]}', "surrogate"),
    (b'{"s3_uri": "s3://bucket/\\ud800.mp4"}', "surrogate"),
])
def test_odd_json_is_a_client_error(client: httpx.Client, body: bytes, says: str) -> None:
    r = client.post("/invocations", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and says in r.json()["error"], r.text[:300]


def test_internal_errors_name_no_server_file(client: httpx.Client, server: ServerProcess, video: Path) -> None:
    """A finished job whose result file went missing is a server fault: 500 with a reference to the log,
    not the exception text (which named the file under --work-dir)."""
    job_id = client.post("/jobs", content=video.read_bytes(), headers={"Content-Type": "video/mp4"}).json()["id"]
    assert wait_job(client, job_id)["state"] == "done"
    result = server.work_dir / "jobs" / job_id / "result.json"
    result.unlink()
    r = client.get(f"/jobs/{job_id}/result")
    assert r.status_code == 500, r.text
    error = r.json()["error"]
    assert "reference" in error and str(server.work_dir) not in error and "result.json" not in error, error
    ref = error.split("reference ")[1][:12]
    assert f"(reference {ref})" in server.log_path.read_text(errors="replace")  # the details are in the log
    client.delete(f"/jobs/{job_id}")


def test_routes_that_need_the_key(server: ServerProcess) -> None:
    """/ping and the web page are open; every other route, /info and the OpenAPI ones included, needs the key."""
    with server.client() as anon, server.client(headers={"X-API-Key": KEY}) as keyed:
        for path in ("/ping", "/", "/static/app.js"):
            assert anon.get(path).status_code == 200, path
        assert anon.get("/ping").json() == {"status": "ok", "auth_required": True}  # the page asks for the key
        for path in ("/info", "/docs", "/openapi.json", "/execution-parameters", "/jobs"):
            assert anon.get(path).status_code == 401, path
            assert keyed.get(path).status_code == 200, path
        assert keyed.get("/info").json()["auth_required"] is True
        assert "/invocations" in keyed.get("/openapi.json").json()["paths"]


def test_foreign_host_names_and_cross_site_posts_are_refused(server: ServerProcess, video: Path) -> None:
    """DNS rebinding (a page's own name pointed at 127.0.0.1) and form posts from another site."""
    with server.client(headers={"X-API-Key": KEY}) as c:
        rebound = c.get("/ping", headers={"Host": f"attacker.example:{server.port}"})
        assert rebound.status_code == 400 and "--allowed-hosts" in rebound.json()["error"]
        assert c.get("/ping", headers={"Host": f"localhost:{server.port}"}).status_code == 200
        form = {"file": ("talk.mp4", video.read_bytes(), "video/mp4")}
        for headers in ({"Origin": "http://attacker.example"}, {"Origin": "null"},
                        {"Sec-Fetch-Site": "cross-site"}):
            r = c.post("/jobs", files=form, headers=headers)
            assert r.status_code == 403 and "another site" in r.json()["error"], (headers, r.text)
        assert c.get("/info", headers={"Origin": "http://attacker.example"}).status_code == 200  # reads are
        # left to the browser's same-origin rule
        own_page = c.post("/jobs", files=form, headers={"Origin": server.url, "Sec-Fetch-Site": "same-origin"})
        assert own_page.status_code == 202, own_page.text
        assert wait_job(c, own_page.json()["id"])["state"] == "done"
        c.delete(f"/jobs/{own_page.json()['id']}")


def test_allowed_host_defaults() -> None:
    from mmva.serve.origin import ANY_IP, allowed_hosts_for, host_allowed, parse_hosts

    loopback = allowed_hosts_for("127.0.0.1")
    assert host_allowed("127.0.0.1:8080", loopback) and host_allowed("[::1]:8080", loopback)
    assert not host_allowed("attacker.example", loopback) and not host_allowed("192.168.1.5:8080", loopback)
    everywhere = allowed_hosts_for("0.0.0.0")
    assert ANY_IP in everywhere and host_allowed("192.168.1.5:8080", everywhere)
    assert host_allowed("[2001:db8::1]:8080", everywhere) and not host_allowed("attacker.example", everywhere)
    named = parse_hosts("mmva.example.com, *.internal", "0.0.0.0")
    assert host_allowed("mmva.example.com", named) and host_allowed("a.b.internal:80", named)
    assert not host_allowed("127.0.0.1", named) and host_allowed("x", parse_hosts("*", "127.0.0.1"))


def test_job_lifecycle_and_formats(client: httpx.Client, video: Path) -> None:
    r = client.post("/jobs", content=video.read_bytes(), headers={"Content-Type": "video/mp4", "X-Filename": "talk.mp4"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] in ("queued", "running") and r.headers["location"] == f"/jobs/{job['id']}"
    early = client.get(f"/jobs/{job['id']}/result")
    assert early.status_code in (200, 409)
    seen: set[str] = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = client.get(f"/jobs/{job['id']}").json()
        seen.add(status["stage"])
        if status["state"] in ("done", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert status["state"] == "done" and status["progress"] == 1.0, status
    result = client.get(f"/jobs/{job['id']}/result").json()
    assert_analyze_json(result, "talk.mp4")
    srt = client.get(f"/jobs/{job['id']}/result", params={"format": "srt"})
    assert srt.status_code == 200 and "-->" in srt.text and result["utterances"][0]["emotions"][0]["label"] in srt.text
    vtt = client.get(f"/jobs/{job['id']}/result", params={"format": "vtt"})
    assert vtt.text.startswith("WEBVTT")
    assert client.get(f"/jobs/{job['id']}/result", params={"format": "exe"}).status_code == 400
    assert job["id"] in [j["id"] for j in client.get("/jobs").json()["jobs"]]
    assert client.get("/jobs/0123456789abcdef0123456789abcdef").status_code == 404
    deleted = client.delete(f"/jobs/{job['id']}")
    assert deleted.status_code == 202 and deleted.json()["deleted"] is True
    assert client.get(f"/jobs/{job['id']}").status_code == 404
    assert client.get("/jobs/..%2F..%2Fetc").status_code == 404


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 9 s of speech: analysis takes a second or more, long enough to fill the queue."""
    text = ("Well, I did not expect that at all. We waited for hours and nobody came. "
            "Now I am really angry about the whole thing. Let us go home and forget it.")
    return talking_head(tmp_path_factory.mktemp("media") / "long.mp4", text, size=64)


def test_backpressure_and_cancel(client: httpx.Client, long_video: Path) -> None:
    """2 workers + a queue of 2: a fifth job gets 429 and a media invocation 503; cancel works."""
    data = long_video.read_bytes()
    headers = {"Content-Type": "video/mp4"}
    ids = [client.post("/jobs", content=data, headers=headers).json()["id"] for _ in range(4)]
    fifth = client.post("/jobs", content=data, headers=headers)
    sync = client.post("/invocations", content=data, headers=headers)
    assert fifth.status_code == 429 and fifth.headers.get("retry-after"), fifth.text
    assert sync.status_code == 503 and sync.headers.get("retry-after"), sync.text
    assert "busy" in sync.json()["error"]
    cancelled = client.post(f"/jobs/{ids[3]}/cancel")
    assert cancelled.status_code == 202
    assert wait_job(client, ids[3], timeout=60)["state"] == "cancelled"
    assert client.get(f"/jobs/{ids[3]}/result").status_code == 409
    for job_id in ids[:3]:
        assert client.delete(f"/jobs/{job_id}").status_code == 202
    for job_id in ids[:3]:  # "done" only where the job won the race against its cancel
        assert wait_job(client, job_id, timeout=60)["state"] in ("cancelled", "done")
    # Capacity is back; a running job stops at its next progress report once cancelled.
    again = client.post("/jobs", content=data, headers=headers).json()
    deadline = time.monotonic() + 30
    while client.get(f"/jobs/{again['id']}").json()["state"] == "queued" and time.monotonic() < deadline:
        time.sleep(0.05)
    client.post(f"/jobs/{again['id']}/cancel")
    final = wait_job(client, again["id"], timeout=60)
    assert final["state"] == "cancelled" and final["error"] == "cancelled while running", final


def test_restart_keeps_finished_jobs_and_reruns_interrupted(server: ServerProcess, video: Path,
                                                            tmp_path: Path, moto_server: str) -> None:
    """Stop the server mid-job and start it again through the container's entry script (docker/serve,
    with an empty model folder as SageMaker mounts it): finished results are still there and the
    interrupted job runs to the end."""
    headers = {"X-API-Key": KEY, "Content-Type": "video/mp4"}
    with server.client(headers=headers) as c:
        done_id = c.post("/jobs", content=video.read_bytes()).json()["id"]
        assert wait_job(c, done_id)["state"] == "done"
        before = c.get(f"/jobs/{done_id}/result").json()
        interrupted = c.post("/jobs", content=video.read_bytes()).json()["id"]
        was = c.get(f"/jobs/{interrupted}").json()["state"]
    assert server.stop() in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a graceful shutdown
    empty_model_dir = tmp_path / "opt-ml-model"
    empty_model_dir.mkdir()
    again = ServerProcess(server.work_dir, *SERVE_ARGS, env={**aws_environment(moto_server),
                          "MMVA_MODEL_DIR": str(empty_model_dir)}, container_entry=True)
    again.start()
    try:
        with again.client(headers=headers) as c:
            assert c.get(f"/jobs/{done_id}/result").json() == before
            final = wait_job(c, interrupted)
            assert final["state"] == "done", (was, final)
            if was in ("queued", "running"):  # unfinished at shutdown: the new server ran it again
                assert final["restarts"] == 1, final
    finally:
        again.stop()


# -- in-process checks of the job manager and the service (no HTTP) -------------------------------


def _slow_runner(inp: JobInput, progress) -> dict:  # type: ignore[no-untyped-def]
    """Reports progress every 10 ms for up to 10 s, as the analysis pipeline does between steps."""
    for i in range(1000):
        progress("working", i / 1000)
        time.sleep(0.01)
    return {"utterances": []}


def test_job_time_limit_and_failure_cleanup(tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "jobs", _slow_runner, workers=1, max_queue=1, job_timeout_s=0.3)
    upload = tmp_path / "upload.mp4"
    upload.write_bytes(b"x")
    job = manager.submit(JobInput(kind="file", name="clip.mp4", path=str(upload)))
    assert job.ended.wait(10)
    assert job.state == "failed" and job.error_status == 504 and "time limit of 0.3 s" in job.error
    assert not upload.exists() and not list((tmp_path / "jobs" / job.id).glob("input*"))
    saved = json.loads((tmp_path / "jobs" / job.id / "job.json").read_text())
    assert saved["state"] == "failed"

    def broken(inp: JobInput, progress) -> dict:  # type: ignore[no-untyped-def]
        raise RequestError(422, f"{inp.name}: no audio or video stream")

    manager2 = JobManager(tmp_path / "jobs2", broken, workers=1)
    failed = manager2.submit(JobInput(kind="s3", name="s3://b/k.mp4", uri="s3://b/k.mp4"))
    assert failed.ended.wait(10) and failed.error == "s3://b/k.mp4: no audio or video stream"
    with pytest.raises(RequestError) as err:
        manager2.result_path(failed.id)
    assert err.value.status == 409 and "no audio or video stream" in err.value.message
    manager.shutdown()
    manager2.shutdown()


def test_finished_jobs_are_pruned_after_keep_hours(tmp_path: Path) -> None:
    manager = JobManager(tmp_path / "jobs", lambda inp, progress: {"utterances": []}, keep_hours=0)
    job = manager.submit(JobInput(kind="s3", name="s3://b/k", uri="s3://b/k"))
    assert job.ended.wait(10)
    time.sleep(0.05)
    manager._prune()
    assert not (tmp_path / "jobs" / job.id).exists()
    with pytest.raises(RequestError):
        manager.get(job.id)
    manager.shutdown()


def test_synchronous_request_time_limit(tmp_path: Path) -> None:
    """POST /invocations answers 504 after --request-timeout and stops the work it started."""
    import asyncio

    service = Service(ServeSettings(work_dir=str(tmp_path), limits=Limits(request_timeout_s=0.3)))
    service.jobs.shutdown()
    service.jobs = JobManager(tmp_path / "jobs-slow", _slow_runner, workers=1)
    with pytest.raises(RequestError) as err:
        asyncio.run(service.run_sync(JobInput(kind="s3", name="s3://b/long.mp4", uri="s3://b/long.mp4")))
    assert err.value.status == 504 and "POST /jobs" in err.value.message
    deadline = time.monotonic() + 10
    while service.jobs.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert service.jobs.stats()["running"] == 0  # the abandoned work was cancelled
    service.jobs.shutdown()


def test_model_dir_with_a_broken_checkpoint_is_refused_clearly(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"x")
    (tmp_path / "mmva-model.json").write_text("{}")
    service = Service(ServeSettings(work_dir=str(tmp_path / "work"), model_dir=str(tmp_path)))
    service.load_model()
    assert not service.ready and "not a safetensors file" in service.model_error
    assert str(tmp_path / "model.safetensors") in service.model_error
    with pytest.raises(RequestError) as err:
        service.require_model()
    assert err.value.status == 503
    service.jobs.shutdown()


def test_stalled_upload_gets_408() -> None:
    """A client that stops sending mid-body is cut off after the upload time limit."""
    import asyncio

    from mmva.serve.limits import _bounded_chunks

    async def stalling() -> "AsyncIterator[bytes]":
        yield b"x" * 10
        await asyncio.sleep(30)
        yield b"never"

    async def consume() -> int:
        total = 0
        async for chunk in _bounded_chunks(stalling(), limit=1000, timeout_s=0.3, what="upload"):
            total += len(chunk)
        return total

    started = time.monotonic()
    with pytest.raises(RequestError) as err:
        asyncio.run(consume())
    assert err.value.status == 408 and time.monotonic() - started < 5
