"""`GET /metrics` and the JSON logs of a real `mmva serve` process, after real requests.

Uses the session's shared server (tests/serve_server.py); counters are compared before and after, so
other tests' requests on the same server do not matter.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.media import talking_head
from tests.serve_server import SERVE_KEY, ServerProcess, wait_job


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of GET /metrics, keyed by (name, sorted labels)."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=")  # the Prometheus text format
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def log_records(server: ServerProcess) -> list[dict]:
    lines = server.log_path.read_text(errors="replace").splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return talking_head(tmp_path_factory.mktemp("media") / "metrics.mp4", "What a lovely surprise this is")


def test_metrics_move_with_real_requests(serve_server: ServerProcess, clip: Path) -> None:
    with serve_server.client() as anon:
        assert anon.get("/metrics").status_code == 401  # behind the key, like the rest of the API
    with serve_server.client(headers={"X-API-Key": SERVE_KEY}) as c:
        before = scrape(c)
        text = c.post("/invocations", json={"text": "I love it"}, headers={"X-Request-ID": "metrics-test-1"})
        assert text.status_code == 200 and text.headers["x-request-id"] == "metrics-test-1"
        assert c.get("/jobs/0123456789abcdef0123456789abcdef").status_code == 404
        submitted = c.post("/jobs", content=clip.read_bytes(), headers={"Content-Type": "video/mp4"})
        assert submitted.status_code == 202
        job_request_id = submitted.headers["x-request-id"]
        assert len(job_request_id) >= 8  # a fresh id when the client sends none
        assert wait_job(c, submitted.json()["id"])["state"] == "done"
        odd = 'x", "level": "error'  # an id that is not plain is replaced, never echoed or logged
        assert c.get("/ping", headers={"X-Request-ID": odd}).headers["x-request-id"] != odd
        after = scrape(c)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("mmva_http_requests_total", method="POST", route="/invocations", status="200") == 1
    assert moved("mmva_http_requests_total", method="POST", route="/jobs", status="202") == 1
    assert moved("mmva_http_requests_total", method="GET", route="/jobs/{job_id}", status="404") == 1
    assert moved("mmva_http_requests_total", method="GET", route="/jobs/{job_id}", status="200") >= 1
    assert moved("mmva_http_request_duration_seconds_count", method="POST", route="/invocations") == 1
    assert moved("mmva_http_request_duration_seconds_sum", method="POST", route="/invocations") > 0
    assert moved("mmva_analysis_seconds_per_media_second_count") == 1
    assert moved("mmva_media_seconds_total") > 1.0  # the clip is about two seconds long
    assert moved("mmva_jobs_finished_total", state="done") == 1
    assert value(after, "mmva_jobs_refused_total", kind="job") >= 0  # exported from the start
    assert value(after, "mmva_jobs_workers") == 2 and value(after, "mmva_model_ready") == 1
    assert ("mmva_jobs_queued", ()) in after and ("mmva_jobs_running", ()) in after
    assert value(after, "mmva_model_load_seconds") > 0
    assert value(after, "process_resident_memory_bytes") > 50e6

    deadline = time.monotonic() + 10  # the access line is written once the answer has gone out
    while time.monotonic() < deadline:
        records = log_records(serve_server)
        if any(r.get("request_id") == job_request_id and r.get("event") == "job_stage"
               and r.get("state") == "done" for r in records):
            break
        time.sleep(0.2)
    access = [r for r in records if r.get("event") == "request" and r.get("request_id") == "metrics-test-1"]
    assert len(access) == 1 and access[0]["route"] == "/invocations" and access[0]["status"] == 200
    assert access[0]["duration_ms"] > 0 and access[0]["level"] == "info" and access[0]["ts"].endswith("Z")
    stages = [r for r in records if r.get("event") == "job_stage" and r.get("request_id") == job_request_id]
    states = [r["state"] for r in stages]
    assert states[0] == "queued" and "running" in states and states[-1] == "done", states
    assert len({r["stage"] for r in stages}) >= 4  # queued, starting, the analysis' stages, done
