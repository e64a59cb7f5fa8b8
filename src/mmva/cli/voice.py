"""`mmva speech-manifest`, `mmva crossval` and `mmva voice-train`: thin layers over
:mod:`mmva.train.crossval`."""

from __future__ import annotations

import json
from typing import List

import typer
from rich.markup import escape
from rich.table import Table

from mmva.cli import app, console


@app.command("speech-manifest")
def speech_manifest_cmd(
    root: str = typer.Argument(..., help="Folder of corpora, each with labels.csv (file, emotion, speaker)."),
    out: str = typer.Argument(..., help="Manifest to write (CSV: path, text, emotion, sentiment, speaker, corpus)."),
) -> None:
    """Write a generic manifest for acted-speech corpora (e.g. the speech-emotion TESS + SAVEE set)."""
    from mmva.train.crossval import write_speech_manifest

    try:
        info = write_speech_manifest(root, out)
    except FileNotFoundError as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    console.print(escape(f"{info['rows']} rows -> {out}; per corpus {info['per_corpus']}; "
                         f"per speaker {info['per_speaker']}"))
    for problem in info["problems"]:
        console.print(f"[yellow]skipped:[/] {escape(problem)}")


def cv_table(summary: dict) -> Table:
    """Per-fold and mean accuracy / macro-F1 as a Rich table."""
    table = Table("fold", "n", "accuracy", "macro-F1")
    for name, m in summary["per_fold"].items():
        table.add_row(escape(str(name)), str(m["n_test"]), f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}")
    table.add_row("[bold]mean[/]", "", f"{summary['accuracy_mean']:.3f} ± {summary['accuracy_std']:.3f}",
                  f"{summary['macro_f1_mean']:.3f} ± {summary['macro_f1_std']:.3f}")
    return table


@app.command("crossval")
def crossval_cmd(
    data: str = typer.Option(..., "--data", help="Manifest (CSV/JSONL) with a column to group by."),
    config: str = typer.Option("voice", "--config", "-c", help="Preset name or YAML file."),
    overrides: List[str] = typer.Option([], "--set", help="Override a config value: section.key=value."),
    group: str = typer.Option("speaker", "--group", help="Leave one value of this column out per fold "
                                                         "(speaker: LOSO; corpus: cross-corpus)."),
    normalization: str = typer.Option("speaker", "--normalization",
                                      help="Prosody normalisation: speaker, global or none."),
    only: List[str] = typer.Option([], "--only", help="Run only the folds holding out these values."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for fold runs and crossval.json."),
) -> None:
    """Leave-one-group-out cross-validation through `mmva train`'s fit() (per-fold and mean scores)."""
    from mmva.config import load_config
    from mmva.train.crossval import crossval, prosody_normalization

    try:
        cfg = load_config(config, overrides)
        res = crossval(data, cfg, out, group=group, only=only or None,
                       fold_config=prosody_normalization(normalization, group))
    except (ValueError, FileNotFoundError) as exc:  # bad manifest, unknown column, too few groups
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    console.print(cv_table(res.summary))
    extra = {k: res.summary.get(k) for k in ("temperature", "ece_before", "ece_after_held_out_temperature")}
    console.print(escape(json.dumps(extra)))
    console.print(f"details: {escape(out)}/crossval.json")


@app.command("voice-train")
def voice_train_cmd(
    data: str = typer.Option(..., "--data", help="Manifest of labelled speech (see `mmva speech-manifest`)."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for the head (voice_head*.safetensors, voice.json)."),
    config: str = typer.Option("voice", "--config", "-c", help="Preset name or YAML file."),
    overrides: List[str] = typer.Option([], "--set", help="Override a config value: section.key=value."),
    work: str = typer.Option("runs/voice", "--work", help="Folder for CV folds, runs and the feature cache."),
    cv: bool = typer.Option(True, "--cv/--no-cv", help="Run leave-one-speaker-out CV for the temperature "
                                                      "and the reported scores."),
) -> None:
    """Train the shipped voice head: CV (scores, temperature), then a final fit on every speaker."""
    from mmva.config import load_config
    from mmva.train.crossval import train_voice_head

    try:
        cfg = load_config(config, overrides)
        report = train_voice_head(data, out, cfg, work_dir=work, cross_validate=cv,
                                  progress=lambda line: console.print(escape(str(line))))
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    for variant, summary in report.get("crossval", {}).items():
        console.print(f"[bold]{escape(str(variant))}[/]")
        console.print(cv_table(summary))
    console.print(f"voice head written to {escape(out)}")


