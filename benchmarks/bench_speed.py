"""Whole-process speed of `mmva analyze` on camera-resolution talking heads (issue 15).

    nice python benchmarks/bench_speed.py                        # 10 s and 60 s, 3 cold runs each
    python benchmarks/bench_speed.py --lengths 10,60,600 --runs 3
    python benchmarks/bench_speed.py --baseline-src ../main/src  # the previous code side by side

What a user pays: every run is a fresh `mmva analyze FILE -q` process (imports, model loading,
decoding, recognition, the heads, writing the JSON), timed like `/usr/bin/time -v`: wall seconds,
CPU seconds (user + system of the process and its children) and peak resident memory
(``ru_maxrss`` of the waited child). Medians of ``--runs`` cold runs per input.

Inputs (made once into ``--work``): 1280x720, 30 fps, H.264 (x264 defaults: B-frames) + AAC, a
real face photo (``skimage.data.astronaut()``) moving over a background, espeak-ng sentences back
to back (0.25 s apart, about 15 per minute) like a continuous talk.

Side by side in the same run, on the same files:
- ``floor``: a process that decodes every video frame and the audio track with PyAV (threaded
  decoding, no conversion, no model): the least any analysis of the file can cost;
- ``baseline`` (``--baseline-src``, optional): the same CLI from another source tree, e.g. the
  main branch before this work, so the speed-up is a ratio measured under the same load;
- the start-up cost: `mmva --help` and `python -c "import mmva.cli"`, and whether the CLI imported
  torch, transformers, librosa, fastapi or boto3 at start.

The JSON outputs of both trees are compared (labels and probabilities, ``--tolerance``) and the
stage split of one cold run (``timings`` of the JSON) is stored. Writes
benchmarks/results/speed.json; ``python benchmarks/report.py`` renders it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))  # siblings: machine, bench_analyze

import bench_analyze  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "speed.json"
SRC = Path(__file__).resolve().parent.parent / "src"
RATE = 16000
# bench_analyze's sentences, and two more so a minute of speech repeats fewer of them
LINES = bench_analyze.LINES + (
    "Thank you so much, that really made my day.",
    "I do not know what to say, this is terrible.",
)
HEAVY = ("torch", "transformers", "librosa", "fastapi", "boto3")


def speech_track(seconds: float, gap: float = 0.25, first_line: int = 0) -> tuple[np.ndarray, int]:
    """espeak-ng sentences back to back (``gap`` s apart) until ``seconds``; also their count."""
    from mmva.data.synth import speak

    parts, total, i = [], 0, first_line
    while total < seconds * RATE:
        line = LINES[i % len(LINES)]
        a = speak(line, pitch=40 + 7 * (i % 6), speed=165 + 10 * (i % 4))
        parts += [a, np.zeros(int(gap * RATE), np.float32)]
        total += len(a) + int(gap * RATE)
        i += 1
    return np.concatenate(parts)[: int(seconds * RATE)], i - first_line


def make_talk(path: Path, seconds: float, width: int = 1280, height: int = 720, fps: int = 30,
              first_line: int = 0) -> dict:
    """Write the talking head, streaming frames to the encoder (a 720p minute never sits in memory)."""
    import av

    from mmva.data.synth import face_photo

    audio, n_lines = speech_track(seconds, first_line=first_line)
    face = face_photo(height * 2 // 3)
    background = np.empty((height, width, 3), np.uint8)
    background[:] = np.linspace(40, 90, width, dtype=np.uint8)[None, :, None]
    with av.open(str(path), "w", format="mp4") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
        vs.options = {"preset": "veryfast", "crf": "23"}  # x264 defaults otherwise: B-frames, as cameras and phones
        as_ = out.add_stream("aac", rate=RATE, layout="mono")
        y0 = height // 6
        for k in range(int(seconds * fps)):
            frame = background.copy()
            x = width // 2 - face.shape[1] // 2 + int(120 * np.sin(2 * np.pi * k / (fps * 6)))
            y = y0 + int(20 * np.sin(2 * np.pi * k / (fps * 4)))
            frame[y:y + face.shape[0], x:x + face.shape[1]] = face
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = k
            for p in vs.encode(vf):
                out.mux(p)
        for p in vs.encode():
            out.mux(p)
        for i in range(0, len(audio), 1024):
            af = av.AudioFrame.from_ndarray(audio[None, i:i + 1024].copy(), format="flt", layout="mono")
            af.sample_rate, af.pts = RATE, i
            for p in as_.encode(af):
                out.mux(p)
        for p in as_.encode():
            out.mux(p)
    return {"path": str(path), "seconds": seconds, "size": f"{width}x{height}", "fps": fps,
            "sentences": n_lines, "sentences_per_min": round(n_lines * 60 / seconds, 1)}


def make_input(work: Path, seconds: int) -> dict:
    path = work / f"talk{seconds}_720p30.mp4"
    meta = work / f"talk{seconds}_720p30.json"
    if path.exists() and meta.exists():
        return json.loads(meta.read_text())
    if seconds > 60 and seconds % 60 == 0:  # long inputs: the minute repeated (packets copied)
        from bench_scaling import repeat_video

        one = make_input(work, 60)
        repeat_video(Path(one["path"]), path, seconds // 60)
        info = {**one, "path": str(path), "seconds": seconds, "sentences": one["sentences"] * (seconds // 60)}
    else:
        info = make_talk(path, float(seconds))
    meta.write_text(json.dumps(info))
    return info


# -------------------------------------------------------------------------------------------------
# whole-process timing

CLI = "import sys; from mmva.cli import app; sys.argv[0] = 'mmva'; app()"  # what the `mmva` script runs
FLOOR = r"""
import sys, av
with av.open(sys.argv[1]) as c:
    v = c.streams.video[0]
    v.thread_type = "AUTO"
    n = sum(1 for _ in c.decode(v))
with av.open(sys.argv[1]) as c:
    m = sum(f.samples for f in c.decode(audio=0))
print(n, m)
"""
SPY = r"""
import sys
sys.argv = ["mmva"] + sys.argv[1:]
import mmva.analyze.pipeline as pipeline
def stop(*args, **kwargs):
    print(" ".join(m for m in %r if m in sys.modules))
    raise SystemExit(0)
pipeline.analyze = stop
import mmva.analyze
mmva.analyze.analyze = stop
from mmva.cli import app
app()
"""


def env_for(src: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(src)
    return env


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    """One child process timed like ``/usr/bin/time -v``: wall, CPU (user + sys), peak RSS.

    GNU time runs the command when present (its own tiny footprint leaves ``ru_maxrss`` the
    child's); else the children's resource usage (peak RSS: the largest child so far)."""
    gnu = Path("/usr/bin/time")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        full = [str(gnu), "-f", "%e %U %S %M", "-o", tf.name, *cmd] if gnu.exists() else cmd
        proc = subprocess.run(full, capture_output=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): "
                               f"{proc.stderr.decode(errors='replace')[-2000:]}")
        if gnu.exists():
            _, u, s_, m = Path(tf.name).read_text().split()[-4:]
            cpu, rss = float(u) + float(s_), int(m) / 1024
        else:  # pragma: no cover - no GNU time
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
            rss = after.ru_maxrss / 1024
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 2), "peak_rss_mb": round(rss, 1),
            "stdout": proc.stdout.decode(errors="replace")}


FACE_DETECTOR = "auto"  # --face-detector: "haar" is what the plain install has, "mtcnn" the [faces] extra


def analyze_cmd(inputs: list[str], out_dir: Path) -> list[str]:
    return [sys.executable, "-c", CLI, "analyze", *inputs, "-q", "-o", str(out_dir), "--face-detector", FACE_DETECTOR]


def _probs(value: Any) -> dict[str, float] | None:
    """A distribution as {label: probability}, from a dict or a list of {label, confidence}."""
    if isinstance(value, dict):
        return {k: float(v) for k, v in value.items() if isinstance(v, (int, float))}
    if isinstance(value, list) and all(isinstance(e, dict) and "label" in e for e in value):
        return {e["label"]: float(e.get("confidence", 0.0)) for e in value}
    return None


def compare(a: dict, b: dict, tol: float) -> dict:
    """How two analyze JSONs of one file differ: segmentation, top labels, largest probability gap
    (fused and per modality)."""
    ua, ub = a["utterances"], b["utterances"]
    same_spans = len(ua) == len(ub) and all(
        (x["start_time"], x["end_time"], x["text"], x.get("speaker")) == (y["start_time"], y["end_time"], y["text"], y.get("speaker"))
        for x, y in zip(ua, ub))
    top_diffs, gap, per_modality_gap = 0, 0.0, {}
    for x, y in zip(ua, ub):
        top_diffs += any([e["label"] for e in x[key][:1]] != [e["label"] for e in y[key][:1]]
                         for key in ("emotions", "sentiments"))
        for key in ("emotion_probs", "sentiment_probs"):
            px, py = _probs(x.get(key)) or {}, _probs(y.get(key)) or {}
            for k in set(px) | set(py):
                gap = max(gap, abs(px.get(k, 0.0) - py.get(k, 0.0)))
        mods_x, mods_y = x.get("per_modality") or {}, y.get("per_modality") or {}
        for m in set(mods_x) | set(mods_y):
            for task in ("emotion", "sentiment"):
                px, py = _probs(mods_x.get(m, {}).get(task)), _probs(mods_y.get(m, {}).get(task))
                if px is None or py is None:
                    top_diffs += (px is None) != (py is None)  # a modality present in one run only
                    continue
                g = max((abs(px.get(k, 0.0) - py.get(k, 0.0)) for k in set(px) | set(py)), default=0.0)
                per_modality_gap[m] = round(max(per_modality_gap.get(m, 0.0), g), 7)
    return {"utterances": [len(ua), len(ub)], "same_segmentation": same_spans, "top_label_differences": top_diffs,
            "max_probability_difference": round(gap, 7), "max_difference_per_modality": per_modality_gap,
            "within_tolerance": same_spans and not top_diffs and max([gap, *per_modality_gap.values()]) <= tol,
            "tolerance": tol}


def top_imports(cmd: list[str], env: dict[str, str], n: int = 12) -> list[list]:
    """The top-level packages costing most import time in one run of ``cmd`` (``-X importtime``)."""
    proc = subprocess.run([cmd[0], "-X", "importtime", *cmd[1:]], capture_output=True, env=env, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m and len(m.group(3)) == 1:
            rows.append((int(m.group(2)) / 1e6, m.group(4)))
    rows.sort(reverse=True)
    return [[name, round(sec, 3)] for sec, name in rows[:n]]


def startup(src: Path, talk: str, out_dir: Path) -> dict:
    """What a command costs before any work: `mmva --help`, `import mmva.cli`, and the heavy
    libraries already imported when `mmva analyze` reaches ``analyze()``."""
    env = env_for(src)
    help_ = measure([sys.executable, "-c", CLI, "--help"], env)
    imp = measure([sys.executable, "-c", "import mmva.cli"], env)
    spy = measure([sys.executable, "-c", SPY % (HEAVY,), "analyze", talk, "-q", "-o", str(out_dir)], env)
    return {"help_wall_s": help_["wall_s"], "import_cli_wall_s": imp["wall_s"],
            "heavy_imported_before_analyze": spy["stdout"].split(),
            "import_cli_top": top_imports([sys.executable, "-c", "import mmva.cli"], env, 6)}


def batch_clips(work: Path, n: int = 20, seconds: float = 6.0) -> Path:
    """A folder of ``n`` short 720p30 talking heads (each a different stretch of sentences)."""
    folder = work / f"clips{n}"
    done = folder / ".done"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        make_talk(folder / f"clip{i:02d}.mp4", seconds, first_line=i)
    done.write_text("ok")
    return folder


def median(rows: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in rows), 3)


def run_length(info: dict, trees: dict[str, Path], runs: int, work: Path) -> dict:
    """Cold runs of each tree interleaved with the decode floor: medians and the stage split."""
    path = info["path"]
    rows: dict[str, list[dict]] = {"floor": [], **{name: [] for name in trees}}
    outputs: dict[str, dict] = {}
    for r in range(runs):
        rows["floor"].append(measure([sys.executable, "-c", FLOOR, path], env_for(SRC)))
        for name, src in trees.items():
            out_dir = work / f"out-{name}-{int(info['seconds'])}-{r}"
            res = measure(analyze_cmd([path], out_dir), env_for(src))
            doc = json.loads((out_dir / (Path(path).stem + ".mmva.json")).read_text())
            res["stages_s"] = {k: round(v, 3) for k, v in (doc.get("timings") or {}).items()}
            res["utterances"] = len(doc["utterances"])
            res.pop("stdout")
            rows[name].append(res)
            outputs.setdefault(name, doc)
            print(f"  {info['seconds']:g} s run {r + 1}: {name} {res['wall_s']:.2f} s wall, {res['cpu_s']:.2f} s CPU, "
                  f"{res['peak_rss_mb']:.0f} MB", flush=True)
        print(f"  {info['seconds']:g} s run {r + 1}: floor {rows['floor'][-1]['wall_s']:.2f} s", flush=True)
    for row in rows["floor"]:
        row.pop("stdout")
    summary = {name: {"wall_s": median(rs, "wall_s"), "cpu_s": median(rs, "cpu_s"),
                      "peak_rss_mb": median(rs, "peak_rss_mb"), "runs": rs} for name, rs in rows.items()}
    for name in trees:
        summary[name]["x_real_time"] = round(info["seconds"] / summary[name]["wall_s"], 2)
        summary[name]["x_floor"] = round(summary[name]["wall_s"] / summary["floor"]["wall_s"], 2)
        summary[name]["cold_stages_s"] = rows[name][0]["stages_s"]
    return {"input": {k: v for k, v in info.items() if k != "path"}, **summary, "_outputs": outputs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lengths", default="10,60", help="seconds, comma-separated (600 = the minute ten times)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline-src", default=None, help="another tree's src/ to run side by side (e.g. main)")
    ap.add_argument("--baseline-name", default="baseline")
    ap.add_argument("--batch", type=int, default=20, help="clips in the many-files run (0: skip)")
    ap.add_argument("--tolerance", type=float, default=1e-4, help="largest probability difference called equal")
    ap.add_argument("--work", default=None, help="folder for generated media (default: a temp folder)")
    ap.add_argument("--face-detector", default="auto", choices=["auto", "haar", "mtcnn"],
                    help="passed to every mmva analyze run (auto: MTCNN when mmva[faces] is installed)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    global FACE_DETECTOR
    FACE_DETECTOR = args.face_detector
    from machine import end_load, machine_info

    work = Path(args.work or tempfile.mkdtemp(prefix="mmva-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    trees = {"mmva": SRC}
    if args.baseline_src:
        trees = {args.baseline_name: Path(args.baseline_src).resolve(), "mmva": SRC}
    shown = [a if not a.startswith("/") else ("BASE/src" if a == args.baseline_src else "WORK")
             for a in sys.argv[1:]]  # no machine paths in the results
    res: dict[str, Any] = {"machine": machine_info("cpu"), "command": " ".join(["python benchmarks/bench_speed.py", *shown]),
                           "trees": list(trees), "runs": args.runs, "face_detector": args.face_detector, "lengths": {}}
    inputs = {int(x): make_input(work, int(x)) for x in args.lengths.split(",")}
    first = inputs[min(inputs)]["path"]
    res["startup"] = {name: startup(src, first, work / "spy") for name, src in trees.items()}
    res["import_top"] = {name: top_imports(analyze_cmd([first], work / f"imp-{name}"), env_for(src))
                         for name, src in trees.items()}
    print(json.dumps(res["startup"]), flush=True)
    for seconds, info in inputs.items():
        print(f"{seconds} s input: {info}", flush=True)
        got = run_length(info, trees, args.runs, work)
        outputs = got.pop("_outputs")
        if args.baseline_src:
            got["same_output"] = compare(outputs[args.baseline_name], outputs["mmva"], args.tolerance)
            got["speedup"] = round(got[args.baseline_name]["wall_s"] / got["mmva"]["wall_s"], 2)
            got["cpu_ratio"] = round(got[args.baseline_name]["cpu_s"] / got["mmva"]["cpu_s"], 2)
        res["lengths"][str(seconds)] = got
    if args.batch:
        folder = batch_clips(work, args.batch)
        res["batch"] = {"clips": args.batch, "clip_seconds": 6.0, "size": "1280x720", "fps": 30}
        for name, src in trees.items():
            out_dir = work / f"batch-{name}"
            r = measure(analyze_cmd([str(folder)], out_dir), env_for(src))
            r.pop("stdout")
            r["per_clip_s"] = round(r["wall_s"] / args.batch, 3)
            res["batch"][name] = r
            print(f"  batch of {args.batch}: {name} {r['wall_s']:.1f} s ({r['per_clip_s']:.2f} s per clip)", flush=True)
    res["machine"] = end_load(res["machine"])
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
