"""Feature-extraction throughput per encoder (clips/s), cache read/write rates, face timings.

    nice python benchmarks/bench_extract.py                  # writes benchmarks/results/extract.json
    python benchmarks/bench_extract.py --clips 8 --encoders minilm,face-expression

Media: generated MELD-like clips (640x360, 25 fps, 3 s, H.264/AAC): a real face photo
(``skimage.data.astronaut``) that drifts over a background, with espeak-ng speech. Each encoder runs
through :func:`mmva.encoders.cache.extract_features` into a fresh cache with the reference data
config (30 frames decoded per clip at 256 px, 16 kHz audio), so the figure includes decoding and
``prepare``; then again on the filled cache (every entry a hit). R3D-18 and BERT-base run with random
weights (none ship offline), R3D-18 on fewer clips (``--slow-clips``) because it costs seconds a clip.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "extract.json"
LINES = ("I am so happy to see you again!", "Why would you do that to me?", "Okay, fine, whatever.",
         "Oh my God, no way!", "I don't want to talk about it.", "That is disgusting.")
SLOW = ("r3d18", "bert-base-uncased")


def make_clips(folder: Path, n: int, width: int = 640, height: int = 360, fps: float = 25.0,
               seconds: float = 3.0) -> list:
    from mmva.data.synth import face_photo, speak, write_mp4
    from mmva.types import Utterance

    speech = [speak(t) for t in LINES]
    face = face_photo(280)  # the face itself ~110 px tall in 360: a MELD-like medium close-up
    rng = np.random.default_rng(0)
    bg = rng.integers(40, 120, (height, width, 3), dtype=np.uint8)
    utts = []
    for i in range(n):
        frames = np.repeat(bg[None], int(seconds * fps), axis=0)
        for t in range(len(frames)):
            x = 150 + int(30 * np.sin(t / 10 + i)) + (i % 3) * 40
            frames[t, 40:320, x:x + 280] = face
        audio = speech[i % len(speech)][: int(seconds * 16000)]
        path = write_mp4(folder / f"clip{i}.mp4", frames, fps=fps, audio=audio)
        utts.append(Utterance(uid=f"clip{i}", text=LINES[i % len(LINES)], path=str(path),
                              extra={"context": [LINES[(i - 1) % len(LINES)]]}))
    return utts


def bench_encoder(name: str, utts: list, data, workers: int, tmp: Path, threads: tuple = (None, 1)) -> dict:
    """Extraction into a fresh cache (after a warm-up) with torch's default threads and with 1 thread;
    then the same again on the filled cache."""
    from mmva.encoders.base import create_encoder, encoder_class
    from mmva.encoders.cache import FeatureCache, extract_features

    t0 = time.perf_counter()
    enc = create_encoder(name, **encoder_class(name).options_from_data(data)).freeze()
    load_s = time.perf_counter() - t0
    out = {"modality": enc.modality, "output_dim": enc.output_dim, "weights": enc.weights_source(),
           "clips": len(utts), "load_s": round(load_s, 2)}
    # First calls pay one-off costs (numba JIT in librosa, oneDNN kernel selection, the weights
    # digest): timed apart on two clips that the measured runs then do not reuse.
    warm_up = extract_features(utts[:2], {enc.modality: enc}, FeatureCache(tmp / f"cache-{name}-warmup"), data,
                               workers=workers, progress=False)
    out["warmup_2_clips_s"] = round(warm_up.seconds, 2)
    for n_threads in threads:
        cache = FeatureCache(tmp / f"cache-{name}-{n_threads}")
        cold = extract_features(utts, {enc.modality: enc}, cache, data, workers=workers, progress=False,
                                torch_threads=n_threads)
        tag = "" if n_threads is None else f"_{n_threads}_thread"
        out[f"seconds{tag}"] = round(cold.seconds, 2)
        out[f"clips_per_s{tag}"] = round(len(utts) / cold.seconds, 2)
        out["absent"], out["failed"] = cold.absent, len(cold.failed)
    warm = extract_features(utts, {enc.modality: enc}, cache, data, workers=workers, progress=False)
    out["cached_clips_per_s"] = round(len(utts) / warm.seconds, 1)
    return out


def bench_meld_text(workers: int, tmp: Path) -> dict | None:
    """minilm over the real MELD dev transcripts (text only; the clips are not on this machine)."""
    from mmva.config import DataConfig
    from mmva.data.corpus import load_corpus

    meld = ROOT.parent / "shared" / "data" / "meld"
    if not (meld / "dev_sent_emo.csv").exists():
        return None
    utts = load_corpus(str(meld), "dev").utterances
    for u in utts:
        u.path = None  # text only
    result = bench_encoder("minilm", utts, DataConfig(), workers, tmp)
    return {"corpus": "MELD dev transcripts", **result}


def bench_cache_io(tmp: Path, n: int = 2000, dim: int = 384) -> dict:
    from mmva.encoders.cache import FeatureCache

    cache = FeatureCache(tmp / "io")
    keys = [f"bench/{i:064x}" for i in range(n)]
    x = torch.randn(dim)
    t0 = time.perf_counter()
    for k in keys:
        cache.put(k, x)
    put_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for k in keys:
        cache.get(k)
    get_s = time.perf_counter() - t0
    return {"entries": n, "dim": dim, "put_per_s": round(n / put_s), "get_per_s": round(n / get_s),
            "note": "local disk; put = safetensors bytes, temp file, atomic rename (no fsync)"}


def bench_face() -> dict:
    import cv2

    from mmva.data.synth import face_photo
    from mmva.encoders.face import DetectorConfig, detect_faces, load_mini_xception, normalise_crops

    frame = np.full((144, 256, 3), 90, np.uint8)  # a 640x360 frame decoded at 256 px
    frame[16:128, 70:182] = face_photo(112)
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
    detect_faces(grey, DetectorConfig(backend="haar"))
    t0 = time.perf_counter()
    for _ in range(50):
        boxes = detect_faces(grey, DetectorConfig(backend="haar"))
    detect_ms = (time.perf_counter() - t0) / 50 * 1000
    net, _ = load_mini_xception()
    crops = normalise_crops(np.zeros((8, 64, 64), np.uint8))
    out = {"detect_ms_per_frame_256x144": round(detect_ms, 2), "faces_found": len(boxes)}
    default_threads = torch.get_num_threads()
    # On a busy machine, intra-op threads waiting for each other dominate a net this small.
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        with torch.inference_mode():
            net(crops), net(crops[:1])
            t0 = time.perf_counter()
            for _ in range(20):
                net(crops[:1])
            single_ms = (time.perf_counter() - t0) / 20 * 1000
            t0 = time.perf_counter()
            for _ in range(20):
                net(crops)
            batched_ms = (time.perf_counter() - t0) / 20 / 8 * 1000
        out[f"classify_ms_one_face_{threads}_threads"] = round(single_ms, 2)
        out[f"classify_ms_per_face_batch8_{threads}_threads"] = round(batched_ms, 2)
    torch.set_num_threads(default_threads)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--slow-clips", type=int, default=4, help="clips for R3D-18 / BERT-base")
    ap.add_argument("--encoders", default="minilm,face-expression,logmel-cnn,prosody,bert-base-uncased,r3d18")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT / "src"))
    from mmva.config import DataConfig

    data = DataConfig()  # the reference data settings: 30 frames at 224, 16 kHz
    tmp = Path(tempfile.mkdtemp(prefix="mmva-bench-extract-"))
    try:
        t0 = time.perf_counter()
        utts = make_clips(tmp, args.clips)
        gen_s = time.perf_counter() - t0
        results = {}
        for name in [n for n in args.encoders.split(",") if n]:
            subset = utts[: args.slow_clips] if name in SLOW else utts
            threads = (None,) if name in SLOW else (None, 1)
            results[name] = bench_encoder(name, subset, data, args.workers, tmp, threads)
            print(name, results[name], flush=True)
        meld_text = bench_meld_text(args.workers, tmp)
        print("meld text", meld_text, flush=True)
        out = {
            "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
                        "python": platform.python_version(), "torch": torch.__version__,
                        "note": "shared 2-core machine; other jobs were running"},
            "media": {"clips": args.clips, "size": "640x360", "fps": 25, "seconds": 3.0,
                      "generated_in_s": round(gen_s, 1)},
            "data_config": {"num_frames": data.num_frames, "frame_size": data.frame_size,
                            "sample_rate": data.sample_rate},
            "workers": args.workers, "encoders": results, "minilm_meld_dev_text": meld_text, "cache_io": bench_cache_io(tmp), "face": bench_face(),
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
