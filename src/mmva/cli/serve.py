"""`mmva serve`: the HTTP service (SageMaker inference contract, jobs, web page)."""

from __future__ import annotations

import logging
from typing import Optional

import typer

from mmva.cli import app, check_face_detector, console, face_detector_option, pick_model, text_model_option


@app.command("serve")
def serve_cmd(
    host: str = typer.Option("127.0.0.1", help="Interface to bind (0.0.0.0 in a container)."),
    port: int = typer.Option(8080, help="TCP port (SageMaker uses 8080)."),
    model: Optional[str] = typer.Option(None, "--model", envvar="MMVA_MODEL",
                                        help="A `mmva train` checkpoint, a default-model folder or a model.tar.gz, "
                                             "local or s3:// (wins over --model-dir)."),
    text_model: str = text_model_option(),
    face_detector: Optional[str] = face_detector_option(),
    model_dir: Optional[str] = typer.Option(None, "--model-dir", envvar="MMVA_MODEL_DIR",
                                            help="Model folder (e.g. /opt/ml/model: a checkpoint or default model "
                                                 "unpacked from model.tar.gz); empty or unset: the shipped default model."),
    work_dir: Optional[str] = typer.Option(None, "--work-dir", envvar="MMVA_SERVE_DIR",
                                           help="Where jobs and uploads are kept (default: a folder in the system temp dir)."),
    workers: int = typer.Option(2, help="Analysis worker threads (media requests and jobs run on these)."),
    max_queue: int = typer.Option(8, help="Jobs that may wait for a worker before new ones get 429/503."),
    max_upload_mb: float = typer.Option(500.0, help="Largest upload or S3 object accepted (413 beyond)."),
    request_timeout: float = typer.Option(300.0, help="Seconds a synchronous POST /invocations may take (504 beyond)."),
    job_timeout: float = typer.Option(3600.0, help="Seconds one background job may take."),
    upload_timeout: float = typer.Option(600.0, help="Seconds a whole upload may take to arrive (408 beyond)."),
    keep_hours: float = typer.Option(168.0, help="Hours finished jobs (status and result) are kept."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="MMVA_API_KEY",
                                          help="Require this key in the X-API-Key header (or Bearer token)."),
    top_k: int = typer.Option(3, help="Emotions and sentiments listed per utterance."),
    asr_model: Optional[str] = typer.Option(None, help="Speech recognition model (default: Whisper tiny.en shipped offline)."),
    max_connections: int = typer.Option(256, help="Open connections; at this many the longest-idle one is "
                                                  "closed for a newcomer, or 503 when every one is at work."),
    header_timeout: float = typer.Option(10.0, help="Seconds a request's headers may take to arrive (408 beyond)."),
    keep_alive_timeout: float = typer.Option(5.0, help="Seconds an idle keep-alive connection stays open."),
    allowed_hosts: Optional[str] = typer.Option(None, "--allowed-hosts", envvar="MMVA_ALLOWED_HOSTS",
                                                help="Host header names served, comma-separated (*.example.com, "
                                                     "<ip> = any IP address, * = any); default: the names of --host."),
    live_sessions: int = typer.Option(4, help="Live analysis sessions (WS /stream) at once."),
    live_max_minutes: float = typer.Option(60.0, help="Minutes of audio one live session may send."),
    log_level: str = typer.Option("info", help="uvicorn log level."),
    log_format: str = typer.Option("json", help="json: one JSON object per line (request id, route, status, "
                                                "duration; job stages), for log collectors; text: for a terminal."),
) -> None:
    """Serve the analyzer over HTTP: GET /ping, POST /invocations, /jobs, and a web page at /."""
    import uvicorn

    from mmva.serve.app import ServeSettings, create_app, default_work_dir
    from mmva.serve.logs import configure_json_logging
    from mmva.serve.connections import guarded_protocol
    from mmva.serve.limits import Limits
    from mmva.serve.live import LiveLimits
    from mmva.serve.origin import parse_hosts

    limits = Limits(max_upload_mb=max_upload_mb, request_timeout_s=request_timeout, job_timeout_s=job_timeout,
                    upload_timeout_s=upload_timeout)
    settings = ServeSettings(model=pick_model(model, text_model), face_detector=check_face_detector(face_detector),
                             model_dir=model_dir, work_dir=work_dir or default_work_dir(), workers=workers,
                             max_queue=max_queue, api_key=api_key or None, top_k=top_k, asr_model=asr_model,
                             keep_hours=keep_hours, limits=limits, allowed_hosts=parse_hosts(allowed_hosts, host),
                             live=LiveLimits(max_sessions=live_sessions, max_seconds=live_max_minutes * 60))
    if log_format not in ("json", "text"):
        raise typer.BadParameter("--log-format must be json or text")
    if log_format == "json":
        configure_json_logging(log_level)
    from rich.markup import escape

    banner = (f"mmva serve on http://{host}:{port} (work dir {settings.work_dir}, {workers} workers"
              f"{', API key required' if settings.api_key else ''})")
    if log_format == "json":  # every stderr line stays a JSON object
        logging.getLogger("mmva.serve").info(banner, extra={"event": "start", "port": port})
    else:
        console.print(escape(banner))
    uvicorn.run(create_app(settings), host=host, port=port, limit_concurrency=max_connections,
                http=guarded_protocol(header_timeout, max_connections), timeout_keep_alive=keep_alive_timeout,
                log_level=log_level, timeout_graceful_shutdown=10,
                # Messages a little over the live limit still arrive, to be refused with a JSON reason.
                ws_max_size=2 * settings.live.max_message_bytes,
                # mmva logs each request itself (with its request id); JSON: uvicorn's own lines go to
                # the root logger's JSON handler instead of its default text handlers.
                access_log=False, log_config=None if log_format == "json" else uvicorn.config.LOGGING_CONFIG)
