"""Training speed (clips/s) of `fit()` on a generated corpus, for the tiny and reference configs.

    python benchmarks/bench_train.py                 # both configs, writes benchmarks/results/train.json
    python benchmarks/bench_train.py --only tiny

Reference runs use random initialisation (BERT-base / R3D-18 weights cannot be downloaded here) and
a few steps: once decoding every clip in every step (``train.use_cache=false``), once with the frozen
encoders' features extracted first and the epochs reading the cache (the default).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from mmva.config import load_config
from mmva.data import make_corpus
from mmva.train.fit import fit

RESULTS = Path(__file__).parent / "results" / "train.json"


def _run(name: str, overrides: list[str], corpus: str, work: Path) -> dict:
    cfg = load_config(name.split(":")[0], overrides)
    started = time.perf_counter()
    result = fit(cfg, corpus, str(work / name.replace(":", "-")), progress=False)
    m = result.metrics
    return {"config": name, "overrides": overrides, "train_clips_per_second": m["train_clips_per_second"],
            "epochs": m["epochs_completed"], "train_utterances": m["train_utterances"],
            "features": m["features"], "wall_seconds": round(time.perf_counter() - started, 1),
            "dev_emotion_weighted_f1": m["emotion"].get("weighted_f1")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["tiny", "reference"], default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="mmva-bench-train-"))
    corpus = str(make_corpus(work / "corpus", n_per_class={"train": 4, "dev": 1}, seed=0))
    runs = []
    if args.only in (None, "tiny"):
        runs.append(_run("tiny", ["train.epochs=3"], corpus, work))
    if args.only in (None, "reference"):
        few = ["train.epochs=1", "data.batch_size=4", "train.limit_train_batches=3"]
        runs.append(_run("reference:decode-every-step", [*few, "train.use_cache=false"], corpus, work))
        runs.append(_run("reference:cached-features", ["train.epochs=2", "data.batch_size=4"], corpus, work))
    out = {"machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads, "cuda": torch.cuda.is_available(),
                       "platform": platform.platform()}, "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() and args.only else {}
    if previous:  # --only updates its own rows
        keep = [r for r in previous.get("runs", []) if not r["config"].startswith(args.only)]
        out["runs"] = keep + runs
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
