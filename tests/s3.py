"""Pytest plugin: a real moto server (S3, SageMaker, ...) in a subprocess on a loopback port.

Registered from ``tests/conftest.py`` (``pytest_plugins = ["tests.s3"]``). Fixtures:

- ``moto_server`` (session): the endpoint URL of a running ``moto.server`` process.
- ``aws_env`` (function): points the standard AWS environment (``AWS_ENDPOINT_URL``, test
  credentials, region) at that server for the test and for subprocesses it starts.
- ``s3_bucket`` (function): a fresh, empty bucket on that server, as ``"s3://name"``.

The clients speak the real S3 protocol over HTTP (boto3, s3fs), nothing is patched in-process.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import sys
import time
import urllib.request
import uuid
from typing import Iterator

import pytest

REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = getattr(proc, "log", None)
            out = ""
            if log is not None:
                log.seek(0)
                out = log.read().decode(errors="replace")
            raise RuntimeError(f"moto server exited with code {proc.returncode}:\n{out}")
        try:
            with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"moto server at {url} did not answer within {timeout:.0f} s")


def aws_environment(endpoint: str) -> dict[str, str]:
    """The environment variables that send every AWS client to ``endpoint`` with test credentials."""
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "AWS_REGION": REGION,
    }


@pytest.fixture(scope="session")
def moto_server() -> Iterator[str]:
    """Start ``python -m moto.server`` on a free loopback port; yield its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, **aws_environment(url)}
    # The server logs every request: it writes to a file, because an unread pipe fills up after a
    # few hundred requests and then blocks the server mid-response.
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, env=env,
    )
    proc.log = log  # type: ignore[attr-defined]
    try:
        _wait_ready(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@pytest.fixture()
def aws_env(moto_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the AWS environment at the moto server for this test; returns the endpoint URL."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL_S3",
                 "AWS_ENDPOINT_URL_SAGEMAKER"):
        monkeypatch.delenv(name, raising=False)
    for name, value in aws_environment(moto_server).items():
        monkeypatch.setenv(name, value)
    return moto_server


@pytest.fixture()
def s3_bucket(aws_env: str) -> str:
    """A new empty bucket on the moto server, as ``s3://name``."""
    import boto3

    name = f"mmva-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=aws_env, region_name=REGION).create_bucket(Bucket=name)
    return f"s3://{name}"
