"""Training speed (clips/s) of `fit()` on a generated corpus, for the tiny and reference configs.

    python benchmarks/bench_train.py                 # both configs, writes benchmarks/results/train.json
    python benchmarks/bench_train.py --only tiny
    python benchmarks/bench_train.py --runs 3 --device cuda   # medians of 3 runs, on a GPU

Every row also gives the projected epoch time of a MELD-sized corpus (``--project``, 10,000
utterances) at the measured speed; for the cached-feature rows the one-time feature extraction is
projected apart (seconds per utterance measured in the first run, whose cache later runs reuse).

Reference runs use random initialisation (BERT-base / R3D-18 weights cannot be downloaded here) and
a few steps: once decoding every clip in every step (``train.use_cache=false``), once with the frozen
encoders' features extracted first and the epochs reading the cache (the default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mmva.config import load_config
from mmva.data import make_corpus
from mmva.train.fit import fit

RESULTS = Path(__file__).parent / "results" / "train.json"


def _run(name: str, overrides: list[str], corpus: str, work: Path, runs: int = 1, project: int = 10_000) -> dict:
    """`runs` fits of one config; the median clips/s and the epoch time projected to `project` utterances."""
    rows, extraction = [], None
    for i in range(runs):
        cfg = load_config(name.split(":")[0], overrides)
        started = time.perf_counter()
        result = fit(cfg, corpus, str(work / f"{name.replace(':', '-')}-{i}"), progress=False)
        m = result.metrics
        rows.append({"train_clips_per_second": m["train_clips_per_second"], "epochs": m["epochs_completed"],
                     "train_utterances": m["train_utterances"], "features": m["features"],
                     "wall_seconds": round(time.perf_counter() - started, 1),
                     "dev_emotion_weighted_f1": m["emotion"].get("weighted_f1")})
        f = m["features"]
        if f.get("computed") and extraction is None:  # seconds per utterance, all frozen modalities together
            extraction = f["seconds"] / (f["computed"] / max(1, len(f.get("modalities", [])) or 1))
    speed = statistics.median(r["train_clips_per_second"] for r in rows)
    out = {"config": name, "overrides": overrides, "runs": len(rows), "train_clips_per_second": speed,
           **{k: rows[0][k] for k in ("epochs", "train_utterances", "features", "wall_seconds",
                                      "dev_emotion_weighted_f1")},
           "per_run_clips_per_second": [r["train_clips_per_second"] for r in rows],
           "projected_utterances": project, "projected_epoch_seconds": round(project / speed, 1)}
    if extraction is not None:
        out["extraction_seconds_per_utterance"] = round(extraction, 3)
        out["projected_extraction_seconds_once"] = round(project * extraction, 1)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["tiny", "reference"], default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--runs", type=int, default=3, help="fits per config (the median clips/s is reported)")
    parser.add_argument("--project", type=int, default=10_000, help="corpus size for the projected epoch time")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--end-to-end", action="store_true",
                        help="also time the reference step with BERT-base and R3D-18 trained too (not frozen)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).parent))
    from machine import check_device, end_load, machine_info

    check_device(args.device)
    info = machine_info(args.device)
    accel = [f"train.accelerator={'gpu' if args.device.startswith('cuda') else 'cpu'}"]
    work = Path(tempfile.mkdtemp(prefix="mmva-bench-train-"))
    corpus = str(make_corpus(work / "corpus", n_per_class={"train": 4, "dev": 1}, seed=0))
    runs = []
    if args.only in (None, "tiny"):
        runs.append(_run("tiny", ["train.epochs=3", *accel], corpus, work, args.runs, args.project))
    if args.only in (None, "reference"):
        few = ["train.epochs=1", "data.batch_size=4", "train.limit_train_batches=3", *accel]
        runs.append(_run("reference:decode-every-step", [*few, "train.use_cache=false"], corpus, work,
                         args.runs, args.project))
        cached = ["train.epochs=2", "data.batch_size=4", f"train.cache_dir={work / 'reference-cache'}", *accel]
        runs.append(_run("reference:cached-features", cached, corpus, work, args.runs, args.project))
        if args.end_to_end:
            e2e = ["train.epochs=1", "data.batch_size=2", "train.limit_train_batches=2", "train.use_cache=false",
                   "model.freeze_text=false", "model.freeze_video=false", *accel]
            runs.append(_run("reference:end-to-end", e2e, corpus, work, args.runs, args.project))
    out = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads, "cuda": torch.cuda.is_available(),
                       "platform": platform.platform(), **end_load(info)},
           "command": "python benchmarks/bench_train.py " + " ".join(sys.argv[1:]), "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() and args.only else {}
    if previous:  # --only updates its own rows
        keep = [r for r in previous.get("runs", []) if not r["config"].startswith(args.only)]
        out["runs"] = keep + runs
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
