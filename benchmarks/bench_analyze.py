"""Benchmark `mmva analyze` against the reference pipeline, plus a decode-only floor and peak memory.

    nice python benchmarks/bench_analyze.py                       # 60 s talking head + 1 h memory run
    python benchmarks/bench_analyze.py --skip-hour --ref-utterances 2

What it measures (written to benchmarks/results/analyze.json):
- ``talk60``: a generated 60 s talking-head video (640x360, 25 fps, H.264/AAC; a real face photo that
  sways, espeak-ng sentences with pauses). ``mmva`` = analyze() wall time with the default model and
  ASR already loaded (load times reported apart), per stage; real-time factor = video seconds /
  analysis seconds. ``wall_s`` is the first analysis in the process (as the CLI runs), ``warm_wall_s``
  a second one (as a server runs); ``cpu_s`` is the process's CPU time, which other users of a
  shared machine inflate less than wall time.
- ``decode_floor``: reading the audio track once plus streaming frames at the pipeline's rate,
  with no model at all: the least any analysis of this file can cost.
- ``reference``: the SPEC's reference model (BERT-base + R3D-18 on 30 frames at 224x224 + log-mel
  CNN, random weights, ``MultimodalSentimentAnalyzer(load_config("reference").model)``) run per
  utterance on the same utterances, each decoded with ``decode_clip`` as a training pipeline does,
  plus the same segmentation time. Measured on ``--ref-utterances`` utterances and extrapolated to
  all of them (the JSON says so).
- ``hour``: peak resident memory of analyze() on a generated one-hour video (a still face at 2 fps,
  a sentence every 30 s), in a child process, next to the 60 s video's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "analyze.json"
RATE = 16000
LINES = (
    "I am so happy to see you again, this is wonderful news!",
    "I cannot believe you lied to me, I am really angry about it.",
    "Oh no, something is wrong, I am scared.",
    "I miss her so much, I feel sad and lonely today.",
    "Well, the meeting is at three, in the second room.",
    "What? You won the lottery? That is amazing!",
    "That smell is disgusting, please open the window.",
    "Okay, let us go through the numbers one more time.",
)


def make_talk(path: Path, seconds: float = 60.0, width: int = 640, height: int = 360, fps: int = 25) -> Path:
    """A talking-head video: sentences with 0.8 s pauses until `seconds`, a swaying face photo."""
    from mmva.data.synth import face_photo, speak, write_mp4

    parts, total, i = [], 0, 0
    while total < seconds * RATE:
        line = LINES[i % len(LINES)]
        a = speak(line, pitch=40 + 7 * (i % 6), speed=160 + 10 * (i % 4))
        parts += [a, np.zeros(int(0.8 * RATE), np.float32)]
        total += len(a) + int(0.8 * RATE)
        i += 1
    audio = np.concatenate(parts)[: int(seconds * RATE)]
    face = face_photo(height - 40)
    n = int(seconds * fps)
    frames = np.empty((n, height, width, 3), np.uint8)
    frames[:] = (40, 60, 80)
    for k in range(n):
        x = width // 2 - face.shape[1] // 2 + int(30 * np.sin(2 * np.pi * k / (fps * 5)))
        frames[k, 20:20 + face.shape[0], x:x + face.shape[1]] = face
    return write_mp4(path, frames, fps=fps, audio=audio, sample_rate=RATE)


def make_hour(path: Path, seconds: float = 3600.0, fps: int = 2) -> Path:
    """A long video made cheaply: a still face at `fps`, a spoken sentence every 30 s."""
    import av

    from mmva.data.synth import face_photo, speak

    face = face_photo(240)
    frame = np.zeros((240, 320, 3), np.uint8)
    frame[:, 40:280] = face
    lines = [speak(line) for line in LINES]
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = 320, 240, "yuv420p"
        vs.options = {"preset": "ultrafast", "crf": "30"}
        as_ = out.add_stream("aac", rate=RATE, layout="mono")
        vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
        for k in range(int(seconds * fps)):
            vf.pts = k
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        block = 30 * RATE  # 30 s of audio at a time: a sentence then silence
        for b in range(int(seconds * RATE) // block):
            chunk = np.zeros(block, np.float32)
            line = lines[b % len(lines)]
            chunk[RATE: RATE + len(line)] = line[: block - RATE]
            for i in range(0, block, 1024):
                af = av.AudioFrame.from_ndarray(chunk[None, i:i + 1024].copy(), format="flt", layout="mono")
                af.sample_rate, af.pts = RATE, b * block + i
                for p in as_.encode(af):
                    out.mux(p)
        for p in as_.encode():
            out.mux(p)
    return path


def decode_floor(path: str, fps: float, max_side: int) -> dict:
    """Decode the audio once and stream frames at the pipeline's rate, with no model."""
    from mmva.io.media import iter_frames, read_audio

    t0 = time.perf_counter()
    audio = read_audio(path, RATE)
    t1 = time.perf_counter()
    n = sum(1 for _ in iter_frames(path, fps=fps, max_side=max_side))
    t2 = time.perf_counter()
    return {"audio_s": round(t1 - t0, 3), "frames_s": round(t2 - t1, 3), "total_s": round(t2 - t0, 3),
            "frames": n, "audio_samples": int(audio.size)}


def run_mmva(path: str, model_path: str | None = None) -> dict:
    from mmva.analyze import analyze
    from mmva.analyze.asr import load_asr
    from mmva.model.default import load_default_model

    t0 = time.perf_counter()
    model = load_default_model(model_path)
    t1 = time.perf_counter()
    load_asr(None, "cpu")
    t2, c2 = time.perf_counter(), time.process_time()
    timeline = analyze(path, model=model)  # first call: includes the networks' lazy first-use setup
    t3, c3 = time.perf_counter(), time.process_time()
    warm = analyze(path, model=model)  # as a server that already analysed something
    t4, c4 = time.perf_counter(), time.process_time()
    return {"wall_s": round(t3 - t2, 3), "cpu_s": round(c3 - c2, 3),
            "warm_wall_s": round(t4 - t3, 3), "warm_cpu_s": round(c4 - c3, 3),
            "warm_stages_s": {k: round(v, 3) for k, v in warm.timings.items()},
            "load_default_model_s": round(t1 - t0, 3), "load_asr_s": round(t2 - t1, 3),
            "stages_s": {k: round(v, 3) for k, v in timeline.timings.items()},
            "utterances": len(timeline.utterances), "duration_s": timeline.duration,
            "modality_usage": timeline.summary["modality_usage"], "timeline": timeline}


def run_reference(path: str, utterances: list, n: int) -> dict:
    """The reference model per utterance: decode 30 frames + audio, tokenize, forward (random weights)."""
    import torch

    from mmva.config import load_config
    from mmva.io.media import decode_clip
    from mmva.model.multimodal import MultimodalSentimentAnalyzer

    cfg = load_config("reference")
    t0 = time.perf_counter()
    model = MultimodalSentimentAnalyzer(cfg.model, data=cfg.data).eval()
    build_s = time.perf_counter() - t0
    enc = model.encoders
    per = []
    c0 = time.process_time()
    with torch.inference_mode():
        for u in utterances[:n]:
            t = time.perf_counter()
            clip = decode_clip(path, start=u.start_time, end=u.end_time, num_frames=cfg.data.num_frames,
                               max_side=cfg.data.frame_size, text=u.text)
            td = time.perf_counter()
            inputs = {m: enc[m].prepare(clip) for m in model.modalities}
            batch = {m: (enc[m].collate([x]) if x is not None else None) for m, x in inputs.items()}
            model(batch["text"], batch["video"], batch["audio"])
            per.append({"decode_s": td - t, "total_s": time.perf_counter() - t})
    mean = float(np.mean([p["total_s"] for p in per]))
    cpu = (time.process_time() - c0) / max(1, len(per))
    return {"build_s": round(build_s, 3), "measured_utterances": len(per), "per_utterance_s": round(mean, 3),
            "per_utterance_cpu_s": round(cpu, 3),
            "extrapolated_all_utterances_cpu_s": round(cpu * len(utterances), 3),
            "per_utterance_decode_s": round(float(np.mean([p["decode_s"] for p in per])), 3),
            "extrapolated_all_utterances_s": round(mean * len(utterances), 3),
            "threads": torch.get_num_threads()}


def peak_rss_of(cmd: list[str]) -> tuple[float, float, str]:
    """Run a child process; return (peak RSS in MB, wall seconds, stdout), polling every 0.1 s."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps, peak, stop = psutil.Process(proc.pid), [0], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], ps.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.1)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    out, err = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"child failed ({proc.returncode}): {err[-2000:]}")
    return peak[0] / 2**20, time.perf_counter() - t0, out


def child_analyze(path: str, model_path: str | None) -> None:
    """Child-process entry: analyze and print a small JSON (used for peak-memory runs)."""
    from mmva.analyze import analyze
    from mmva.model.default import load_default_model

    import psutil

    # resident memory as each window starts: flat = bounded. (Not ru_maxrss: Linux carries the
    # parent's high-water mark across fork+exec into the child's.)
    rss: list[float] = []
    me = psutil.Process()

    def progress(stage: str, fraction: float) -> None:
        if stage == "audio":
            rss.append(round(me.memory_info().rss / 2**20, 1))

    t = analyze(path, model=load_default_model(model_path), progress=progress)
    print(json.dumps({"utterances": len(t.utterances), "duration": t.duration,
                      "stages_s": {k: round(v, 2) for k, v in t.timings.items()},
                      "rss_mb_at_each_window_start": rss}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--ref-utterances", type=int, default=3, help="utterances run through the reference model")
    ap.add_argument("--skip-hour", action="store_true")
    ap.add_argument("--hour-seconds", type=float, default=3600.0)
    ap.add_argument("--work", default=None, help="folder for generated media (default: a temp folder)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--default-model", default=None, help="default-model folder (default: the shipped one)")
    ap.add_argument("--child-analyze", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_analyze:
        child_analyze(args.child_analyze, args.default_model)
        return
    from mmva.analyze import AnalyzeOptions

    work = Path(args.work or tempfile.mkdtemp(prefix="mmva-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    opts = AnalyzeOptions()
    talk = work / "talk60.mp4"
    if not talk.exists():
        make_talk(talk, args.seconds)
    res: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                             "processor": platform.processor() or platform.machine(),
                             "load_average_at_start": [round(x, 2) for x in os.getloadavg()]},
                 "video": {"seconds": args.seconds, "size": "640x360", "fps": 25}}
    res["decode_floor"] = decode_floor(str(talk), opts.fps, opts.max_side)
    mm = run_mmva(str(talk), args.default_model)
    timeline = mm.pop("timeline")
    mm["realtime_factor"] = round(args.seconds / mm["wall_s"], 2)
    mm["warm_realtime_factor"] = round(args.seconds / mm["warm_wall_s"], 2)
    from mmva.model.default import load_default_model

    described = load_default_model(args.default_model).describe()
    mm["default_model"] = {"path": args.default_model or "shipped", "name": described.get("name"),
                           "version": described.get("version")}
    voice = getattr(load_default_model(args.default_model), "voice_head", lambda: None)()
    mm["voice_head_available"] = voice is not None
    res["mmva"] = mm
    print(json.dumps({"decode_floor": res["decode_floor"], "mmva": mm}, indent=2), flush=True)
    ref = run_reference(str(talk), timeline.utterances, args.ref_utterances)
    seg = sum(mm["stages_s"].get(k, 0.0) for k in ("probe", "audio", "vad", "speech"))
    ref["with_segmentation_s"] = round(ref["extrapolated_all_utterances_s"] + seg, 3)
    ref["speedup_of_mmva"] = round(ref["with_segmentation_s"] / mm["wall_s"], 2)
    seg_cpu = mm["cpu_s"] * seg / max(mm["wall_s"], 1e-9)  # segmentation's share of mmva's CPU time
    ref["speedup_of_mmva_cpu"] = round((ref["extrapolated_all_utterances_cpu_s"] + seg_cpu) / mm["cpu_s"], 2)
    res["reference"] = ref
    print(json.dumps({"reference": ref}, indent=2), flush=True)
    if not args.skip_hour:
        hour = work / f"long{int(args.hour_seconds)}.mp4"
        if not hour.exists():
            t = time.perf_counter()
            make_hour(hour, args.hour_seconds)
            print(f"made {hour} in {time.perf_counter() - t:.0f} s", flush=True)
        me = [sys.executable, __file__] + (["--default-model", args.default_model] if args.default_model else [])
        short_peak, short_wall, _ = peak_rss_of(me + ["--child-analyze", str(talk)])
        peak, wall, out = peak_rss_of(me + ["--child-analyze", str(hour)])
        res["hour"] = {"seconds": args.hour_seconds, "peak_rss_mb": round(peak, 1), "wall_s": round(wall, 1),
                       "realtime_factor": round(args.hour_seconds / wall, 2), "child": json.loads(out),
                       "talk60_peak_rss_mb": round(short_peak, 1), "talk60_child_wall_s": round(short_wall, 1)}
        print(json.dumps({"hour": res["hour"]}, indent=2), flush=True)
    res["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
