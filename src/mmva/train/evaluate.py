"""``evaluate()``: score a checkpoint on a corpus split; metrics for both tasks as JSON.

The model is rebuilt from the checkpoint alone (:func:`mmva.model.checkpoint.load_model`), the clips
are decoded with the data settings stored in it, and modalities can be removed on purpose
(``drop=("audio",)``) to measure how the model degrades without them.
"""

from __future__ import annotations

import json
import logging
import time
from functools import partial
from pathlib import Path
from typing import Any, Iterable

import torch
from rich.table import Table
from torch.utils.data import DataLoader

from mmva.io import storage
from mmva.labels import EMOTIONS, MODALITIES, SENTIMENTS
from mmva.model.checkpoint import load_model
from mmva.train.metrics import compute_metrics, json_safe
from mmva.train.task import predict_batch

log = logging.getLogger("mmva")


def _predict(model: Any, loader: DataLoader, drop: frozenset[str], report: Any) -> dict[str, list[Any]]:
    rows: dict[str, list[Any]] = {k: [] for k in ("uid", "emotion_true", "emotion_pred", "sentiment_true",
                                                  "sentiment_pred", "emotion_probs", "sentiment_probs")}
    used = {m: 0 for m in MODALITIES}
    with torch.inference_mode():
        for batch in loader:
            report.add_batch(batch)
            if not batch["uid"]:
                continue
            out = predict_batch(model, batch, drop)
            e_prob, s_prob = out["emotion"].float().softmax(-1), out["sentiment"].float().softmax(-1)
            rows["uid"] += batch["uid"]
            rows["emotion_true"] += batch["emotion"].tolist()
            rows["sentiment_true"] += batch["sentiment"].tolist()
            rows["emotion_pred"] += e_prob.argmax(-1).tolist()
            rows["sentiment_pred"] += s_prob.argmax(-1).tolist()
            rows["emotion_probs"] += e_prob.tolist()
            rows["sentiment_probs"] += s_prob.tolist()
            for m, mask in batch["masks"].items():
                if m not in drop:
                    used[m] += int(mask.sum())
    rows["modalities_used"] = [used]
    return rows


def _load_checkpoint(spec: str) -> Any:
    """A checkpoint file as is; a folder or model.tar.gz through the --model resolver."""
    from mmva.model.checkpoint import CheckpointError
    from mmva.model.predictor import resolve_model

    if spec.endswith(".safetensors") or (not storage.is_remote(spec) and not Path(spec).is_dir()
                                         and not spec.endswith((".tar.gz", ".tgz"))):
        return load_model(spec)
    kind, path = resolve_model(spec)
    if kind != "checkpoint":
        raise CheckpointError(spec, "a default-model folder; evaluate scores checkpoints written by `mmva train`")
    return load_model(path)


def evaluate(checkpoint: str, data: str, split: str = "dev", out: str | None = None, *,
             drop: Iterable[str] = (), batch_size: int | None = None, num_workers: int | None = None,
             cache_dir: str | None = None, predictions: str | None = None) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on split ``split`` of corpus ``data``; written as JSON to ``out``.

    ``checkpoint`` is a ``.safetensors`` file of ``mmva train`` (local or ``s3://``), or a folder or
    ``model.tar.gz`` holding one (what ``--model`` accepts elsewhere).

    ``drop`` removes modalities (not decoded, masked as absent); ``cache_dir`` reads frozen-encoder
    features from a feature cache when they are there; ``predictions`` writes per-utterance
    predictions (JSON lines).

    >>> # m = evaluate("runs/tiny/checkpoints/last.safetensors", "corpus", "dev", "metrics.json")
    >>> # m["emotion"]["weighted_f1"], m["sentiment"]["accuracy"]
    """
    from mmva.data import SkipReport, UtteranceDataset, collate_batch, load_corpus

    drop_set = frozenset(drop)
    unknown = drop_set - set(MODALITIES)
    if unknown:
        raise ValueError(f"cannot drop {', '.join(sorted(unknown))}: modalities are {', '.join(MODALITIES)}")
    started = time.perf_counter()
    model = _load_checkpoint(str(checkpoint))
    config = model.config
    corpus = load_corpus(data, split)
    report = SkipReport()
    report.add_problems(corpus.problems)
    encoders = {m: e for m, e in model.encoders.items() if m not in drop_set}
    cache, cached = None, frozenset()
    if cache_dir:
        from mmva.encoders.cache import FeatureCache

        cache, cached = FeatureCache(cache_dir), frozenset(model.frozen_modalities()) & set(encoders)
    dataset = UtteranceDataset(corpus.utterances, encoders, config.data, cache=cache, cached=cached)
    workers = config.data.num_workers if num_workers is None else num_workers
    loader = DataLoader(dataset, batch_size=batch_size or config.data.batch_size, num_workers=workers,
                        collate_fn=partial(collate_batch, encoders=encoders))
    rows = _predict(model, loader, drop_set, report)
    seconds = time.perf_counter() - started
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "data": str(data), "split": split,
        "config": config.name, "dropped_modalities": sorted(drop_set),
        "utterances": len(corpus.utterances), "evaluated": len(rows["uid"]),
        "modalities_used": rows["modalities_used"][0],
        "emotion": compute_metrics(rows["emotion_true"], rows["emotion_pred"], EMOTIONS),
        "sentiment": compute_metrics(rows["sentiment_true"], rows["sentiment_pred"], SENTIMENTS),
        "skipped": [list(e) for e in report.entries], "skipped_summary": report.summary(),
        "seconds": round(seconds, 2), "clips_per_second": round(len(rows["uid"]) / seconds, 3) if seconds else None,
    }
    if out:
        storage.write_text_atomic(out, json.dumps(json_safe(result), indent=2))
    if predictions:
        lines = [json.dumps({"uid": u, "emotion": EMOTIONS[ep], "sentiment": SENTIMENTS[sp],
                             "emotion_true": EMOTIONS[et] if et >= 0 else None,
                             "sentiment_true": SENTIMENTS[st] if st >= 0 else None,
                             "emotion_probs": [round(p, 5) for p in eprob],
                             "sentiment_probs": [round(p, 5) for p in sprob]})
                 for u, ep, sp, et, st, eprob, sprob in zip(
                     rows["uid"], rows["emotion_pred"], rows["sentiment_pred"], rows["emotion_true"],
                     rows["sentiment_true"], rows["emotion_probs"], rows["sentiment_probs"])]
        storage.write_text_atomic(predictions, "\n".join(lines) + "\n")
    if report:
        log.info("%s", report.summary())
    return result


def metrics_table(result: dict[str, Any]) -> Table:
    """A Rich table of the headline scores of an :func:`evaluate` (or ``fit``) result."""
    from rich.markup import escape

    title = f"{escape(str(result.get('split', 'dev')))}: {result.get('evaluated', result.get('emotion', {}).get('support', 0))} utterances"
    if result.get("dropped_modalities"):
        title += f" (without {', '.join(result['dropped_modalities'])})"
    table = Table("task", "accuracy", "w-precision", "w-recall", "w-F1", "macro-F1", title=title)
    for task in ("emotion", "sentiment"):
        m = result.get(task) or {}
        if not m:
            continue
        table.add_row(task, *(f"{m[k]:.4f}" for k in ("accuracy", "weighted_precision", "weighted_recall",
                                                       "weighted_f1", "macro_f1")))
    return table


def per_class_table(metrics: dict[str, Any], task: str) -> Table:
    """Per-class precision/recall/F1/support of one task."""
    table = Table("class", "precision", "recall", "F1", "support", title=f"{task} per class")
    for name, row in metrics["per_class"].items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    return table
