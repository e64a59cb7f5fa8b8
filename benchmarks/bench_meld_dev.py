"""MELD dev accuracy of the shipped default model (issue 8 part 4, first half), side by side:
the majority class, the text model without dialogue context, and with it.

    nice python benchmarks/bench_meld_dev.py                # writes benchmarks/results/meld_dev.json
    python benchmarks/bench_meld_dev.py --data /path/to/meld --device cuda

All three are scored on every row of ``dev_sent_emo.csv`` (1,109 utterances) with the same metric
function as benchmarks/bench_text_accuracy.py (emotion and sentiment weighted-F1, accuracy, macro-F1,
per-class F1, x100). "With context" gives the model the previous utterance(s) of the same dialogue,
as many as the shipped model was trained with (its ``context_turns``); "without" gives none. The
shipped model's epoch and calibration were chosen on dev, so these in-sample figures are optimistic;
text_accuracy.json (when present) holds the honest cross-fitted figure of the training recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from machine import check_device, end_load, machine_info  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "meld_dev.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=os.environ.get("MMVA_MELD_DIR", "../shared/data/meld"))
    ap.add_argument("--model", default=None, help="default-model folder (default: the shipped one)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    check_device(args.device)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from mmva.labels import EMOTIONS, SENTIMENTS
    from mmva.model.default import load_default_model
    from mmva.train.text_finetune import read_meld_text, text_metrics

    info = machine_info(args.device)
    model = load_default_model(args.model)
    if args.device != "cpu":
        model = model.to(args.device)
    turns = model.text.config.context_turns
    dev, problems = read_meld_text(Path(args.data) / "dev_sent_emo.csv", max(1, turns))
    gold = {"emotion": [e.emotion for e in dev], "sentiment": [e.sentiment for e in dev]}
    labels = {"emotion": EMOTIONS, "sentiment": SENTIMENTS}
    rows = {"majority": {t: text_metrics(gold[t], [labels[t].index("neutral")] * len(dev), labels[t]) for t in labels}}
    speed = {}
    for name, contexts in (("text", None), ("text_with_context", [e.context for e in dev])):
        t0 = time.perf_counter()
        preds = model.predict([e.text for e in dev], contexts=contexts)
        speed[name] = round(len(dev) / (time.perf_counter() - t0), 1)
        rows[name] = {t: text_metrics(gold[t], [int(np.argmax(p[t])) for p in preds], labels[t]) for t in labels}
    for r in rows.values():
        for m in r.values():
            m.pop("confusion_matrix", None)
    result = {
        "machine": end_load(info), "command": "python benchmarks/bench_meld_dev.py " + " ".join(sys.argv[1:]),
        "data": str(args.data), "split": "dev", "n": len(dev), "problems": problems,
        "model": {k: model.config.get(k) for k in ("name", "version", "text_base")},
        "context_turns": turns, "table": rows, "utterances_per_second": speed, "threads": args.threads,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for name, r in rows.items():
        print(f"{name:>18}: emotion wF1 {r['emotion']['weighted_f1']}, acc {r['emotion']['accuracy']}, "
              f"macro-F1 {r['emotion']['macro_f1']} | sentiment wF1 {r['sentiment']['weighted_f1']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
