"""Voice emotion head: leave-one-speaker-out and cross-corpus scores per feature/normalisation, speed.

    mmva speech-manifest $MMVA_DATA/speech-emotion runs/voice/speech.csv
    nice python benchmarks/bench_voice.py --data runs/voice/speech.csv --work runs/voice
    # -> benchmarks/results/voice.json

Every score comes from :func:`mmva.train.crossval.crossval`, i.e. ``fit()`` of the project's trainer
on an audio-only config, one fold per held-out speaker (or corpus). Variants:

- ``prosody-speaker``: prosody functionals z-scored per speaker (the held-out speaker's own
  unlabelled recordings give its statistics);
- ``prosody-global``: z-scored with the average *training* speaker's statistics (what one clip of an
  unknown speaker gets: no speaker normalisation);
- ``prosody-raw``: the functionals as computed (no standardisation at all);
- ``logmel``: the reference log-mel CNN (per-utterance normalised spectrogram), trained end to end.

A finished ``WORK/<variant dir>/crossval.json`` is reused (``--fresh`` reruns it), so the numbers of
``mmva voice-train`` and of this script are the same runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "voice.json"

# variant -> (config preset, prosody normalisation, folder under --work)
VARIANTS = {
    "prosody-speaker": ("voice", "speaker", "cv-speaker"),
    "prosody-global": ("voice", "global", "cv-global"),
    "prosody-raw": ("voice", "none", "cv-none"),
    "logmel": ("voice-logmel", "none", "cv-logmel"),
}
CROSS_CORPUS = {"prosody-speaker": "xcorpus-speaker", "prosody-global": "xcorpus-global",
                "prosody-raw": "xcorpus-none"}


def run_variant(data: str, work: Path, variant: str, group: str, folder: str, fresh: bool,
                overrides: list[str]) -> dict:
    from mmva.config import load_config
    from mmva.train.crossval import crossval, prosody_normalization

    out = work / folder
    done = out / "crossval.json"
    if done.exists() and not fresh:
        print(f"{variant} ({group}): reusing {done}", flush=True)
        return json.loads(done.read_text())
    preset, norm, _ = VARIANTS[variant]
    cfg = load_config(preset, [f"train.cache_dir={work / 'features'}", *overrides])
    started = time.perf_counter()
    res = crossval(data, cfg, str(out), group=group, fold_config=prosody_normalization(norm, "speaker"))
    print(f"{variant} ({group}): {res.summary['accuracy_mean']:.3f} in {time.perf_counter() - started:.0f} s",
          flush=True)
    return res.to_dict()


def run_config(out: Path, cv: dict) -> dict:
    """The resolved model/train config the first fold ran with (saved by fit() beside the run)."""
    import yaml

    first = cv["folds"][0]["name"].replace("=", "-") if cv.get("folds") else ""
    path = out / first / "run" / "config.yaml"
    if not path.exists():
        return {}
    cfg = yaml.safe_load(path.read_text())
    keep = ("audio", "encoder_options", "projection_dim", "fusion_dim", "dropout")
    model = {k: v for k, v in cfg["model"].items() if k in keep}
    model.get("encoder_options", {}).get("prosody", {}).pop("reference", None)  # a per-fold path
    return {"name": cfg.get("name"), "model": model,
            "train": {k: cfg["train"][k] for k in ("epochs", "lr", "patience", "weight_decay", "label_smoothing")}}


def speed(data: str, n: int = 40) -> dict:
    """Prosody features (clips/s, one thread) and VoiceHead latency on real clips of the manifest."""
    import torch

    from mmva.encoders.prosody import _compute
    from mmva.io.media import read_audio
    from mmva.model.voice import load_voice_head
    from mmva.train.crossval import read_rows

    torch.set_num_threads(1)
    rows = read_rows(data)[:: max(1, len(read_rows(data)) // n)][:n]
    audios = [read_audio(r["path"]) for r in rows]
    seconds = sum(len(a) for a in audios) / 16000
    t = time.perf_counter()
    for a in audios:
        _compute(a, 16000, "utterance")  # bypass the memo: real work
    feat_s = time.perf_counter() - t
    head = load_voice_head()
    head.predict_proba(audios[0])
    t = time.perf_counter()
    for a in audios:
        head.predict_proba(a * 0.999)  # a fresh waveform (the feature memo keys on content)
    head_s = time.perf_counter() - t
    return {"clips": len(audios), "audio_seconds": round(seconds, 1),
            "prosody_clips_per_second": round(len(audios) / feat_s, 2),
            "prosody_realtime_factor": round(seconds / feat_s, 1),
            "voice_head_ms_per_clip": round(1000 * head_s / len(audios), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="manifest from `mmva speech-manifest`")
    ap.add_argument("--work", default="runs/voice")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--cross-corpus", default=",".join(CROSS_CORPUS))
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override for every run")
    ap.add_argument("--fresh", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    work = Path(args.work)
    results: dict = {"loso": {}, "cross_corpus": {}}
    for v in [v for v in args.variants.split(",") if v]:
        cv = run_variant(args.data, work, v, "speaker", VARIANTS[v][2], args.fresh, args.overrides)
        results["loso"][v] = cv["summary"]
        results["loso"][v]["fold_seconds"] = [f["seconds"] for f in cv["folds"]]
        results["loso"][v]["config"] = run_config(work / VARIANTS[v][2], cv)
    for v in [v for v in args.cross_corpus.split(",") if v]:
        cv = run_variant(args.data, work, v, "corpus", CROSS_CORPUS[v], args.fresh, args.overrides)
        results["cross_corpus"][v] = {"per_fold": cv["summary"]["per_fold"],
                                      "confusion_by_fold": {f["name"]: f["metrics"]["confusion_matrix"]
                                                            for f in cv["folds"]}}
    try:
        results["speed"] = speed(args.data)
    except FileNotFoundError as exc:  # no shipped head yet
        results["speed"] = {"error": str(exc)}
    best = max(results["loso"], key=lambda v: results["loso"][v]["accuracy_mean"]) if results["loso"] else None
    results["table"] = {v: {"accuracy_mean": round(s["accuracy_mean"], 4), "macro_f1_mean": round(s["macro_f1_mean"], 4)}
                        for v, s in results["loso"].items()}
    results["best_loso_variant"] = best
    results["machine"] = {"python": sys.version.split()[0], "platform": platform.platform(),
                          "cpus": os.cpu_count(), "note": "2 shared CPU cores, torch 1 thread"}
    results["labels"] = ["anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2, default=lambda o: np.asarray(o).tolist()))
    print(json.dumps(results["table"], indent=2))


if __name__ == "__main__":
    main()
