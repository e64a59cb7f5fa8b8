"""Each single modality and the fusion on the generated corpus (issue 8 part 4, second half).

    nice python benchmarks/bench_fusion.py                  # seed 0, writes benchmarks/results/fusion.json
    python benchmarks/bench_fusion.py --seeds 0,1,2         # median over training seeds
    python benchmarks/bench_fusion.py --device cuda

The recipe of tests/test_fusion.py: ``mmva.data.make_corpus`` (MELD layout, ``--n-per-class`` clips
per emotion and split, real H.264/AAC clips where the words, the voice and the face each carry the
label, and about a quarter of the clips carry another class's cue in exactly one modality), then
``mmva.train.fit.fit`` on the tiny config for text only, video only, audio only and all three,
scored on the generated dev split: emotion and sentiment weighted-F1, accuracy, macro-F1 (x100).
These are figures for the pipeline on synthetic data (does each modality learn, does fusion add);
they say nothing about real-world accuracy (see meld_dev.json for that).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from machine import check_device, end_load, machine_info  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "fusion.json"
VARIANTS = {"text": ["model.video=null", "model.audio=null"], "video": ["model.text=null", "model.audio=null"],
            "audio": ["model.text=null", "model.video=null"], "fusion": []}
KEYS = ("weighted_f1", "accuracy", "macro_f1")


def scores(metrics: dict) -> dict:
    """Emotion and sentiment weighted-F1/accuracy/macro-F1 x100 and per-class F1 from fit()'s metrics."""
    out = {}
    for task in ("emotion", "sentiment"):
        m = metrics[task]
        out[task] = {k: round(100 * m[k], 2) for k in KEYS}
        out[task]["per_class_f1"] = {c: round(100 * v["f1"], 2) for c, v in m.get("per_class", {}).items()}
        out[task]["support"] = m.get("support")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0", help="training seeds, comma-separated (medians reported)")
    ap.add_argument("--corpus-seed", type=int, default=0)
    ap.add_argument("--n-per-class", type=int, default=12, help="clips per emotion and split")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for the tiny model)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--work", default=None)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    check_device(args.device)
    import torch

    torch.set_num_threads(args.threads)
    from mmva.config import load_config
    from mmva.data import make_corpus
    from mmva.train.fit import fit

    info = machine_info(args.device)
    work = Path(args.work or tempfile.mkdtemp(prefix="mmva-fusion-"))
    t = time.perf_counter()
    corpus = str(make_corpus(work / "corpus", n_per_class=args.n_per_class, seed=args.corpus_seed))
    corpus_s = time.perf_counter() - t
    accel = "gpu" if args.device.startswith("cuda") else "cpu"
    runs: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name, only in VARIANTS.items():
            cfg = load_config("tiny", [f"train.epochs={args.epochs}", f"train.seed={seed}",
                                       f"train.accelerator={accel}", *only])
            t = time.perf_counter()
            res = fit(cfg, corpus, str(work / f"{name}-seed{seed}"), progress=False)
            row = {"seed": seed, **scores(res.metrics), "fit_s": round(time.perf_counter() - t, 1),
                   "epochs_completed": res.metrics.get("epochs_completed")}
            runs[name].append(row)
            print(f"{name:>6} seed {seed}: emotion wF1 {row['emotion']['weighted_f1']}, "
                  f"acc {row['emotion']['accuracy']} ({row['fit_s']} s)", flush=True)
    table = {name: {task: {k: round(statistics.median(r[task][k] for r in rs), 2) for k in KEYS}
                    for task in ("emotion", "sentiment")} for name, rs in runs.items()}
    best_single = max(table[m]["emotion"]["weighted_f1"] for m in ("text", "video", "audio"))
    result = {
        "machine": end_load(info), "command": "python benchmarks/bench_fusion.py " + " ".join(sys.argv[1:]),
        "corpus": {"n_per_class": args.n_per_class, "seed": args.corpus_seed, "dev_clips": 7 * args.n_per_class,
                   "generated_in_s": round(corpus_s, 1)},
        "config": {"preset": "tiny", "epochs": args.epochs, "seeds": args.seeds},
        "table": table,
        "fusion_minus_best_single_emotion_wf1": round(table["fusion"]["emotion"]["weighted_f1"] - best_single, 2),
        "chance_accuracy": round(100 / 7, 2),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(table, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
