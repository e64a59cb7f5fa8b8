"""`mmva train` and `mmva evaluate`: thin layers over :func:`mmva.train.fit.fit` and
:func:`mmva.train.evaluate.evaluate`."""

from __future__ import annotations

from typing import List, Optional

import typer
from rich.markup import escape

from mmva.cli import app, console


def _resolve_config(config: Optional[str], overrides: List[str], out: str, resume: bool):
    from mmva.config import load_config
    from mmva.io import storage

    saved = storage.join(out, "config.yaml")
    if config is None and resume and storage.exists(saved):
        if storage.is_remote(saved):  # load_config reads local files: fetch the saved copy first
            local, _ = storage.local_copy(saved, suffix=".yaml")
            return load_config(local, overrides)
        return load_config(saved, overrides)
    return load_config(config or "reference", overrides)


@app.command("train")
def train_cmd(
    data: str = typer.Option(..., "--data", help="Corpus: MELD folder, manifest folder or manifest file (local or s3://)."),
    config: Optional[str] = typer.Option(None, "--config", "-c",
                                         help="Preset name (reference, tiny, ...) or YAML file. Default: reference, "
                                              "or the run's saved config with --resume."),
    overrides: List[str] = typer.Option([], "--set", help="Override a config value: section.key=value (repeatable)."),
    out: str = typer.Option(..., "--out", "-o", help="Run folder: checkpoints, logs, metrics (local or s3://)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUT/checkpoints/last.ckpt."),
    train_split: str = typer.Option("train", help="Split to train on."),
    dev_split: str = typer.Option("dev", help="Split for validation, early stopping and best checkpoints."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Train a model on a corpus (checkpoints, TensorBoard logs and dev metrics in OUT)."""
    from mmva.model.checkpoint import CheckpointError
    from mmva.train.evaluate import metrics_table
    from mmva.train.fit import fit
    from mmva.train.task import NonFiniteLossError

    cfg = _resolve_config(config, overrides, out, resume)
    console.print(f"training [bold]{escape(cfg.name)}[/] on {escape(data)} -> {escape(out)}"
                  + (" (resuming)" if resume else ""))
    try:
        result = fit(cfg, data, out, resume=resume, train_split=train_split, dev_split=dev_split, progress=progress)
    except (CheckpointError, FileNotFoundError, NonFiniteLossError, ValueError) as exc:
        # CorpusError is a ValueError: a bad --data, CSV or manifest is reported, not a traceback.
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    from mmva.train.distributed import is_main_process

    if not is_main_process():
        return  # under torchrun every process trains; rank 0 reports
    m = result.metrics
    console.print(metrics_table({"split": dev_split, "evaluated": m["dev_utterances"], **m}))
    console.print(f"best epoch {m['best_epoch']} ({m['monitor']} = {m['best_score']}), "
                  f"{m['epochs_completed']} epoch(s), {m['train_clips_per_second']} training clips/s")
    if m["skipped_steps"]:
        console.print(f"[yellow]{len(m['skipped_steps'])} step(s) skipped for a NaN/inf loss[/]")
    for err in m["checkpoint_errors"]:
        console.print(f"[red]{escape(str(err))}[/]")
    console.print(escape(f"best checkpoint: {result.best_checkpoint}\nlast checkpoint: {result.last_checkpoint}"))


@app.command("evaluate")
def evaluate_cmd(
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", "--model",
                                             help="A .safetensors checkpoint written by mmva train (local or "
                                                  "s3://), or a folder or model.tar.gz holding one."),
    data: str = typer.Option(..., "--data", help="Corpus folder or manifest (local or s3://)."),
    split: str = typer.Option("dev", "--split", help="Split to evaluate."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Write the metrics JSON here."),
    drop: List[str] = typer.Option([], "--drop", help="Evaluate without this modality (text, video, audio); repeatable."),
    predictions: Optional[str] = typer.Option(None, "--predictions", help="Write per-utterance predictions (JSON lines)."),
    cache_dir: Optional[str] = typer.Option(None, "--cache", help="Feature cache to read frozen-encoder outputs from."),
    per_class: bool = typer.Option(False, "--per-class", help="Also print per-class scores."),
) -> None:
    """Score a checkpoint on a corpus split: a table on screen, all metrics as JSON."""
    from mmva.model.checkpoint import CheckpointError
    from mmva.train.evaluate import evaluate, metrics_table, per_class_table

    if not checkpoint:
        raise typer.BadParameter("give the model to score", param_hint="--model / --checkpoint")
    try:
        result = evaluate(checkpoint, data, split, out, drop=drop, predictions=predictions, cache_dir=cache_dir)
    except (CheckpointError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    console.print(metrics_table(result))
    if per_class:
        for task in ("emotion", "sentiment"):
            console.print(per_class_table(result[task], task))
    console.print(escape(result["skipped_summary"]))
    if out:
        console.print(f"metrics written to {escape(out)}")
