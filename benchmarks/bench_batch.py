"""Benchmark `mmva batch`: video minutes analysed per wall minute, in-process against 1 and 2 Ray workers.

    nice python benchmarks/bench_batch.py                  # 12 talks of about 20 s each
    python benchmarks/bench_batch.py --clips 24 --sentences 8

Makes ``--clips`` talking-head videos (a real face photo, espeak-ng sentences with pauses, 160x160,
10 fps), then analyses the collection three times into fresh folders with the same command a user
runs, each in its own process: ``mmva batch SRC --out OUT`` (in this process), ``--ray local
--workers 1`` and ``--ray local --workers 2`` (a private Ray on this machine, one CPU per worker).
Every wall time includes starting the process, loading the models (once per worker) and, for Ray,
starting it. Written to benchmarks/results/batch.json: per run the wall seconds, the video minutes
per wall minute, and the speed-up over the in-process loop.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from machine import end_load, machine_info  # noqa: E402

SENTENCES = ["I am so happy to see you today.", "This is terrible news, I hate it.",
             "I am scared of what will happen next.", "Thank you so much, that was wonderful.",
             "I cannot believe you did that to me.", "We will meet again tomorrow at noon.",
             "Oh no, I lost my keys again.", "What a lovely surprise this is!"]


def make_clips(folder: Path, n: int, sentences: int) -> float:
    """``n`` talking-head MP4s; returns their total duration in seconds."""
    from tests.media import face_frames, silence, speak, write_video

    folder.mkdir(parents=True, exist_ok=True)
    total = 0.0
    for i in range(n):
        parts = []
        for j in range(sentences):
            parts += [speak(SENTENCES[(i + j) % len(SENTENCES)], speed=150 + 5 * (i % 6)), silence(0.8)]
        audio = np.concatenate(parts)
        seconds = len(audio) / 16000
        write_video(folder / f"talk{i:02d}.mp4", face_frames(int(np.ceil(seconds * 10)), 160), fps=10, audio=audio)
        total += seconds
    return total


def run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=12)
    parser.add_argument("--sentences", type=int, default=6)
    parser.add_argument("--out", default=str(HERE / "results" / "batch.json"))
    args = parser.parse_args()
    info = machine_info(device="cpu")
    work = Path(tempfile.mkdtemp(prefix="mmva-bench-batch-"))
    try:
        src = work / "videos"
        video_s = make_clips(src, args.clips, args.sentences)
        exe = shutil.which("mmva") or "mmva"
        runs = []
        for name, extra in (("in-process", []), ("ray, 1 worker", ["--ray", "local", "--workers", "1"]),
                            ("ray, 2 workers", ["--ray", "local", "--workers", "2"])):
            out = work / name.replace(" ", "").replace(",", "-")
            wall = run([exe, "batch", str(src), "--out", str(out), "-q", *extra])
            summary = (out / "summary.csv").read_text().splitlines()
            ok = sum(1 for line in summary[1:] if ",ok," in line)
            runs.append({"executor": name, "wall_s": round(wall, 2), "files_ok": ok,
                         "video_minutes_per_wall_minute": round(video_s / wall, 2)})
            print(f"{name}: {wall:.1f} s for {video_s / 60:.1f} video minutes "
                  f"({video_s / wall:.2f} video min per wall min), {ok}/{args.clips} ok", flush=True)
        base = runs[0]["wall_s"]
        for r in runs:
            r["speedup_vs_in_process"] = round(base / r["wall_s"], 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result = {"machine": end_load(info), "command": "python benchmarks/bench_batch.py "
              + " ".join(sys.argv[1:]), "clips": args.clips, "video_seconds": round(video_s, 1), "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    main()
