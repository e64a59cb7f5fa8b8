"""Analyze speed and peak memory against input length (issue 8 parts 1-2), side by side with the
reference pipeline and the decode-only floor, medians of several runs.

    nice python benchmarks/bench_scaling.py                      # 10 s, 60 s, 10 min; 3 runs each
    python benchmarks/bench_scaling.py --lengths 10,60 --runs 2  # quicker
    python benchmarks/bench_scaling.py --device cuda             # the same figures on a GPU machine

Inputs: bench_analyze's generated talking head (640x360, 25 fps, H.264/AAC, a real face photo that
sways, espeak-ng sentences with pauses); the 10 min file is the 60 s file repeated ten times (packets
copied, no re-encode), so every minute holds the same work and time should grow linearly.

Each run of each length is one child process (a fresh interpreter, as a user's `mmva analyze`):
it loads the default model and the ASR (load times reported apart), then times ``analyze()``; the
parent samples the child's resident memory every 0.1 s (``bench_analyze.peak_rss_of``). The
``emotions`` stage is split by timing the default model's own per-modality calls: faces
(``video_probs``), text (``text_probs``), audio (``audio_probs``), the rest is fusion.

In the same run the parent times the decode-only floor (``bench_analyze.decode_floor``) and the
reference model per utterance (``bench_analyze.run_reference``: BERT-base + R3D-18 on 30 frames at
224x224 + log-mel CNN, random weights), measured on ``--ref-utterances`` utterances of the 60 s file
and extrapolated to each length's utterance count plus the same segmentation time.
Writes benchmarks/results/scaling.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))  # siblings: bench_analyze, machine

import bench_analyze as ba  # noqa: E402  (generator and measurement functions are reused, not copied)
from machine import check_device, end_load, machine_info  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "scaling.json"
DECODE = ("probe", "audio", "frames", "subtitles")
ASR = ("vad", "speech")


def repeat_video(src: Path, dst: Path, times: int) -> Path:
    """`src` played `times` times in a row, packets copied with shifted timestamps (no re-encode).

    >>> repeat_video(Path("talk60.mp4"), Path("talk600.mp4"), 10)   # doctest: +SKIP
    """
    import av

    with av.open(str(src)) as inp:
        length = (inp.duration or 0) / av.time_base  # container length: the longest stream, so no overlap
    with av.open(str(dst), "w", format="mp4") as out:
        outs: dict[int, Any] = {}
        for k in range(times):
            with av.open(str(src)) as inp:
                keep = [s for s in inp.streams if s.type in ("video", "audio")]
                for s in keep:
                    if s.index not in outs:
                        outs[s.index] = out.add_stream_from_template(s)
                for pkt in inp.demux(*keep):
                    if pkt.dts is None or (k and pkt.dts < 0):  # flush packet; AAC priming after copy 1
                        continue
                    shift = int(round(k * length / pkt.time_base))
                    pkt.pts, pkt.dts = pkt.pts + shift, pkt.dts + shift
                    pkt.stream = outs[pkt.stream.index]
                    out.mux(pkt)
    return dst


def make_input(work: Path, seconds: int) -> Path:
    """The generated talking head of `seconds` (a multiple of 60 above 60 repeats the 60 s file)."""
    path = work / f"talk{seconds}.mp4"
    if path.exists():
        return path
    if seconds <= 60:
        return ba.make_talk(path, float(seconds))
    if seconds % 60:
        raise SystemExit(f"--lengths: {seconds} s: lengths above 60 s must be multiples of 60")
    return repeat_video(make_input(work, 60), path, seconds // 60)


def _timed(fn: Callable, into: dict[str, float], name: str) -> Callable:
    """`fn` that adds its wall time to into[name] (instrumentation of the real model's calls)."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into[name] = into.get(name, 0.0) + time.perf_counter() - t
    return wrapper


def child(path: str, device: str) -> None:
    """Child-process entry: load, analyze once, print the timings as one JSON line."""
    import torch

    from mmva.analyze import analyze
    from mmva.analyze.asr import load_asr
    from mmva.model.default import load_default_model

    t0 = time.perf_counter()
    model = load_default_model()
    if device != "cpu":
        model = model.to(device)
    t1 = time.perf_counter()
    load_asr(None, device)
    t2, c2 = time.perf_counter(), time.process_time()
    parts: dict[str, float] = {}
    model.text_probs = _timed(model.text_probs, parts, "text")
    model.audio_probs = _timed(model.audio_probs, parts, "audio")
    model.video_probs = _timed(model.video_probs, parts, "faces")
    timeline = analyze(path, device=device, model=model)
    t3, c3 = time.perf_counter(), time.process_time()
    st = timeline.timings
    stages = {"decode": sum(st.get(k, 0.0) for k in DECODE), "speech_recognition": sum(st.get(k, 0.0) for k in ASR),
              **parts, "fusion": max(0.0, st.get("emotions", 0.0) - sum(parts.values()))}
    print(json.dumps({
        "wall_s": t3 - t2, "cpu_s": c3 - c2, "load_default_model_s": t1 - t0, "load_asr_s": t2 - t1,
        "stages_s": stages, "pipeline_stages_s": st, "utterances": len(timeline.utterances),
        "modality_usage": timeline.summary.get("modality_usage"), "torch_threads": torch.get_num_threads(),
        "utterance_spans": [[u.start_time, u.end_time, u.text] for u in timeline.utterances],
    }))


def _median(rows: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 3)


def measure_length(path: Path, seconds: int, device: str, run: int) -> dict:
    """One run on one file: decode floor, then analyze in a child (time + peak memory)."""
    from mmva.analyze import AnalyzeOptions

    opts = AnalyzeOptions()
    floor = ba.decode_floor(str(path), opts.fps, opts.max_side)
    cmd = [sys.executable, __file__, "--child", str(path), "--device", device]
    peak_mb, child_wall, out = ba.peak_rss_of(cmd)
    res = json.loads(out.strip().splitlines()[-1])
    res.update(peak_rss_mb=round(peak_mb, 1), child_wall_s=round(child_wall, 2), decode_floor_s=floor["total_s"],
               seconds=seconds, run=run)
    print(f"  {seconds:>5} s run {run}: analyze {res['wall_s']:.1f} s, peak {peak_mb:.0f} MB, "
          f"decode floor {floor['total_s']:.2f} s", flush=True)
    return res


def summarize(seconds: int, rows: list[dict], ref_per_utt: float) -> dict:
    """Medians over runs for one length, with the reference side by side (same runs)."""
    wall = _median(rows, "wall_s")
    floor = _median(rows, "decode_floor_s")
    stages = {k: round(statistics.median(r["stages_s"].get(k, 0.0) for r in rows), 3) for k in rows[0]["stages_s"]}
    utts = int(statistics.median(r["utterances"] for r in rows))
    seg = stages["decode"] + stages["speech_recognition"]  # the reference needs the same segmentation
    ref = [r["reference_per_utterance_s"] * r["utterances"] + r["stages_s"]["decode"]
           + r["stages_s"]["speech_recognition"] for r in rows]
    ratios = [x / r["wall_s"] for x, r in zip(ref, rows)]
    return {
        "seconds": seconds, "runs": len(rows), "utterances": utts,
        "analyze_s": wall, "seconds_per_minute_of_video": round(wall * 60 / seconds, 3),
        "realtime_factor": round(seconds / wall, 2), "cpu_s": _median(rows, "cpu_s"),
        "peak_rss_mb": _median(rows, "peak_rss_mb"), "stages_s": stages,
        "load_default_model_s": _median(rows, "load_default_model_s"), "load_asr_s": _median(rows, "load_asr_s"),
        "decode_floor_s": floor, "times_decode_floor": round(wall / floor, 2),
        "reference_s": round(statistics.median(ref), 2), "reference_segmentation_s": round(seg, 3),
        "reference_per_utterance_s": round(ref_per_utt, 3),
        "speedup_vs_reference": round(statistics.median(ratios), 2),
        "modality_usage": rows[0]["modality_usage"],
    }


def reference_once(path: Path, spans: list, n: int) -> dict:
    """bench_analyze.run_reference on the first `n` utterances of `path` (spans from a child run)."""
    utts = [SimpleNamespace(start_time=s, end_time=e, text=t) for s, e, t in spans]
    ref = ba.run_reference(str(path), utts, n)
    print(f"  reference: {ref['per_utterance_s']:.2f} s per utterance ({n} measured)", flush=True)
    return ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="10,60,600", help="input lengths in seconds, comma-separated")
    ap.add_argument("--runs", type=int, default=3, help="runs per length (medians are reported)")
    ap.add_argument("--ref-utterances", type=int, default=3, help="utterances timed through the reference model")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--work", default=None, help="folder for generated media (default: a temp folder)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.device)
        return
    check_device(args.device)
    info = machine_info(args.device)
    lengths = [int(x) for x in args.lengths.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="mmva-scaling-"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    files = {s: make_input(work, s) for s in lengths}
    ref_file = files.get(60) or make_input(work, 60)
    print(f"inputs ready in {time.perf_counter() - t:.0f} s: {', '.join(str(p) for p in files.values())}", flush=True)
    rows: dict[int, list[dict]] = {s: [] for s in lengths}
    refs = []
    for run in range(1, args.runs + 1):  # lengths interleaved within a run: load drifts hit all alike
        spans = None
        for s in lengths:
            r = measure_length(files[s], s, args.device, run)
            rows[s].append(r)
            spans = r["utterance_spans"] if s == 60 or spans is None else spans
        if 60 not in files:
            spans = measure_length(ref_file, 60, args.device, run)["utterance_spans"]
        ref = reference_once(ref_file, spans, args.ref_utterances)
        refs.append(ref)
        for s in lengths:
            rows[s][-1]["reference_per_utterance_s"] = ref["per_utterance_s"]
    ref_per_utt = statistics.median(r["per_utterance_s"] for r in refs)
    for rs in rows.values():
        for r in rs:
            r.pop("utterance_spans", None)
    result = {
        "machine": end_load(info), "command": "python benchmarks/bench_scaling.py " + " ".join(sys.argv[1:]),
        "video": {"size": "640x360", "fps": 25, "content": "bench_analyze.make_talk; >60 s = the 60 s file repeated"},
        "reference": {"per_utterance_s_median": round(ref_per_utt, 3), "measured_utterances": args.ref_utterances,
                      "runs": [{k: v for k, v in r.items()} for r in refs]},
        "lengths": [summarize(s, rows[s], ref_per_utt) for s in lengths],
        "runs": {str(s): rows[s] for s in lengths},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for row in result["lengths"]:
        print(f"{row['seconds']:>5} s: {row['analyze_s']} s ({row['realtime_factor']}x real time), "
              f"peak {row['peak_rss_mb']} MB, {row['times_decode_floor']}x decode floor, "
              f"{row['speedup_vs_reference']}x faster than reference")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
