"""`mmva make-corpus` and `mmva check-data`: thin layers over :mod:`mmva.data`."""

from __future__ import annotations

import time

import typer
from rich.markup import escape

from mmva.cli import app, console


@app.command("make-corpus")
def make_corpus_cmd(
    out: str = typer.Argument(..., help="Folder to write the corpus into."),
    n_per_class: int = typer.Option(8, "--n-per-class", "-n", help="Clips per emotion and split."),
    seed: int = typer.Option(0, help="Random seed (same seed, same corpus)."),
    splits: str = typer.Option("train,dev", help="Comma-separated splits to write."),
    size: int = typer.Option(64, help="Frame side in pixels."),
    fps: float = typer.Option(8.0, help="Frames per second."),
    agreement: float = typer.Option(0.75, help="Chance that each modality shows the true class."),
) -> None:
    """Generate a small MELD-format corpus whose text, voice and face each carry the label."""
    from mmva.data.synth import make_corpus

    t0 = time.perf_counter()
    names = tuple(s.strip() for s in splits.split(",") if s.strip())
    root = make_corpus(out, n_per_class=n_per_class, seed=seed, splits=names, size=size, fps=fps,
                       agreement=agreement)
    console.print(f"wrote {n_per_class * 7} clips per split ({escape(', '.join(names))}) to {escape(str(root))} "
                  f"in {time.perf_counter() - t0:.1f} s")


@app.command("check-data")
def check_data_cmd(
    data: str = typer.Argument(..., help="Corpus folder (MELD layout or manifests) or a manifest file."),
    split: str = typer.Option("train", help="Split to read."),
    decode: bool = typer.Option(False, help="Also decode every clip (slow) to find unreadable media."),
) -> None:
    """Read a corpus split and report its size, labels and every problem found."""
    from mmva.data import SkipReport, load_corpus
    from mmva.io.media import MediaError, probe
    from mmva.labels import EMOTIONS

    corpus = load_corpus(data, split)
    report = SkipReport()
    report.add_problems(corpus.problems)
    if decode:
        for utt in corpus.utterances:
            if utt.path:
                try:
                    probe(utt.path)
                except MediaError as err:
                    report.add(err.path, err.reason)
    with_media = sum(1 for u in corpus.utterances if u.path)
    console.print(escape(f"{data} [{split}]: {len(corpus)} utterances, {with_media} with a media file"))
    counts = corpus.label_counts("emotion")
    console.print("emotions: " + ", ".join(f"{e} {c}" for e, c in zip(EMOTIONS, counts)))
    console.print(escape(report.summary()))
