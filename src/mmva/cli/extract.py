"""`mmva extract`: compute frozen-encoder features of a corpus once, into a feature cache."""

from __future__ import annotations

from typing import Optional

import typer
from rich.markup import escape

from mmva.cli import app, console


@app.command("extract")
def extract_cmd(
    data: str = typer.Option(..., "--data", help="Corpus folder, manifest file, or s3:// URI."),
    split: list[str] = typer.Option(["train"], "--split", help="Split(s) to extract (repeat for several)."),
    encoders: str = typer.Option("minilm,face-expression", "--encoders",
                                 help="Comma-separated encoder names (see `mmva encoders`)."),
    cache: str = typer.Option(..., "--cache", help="Feature cache folder or s3:// prefix."),
    workers: int = typer.Option(2, "--workers", help="Threads decoding and preparing clips."),
    batch_size: int = typer.Option(32, "--batch-size", help="Clips per encoder forward pass."),
    config: str = typer.Option("reference", "--config",
                               help="Config preset or YAML whose data settings (frames, sample rate, "
                                    "context turns) and encoder options to use; match the one you train with."),
    override: Optional[list[str]] = typer.Option(None, "--set", help="Config override section.key=value."),
    torch_threads: Optional[int] = typer.Option(None, "--torch-threads",
                                                help="Torch intra-op threads for the forward passes "
                                                     "(1 is fastest for small encoders on a busy machine)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Compute encoder features for a corpus into a cache (resumable; a rerun computes only what is missing)."""
    from mmva.config import load_config
    from mmva.data.corpus import load_corpus
    from mmva.data.meld import CorpusError
    from mmva.encoders.base import create_encoder, encoder_class
    from mmva.encoders.cache import FeatureCache
    from mmva.train.distributed import extract_features_sharded  # split across torchrun processes

    cfg = load_config(config, override or [])
    encs = {}
    for name in [n.strip() for n in encoders.split(",") if n.strip()]:
        try:
            cls = encoder_class(name)
        except KeyError as exc:
            raise typer.BadParameter(str(exc.args[0]), param_hint="--encoders") from None
        if cls.modality in encs:
            raise typer.BadParameter(f"two {cls.modality} encoders given ({encs[cls.modality].name}, {name})")
        options = {**cls.options_from_data(cfg.data), **cfg.model.encoder_options.get(name, {})}
        encs[cls.modality] = create_encoder(name, **options).freeze()
    store = FeatureCache(cache)
    failed = 0
    for sp in split:
        try:
            corpus = load_corpus(data, sp)
        except CorpusError as exc:
            console.print(f"[red]{escape(str(exc))}[/]")
            raise typer.Exit(2) from None
        console.print(f"[bold]{escape(sp)}[/]: {len(corpus.utterances)} utterances, encoders "
                      f"{', '.join(e.name for e in encs.values())} -> {escape(str(store.root))}")
        for problem in corpus.problems[:10]:
            console.print(f"  [yellow]corpus:[/] {escape(problem)}")
        if len(corpus.problems) > 10:
            console.print(f"  [yellow]corpus:[/] ... and {len(corpus.problems) - 10} more problems")
        report = extract_features_sharded(corpus.utterances, encs, store, cfg.data, workers=workers,
                                          progress=progress, batch_size=batch_size, torch_threads=torch_threads)
        console.print(escape(report.summary()))
        failed += len(report.failed)
    if failed:
        console.print(f"[yellow]{failed} item(s) skipped; everything else is cached.[/]")
