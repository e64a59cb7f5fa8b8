"""A real `mmva serve` process on a free loopback port, for the serve, browser and load tests.

Also a pytest plugin (registered in conftest.py): ``serve_server`` is one server shared by the whole
session (API key ``SERVE_KEY``, 2 workers, a queue of 2, 2 MB uploads, 2 s for a request's headers,
2 live sessions of at most 30 s, S3 on the moto server), so
the model loads once for all serve tests rather than once per file.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.s3 import free_port

REPO = Path(__file__).resolve().parents[1]


class ServerProcess:
    """``mmva serve`` in a subprocess; ``start()`` waits until GET /ping answers 200."""

    def __init__(self, work_dir: Path, *args: str, env: dict[str, str] | None = None,
                 log_path: Path | None = None, container_entry: bool = False) -> None:
        self.container_entry = container_entry  # start through docker/serve, as the container does
        self.work_dir = Path(work_dir)
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.log_path = log_path or self.work_dir.parent / f"{self.work_dir.name}-server.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 180.0) -> "ServerProcess":
        self.port = free_port()
        env = dict(self.env)
        if self.container_entry:
            cmd = [str(REPO / "docker" / "serve")]
            env.update(SAGEMAKER_BIND_TO_PORT=str(self.port), MMVA_HOST="127.0.0.1")
        else:
            exe = shutil.which("mmva")
            cmd = [exe] if exe else [sys.executable, "-c", "from mmva.cli import app; app()"]
            cmd += ["serve", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--work-dir", str(self.work_dir), "--log-level", "warning", *self.args]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mmva serve exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/ping", timeout=2).status_code == 200:
                    return self
                key = self.args[self.args.index("--api-key") + 1] if "--api-key" in self.args else ""
                error = httpx.get(f"{self.url}/info", headers={"X-API-Key": key},
                                  timeout=2).json().get("model_error")
                if error:  # loading failed: no point waiting
                    self.stop()
                    raise RuntimeError(f"mmva serve could not load its model: {error}\n{self.log()}")
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mmva serve did not answer /ping within {timeout:.0f} s:\n{self.log()}")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown), then SIGKILL if it hangs. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        code, self.proc = self.proc.returncode, None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""

    def client(self, **kwargs: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 120.0), **kwargs)


def wait_job(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict:
    """Poll GET /jobs/{id} until the job has finished; returns its last status."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/jobs/{job_id}").json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {status['state']} after {timeout:.0f} s")


SERVE_KEY = "test-key-123"
SERVE_MAX_UPLOAD_MB = 2
SERVE_HEADER_TIMEOUT = 2  # seconds: short, so the slow-header tests wait little
SERVE_LIVE_SESSIONS = 2  # WS /stream sessions at once
SERVE_LIVE_MAX_SECONDS = 30  # of audio per live session
SERVE_ARGS = ("--api-key", SERVE_KEY, "--workers", "2", "--max-queue", "2",
              "--max-upload-mb", str(SERVE_MAX_UPLOAD_MB), "--request-timeout", "120",
              "--header-timeout", str(SERVE_HEADER_TIMEOUT), "--live-sessions", str(SERVE_LIVE_SESSIONS),
              "--live-max-minutes", str(SERVE_LIVE_MAX_SECONDS / 60))


@pytest.fixture(scope="session")
def _serve_session(tmp_path_factory: pytest.TempPathFactory, moto_server: str) -> Iterator[ServerProcess]:
    from tests.s3 import aws_environment

    srv = ServerProcess(tmp_path_factory.mktemp("serve") / "work", *SERVE_ARGS, env=aws_environment(moto_server))
    yield srv
    srv.stop()


@pytest.fixture()
def serve_server(_serve_session: ServerProcess) -> ServerProcess:
    """The shared server: started on first use, and again if a test stopped it."""
    if _serve_session.proc is None:
        _serve_session.start()
    return _serve_session
