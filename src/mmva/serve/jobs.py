"""Background jobs for long media: a bounded queue in front of a fixed pool of worker threads.

Each job lives in its own folder under the jobs root::

    jobs/<id>/job.json     status (state, stage, progress, times, error), rewritten atomically
    jobs/<id>/input.<ext>  the upload, deleted as soon as the job ends
    jobs/<id>/result.json  the analyze JSON, written atomically when the job succeeds

so a restarted server still serves every finished job and re-runs the ones that were interrupted.
Threads rather than processes: the model is loaded once and shared (processes would each hold a
copy). A thread cannot be killed, so cancellation and time limits are cooperative: the pipeline's
``progress(stage, fraction)`` callback raises once a job is cancelled or past its deadline.

Example::

    manager = JobManager("work/jobs", runner, workers=2, max_queue=8)
    job = manager.submit(JobInput(kind="file", path="upload.mp4", name="talk.mp4"))
    manager.get(job.id).status()["state"]  # "queued" -> "running" -> "done"
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import threading
import time
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from mmva.io.storage import write_text_atomic
from mmva.serve.limits import RequestError
from mmva.serve.logs import current_request_id

log = logging.getLogger("mmva.serve")

ProgressFn = Callable[[str, float], None]
FINISHED = ("done", "failed", "cancelled")
_ID = re.compile(r"^[0-9a-f]{32}$")
_SAVE_EVERY_S = 1.0  # progress is rewritten to disk at most this often (state changes always)


class QueueFull(Exception):
    """Every worker is busy and the queue is at its bound."""


class JobCancelled(Exception):
    """Raised inside a running job once it has been cancelled."""


class JobTimedOut(Exception):
    """Raised inside a running job once it is past its time limit."""


@dataclass(frozen=True)
class JobInput:
    """What a job analyzes: an uploaded file it owns (``path``) or an ``s3://`` URI."""

    kind: str  # "file" or "s3"
    name: str  # how the user knows it (upload file name or URI); used in messages
    path: str | None = None
    uri: str | None = None


Runner = Callable[[JobInput, ProgressFn], dict]


@dataclass
class Job:
    """One unit of work and its status."""

    id: str
    input: JobInput
    persist: bool = True
    state: str = "queued"  # queued -> running -> done | failed | cancelled
    stage: str = "queued"
    progress: float = 0.0
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    error: str | None = None
    error_status: int | None = None
    timeout_s: float | None = None
    restarts: int = 0  # times a server restart re-queued this job
    request_id: str | None = None  # the request that submitted it (in its log lines)
    result: dict | None = None  # kept in memory only for non-persisted (synchronous) jobs
    cancel_requested: threading.Event = field(default_factory=threading.Event, repr=False)
    ended: threading.Event = field(default_factory=threading.Event, repr=False)
    future: Future | None = field(default=None, repr=False)
    deadline: float | None = field(default=None, repr=False)  # time.monotonic() based
    saved_at: float = field(default=0.0, repr=False)

    def status(self) -> dict[str, Any]:
        """The public JSON status."""
        end = self.finished or time.time()
        return {
            "id": self.id, "state": self.state, "stage": self.stage,
            "progress": round(self.progress, 4), "source": self.input.name,
            "created_at": _iso(self.created), "started_at": _iso(self.started),
            "finished_at": _iso(self.finished),
            "elapsed_s": round(end - self.started, 3) if self.started else None,
            "error": self.error, "restarts": self.restarts,
            "cancel_requested": self.cancel_requested.is_set() and self.state not in FINISHED,
        }

    def record(self) -> dict[str, Any]:
        """What job.json stores (enough to rebuild the job after a restart)."""
        out = {k: getattr(self, k) for k in ("id", "state", "stage", "progress", "created", "started",
                                             "finished", "error", "error_status", "timeout_s", "restarts",
                                             "request_id")}
        out["input"] = asdict(self.input)
        return out


def _log_stage(job: Job) -> None:
    """One log line per job state or analysis stage (a JSON line under ``mmva serve``)."""
    log.info("job %s %s: %s %.0f%%", job.id[:8], job.state, job.stage, job.progress * 100,
             extra={"event": "job_stage", "job_id": job.id, "request_id": job.request_id,
                    "kind": "job" if job.persist else "sync", "source": job.input.name, "state": job.state,
                    "stage": job.stage, "progress": round(job.progress, 4), "error": job.error})


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds") if ts else None


class JobManager:
    """Runs jobs on ``workers`` threads with at most ``max_queue`` waiting; persists them under ``root``."""

    def __init__(self, root: str | Path, runner: Runner, *, workers: int = 2, max_queue: int = 8,
                 job_timeout_s: float = 3600.0, keep_hours: float = 168.0,
                 on_finish: Callable[[Job], None] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.runner = runner
        self.workers = max(1, workers)
        self.max_queue = max(0, max_queue)
        self.job_timeout_s = job_timeout_s
        self.keep_hours = keep_hours
        self.on_finish = on_finish  # called (lock held, keep it short) when a job ends: metrics
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="mmva-job")
        self._interrupted: list[Job] = []
        self._restore()

    # -- submitting and querying ------------------------------------------------------------------

    def submit(self, inp: JobInput, *, persist: bool = True, timeout_s: float | None = None) -> Job:
        """Queue a job; raises :class:`QueueFull` when workers and queue are all taken.

        A persisted job takes ownership of ``inp.path`` (moved into its folder).
        """
        job = Job(id=uuid.uuid4().hex, input=inp, persist=persist, request_id=current_request_id(),
                  timeout_s=timeout_s if timeout_s is not None else self.job_timeout_s)
        with self._lock:
            if self._active() >= self.workers + self.max_queue:
                raise QueueFull(f"all {self.workers} workers are busy and {self.max_queue} jobs are queued")
            if persist:
                job = self._adopt_input(job)
            self._jobs[job.id] = job
            self._save(job)
            job.future = self._pool.submit(self._run, job)
        _log_stage(job)
        return job

    def get(self, job_id: str) -> Job:
        """The job with this id; 404 when there is none (ids are checked before touching the disk)."""
        job = self._jobs.get(job_id) if _ID.match(job_id or "") else None
        if job is None or not job.persist:
            raise RequestError(404, f"no job with id {job_id!r}")
        return job

    def result_path(self, job_id: str) -> Path:
        """The result file of a finished job; 409 while it runs, or the job's own error."""
        job = self.get(job_id)
        if job.state == "done":
            return self.root / job.id / "result.json"
        if job.state in ("failed", "cancelled"):
            raise RequestError(409, f"job {job.id} {job.state}: {job.error or 'no result'}")
        raise RequestError(409, f"job {job.id} is {job.state} ({job.progress:.0%}, {job.stage}); "
                                f"poll GET /jobs/{job.id} until its state is 'done'")

    def list(self) -> list[Job]:
        """Persisted jobs, newest first."""
        with self._lock:
            jobs = [j for j in self._jobs.values() if j.persist]
        return sorted(jobs, key=lambda j: j.created, reverse=True)

    def cancel(self, job: Job) -> Job:
        """Cancel a queued job at once, or ask a running one to stop at its next progress report."""
        with self._lock:
            if job.state in FINISHED:
                return job
            job.cancel_requested.set()
            if job.state == "queued" and job.future is not None and job.future.cancel():
                self._finish(job, "cancelled", error="cancelled before it started")
            else:
                job.stage = "cancelling"
                self._save(job)
        return job

    def delete(self, job: Job) -> None:
        """Forget a finished job and delete its folder (status, result)."""
        with self._lock:
            if job.state not in FINISHED:
                raise RequestError(409, f"job {job.id} is {job.state}; cancel it first")
            self._jobs.pop(job.id, None)
        shutil.rmtree(self.root / job.id, ignore_errors=True)

    def resume(self) -> int:
        """Re-run the jobs a previous server left unfinished (call once the runner can work)."""
        with self._lock:
            jobs, self._interrupted = self._interrupted, []
            for job in jobs:
                job.future = self._pool.submit(self._run, job)
        if jobs:
            log.info("re-running %d job(s) interrupted by the last shutdown", len(jobs))
        return len(jobs)

    def stats(self) -> dict[str, int]:
        with self._lock:
            running = sum(j.state == "running" for j in self._jobs.values())
            queued = sum(j.state == "queued" for j in self._jobs.values())
        return {"workers": self.workers, "max_queue": self.max_queue, "running": running, "queued": queued}

    def shutdown(self, wait: bool = False) -> None:
        """Stop taking work; running jobs are asked to stop (they re-run after a restart)."""
        with self._lock:
            self._closing = True
            for job in self._jobs.values():
                if job.state in ("queued", "running"):
                    job.cancel_requested.set()
        self._pool.shutdown(wait=wait, cancel_futures=True)

    # -- running ----------------------------------------------------------------------------------

    def _active(self) -> int:
        return sum(j.state in ("queued", "running") for j in self._jobs.values())

    def _run(self, job: Job) -> None:
        with self._lock:
            if job.state != "queued" or (self._closing and job.persist):
                return
            if job.cancel_requested.is_set():
                self._finish(job, "cancelled", error="cancelled before it started")
                return
            job.state, job.stage, job.started = "running", "starting", time.time()
            job.deadline = time.monotonic() + job.timeout_s if job.timeout_s else None
            self._save(job)
        _log_stage(job)
        try:
            result = self.runner(job.input, lambda stage, frac: self._progress(job, stage, frac))
            if job.cancel_requested.is_set():
                raise JobCancelled()
            self._store_result(job, result)
            outcome: tuple[str, str | None, int | None] = ("done", None, None)
        except JobCancelled:
            if self._closing and job.persist:
                # Interrupted by a shutdown, not by the user: job.json still says "running" and
                # the input stays, so the next start re-runs the job.
                log.info("job %s interrupted by shutdown; it re-runs at the next start", job.id)
                job.ended.set()
                return
            outcome = ("cancelled", "cancelled while running", None)
        except JobTimedOut:
            outcome = ("failed", f"time limit of {job.timeout_s:g} s exceeded (at stage {job.stage!r})", 504)
        except RequestError as exc:
            outcome = ("failed", exc.message, exc.status)
        except Exception as exc:  # the job fails, the server goes on
            log.exception("job %s (%s) failed", job.id, job.input.name)
            outcome = ("failed", f"{type(exc).__name__}: {exc}", 500)
        with self._lock:
            self._finish(job, outcome[0], error=outcome[1], status=outcome[2])
        self._prune()

    def _progress(self, job: Job, stage: str, fraction: float) -> None:
        if job.cancel_requested.is_set():
            raise JobCancelled()
        if job.deadline is not None and time.monotonic() > job.deadline:
            raise JobTimedOut()
        changed = job.stage != str(stage)
        job.stage = str(stage)
        job.progress = min(1.0, max(0.0, float(fraction)))
        if changed:
            _log_stage(job)
        if time.monotonic() - job.saved_at >= _SAVE_EVERY_S:
            self._save(job)

    def _store_result(self, job: Job, result: dict) -> None:
        if job.persist:
            write_text_atomic(self.root / job.id / "result.json", json.dumps(result))
        else:
            job.result = result

    def _finish(self, job: Job, state: str, *, error: str | None = None, status: int | None = None) -> None:
        # Called with the lock held.
        job.state, job.finished, job.error, job.error_status = state, time.time(), error, status
        job.stage = state
        if state == "done":
            job.progress = 1.0
        if job.input.path:
            Path(job.input.path).unlink(missing_ok=True)  # uploads never outlive their job
        self._save(job)
        job.ended.set()
        _log_stage(job)
        if self.on_finish is not None:
            self.on_finish(job)
        if not job.persist:
            self._jobs.pop(job.id, None)

    # -- persistence ------------------------------------------------------------------------------

    def _adopt_input(self, job: Job) -> Job:
        if not job.input.path:
            return job
        folder = self.root / job.id
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"input{Path(job.input.path).suffix}"
        shutil.move(job.input.path, target)
        job.input = JobInput(kind=job.input.kind, name=job.input.name, path=str(target), uri=job.input.uri)
        return job

    def _save(self, job: Job) -> None:
        if not job.persist:
            return
        job.saved_at = time.monotonic()
        try:
            write_text_atomic(self.root / job.id / "job.json", json.dumps(job.record()))
        except OSError as exc:  # a full disk must not kill the worker; the job state stays in memory
            log.error("could not save the status of job %s: %s", job.id, exc)

    def _restore(self) -> None:
        """Reload finished jobs and re-queue interrupted ones after a restart."""
        for path in sorted(self.root.glob("*/job.json")):
            try:
                raw = json.loads(path.read_text())
                job = Job(input=JobInput(**raw.pop("input")), **raw)
            except (OSError, ValueError, TypeError) as exc:
                log.warning("ignoring unreadable job record %s: %s", path, exc)
                continue
            self._jobs[job.id] = job
            if job.state in FINISHED:
                job.ended.set()
            elif job.input.uri or (job.input.path and Path(job.input.path).exists()):
                job.state, job.stage, job.progress, job.started = "queued", "queued (after restart)", 0.0, None
                job.restarts += 1
                self._save(job)
                self._interrupted.append(job)  # started by resume()
            else:
                self._finish(job, "failed", error="the server restarted and the job's input was lost", status=500)
        self._prune()

    def _prune(self) -> None:
        """Forget finished jobs older than ``keep_hours`` (their folders are deleted)."""
        cutoff = time.time() - self.keep_hours * 3600
        with self._lock:
            old = [j for j in self._jobs.values() if j.state in FINISHED and (j.finished or 0) < cutoff]
            for job in old:
                self._jobs.pop(job.id, None)
        for job in old:
            shutil.rmtree(self.root / job.id, ignore_errors=True)
