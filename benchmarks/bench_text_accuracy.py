"""Accuracy of the shipped default text model on MELD dev, against the majority class, and its speed.

    nice python benchmarks/bench_text_accuracy.py --data $MMVA_MELD_DIR
    # writes benchmarks/results/text_accuracy.json

Three figures per task (emotion, sentiment), each x100: weighted-F1, accuracy, macro-F1, per-class F1.
- ``shipped_in_sample``: the shipped model (adapter + temperature + per-class bias) scored on all of dev.
  The epoch and the calibration were chosen on dev, so this is optimistic by the bias's share.
- ``recipe_crossfit``: from the training run that produced the model (``dev_metrics.json``): the bias
  fitted on one half of dev's dialogues and scored on the other half, and vice versa (the honest one).
- ``majority``: "neutral" for everything.
Plus inference throughput (utterances per second, 1 thread) and the training seconds per epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).parent / "results" / "text_accuracy.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=os.environ.get("MMVA_MELD_DIR", "../shared/data/meld"))
    parser.add_argument("--model", default=None, help="default-model folder (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from mmva.labels import EMOTIONS, SENTIMENTS
    from mmva.model.default import load_default_model
    from mmva.train.text_finetune import read_meld_text, text_metrics

    model = load_default_model(args.model)
    dev, problems = read_meld_text(Path(args.data) / "dev_sent_emo.csv", model.text.config.context_turns)
    t0 = time.perf_counter()
    preds = model.predict([e.text for e in dev], contexts=[e.context for e in dev])
    seconds = time.perf_counter() - t0
    gold = {"emotion": [e.emotion for e in dev], "sentiment": [e.sentiment for e in dev]}
    labels = {"emotion": EMOTIONS, "sentiment": SENTIMENTS}
    shipped = {t: text_metrics(gold[t], [int(np.argmax(p[t])) for p in preds], labels[t]) for t in labels}
    majority = {t: text_metrics(gold[t], [labels[t].index("neutral")] * len(dev), labels[t]) for t in labels}
    recipe_file = model.path / "dev_metrics.json"
    recipe = json.loads(recipe_file.read_text()) if recipe_file.exists() else {}
    result = {
        "data": str(args.data), "split": "dev", "n": len(dev), "problems": problems,
        "model": str(model.path), "model_config": {k: model.config.get(k) for k in ("name", "version", "text_base")},
        "shipped_in_sample": shipped,
        "recipe_crossfit": recipe.get("calibrated_crossfit"),
        "recipe_uncalibrated": recipe.get("uncalibrated"),
        "calibration": recipe.get("calibration"),
        "majority": majority,
        "train_seconds_per_epoch": recipe.get("seconds_per_epoch"),
        "inference_utterances_per_second": round(len(dev) / seconds, 1),
        "threads": args.threads, "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for task in labels:
        s, m = shipped[task], majority[task]
        print(f"{task}: weighted-F1 {s['weighted_f1']:.1f} (majority {m['weighted_f1']:.1f}), "
              f"accuracy {s['accuracy']:.1f}, macro-F1 {s['macro_f1']:.1f}")
    print(f"{result['inference_utterances_per_second']} utterances/s; wrote {args.out}")


if __name__ == "__main__":
    main()
