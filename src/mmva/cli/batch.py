"""`mmva batch SOURCE --out DEST`: a whole collection, resumable, in-process or on Ray.

A thin layer over :func:`mmva.analyze.batch.analyze_collection`.
Exit codes: 0 every file analysed, 1 at least one failed, 2 bad usage (nothing found, no Ray).
"""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich.markup import escape

from mmva.cli import app, check_face_detector, console, face_detector_option, pick_model, text_model_option


@app.command("batch")
def batch_cmd(
    source: str = typer.Argument(..., help="A folder, a glob ('talks/*.mp4'), a CSV/JSONL manifest with a path "
                                 "column, or an s3:// prefix."),
    out: str = typer.Option(..., "--out", "-o", help="Folder or s3:// prefix for the outputs and the summary."),
    fmt: str = typer.Option("json", "--format", "-f", help="Comma-separated: json,csv,srt,vtt,html (or all)."),
    ray: Optional[str] = typer.Option(None, "--ray", envvar="RAY_ADDRESS",
                                      help="Run on this Ray cluster (auto, HOST:PORT, ray://HOST:10001, or local "
                                           "for a private one on this machine). Default: in this process."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1,
                                          help="Ray workers (default: the cluster's CPUs / --cpus-per-worker)."),
    cpus_per_worker: float = typer.Option(1.0, "--cpus-per-worker", help="CPUs each Ray worker reserves."),
    gpus_per_worker: float = typer.Option(0.0, "--gpus-per-worker", help="GPUs each Ray worker reserves."),
    retries: int = typer.Option(2, "--retries", min=0,
                                help="Extra attempts for a file after a failure that may pass (worker lost, "
                                     "network), counted across reruns."),
    retry_failed: bool = typer.Option(False, "--retry-failed",
                                      help="Also retry files an earlier run recorded as failed for good."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="As for mmva analyze (default: the shipped model)."),
    text_model: str = text_model_option(),
    asr_model: Optional[str] = typer.Option(None, "--asr-model", help="faster-whisper model folder or name."),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda or auto."),
    top_k: int = typer.Option(3, "--top-k", min=1, max=7, help="Emotions listed per utterance."),
    diarize: bool = typer.Option(True, "--diarize/--no-diarize", help="Name the speakers from their voices."),
    face_detector: Optional[str] = face_detector_option(),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only the final line and failures."),
) -> None:
    """Analyse every file of SOURCE into DEST: per-file outputs as mmva analyze, summary.csv/.parquet."""
    from mmva.analyze.batch import BatchOptions, analyze_collection
    from mmva.analyze.writers import OutputError, parse_formats

    try:
        formats = tuple(parse_formats(fmt))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--format") from None
    threads = max(1, int(cpus_per_worker)) if ray else None
    options = BatchOptions(formats=formats, model=pick_model(model, text_model), asr_model=asr_model, device=device, top_k=top_k,
                           diarize=diarize, retries=retries, retry_failed=retry_failed, threads=threads,
                           face_detector=check_face_detector(face_detector))

    reported: set[str] = set()

    def on_row(row: dict[str, Any]) -> None:
        reported.add(row["source"])
        if row["status"] != "ok":
            console.print(f"[red]failed[/] (attempt {row['attempts']}): {escape(row['source'])}: "
                          f"{escape(row['error'])}", soft_wrap=True)
        elif not quiet:
            console.print(f"[green]ok:[/] {escape(row['source'])}: {row['n_utterances']} utterance(s), "
                          f"dominant {row['dominant_emotion'] or '-'}", soft_wrap=True)

    try:
        report = analyze_collection(source, out, options, ray_address=ray or None, workers=workers,
                                    cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker, on_row=on_row)
    except (FileNotFoundError, OutputError, ImportError, ValueError) as exc:  # ValueError: e.g. mtcnn for a checkpoint
        console.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    for row in report.failed:
        if row["source"] not in reported:
            console.print(f"[red]failed[/] (earlier run, {row['attempts']} attempt(s)): {escape(row['source'])}: "
                          f"{escape(row['error'])}", soft_wrap=True)
    c = report.counts()
    console.print(f"{c['ok']} ok, {c['failed']} failed of {len(report.rows)} file(s); {c['analysed']} analysed "
                  f"now, {c['skipped']} done before; {report.executor}, {report.workers} worker(s), "
                  f"{report.seconds:.1f} s; summary: {escape(', '.join(report.summary_files))}",
                  style="red" if c["failed"] else None, highlight=False, soft_wrap=True)
    raise typer.Exit(1 if c["failed"] else 0)
