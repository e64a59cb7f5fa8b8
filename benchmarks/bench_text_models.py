"""MELD dev table of text models, with and without dialogue context (issue 16).

    nice python benchmarks/bench_text_models.py --data $MMVA_MELD_DIR \
        --run minilm-both=runs/minilm_both --run mpnet=runs/mpnet
    # writes benchmarks/results/text_models.json (report.py renders it)

Rows: the majority class; TF-IDF + logistic regression (scikit-learn) without and with the previous
utterance; the shipped default model (MiniLM-L6 + LoRA); the shipped accurate model (MPNet-base +
LoRA, when ``mmva[accurate]`` is installed); and any training run folder given with ``--run``. Each
model is scored with no context, with the previous utterances ("past", what a live stream has) and,
for models trained with them, with the next ones too ("both", a recorded video).

Per row, x100: weighted-F1, macro-F1 and accuracy for emotion and sentiment, from the raw logits
(argmax: a temperature does not change it), plus three decision rules for the rare classes, each
fitted on one half of dev's dialogues and scored on the other half (and vice versa), so no row is
scored on what it was fitted on: a per-class logit bias for weighted-F1 (what the shipped models
use), a bias for macro-F1, and logit adjustment by the training prior (``z - log prior``, nothing
fitted). Also inference time per 1,000 utterances (1 thread, this machine) and the run's training
seconds per epoch. MELD test is withheld: everything here is dev.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "text_models.json"


def _scores(z: dict[str, torch.Tensor], gold: dict[str, torch.Tensor], folds: torch.Tensor,
            prior: dict[str, torch.Tensor]) -> dict[str, Any]:
    from mmva.labels import EMOTIONS, SENTIMENTS
    from mmva.train.text_finetune import fit_bias, text_metrics

    labels = {"emotion": EMOTIONS, "sentiment": SENTIMENTS}
    out: dict[str, Any] = {}
    for task, logits in z.items():
        y = gold[task]
        rules = {"raw": logits, "prior_adjusted": logits - prior[task].log()}
        for name, avg in (("bias_weighted_crossfit", "weighted"), ("bias_macro_crossfit", "macro")):
            oof = logits.clone()
            for f in (0, 1):
                oof[folds == f] = logits[folds == f] + fit_bias(logits[folds != f], y[folds != f], average=avg)
            rules[name] = oof
        out[task] = {}
        for name, v in rules.items():
            m = text_metrics(y.tolist(), v.argmax(-1).tolist(), labels[task])
            m.pop("confusion_matrix") if name != "raw" else None
            out[task][name] = m
    return out


def _tfidf(train, dev, with_context: bool) -> dict[str, torch.Tensor]:
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    ctx_vec = TfidfVectorizer(ngram_range=(1, 1), min_df=2, sublinear_tf=True)
    xt, xd = vec.fit_transform([e.text for e in train]), vec.transform([e.text for e in dev])
    if with_context:
        ct = ctx_vec.fit_transform([" ".join(e.context) for e in train])
        xt, xd = hstack([xt, 0.5 * ct]).tocsr(), hstack([xd, 0.5 * ctx_vec.transform([" ".join(e.context)
                                                                                        for e in dev])]).tocsr()
    out = {}
    for task in ("emotion", "sentiment"):
        clf = LogisticRegression(max_iter=2000, C=2.0, class_weight="balanced")
        clf.fit(xt, [getattr(e, task) for e in train])
        out[task] = torch.tensor(clf.decision_function(xd), dtype=torch.float32)
    return out


def _model_rows(name: str, clf: Any, dev, modes: list[str], epoch_seconds: list[float] | None,
                gold, folds, prior, seeds: list[int]) -> list[dict[str, Any]]:
    rows = []
    for mode in modes:
        t0, c0 = time.perf_counter(), time.process_time()
        z = clf.predict_logits([e.text for e in dev], [e.context for e in dev] if mode != "none" else None,
                               calibrated=False, following=[e.following for e in dev] if mode == "both" else None)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        rows.append({"model": name, "context": mode, "base": clf.config.base, "seeds": seeds,
                     "context_turns": clf.config.context_turns, "context_after": clf.config.context_after,
                     "scores": _scores(z, gold, folds, prior),
                     "inference_seconds_per_1000": round(1000 * wall / len(dev), 2),
                     "inference_cpu_seconds_per_1000": round(1000 * cpu / len(dev), 2),
                     "train_seconds_per_epoch": epoch_seconds, "bf16": bool(clf.bf16)})
        e, s = rows[-1]["scores"]["emotion"]["raw"], rows[-1]["scores"]["sentiment"]["raw"]
        print(f"{name:28s} {mode:5s} emotion wF1 {e['weighted_f1']:.2f} macro {e['macro_f1']:.2f} | "
              f"sentiment wF1 {s['weighted_f1']:.2f} | {rows[-1]['inference_seconds_per_1000']} s/1000")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MMVA_MELD_DIR", "../shared/data/meld"))
    parser.add_argument("--run", action="append", default=[], metavar="NAME=DIR",
                        help="a train-text run folder (its text_model.safetensors and history.json)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from mmva.model.default import _cpu_has_bf16, accurate_model_dir, default_model_dir
    from mmva.model.textclf import TextClassifier
    from mmva.train.text_finetune import read_meld_text

    data = Path(args.data)
    train, _ = read_meld_text(data / "train_sent_emo.csv", 2, 1)
    dev, problems = read_meld_text(data / "dev_sent_emo.csv", 2, 1)
    gold = {"emotion": torch.tensor([e.emotion for e in dev]), "sentiment": torch.tensor([e.sentiment for e in dev])}
    folds = torch.tensor([int(e.uid.split("_")[0][3:]) % 2 for e in dev])
    prior = {t: torch.tensor(np.bincount([getattr(e, t) for e in train], minlength=n) / len(train),
                             dtype=torch.float32) for t, n in (("emotion", 7), ("sentiment", 3))}
    rows: list[dict[str, Any]] = []
    majority = {t: torch.nn.functional.one_hot(torch.full((len(dev),), {"emotion": 4, "sentiment": 1}[t]),
                                               {"emotion": 7, "sentiment": 3}[t]).float() for t in gold}
    rows.append({"model": "majority (neutral)", "context": "none", "scores": _scores(majority, gold, folds, prior)})
    for ctx in (False, True):
        t0 = time.perf_counter()
        z = _tfidf(train, dev, ctx)
        rows.append({"model": "TF-IDF + logistic regression", "context": "past" if ctx else "none",
                     "scores": _scores(z, gold, folds, prior), "fit_seconds": round(time.perf_counter() - t0, 1)})
    models: list[tuple[str, Path, Path | None]] = [("default (shipped)", default_model_dir() / "text_model.safetensors",
                                                   default_model_dir() / "dev_metrics.json")]
    acc = accurate_model_dir() / "text_model.safetensors"
    if acc.is_file():
        models.append(("accurate (shipped)", acc, accurate_model_dir() / "dev_metrics.json"))
    for spec in args.run:
        name, _, folder = spec.partition("=")
        models.append((name, Path(folder) / "text_model.safetensors", Path(folder) / "metrics.json"))
    for name, path, metrics in models:
        try:
            clf = TextClassifier.load(path, merge=True)
        except FileNotFoundError as exc:  # the accurate base is not installed
            print(f"skipped {name}: {exc}")
            continue
        clf.bf16 = clf.config.base != "all-MiniLM-L6-v2" and _cpu_has_bf16()
        info = json.loads(metrics.read_text()) if metrics and metrics.is_file() else {}
        seeds = [info.get("train_config", {}).get("seed")] if info.get("train_config") else []
        modes = ["none", "past"] + (["both"] if clf.config.context_after else [])
        rows += _model_rows(name, clf, dev, modes, info.get("seconds_per_epoch"), gold, folds, prior, seeds)
    result = {"data": "MELD dev", "n": len(dev), "problems": problems, "rows": rows, "threads": args.threads,
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)", "torch": torch.__version__}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
