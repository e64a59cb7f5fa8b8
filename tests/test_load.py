"""A bounded load test on loopback: 50 concurrent text requests while video jobs run, twice.

Checks that nothing fails except deliberate backpressure (429/503), that every accepted job
finishes, and that the server's memory is bounded (peak RSS, and no growth from one round to the
next). Writes requests/s and p50/p95 latency to tests/artifacts/serve_load.json, or to
benchmarks/results/serve_load.json with MMVA_BENCH_RESULTS=1.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import pytest

from tests.media import talking_head
from tests.serve_server import SERVE_KEY, ServerProcess

# The suite keeps its figures as a test artifact; `MMVA_BENCH_RESULTS=1 pytest tests/test_load.py`
# refreshes the published ones in benchmarks/results/ (so a test run never dirties the checkout).
_ROOT = Path(__file__).resolve().parents[1]
RESULTS = (_ROOT / "benchmarks" / "results" / "serve_load.json" if os.environ.get("MMVA_BENCH_RESULTS") == "1"
           else _ROOT / "tests" / "artifacts" / "serve_load.json")
N_TEXT = 50
N_JOBS = 5  # 2 workers + a queue of 2: the fifth may be refused with 429
SENTENCES = ["I can't believe you did that!", "This is the best day of my life.", "Why would anyone say that?",
             "I'm scared of what comes next.", "Okay, fine, whatever you want.", "That is disgusting.",
             "I miss her so much.", "Wow, really? You got the job?", "Leave me alone!", "We'll see tomorrow."]


class RssSampler:
    """Samples the resident memory of a process (and its children) every 100 ms."""

    def __init__(self, pid: int) -> None:
        self.proc = psutil.Process(pid)
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        procs = [self.proc, *self.proc.children(recursive=True)]
        return sum(p.memory_info().rss for p in procs if p.is_running())

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self.rss())
            time.sleep(0.1)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture()
def server(serve_server: ServerProcess) -> ServerProcess:
    return serve_server  # 2 workers, a queue of 2, API key


async def _text(client: httpx.AsyncClient, i: int) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = await client.post("/invocations", json={"text": SENTENCES[i % len(SENTENCES)]})
    if r.status_code == 200:
        assert r.json()["utterances"][0]["emotions"], r.text
    return r.status_code, time.perf_counter() - t0


async def _job(client: httpx.AsyncClient, data: bytes) -> tuple[int, float, str | None]:
    """Submit a video job and poll it to the end: (submit status, turnaround s, final state)."""
    t0 = time.perf_counter()
    r = await client.post("/jobs", content=data, headers={"Content-Type": "video/mp4"})
    if r.status_code != 202:
        return r.status_code, time.perf_counter() - t0, None
    job_id = r.json()["id"]
    while True:
        state = (await client.get(f"/jobs/{job_id}")).json()["state"]
        if state in ("done", "failed", "cancelled"):
            return 202, time.perf_counter() - t0, state
        await asyncio.sleep(0.2)


async def _round(url: str, video: bytes) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=N_TEXT + N_JOBS + 5)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits, headers={"X-API-Key": SERVE_KEY}) as client:
        t0 = time.perf_counter()
        jobs = [asyncio.create_task(_job(client, video)) for _ in range(N_JOBS)]
        texts = await asyncio.gather(*[_text(client, i) for i in range(N_TEXT)])
        text_wall = time.perf_counter() - t0
        job_results = await asyncio.gather(*jobs)
    return {"texts": texts, "text_wall": text_wall, "jobs": job_results}


def _summary(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    lat = np.array([s for r in rounds for code, s in r["texts"] if code == 200])
    codes = [code for r in rounds for code, _ in r["texts"]]
    job_codes = [c for r in rounds for c, _, _ in r["jobs"]]
    turnaround = [t for r in rounds for c, t, state in r["jobs"] if state == "done"]
    return {
        "text_requests": len(codes), "text_ok": codes.count(200), "text_503": codes.count(503),
        "text_requests_per_s": [round(sum(c == 200 for c, _ in r["texts"]) / r["text_wall"], 2) for r in rounds],
        "text_latency_p50_s": round(float(np.percentile(lat, 50)), 4),
        "text_latency_p95_s": round(float(np.percentile(lat, 95)), 4),
        "text_latency_max_s": round(float(lat.max()), 4),
        "jobs_submitted": len(job_codes), "jobs_accepted": job_codes.count(202), "jobs_429": job_codes.count(429),
        "job_turnaround_p50_s": round(float(np.median(turnaround)), 3) if turnaround else None,
        "job_turnaround_max_s": round(max(turnaround), 3) if turnaround else None,
    }


def test_bounded_load(server: ServerProcess, tmp_path: Path) -> None:
    video = talking_head(tmp_path / "talk.mp4", "Well, I did not expect that. Now I am really happy about it.", size=64).read_bytes()
    with server.client(headers={"X-API-Key": SERVE_KEY}) as c:  # warm-up: first ASR/text calls load lazily initialised parts
        assert c.post("/invocations", json={"text": "warm up"}).status_code == 200
        assert c.post("/invocations", content=video, headers={"Content-Type": "video/mp4"}).status_code == 200
    with RssSampler(server.pid) as mem:
        baseline = mem.rss()
        rounds = [asyncio.run(_round(server.url, video))]
        after_first = mem.rss()
        rounds.append(asyncio.run(_round(server.url, video)))
        after_second = mem.rss()
    peak = max(mem.samples + [after_second])

    for r in rounds:
        assert {code for code, _ in r["texts"]} <= {200, 503}, r["texts"]
        assert {code for code, _, _ in r["jobs"]} <= {202, 429}, r["jobs"]
        assert all(state == "done" for code, _, state in r["jobs"] if code == 202), r["jobs"]
        assert sum(code == 202 for code, _, _ in r["jobs"]) >= 2  # the two workers took work
    figures = _summary(rounds)
    assert figures["text_ok"] >= 0.9 * figures["text_requests"], figures
    mb = 1024 * 1024
    figures.update({
        "rss_baseline_mb": round(baseline / mb, 1), "rss_after_round1_mb": round(after_first / mb, 1),
        "rss_after_round2_mb": round(after_second / mb, 1), "rss_peak_mb": round(peak / mb, 1),
    })
    assert peak < 4096 * mb, figures  # bounded: the model plus a few decoded clips
    assert after_second - after_first < 200 * mb, figures  # no growth from one round to the next
    with server.client(headers={"X-API-Key": SERVE_KEY}) as c:
        model = c.get("/info").json()["model"]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "what": f"{N_TEXT} concurrent text requests (POST /invocations) while {N_JOBS} video jobs (POST /jobs, "
                "~4 s talking-head clips) run; 2 rounds; server with 2 workers, queue 2",
        "machine": {"cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                    "python": platform.python_version()},
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": model,
        **figures,
    }, indent=2) + "\n")
