"""The HTTP service: SageMaker's inference contract, background jobs and a web page.

Routes (each a few lines over a library function):

- ``GET /ping``: 200 once the model is loaded, 503 before (SageMaker's health check).
- ``POST /invocations``: a video/audio upload (raw body with a media Content-Type, or multipart), JSON
  ``{"s3_uri": "s3://..."}`` or ``{"video_path": "s3://..."}`` (the original client's request), or JSON
  ``{"text": "..." | [...]}``; answers the analyze JSON (``mmva.analyze.pipeline.analyze``).
- ``POST /jobs`` (same media inputs) -> 202 ``{"id", ...}``; ``GET /jobs/{id}``; ``GET /jobs/{id}/result``;
  ``DELETE /jobs/{id}`` or ``POST /jobs/{id}/cancel``; ``GET /jobs``.
- ``GET /`` the web page (static files served by the app, nothing from a CDN), ``GET /info``.
- ``WS /stream``: live analysis of audio (and JPEG frames) sent as it is captured (:mod:`mmva.serve.live`).
- ``GET /metrics``: Prometheus metrics (:mod:`mmva.serve.metrics`); every answer carries ``X-Request-ID``.

Example::

    app = create_app(ServeSettings(work_dir="/tmp/mmva-serve", workers=2))
    uvicorn.run(app, host="127.0.0.1", port=8080)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, TypeVar

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmva import __version__
from mmva.serve.auth import check_api_key
from mmva.serve.jobs import (FINISHED, Job, JobCancelled, JobInput, JobManager, JobTimedOut, ProgressFn,
                             QueueFull)
from mmva.serve.limits import (Limits, RequestError, media_type, new_upload_path, read_json,
                               save_multipart_upload, save_raw_upload)
from mmva.serve.live import LiveLimits, LiveSessions, add_stream_route
from mmva.serve.metrics import RequestObserver, ServiceMetrics
from mmva.serve.origin import LOOPBACK_HOSTS, OriginGuard

log = logging.getLogger("mmva.serve")
T = TypeVar("T")
MAX_TEXTS = 512  # texts in one request
# What a text request may make the model read: more than any model keeps (the default model reads 96
# tokens of a text and one previous turn), so the cut never changes an answer, only bounds its cost.
MAX_TEXT_CHARS = 10_000  # the first characters of each text, the last of each context turn
MAX_CONTEXT_TURNS = 8  # the most recent turns of a context
TEXT_CHUNK = 32  # texts analysed between checks that the client is still there
DISCONNECT_POLL_S = 0.25


def default_work_dir() -> str:
    return os.environ.get("MMVA_SERVE_DIR") or str(Path(tempfile.gettempdir()) / "mmva-serve")


@dataclass(frozen=True)
class ServeSettings:
    """How the service runs. ``workers`` are analysis threads (one uvicorn process holds the model)."""

    model_dir: str | None = None  # None or an empty folder: the default model shipped with mmva
    # A `mmva train` checkpoint, default-model folder or model.tar.gz (local or s3://); wins over model_dir.
    model: str | None = None
    work_dir: str = field(default_factory=default_work_dir)  # jobs/ and uploads/ live here
    workers: int = 2
    max_queue: int = 8  # jobs waiting beyond the busy workers before 429/503
    api_key: str | None = None
    top_k: int = 3
    asr_model: str | None = None
    keep_hours: float = 168.0  # finished jobs are kept this long
    limits: Limits = field(default_factory=Limits)
    # Host header names served ("*": any); the bound host names (see origin.allowed_hosts_for).
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    live: LiveLimits = field(default_factory=LiveLimits)  # WS /stream sessions
    face_detector: str | None = None  # auto, mtcnn or haar (the default model's face finder; None: auto)

    @property
    def jobs_dir(self) -> Path:
        return Path(self.work_dir) / "jobs"

    @property
    def upload_dir(self) -> Path:
        return Path(self.work_dir) / "uploads"


class Service:
    """What the routes share: settings, the loaded model, the job manager."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.model: Any = None
        self.model_path: str | None = None
        self.model_error: str | None = None
        self.model_info: dict[str, Any] = {}
        self.text_limiter = anyio.CapacityLimiter(settings.limits.text_concurrency)
        self.text_waiting = 0
        self.text_running = 0  # text requests the model is working on (threads, not awaiting tasks)
        self.text_stopped = 0  # text requests stopped because their client left
        self._text_lock = threading.Lock()
        _clear_folder(settings.upload_dir)  # uploads left by a crash belong to no request
        self.live = LiveSessions(settings.live)
        self.metrics = ServiceMetrics()
        self.jobs = JobManager(settings.jobs_dir, self.run_media, workers=settings.workers,
                               max_queue=settings.max_queue, job_timeout_s=settings.limits.job_timeout_s,
                               keep_hours=settings.keep_hours,
                               on_finish=lambda job: self.metrics.finished.labels(state=job.state).inc())
        self.metrics.watch(self.live_figures)

    def live_figures(self) -> dict[str, float]:
        """The gauges /metrics reads at each scrape."""
        jobs = self.jobs.stats()
        return {"mmva_jobs_queued": jobs["queued"], "mmva_jobs_running": jobs["running"],
                "mmva_jobs_workers": jobs["workers"], "mmva_text_requests_running": self.text_running,
                "mmva_model_ready": float(self.ready)}

    # -- model ------------------------------------------------------------------------------------

    def load_model(self) -> None:
        """Load the model once (in a thread at start-up, so /ping can say 503 meanwhile)."""
        started = time.perf_counter()
        try:
            from mmva.model.predictor import load_predictor

            self.model_path = self.settings.model or _model_path(self.settings.model_dir)
            self.model = load_predictor(self.model_path, face_detector=self.settings.face_detector)
            self.model_info = dict(self.model.describe())
            seconds = time.perf_counter() - started
            self.metrics.model_load.set(seconds)
            log.info("model loaded from %s in %.1f s", self.model_path or "the package", seconds,
                     extra={"event": "model_loaded", "seconds": round(seconds, 3), "model": self.model_info.get("name")})
            self.jobs.resume()
        except Exception as exc:  # /ping reports it; the server stays up to say why
            self.model_error = f"{type(exc).__name__}: {exc}"
            log.exception("could not load the model")

    @property
    def ready(self) -> bool:
        return self.model is not None

    def require_model(self) -> None:
        if not self.ready:
            why = self.model_error or "the model is still loading"
            raise RequestError(503, f"not ready: {why}", {"Retry-After": "5"})

    # -- work -------------------------------------------------------------------------------------

    def run_media(self, inp: JobInput, progress: ProgressFn) -> dict:
        """Analyze an uploaded file or an S3 object (runs on a job worker thread)."""
        from mmva.analyze.pipeline import analyze
        from mmva.io.media import MediaError

        path, fetched = inp.path, False
        try:
            if inp.kind == "s3":
                progress("downloading", 0.0)
                path, fetched = fetch_s3(inp.uri or "", self.settings.upload_dir, self.settings.limits), True
            started = time.perf_counter()
            timeline = analyze(str(path), progress=progress, top_k=self.settings.top_k,
                               asr_model=self.settings.asr_model, model=self.model)
            self.metrics.analysed(time.perf_counter() - started, timeline.duration or 0.0)
        except MediaError as exc:  # name the user's file, never the server's temp path
            raise RequestError(422, f"{inp.name}: {exc.reason}") from exc
        except (RequestError, JobCancelled, JobTimedOut):
            raise
        except Exception as exc:  # the message may name server files: logged, not answered
            ref = uuid.uuid4().hex[:12]
            log.exception("analysis of %s failed (reference %s)", inp.name, ref)
            raise RequestError(500, f"{inp.name}: analysis failed: internal error {type(exc).__name__} "
                                    f"(reference {ref}; the server log has the details)") from exc
        finally:
            if fetched and path:
                Path(path).unlink(missing_ok=True)
        out = timeline.to_dict()
        out["source"] = inp.name
        return out

    def analyze_texts(self, body: dict[str, Any], stop: threading.Event | None = None) -> dict[str, Any]:
        """Answer a ``{"text": ...}`` request through :func:`mmva.model.predictor.analyze_text`.

        The reply has the analyze JSON's shape (a timeline of text-only utterances, no times). The
        texts go to the model :data:`TEXT_CHUNK` at a time; once ``stop`` is set (the client left),
        no further chunk starts.
        """
        from mmva.analyze.timeline import Timeline, utterance_from_dict
        from mmva.model.predictor import analyze_text

        texts, contexts, top_k = _text_request(body, self.settings.top_k)
        results: list[dict[str, Any]] = []
        with self._text_lock:
            self.text_running += 1
        try:
            for s in range(0, len(texts), TEXT_CHUNK):
                if stop is not None and stop.is_set():
                    raise RequestError(499, "the client closed the connection; the work was stopped")
                chunk = [t[:MAX_TEXT_CHARS] for t in texts[s: s + TEXT_CHUNK]]
                results += analyze_text(chunk, top_k=top_k, model=self.model,
                                        contexts=contexts[s: s + TEXT_CHUNK] if contexts else None)
        finally:
            with self._text_lock:
                self.text_running -= 1
        for text, r in zip(texts, results):
            r["text"] = text  # the reply shows the whole text the client sent
        timeline = Timeline(source="text", utterances=[utterance_from_dict(r) for r in results],
                            segmentation="text", model=dict(self.model_info))
        return timeline.to_dict()

    async def receive_media(self, request: Request) -> JobInput:
        """Turn a request into a job input: an upload streamed to disk, or a checked S3 URI."""
        mtype = media_type(request.headers.get("content-type"))
        limits = self.settings.limits
        if mtype == "application/json":
            body = await read_json(request, limits)
            uri = _s3_uri_of(body)
            await anyio.to_thread.run_sync(check_s3_object, uri, limits)
            return JobInput(kind="s3", name=uri, uri=uri)
        if mtype == "multipart/form-data":
            path, name = await save_multipart_upload(request, self.settings.upload_dir, limits)
        else:
            path, name = await save_raw_upload(request, self.settings.upload_dir, limits)
        return JobInput(kind="file", name=name, path=str(path))

    async def run_sync(self, inp: JobInput) -> dict:
        """Run a media request through the worker pool and wait for it, within the request time limit."""
        timeout = self.settings.limits.request_timeout_s
        try:
            job = self.jobs.submit(inp, persist=False, timeout_s=timeout)
        except QueueFull as exc:
            _discard(inp)
            self.metrics.refused.labels(kind="sync").inc()
            raise RequestError(503, f"server busy: {exc}; retry later", {"Retry-After": "10"}) from exc
        try:
            await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job.future)), timeout)
        except asyncio.TimeoutError as exc:
            self.jobs.cancel(job)
            raise RequestError(504, _too_long(inp.name, timeout)) from exc
        except BaseException:  # the client went away: stop the work
            self.jobs.cancel(job)
            raise
        if job.state != "done":
            if job.error_status == 504:  # the job's own time limit (the same one) fired first
                raise RequestError(504, f"{_too_long(inp.name, timeout)} ({job.error})")
            raise RequestError(job.error_status or 500, job.error or f"job {job.state}")
        return job.result or {}

    def client_left(self, stop: threading.Event) -> None:
        stop.set()
        with self._text_lock:
            self.text_stopped += 1

    async def text_request(self, body: dict[str, Any], stop: threading.Event | None = None) -> dict:
        limits = self.settings.limits
        stop = stop or threading.Event()
        if self.text_waiting >= limits.text_concurrency + limits.text_queue:
            self.metrics.refused.labels(kind="text").inc()
            raise RequestError(503, "server busy with text requests; retry later", {"Retry-After": "1"})
        self.text_waiting += 1
        try:
            with anyio.fail_after(limits.request_timeout_s):
                # abandon_on_cancel: answer 504 at the deadline even though a thread cannot be stopped
                # at once; ``stop`` ends its work at the next chunk.
                return await anyio.to_thread.run_sync(self.analyze_texts, body, stop, limiter=self.text_limiter,
                                                      abandon_on_cancel=True)
        except TimeoutError as exc:
            raise RequestError(504, f"text request not answered within {limits.request_timeout_s:g} s") from exc
        finally:
            stop.set()  # answered, timed out or cancelled: an abandoned thread starts no new chunk
            self.text_waiting -= 1


# -- helpers --------------------------------------------------------------------------------------


def _model_path(model_dir: str | None) -> str | None:
    """The model folder to load (a default-model folder, or a checkpoint with its ``mmva-model.json``
    as unpacked from ``model.tar.gz``), or None for the model shipped with mmva.

    SageMaker always mounts /opt/ml/model; an empty one means "use the shipped default model".
    """
    if not model_dir:
        return None
    folder = Path(model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    if not any(folder.iterdir()):
        return None
    return str(folder)


def _clear_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for item in folder.iterdir():
        if item.is_file():
            item.unlink(missing_ok=True)


def _discard(inp: JobInput) -> None:
    if inp.path:
        Path(inp.path).unlink(missing_ok=True)


def _text_request(body: dict[str, Any], default_top_k: int) -> tuple[list[str], list[list[str]] | None, int]:
    texts = body.get("text")
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
        raise RequestError(400, '"text" must be a string or a non-empty list of strings')
    if len(texts) > MAX_TEXTS:
        raise RequestError(413, f"{len(texts)} texts in one request; the limit is {MAX_TEXTS}")
    contexts = body.get("context", body.get("contexts"))
    if contexts is not None:
        if isinstance(contexts, list) and contexts and all(isinstance(c, str) for c in contexts):
            contexts = [_kept_context(contexts)] * len(texts)  # one shared dialogue history, checked once
        elif (isinstance(contexts, list) and len(contexts) == len(texts)
                and all(isinstance(c, list) and all(isinstance(s, str) for s in c) for c in contexts)):
            contexts = [_kept_context(c) for c in contexts]
        else:
            raise RequestError(400, '"context" must be a list of previous utterances (strings), '
                                    "or one such list per text")
    top_k = body.get("top_k", default_top_k)
    if not isinstance(top_k, int) or not 1 <= top_k <= 7:
        raise RequestError(400, '"top_k" must be an integer from 1 to 7')
    return texts, contexts, top_k


def _kept_context(turns: list[str]) -> list[str]:
    """The part of a context any model reads: its last turns, each cut to its last characters."""
    return [t[-MAX_TEXT_CHARS:] for t in turns[-MAX_CONTEXT_TURNS:]]


async def _while_connected(request: Request, work: Awaitable[T], on_leave: Callable[[], None]) -> T:
    """Await ``work``; if the client disconnects first, call ``on_leave`` and cancel it (499).

    Neither uvicorn nor Starlette stops a handler whose client has gone, so a request that is
    abandoned halfway would otherwise keep its worker busy to the end.
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                on_leave()
                log.info("%s %s: the client left; its work was stopped", request.method, request.url.path)
                raise RequestError(499, "the client closed the connection; the work was stopped")
    finally:
        if not task.done():
            task.cancel()


def _s3_uri_of(body: Any) -> str:
    if not isinstance(body, dict):
        raise RequestError(400, 'expected a JSON object such as {"s3_uri": "s3://bucket/key"} or {"text": "..."}')
    uri = body.get("s3_uri", body.get("video_path"))
    if uri is None:
        raise RequestError(400, 'JSON requests need "s3_uri" (or "video_path") with an s3:// URI, or "text"')
    if not isinstance(uri, str) or not uri.startswith("s3://") or len(uri.split("/", 3)) < 4 \
            or not uri.split("/", 3)[3]:
        # Never a server-side path: a request must not make the server read its own files.
        raise RequestError(400, f"{uri!r} is not an s3://bucket/key URI; local paths are never read, "
                                "upload the file instead")
    return uri


def check_s3_object(uri: str, limits: Limits) -> int:
    """Size of an S3 object; 404 when missing, 413 when over the upload limit, 502 when S3 fails."""
    from mmva.io.storage import filesystem

    try:
        fs, key = filesystem(uri)
        size = int(fs.info(key).get("size") or 0)
    except FileNotFoundError as exc:
        raise RequestError(404, f"{uri}: no such object") from exc
    except PermissionError as exc:
        raise RequestError(403, f"{uri}: access denied ({exc})") from exc
    except Exception as exc:  # endpoint down, bad credentials, ...
        raise RequestError(502, f"{uri}: could not reach S3 ({type(exc).__name__}: {exc})") from exc
    if size > limits.max_upload_bytes:
        raise RequestError(413, f"{uri} is {size} bytes, over the limit of {limits.max_upload_bytes} bytes")
    return size


def fetch_s3(uri: str, folder: Path, limits: Limits) -> Path:
    """Download an S3 object (checked for size first) to a temp file in ``folder``."""
    from mmva.io.storage import filesystem
    from mmva.serve.limits import media_suffix

    check_s3_object(uri, limits)
    fs, key = filesystem(uri)
    target = new_upload_path(folder, media_suffix("", uri))
    try:
        fs.get_file(key, str(target))
    except BaseException as exc:
        target.unlink(missing_ok=True)
        if isinstance(exc, FileNotFoundError):
            raise RequestError(404, f"{uri}: no such object") from exc
        raise
    return target


# -- the app --------------------------------------------------------------------------------------


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return _error(exc.status, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(400, f"invalid request: {exc.errors()}")

    @app.exception_handler(Exception)
    async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
        # The message and traceback can name server files: they go to the log, the client gets a
        # reference to find them there.
        ref = uuid.uuid4().hex[:12]
        log.exception("unhandled error on %s %s (reference %s)", request.method, request.url.path, ref)
        # Starlette re-raises the error after this answer and uvicorn then closes the connection: say so,
        # or a keep-alive client sends its next request into the closing socket (connection reset).
        return _error(500, f"internal error (reference {ref}; the server log has the details)",
                      {"Connection": "close"})


def create_app(settings: ServeSettings | None = None) -> FastAPI:
    """Build the FastAPI app; the model starts loading when the app starts."""
    settings = settings or ServeSettings()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=service.load_model, name="mmva-model-load", daemon=True).start()
        yield
        service.jobs.shutdown(wait=False)

    # /docs and /openapi.json are added by _add_routes, behind the API key like the rest of the API.
    app = FastAPI(title="mmva", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None,
                  description="Per-utterance emotion and sentiment of videos (SageMaker inference contract).")
    app.state.service = service
    app.add_middleware(OriginGuard, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(RequestObserver, metrics=service.metrics)  # outermost: sees refusals too
    _install_error_handlers(app)

    def require_key(request: Request) -> None:
        check_api_key(request.headers, settings.api_key)

    authed = [Depends(require_key)]
    _add_routes(app, service, authed)
    add_stream_route(app, service)
    static = resources.files("mmva") / "serve" / "static"
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
    return app


def _add_routes(app: FastAPI, service: Service, authed: list[Any]) -> None:
    settings = service.settings

    @app.get("/ping")
    def ping() -> JSONResponse:  # open to anyone: the reason a load failed (it names files) is in /info
        needs_key = {"auth_required": bool(settings.api_key)}  # for the web page, which may not have the key
        if not service.ready:
            why = "the model could not be loaded (GET /info or the server log says why)" if service.model_error \
                else "the model is still loading"
            return JSONResponse({"error": f"not ready: {why}", "status": 503, **needs_key}, status_code=503)
        return JSONResponse({"status": "ok", **needs_key})

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(str(resources.files("mmva") / "serve" / "static" / "index.html"))

    @app.get("/info", dependencies=authed)
    def info() -> dict[str, Any]:
        return {"version": __version__, "ready": service.ready, "model_error": service.model_error,
                "model": service.model_info.get("name"),
                "auth_required": bool(settings.api_key), "limits": asdict(settings.limits),
                "allowed_hosts": list(settings.allowed_hosts), "jobs": service.jobs.stats(),
                "text": {"running": service.text_running, "waiting": service.text_waiting,
                         "stopped_client_gone": service.text_stopped},
                "live": service.live.stats()}

    @app.get("/metrics", include_in_schema=False, dependencies=authed)
    def metrics() -> Response:  # Prometheus scrapes this (with the key as a bearer token when set)
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.get("/openapi.json", include_in_schema=False, dependencies=authed)
    def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/docs", include_in_schema=False, dependencies=authed)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="mmva API")

    @app.get("/execution-parameters", include_in_schema=False, dependencies=authed)
    def execution_parameters() -> dict[str, Any]:  # SageMaker batch transform asks for these
        return {"MaxConcurrentTransforms": settings.workers, "BatchStrategy": "SINGLE_RECORD",
                "MaxPayloadInMB": max(1, int(settings.limits.max_upload_mb))}

    @app.post("/invocations", dependencies=authed)
    async def invocations(request: Request) -> Response:
        service.require_model()
        fmt = _accepted_format(request.headers.get("accept"))
        if media_type(request.headers.get("content-type")) == "application/json":
            body = await read_json(request, settings.limits)
            if isinstance(body, dict) and "text" in body:
                stop = threading.Event()
                return _render(await _while_connected(request, service.text_request(body, stop),
                                                      lambda: service.client_left(stop)), fmt)
            uri = _s3_uri_of(body)
            await anyio.to_thread.run_sync(check_s3_object, uri, settings.limits)
            inp = JobInput(kind="s3", name=uri, uri=uri)
        else:
            inp = await service.receive_media(request)
        # Cancelling run_sync cancels its job (the worker stops at the analysis' next progress report).
        return _render(await _while_connected(request, service.run_sync(inp), lambda: None), fmt)

    @app.post("/jobs", status_code=202, dependencies=authed)
    async def submit_job(request: Request) -> JSONResponse:
        service.require_model()
        inp = await service.receive_media(request)
        try:
            job = service.jobs.submit(inp)
        except QueueFull as exc:
            _discard(inp)
            service.metrics.refused.labels(kind="job").inc()
            raise RequestError(429, f"too many jobs: {exc}; retry later", {"Retry-After": "30"}) from exc
        return JSONResponse(_job_links(job), status_code=202, headers={"Location": f"/jobs/{job.id}"})

    @app.get("/jobs", dependencies=authed)
    def list_jobs() -> dict[str, Any]:
        return {"jobs": [_job_links(j) for j in service.jobs.list()], **service.jobs.stats()}

    @app.get("/jobs/{job_id}", dependencies=authed)
    def job_status(job_id: str) -> dict[str, Any]:
        return _job_links(service.jobs.get(job_id))

    @app.get("/jobs/{job_id}/result", dependencies=authed)
    def job_result(job_id: str, format: str = "json") -> Response:
        return _result_response(service.jobs.result_path(job_id), format, job_id)

    @app.post("/jobs/{job_id}/cancel", status_code=202, dependencies=authed)
    def cancel_job(job_id: str) -> dict[str, Any]:
        return _job_links(service.jobs.cancel(service.jobs.get(job_id)))

    @app.delete("/jobs/{job_id}", status_code=202, dependencies=authed)
    def delete_job(job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; delete a finished one (status and result)."""
        job = service.jobs.get(job_id)
        if job.state in FINISHED:
            service.jobs.delete(job)
            return {**job.status(), "deleted": True}
        return _job_links(service.jobs.cancel(job))


def _job_links(job: Job) -> dict[str, Any]:
    return {**job.status(), "status_url": f"/jobs/{job.id}", "result_url": f"/jobs/{job.id}/result"}


_FORMATS = {"json": "application/json", "srt": "application/x-subrip", "vtt": "text/vtt",
            "csv": "text/csv", "html": "text/html"}


def _accepted_format(accept: str | None) -> str:
    """The output format a client asks for in its Accept header (JSON unless it names another)."""
    for item in (accept or "").split(","):
        mtype = item.split(";")[0].strip().lower()
        for fmt, known in _FORMATS.items():
            if mtype == known:
                return fmt
    return "json"


def _render(result: dict[str, Any], fmt: str, filename: str | None = None) -> Response:
    """An analyze result as JSON, or converted by the analyze writers (srt, vtt, csv, html)."""
    if fmt == "json":
        return JSONResponse(result)
    from mmva.analyze.timeline import Timeline
    from mmva.analyze.writers import get_writer

    text = get_writer(fmt).to_string(Timeline.from_dict(result))
    headers = {"Content-Disposition": f'attachment; filename="{filename}.{fmt}"'} if filename else None
    return Response(text, media_type=_FORMATS[fmt], headers=headers)


def _result_response(path: Path, fmt: str, job_id: str) -> Response:
    """A job's stored result, streamed as JSON or converted to another format."""
    fmt = fmt.lower()
    if fmt not in _FORMATS:
        raise RequestError(400, f"unknown format {fmt!r}; choose one of {', '.join(_FORMATS)}")
    if fmt == "json":
        return FileResponse(str(path), media_type="application/json")
    return _render(json.loads(path.read_text()), fmt, filename=job_id)


def _too_long(name: str, timeout: float) -> str:
    """The 504 message of a synchronous request that ran past its time limit."""
    return f"{name}: not finished within {timeout:g} s; submit long media to POST /jobs and poll GET /jobs/{{id}}"
