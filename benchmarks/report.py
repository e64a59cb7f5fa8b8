"""Regenerate the tables of benchmarks/README.md from benchmarks/results/*.json (no figure typed by hand).

    python benchmarks/report.py            # rewrite the part of README.md between the report markers
    python benchmarks/report.py --check    # exit 1 if README.md is not what the results give

Only the text between ``<!-- report:begin -->`` and ``<!-- report:end -->`` is generated; the prose
around it is kept. A results file that is missing gives a "not run" line instead of its table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).parent
BEGIN, END = "<!-- report:begin -->", "<!-- report:end -->"
TARGET_RTF, TARGET_SPEEDUP, TARGET_HOUR_MB = 4.0, 10.0, 2.5 * 1024


def _load(results: Path, name: str) -> dict | None:
    path = results / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _fmt(x: Any, nd: int = 2) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table.

    >>> print(table(["a", "b"], [[1, 2.5]]))
    | a | b |
    |---|---|
    | 1 | 2.50 |
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(name: str, res: dict) -> str:
    """'machine, date, load, command' for one results file, from whichever keys its script wrote."""
    m = res.get("machine", {})
    if isinstance(m, str):
        return f"`{name}.json`: {m}"
    cpu = m.get("cpu_model") or m.get("processor") or (m["platform"].split("-")[0] if m.get("platform") else "CPU model not recorded")
    cores = m.get("cores") or m.get("cpus") or m.get("cpu_count")
    parts = [f"{cpu}, {cores} cores" + (f", {m['ram_gb']} GB RAM" if m.get("ram_gb") else "")]
    if m.get("gpu"):
        parts.append(f"GPU {m['gpu']}")
    parts.append(f"device {m.get('device', 'cpu')}")
    if m.get("torch"):
        parts.append(f"torch {m['torch']}")
    if m.get("torch_threads"):
        parts.append(f"{m['torch_threads']} torch threads")
    load = [f"{k.replace('load_average_at_', '').replace('load_avg_1m', 'during the run, 1 min only:')} "
            f"{'/'.join(str(v) for v in (m[k] if isinstance(m[k], list) else [m[k]]))}"
            for k in ("load_average_at_start", "load_average_at_end", "load_avg_1m") if k in m]
    if load:
        parts.append("load average (1/5/15 min) " + ", ".join(load))
    date = m.get("date_utc") or res.get("measured_at")
    parts.append(f"date {date}" if date else "date not recorded by the script (see `git log` of the file)")
    cmd = (res.get("command") or "").strip()
    return f"`{name}.json`: " + "; ".join(parts) + (f"; command `{cmd}`" if cmd else "")


def _met(value: float | None, target: float, higher: bool = True) -> str:
    if value is None:
        return "–"
    return "met" if (value >= target if higher else value <= target) else "**missed**"


def section_speed(sc: dict | None, an: dict | None) -> str:
    """Part 1 + 2: the scaling table (medians) and the single-run bench_analyze figures."""
    out = ["### Analyze speed and memory against length (parts 1 and 2)", ""]
    if sc:
        rows = []
        for r in sc["lengths"]:
            rows.append([f"{r['seconds']} s", r["runs"], r["utterances"], r["analyze_s"],
                         r["seconds_per_minute_of_video"], r["realtime_factor"], round(r["peak_rss_mb"]),
                         r["decode_floor_s"], r["times_decode_floor"], r["reference_s"], r["speedup_vs_reference"],
                         f"{_met(r['realtime_factor'], TARGET_RTF)} / {_met(r['speedup_vs_reference'], TARGET_SPEEDUP)}"])
        out += [table(["input", "runs", "utterances", "analyze s (median)", "s per min of video", "× real time",
                       "peak RSS MB", "decode floor s", "× decode floor", "reference s (extrapolated)",
                       "× faster than reference", f"targets ≥{TARGET_RTF:g}× RT / ≥{TARGET_SPEEDUP:g}× ref"], rows), ""]
        out += [f"Reference pipeline: {sc['reference']['per_utterance_s_median']} s per utterance (median over runs, "
                f"{sc['reference']['measured_utterances']} utterances timed per run, the first one included), "
                "times each length's utterance count, plus the same decode + speech-recognition time.", ""]
        stages = [k for k in sc["lengths"][0]["stages_s"]]
        rows = [[f"{r['seconds']} s"] + [r["stages_s"].get(k) for k in stages]
                + [r["load_default_model_s"], r["load_asr_s"]] for r in sc["lengths"]]
        out += ["Per-stage wall seconds (median; model and ASR loading are once per process, outside the analyze time):",
                "", table(["input", *[s.replace("_", " ") for s in stages], "load default model", "load ASR"], rows), ""]
        usage = sc["lengths"][-1].get("modality_usage")
        if usage:
            out += [f"Modalities used ({sc['lengths'][-1]['seconds']} s input): "
                    + ", ".join(f"{k} {v}" for k, v in usage.items())
                    + " utterances" + (" — the voice head was not available, so the audio modality did not run."
                                       if not usage.get("audio") else "."), ""]
        out += [machine_line("scaling", sc), ""]
    else:
        out += ["`scaling.json`: not run yet (`python benchmarks/bench_scaling.py`).", ""]
    if an:
        mm, ref, floor = an["mmva"], an["reference"], an["decode_floor"]
        out += ["bench_analyze.py (one run of 60 s, by the analyze engineer; same generator):", "",
                table(["figure", "value"], [
                    ["analyze s", mm["wall_s"]], ["× real time", mm["realtime_factor"]],
                    ["decode floor s", floor["total_s"]], ["× decode floor", round(mm["wall_s"] / floor["total_s"], 2)],
                    ["reference s (extrapolated)", ref["with_segmentation_s"]],
                    ["× faster than reference (wall / CPU time)", f"{ref['speedup_of_mmva']} / {ref['speedup_of_mmva_cpu']}"],
                ]), ""]
        if an.get("hour"):
            h = an["hour"]
            out += [f"One hour of video (bench_analyze.py, one run): peak RSS {h['peak_rss_mb']} MB "
                    f"(60 s video: {h['talk60_peak_rss_mb']} MB), {h['wall_s']} s wall "
                    f"({h['realtime_factor']}× real time); 2.5 GB target "
                    f"{_met(h['peak_rss_mb'], TARGET_HOUR_MB, higher=False)}.", ""]
        out += [machine_line("analyze", an), ""]
    return "\n".join(out)


def section_targets(sc: dict | None, an: dict | None) -> str:
    """The issue's targets, each with the figure that decides it and where it comes from."""
    rows = []
    by_len = {r["seconds"]: r for r in (sc or {}).get("lengths", [])}
    r60 = by_len.get(60)
    if r60:
        rows.append(["default pipeline ≥ 4× real time (60 s, 2 CPU cores)", f"{r60['realtime_factor']}×",
                     _met(r60["realtime_factor"], TARGET_RTF), "scaling.json, median"])
        rows.append(["≥ 10× faster than the reference pipeline (60 s)", f"{r60['speedup_vs_reference']}×",
                     _met(r60["speedup_vs_reference"], TARGET_SPEEDUP), "scaling.json, median"])
    if an:
        rows.append(["default pipeline ≥ 4× real time (60 s, 2 CPU cores)", f"{an['mmva']['realtime_factor']}×",
                     _met(an["mmva"]["realtime_factor"], TARGET_RTF), "analyze.json, one run"])
        rows.append(["≥ 10× faster than the reference pipeline (60 s)", f"{an['reference']['speedup_of_mmva']}×",
                     _met(an["reference"]["speedup_of_mmva"], TARGET_SPEEDUP), "analyze.json, one run"])
        if an.get("hour"):
            rows.append(["peak memory ≤ 2.5 GB for 1 h of video", f"{an['hour']['peak_rss_mb']} MB",
                         _met(an["hour"]["peak_rss_mb"], TARGET_HOUR_MB, higher=False), "analyze.json, one run"])
    if sc and len(by_len) > 1:
        short, long_ = min(by_len), max(by_len)
        a, b = by_len[short], by_len[long_]
        slope = b["seconds_per_minute_of_video"] / a["seconds_per_minute_of_video"]
        growth = b["peak_rss_mb"] / a["peak_rss_mb"] - 1
        rows.append([f"time linear in length ({short} s → {long_} s)",
                     f"{a['seconds_per_minute_of_video']} → {b['seconds_per_minute_of_video']} s per min of video",
                     "linear or better" if slope <= 1.1 else "**worse than linear**", "scaling.json, median"])
        rows.append([f"memory flat in length ({short} s → {long_} s)",
                     f"{round(a['peak_rss_mb'])} → {round(b['peak_rss_mb'])} MB peak RSS ({growth:+.0%})",
                     "flat" if abs(growth) <= 0.1 else "**grows**", "scaling.json, median"])
    if sc and an and an.get("hour") and by_len:
        b, hour = by_len[max(by_len)], an["hour"]["peak_rss_mb"]
        growth = hour / b["peak_rss_mb"] - 1
        rows.append([f"memory bounded past the analysis window ({max(by_len)} s → 1 h)",
                     f"{round(b['peak_rss_mb'])} → {round(hour)} MB peak RSS ({growth:+.0%})",
                     "flat" if abs(growth) <= 0.1 else "**grows**", "scaling.json median → analyze.json one run (sparser content: a still face, a sentence every 30 s)"])
    if not rows:
        return ""
    return "\n".join(["### Targets", "", table(["target", "measured", "verdict", "source"], rows), ""])


def section_train(tr: dict | None) -> str:
    out = ["### Training throughput (part 3)", ""]
    if not tr:
        return "\n".join(out + ["`train.json`: not run yet (`python benchmarks/bench_train.py`).", ""])
    rows = []
    for r in tr["runs"]:
        proj = r.get("projected_epoch_seconds")
        ext = r.get("projected_extraction_seconds_once")
        rows.append([r["config"], r.get("runs", 1), r["train_clips_per_second"],
                     f"{proj:,.0f} s ({proj / 3600:.2f} h)" if proj else "–",
                     f"{ext:,.0f} s ({ext / 3600:.1f} h)" if ext else "–",
                     r.get("extraction_seconds_per_utterance")])
    out += [table(["run", "runs", "train utterances/s (median)", "projected epoch, 10k utterances",
                   "one-time feature extraction, 10k", "extraction s/utterance"], rows), ""]
    out += ["`reference:decode-every-step` is the full reference training step (decode 30 frames at 224² + audio, "
            "BERT-base and R3D-18 forward — BERT frozen as the SPEC says, R3D-18 frozen as configs/reference.yaml "
            "sets it — log-mel CNN and fusion forward + backward); `reference:cached-features` reads the frozen encoders' features from the cache "
            "(extracted once) and trains the rest; `reference:end-to-end` (only with `--end-to-end`) also trains "
            "BERT-base and R3D-18; `tiny` is the debug config. Random weights (hubs are offline).", "",
            machine_line("train", tr), ""]
    return "\n".join(out)


def _acc_rows(table_: dict, names: list[tuple[str, str]]) -> list[list[Any]]:
    rows = []
    for key, label in names:
        if key not in table_:
            continue
        e, s = table_[key]["emotion"], table_[key]["sentiment"]
        rows.append([label, e["weighted_f1"], e["accuracy"], e["macro_f1"], s["weighted_f1"], s["accuracy"], s["macro_f1"]])
    return rows


def section_accuracy(md: dict | None, ta: dict | None, fu: dict | None) -> str:
    out = ["### Accuracy (part 4)", "", "MELD dev (x100):", ""]
    head = ["model", "emotion wF1", "emotion acc", "emotion macro-F1", "sentiment wF1", "sentiment acc",
            "sentiment macro-F1"]
    if md:
        t = md["table"]
        out += [table(head, _acc_rows(t, [("majority", "majority class (neutral)"),
                                          ("text", "default text model, no context"),
                                          ("text_with_context", f"default text model + {md['context_turns']} "
                                                                "previous utterance(s)")])), ""]
        labels = list(t["text"]["emotion"]["per_class_f1"])
        out += ["Per-class emotion F1:", "", table(["model", *labels], [[k] + [t[k]["emotion"]["per_class_f1"][c]
                                                                             for c in labels] for k in t]), ""]
        labels = list(t["text"]["sentiment"]["per_class_f1"])
        out += ["Per-class sentiment F1:", "", table(["model", *labels], [[k] + [t[k]["sentiment"]["per_class_f1"][c]
                                                                               for c in labels] for k in t]), ""]
        out += [f"{md['n']} dev utterances; model {md['model'].get('name')} v{md['model'].get('version')} "
                f"({md['model'].get('text_base')}). The model's epoch and calibration were chosen on dev, so these "
                "in-sample figures are optimistic.", "", machine_line("meld_dev", md), ""]
    else:
        out += ["`meld_dev.json`: not run yet (`python benchmarks/bench_meld_dev.py`).", ""]
    if ta and ta.get("recipe_crossfit"):
        cf = ta["recipe_crossfit"]
        out += ["Honest (cross-fitted calibration) figure of the training recipe, from text_accuracy.json:", "",
                table(head, _acc_rows({"crossfit": cf}, [("crossfit", "default text model, cross-fitted")])), "",
                machine_line("text_accuracy", ta), ""]
    out += ["Generated corpus (mmva.data.make_corpus), dev split, x100:", ""]
    if fu:
        rows = _acc_rows(fu["table"], [("text", "text only"), ("video", "video only"), ("audio", "audio only"),
                                       ("fusion", "fusion of all three")])
        out += [table(head, rows), "",
                f"{fu['corpus']['dev_clips']} dev clips ({fu['corpus']['n_per_class']} per emotion), tiny config, "
                f"{fu['config']['epochs']} epochs, training seed(s) {fu['config']['seeds']} (medians); chance accuracy "
                f"{fu['chance_accuracy']}. Fusion minus the best single modality (emotion wF1): "
                f"{fu['fusion_minus_best_single_emotion_wf1']:+}.", "", machine_line("fusion", fu), ""]
    else:
        out += ["`fusion.json`: not run yet (`python benchmarks/bench_fusion.py`).", ""]
    return "\n".join(out)


def section_other(ex: dict | None, sv: dict | None, vo: dict | None = None) -> str:
    out = ["### Other measurements in results/", ""]
    if vo and isinstance(vo.get("table"), dict):
        rows = [[n, round(100 * r["accuracy_mean"], 2) if r.get("accuracy_mean") is not None else None,
                 round(100 * r["macro_f1_mean"], 2) if r.get("macro_f1_mean") is not None else None]
                for n, r in vo["table"].items()]
        out += ["Voice emotion head, leave-one-speaker-out (bench_voice.py, x100, mean over folds):", "",
                table(["variant", "accuracy", "macro-F1"], rows), "", machine_line("voice", vo), ""]
    if ex:
        rows = [[n, e.get("modality"), "random init" if "random" in str(e.get("weights")) else "pretrained",
                 e.get("clips_per_s"), e.get("clips_per_s_1_thread"),
                 e.get("cached_clips_per_s")] for n, e in ex.get("encoders", {}).items()]
        out += ["Feature extraction (bench_extract.py, clips of "
                f"{ex.get('media', {}).get('seconds')} s at {ex.get('media', {}).get('size')}):", "",
                table(["encoder", "modality", "weights", "clips/s", "clips/s, 1 thread", "from cache, clips/s"], rows),
                "", machine_line("extract", ex), ""]
    if sv:
        out += [f"Serving (serve_load.json): {sv.get('what')}: text p50 {sv.get('text_latency_p50_s')} s, "
                f"p95 {sv.get('text_latency_p95_s')} s, {sv.get('text_ok')}/{sv.get('text_requests')} ok; "
                f"job turnaround p50 {sv.get('job_turnaround_p50_s')} s; peak RSS {sv.get('rss_peak_mb')} MB.", "",
                machine_line("serve_load", sv), ""]
    return "\n".join(out)


def section_diarize(dz: dict | None) -> str:
    out = ["### Speaker diarization", ""]
    if not dz:
        return "\n".join(out + ["`diarize.json`: not run yet (`python benchmarks/bench_diarize.py`).", ""])
    th = f"{dz['default_threshold']:g}"
    given = dz.get("two_speakers_given", {})
    rows = [[name, r[th]["n"], round(100 * r[th]["der"], 1), round(100 * r[th]["der_median"], 1),
             round(100 * r[th]["count_accuracy"], 1), round(100 * given[name]["der"], 1) if name in given else None]
            for name, r in dz["by_threshold"].items()]
    out += ["Generated conversations of 2, 3 and 4 speakers (10 turns each; `espeak`: espeak-ng voices; the "
            "others: real speakers of that shared speech-emotion corpus, clips concatenated), oracle voice "
            "activity, DER by pyannote.metrics with no collar, x100 (bench_diarize.py):", "",
            table(["set", "conversations", "DER (speech-weighted)", "DER median", "speaker count right, %",
                   "DER, 2-speaker talks with --speakers 2"], rows), ""]
    if len(next(iter(dz["by_threshold"].values()))) > 1:
        sweep = [[name, *[round(100 * v["der"], 1) for v in r.values()]] for name, r in dz["by_threshold"].items()]
        out += ["DER by clustering threshold:", "",
                table(["set", *next(iter(dz["by_threshold"].values())).keys()], sweep), ""]
    out += [table(["input", "speech (s)", "diarization (s)", "x real time"],
                  [[f"{c['audio_seconds']:g} s", c["speech_seconds"], c["diarize_seconds"],
                    round(c["audio_seconds"] / c["diarize_seconds"], 1)] for c in dz.get("cost", [])]), "",
            machine_line("diarize", dz), ""]
    return "\n".join(out)


def _pct(x: float) -> float:
    return round(100 * x, 1)


def _ci(pair: list[float]) -> str:
    return f"{100 * pair[0]:+.1f} to {100 * pair[1]:+.1f}"


def section_voice_speakers(vs: dict | None, vl: dict | None = None) -> str:
    out = ["### Voice head with per-speaker normalisation on mixed-speaker recordings (issue 21)", ""]
    if not vs:
        return "\n".join(out + ["`voice_speakers.json`: not run yet (`python benchmarks/bench_voice_speakers.py`).", ""])
    out += ["Recordings built from one corpus each: 2, 3 or 4 of its speakers, each with a number of clips, "
            "shuffled, 0.2-0.8 s pauses; every clip one utterance. The voice head scores each clip with no speaker "
            "statistics (`none`: the utterance head), the whole recording normalised as one speaker (`recording`: "
            "analyze before diarization), each true speaker normalised alone (`oracle`), or each speaker found by "
            "the diarizer normalised alone (`diarized`: what analyze does now); a group needs "
            f"{vs['min_speaker_utterances']} clips for the speaker head, else gets the single-clip head"
            + ("; `diarized_pooled`, a candidate rule that analyze does not use: a diarized speaker with fewer "
               "clips takes the whole-recording normalisation instead" if "diarized_pooled" in vs["ways"] else "")
            + ". UAR over the corpus's classes and accuracy, "
            "pooled over its clips, x100; the last columns: UAR difference to `recording`, 95 % bootstrap interval "
            "over recordings (bench_voice_speakers.py).", ""]
    for name, res in (("voice_speakers", vs), ("voice_speakers_long", vl)):
        if res:
            out += _voice_speakers_block(name, res)
    return "\n".join(out)


def _voice_speakers_block(name: str, vs: dict) -> list[str]:
    corpora = vs["corpora"]
    lo, hi = vs.get("clips_per_speaker", [None, None])
    out = [f"**{lo}-{hi} clips a speaker** (`{name}.json`).", ""]
    heads = [("held_out", "heads refitted without the corpus (never heard these speakers)"),
             ("shipped", "the shipped head, **in-sample** (trained on every clip of these corpora: optimistic)")]
    for key, what in heads:
        rows = []
        for c, e in corpora.items():
            r = e.get(key)
            if not r:
                continue
            rows.append([c, e["recordings"], e["clips"], *[_pct(r[w]["uar"]) for w in vs["ways"]],
                         *[_pct(r[w]["accuracy"]) for w in vs["ways"]],
                         _ci(r["oracle"]["uar_vs_recording_ci95"]), _ci(r["diarized"]["uar_vs_recording_ci95"])])
        if rows:
            out += [f"With {what}:", "",
                    table(["corpus", "recordings", "clips", *[f"UAR {w}" for w in vs["ways"]],
                           *[f"acc. {w}" for w in vs["ways"]], "oracle - recording", "diarized - recording"], rows), ""]
    diar = [[c, " ".join(str(k) for k in e["speakers_per_recording"]), " ".join(str(k) for k in e["speakers_found"]),
             _pct(e["count_right"]), _pct(e["diarization_purity"])] for c, e in corpora.items()]
    out += ["Diarization of these recordings (oracle voice activity: the clip spans; count found automatically):", "",
            table(["corpus", "speakers per recording", "speakers found", "count right, %", "purity, % of clips"], diar),
            "", machine_line(name, vs), ""]
    return out


VOICE_NAMES = {"mfcc": "40 MFCC mean + std, RMS", "acoustic": "acoustic statistics (MFCC, YIN pitch, energy)",
               "whisper": "Whisper tiny.en encoder states, mean + std", "whisper-base": "Whisper base encoder states",
               "whisper+acoustic": "Whisper tiny + acoustic", "whisper-base+acoustic": "Whisper base + acoustic",
               "prosody": "prosody functionals (previous head)",
               "whisper-b12": "Whisper tiny.en blocks 1 and 2 (of 4), mean + std",
               "whisper-b12+acoustic": "Whisper tiny blocks 1+2 + acoustic"}
# the rows of the shipped heads: utterance (global, dropout 0.2), speaker (dropout 0.7)
SHIPPED_VOICE = {("whisper-b12+acoustic", "global", ()), ("whisper-b12+acoustic", "speaker", ("dropout 0.7",))}


def _voice_rows(block: dict) -> list[list]:
    rows = []
    for key, r in block.items():
        kinds, norm, *variant = key.split("|")  # a third part names a head setting other than the default
        s, per = r["summary"], r["per_corpus"]
        name = VOICE_NAMES.get(kinds, kinds) + "".join(f", {v}" for v in variant)
        name += " (shipped)" if (kinds, norm, tuple(variant)) in SHIPPED_VOICE else ""
        rows.append([name, norm, round(100 * s["uar_mean"], 1), round(100 * s["accuracy_mean"], 1),
                     round(100 * s["uar_restricted_mean"], 1), round(100 * s["max_predicted_share_mean"], 1),
                     *[round(100 * per[c]["uar"], 1) for c in sorted(per)]])
    return rows


def section_voice_heads(vh: dict | None) -> str:
    out = ["### Voice head on unseen corpora (issue 13)", ""]
    if not vh:
        return "\n".join(out + ["`voice_heads.json`: not run yet (`python benchmarks/bench_heads.py voice ...`).", ""])
    corpora = sorted(vh["corpora"])
    head = ["feature", "normalisation", "LOCO UAR", "LOCO acc.", "UAR, classes of the corpus only",
            "most predicted class, % (mean)", *[f"{c} UAR" for c in corpora]]
    out += [f"Leave-one-corpus-out over {vh['clips']:,} clips of {len(corpora)} corpora (train on five, test on the "
            "sixth; the same folds and linear head for every row, input dropout 0.2 unless the row says otherwise; "
            "per-corpus UAR on that corpus's classes, "
            "predictions over all 7; x100):", "", table(head, _voice_rows(vh["full"])), ""]
    if vh.get("subset"):
        out += [f"The same on a stratified 20 % subset ({vh.get('subset_clips')} clips), where the prosody functionals "
                "of the previous head were computed:", "",
                table(head, _voice_rows(vh["subset"])), ""]
    sh = vh.get("shipped", {})
    sp = sh.get("scores", {}).get("speaker")
    if sp:
        rows = [[c, m["n"], ", ".join(m["classes"]), round(100 * m["accuracy"], 1), round(100 * m["uar"], 1),
                 ", ".join(f"{k} {100 * v:.0f}" for k, v in m["recall"].items()), round(m["ece"], 3)]
                for c, m in sp["loco_per_corpus"].items()]
        out += ["Shipped speaker head, each corpus left out (calibrated; recall per class, x100):", "",
                table(["corpus", "clips", "classes", "accuracy", "UAR", "recall", "ECE"], rows), ""]
        loso = {n: e.get("loso") for n, e in sh["scores"].items() if e.get("loso")}
        if loso:
            out += [table(["head", "speaker-grouped folds", "accuracy", "UAR"],
                          [[n, l["folds"], round(100 * l["accuracy"], 1), round(100 * l["uar"], 1)] for n, l in loso.items()]),
                    "", "Calibration (out-of-corpus): " + "; ".join(
                        f"{n} head T = {sh['heads'][n]['temperature']}, ECE {e['ece_before']:.3f} -> {e['ece_after']:.3f}"
                        for n, e in sh["scores"].items()), ""]
    out += [machine_line("voice_heads", vh), ""]
    for key, note in vh.get("added", {}).items():  # rows written after the run above
        out += [f"Row `{key}` added {note['date_utc']}: {note['how']}.", ""]
    return "\n".join(out)


def section_face_heads(fh: dict | None) -> str:
    out = ["### Face head (issue 13)", ""]
    if not fh:
        return "\n".join(out + ["`face_heads.json`: not run yet (`python benchmarks/bench_heads.py face ...`).", ""])
    names = {"fer-mini-xception": "fer mini-Xception (previous)", "mmva": "mmva FER+ network (shipped)"}
    rows = []
    for k, name in names.items():
        f, j = fh["ferplus_test"][k], fh["jaffe"][k]
        rows.append([name, round(100 * f["accuracy"], 1), round(100 * f["uar"], 1), round(f["ece"], 3),
                     round(100 * j["accuracy"], 1), round(100 * j["uar"], 1), round(j["ece"], 3),
                     round(f["information_gain"], 3), round(j["information_gain"], 3)])
    det = fh["detection"]
    out += [f"FER+ test ({fh['ferplus_test']['mmva']['n']:,} faces, majority vote among the 7 MELD emotions, the given "
            f"crops) and JAFFE ({fh['jaffe']['mmva']['n']} posed faces, never trained on, found by the Haar detector; each "
            "network with its own crop framing), x100 (information gain: share of the label entropy removed):", "",
            table(["network", "FER+ acc.", "FER+ UAR", "FER+ ECE", "JAFFE acc.", "JAFFE UAR", "JAFFE ECE",
                   "FER+ info. gain", "JAFFE info. gain"], rows), "",
            *_face_variants(fh.get("jaffe_variants")), *_face_detection(det),
            machine_line("face_heads", fh), ""]
    return "\n".join(out)


def _face_variants(var: dict | None) -> list[str]:
    """JAFFE transfer: the shipped network with other crops / inference, FER+ valid beside (where it is chosen)."""
    if not var:
        return []
    rows = [[name, *(round(100 * v[part][m], 1) for part in ("ferplus_valid", "ferplus_test", "jaffe")
                     for m in ("acc", "uar")), " ".join(f"{k[:3]} {round(100 * r)}" for k, r in v["jaffe"]["recall"].items())]
            for name, v in var["variants"].items()]
    return [f"Why JAFFE transfers worse, crop and inference variants of the same network (FER+ valid: "
            f"{var['n_valid']} faces and FER+ test: {var['n_test']} faces, random subsets, each face through the same "
            "variant; JAFFE: all 213), x100:", "",
            table(["variant", "FER+ valid acc.", "valid UAR", "FER+ test acc.", "test UAR", "JAFFE acc.", "JAFFE UAR",
                   "JAFFE recall"], rows), "", *_prior_power(var.get("prior_power"))]


def _prior_power(pp: dict | None) -> list[str]:
    if not pp:
        return []
    a = pp["chosen_alpha"]
    base, new = pp["alpha=0.0"], pp[f"alpha={a}"]
    fmt = lambda s: f"{round(100 * s['acc'], 1)} % (UAR {round(100 * s['uar'], 1)})"  # noqa: E731
    return [f"Prior divided out to the power α, α chosen on FER+ valid alone ({pp['n_valid']:,} faces: the largest "
            f"α within 0.1 point of the shipped valid accuracy) = {a}: FER+ test ({pp['n_test']:,}) "
            f"{fmt(base['ferplus_test'])} → {fmt(new['ferplus_test'])}; JAFFE {fmt(base['jaffe'])} → "
            f"{fmt(new['jaffe'])}.", ""]


def _face_detection(det: dict) -> list[str]:
    """Detection rate (faces found / frames with a face) and median time per frame, per detector."""
    if "detectors" not in det:  # results written before the detector comparison
        return [f"Haar detection rate: JAFFE {det['jaffe']['found']}/{det['jaffe']['total']}; mmva's talking-head "
                f"sample {det['talking_head_sample']['found']}/{det['talking_head_sample']['total']} frames.", ""]
    rows, conds = [], []
    for name, d in det["detectors"].items():
        s, g, a = d["talking_head_sample"], d["generated_1280x720"], d["generated_analyze"]
        rows.append([name, f"{d['jaffe']['found']}/{d['jaffe']['total']}", d["jaffe"]["ms"],
                     f"{s['found']}/{s['total']}", s["false_on_slides"], s["ms"],
                     f"{g['found']}/{g['total']}", g["other_boxes"], g["ms"], f"{a['found']}/{a['total']}", a["ms"]])
    for c in det["conditions"]:
        conds.append([c, *(f"{d[k]['per_condition'][c]['found']}/{d[k]['per_condition'][c]['total']}"
                           for d in det["detectors"].values() for k in ("generated_1280x720", "generated_analyze"))])
    heads = [f"{n} {k}" for n in det["detectors"] for k in ("1280x720", "analyze 320")]
    return ["Face detection: faces found / frames with a face, and median ms a frame. JAFFE (256x256 grey); "
            "mmva's talking-head sample (256x256, 5 fps; slides: frames without a face where a box was given); "
            f"{det['generated_frames']} generated frames (benchmarks/face_frames.py: {len(det['generated_sources'])} real "
            "faces, the astronaut and one neutral JAFFE image per subject, turned, tilted and small in 1280x720 scenes), "
            "given whole and as `mmva analyze` decodes them (longer side 320); other = boxes that are not the face:", "",
            table(["detector", "JAFFE", "ms", "sample", "on slides", "ms", "generated 1280x720", "other",
                   "ms", "generated at 320", "ms"], rows), "",
            table(["condition", *heads], conds), "",
            *([machine_line("face_heads", det) + " (the detection run; its load average was read as it ended)"]
              if det.get("machine") else []), ""]


def section_cold(sp: dict | None) -> str:
    """Whole-process cold runs of `mmva analyze` on 720p30 talking heads (bench_speed.py, issue 15)."""
    if sp is None:
        return ("### Cold `mmva analyze` on 720p30 (issue 15)\n\n"
                "`speed.json`: not run yet (`python benchmarks/bench_speed.py`).\n")
    trees = sp["trees"]
    out = ["### Cold `mmva analyze` on 720p30 (issue 15)", "",
           "Each run is a fresh `mmva analyze FILE -q` process (imports, model loading, decoding, recognition, the "
           "heads, the JSON), timed like `/usr/bin/time -v`; medians of "
           f"{sp['runs']} runs, every tree and the decode floor (PyAV decoding every frame and the audio, threaded, "
           "no model) interleaved in the same run; face detector: "
           f"{sp.get('face_detector', 'auto')} (haar: the plain install; mtcnn: the [faces] extra; auto: MTCNN when "
           "installed):", ""]
    rows = []
    for secs, L in sp["lengths"].items():
        inp = L["input"]
        label = f"{secs} s ({inp['sentences_per_min']:g} sentences/min)"
        rows.append([label, "decode floor", L["floor"]["wall_s"], L["floor"]["cpu_s"], L["floor"]["peak_rss_mb"],
                     "–", "–"])
        for t in trees:
            r = L[t]
            rows.append([label, t, r["wall_s"], r["cpu_s"], r["peak_rss_mb"], r["x_real_time"], r["x_floor"]])
    out += [table(["input (1280x720, 30 fps)", "run", "wall s", "CPU s", "peak RSS MB", "× real time",
                   "× decode floor"], rows), ""]
    if len(trees) == 2:
        a, b = trees
        lines = []
        for secs, L in sp["lengths"].items():
            same = L.get("same_output", {})
            verdict = ("the same JSON" if same.get("within_tolerance") else "**different JSON**")
            lines.append(f"- {secs} s: {a} → {b}: wall ×{L['speedup']} faster, CPU ×{L['cpu_ratio']} less; {verdict} "
                         f"({same.get('utterances', ['?'])[0]} utterances, same segmentation: "
                         f"{same.get('same_segmentation')}, top-label differences: "
                         f"{same.get('top_label_differences', same.get('label_differences'))}, largest probability "
                         f"difference {same.get('max_probability_difference')}"
                         + (f", per modality {same['max_difference_per_modality']}"
                            if same.get("max_difference_per_modality") else "") + ")")
        for secs, L in sp["lengths"].items():
            same = L.get("same_output_same_models")
            if same:
                lines.append(f"- {secs} s, the same model files in both trees ({same.get('note', '')}): top-label "
                             f"differences {same['top_label_differences']}, per modality "
                             f"{same['max_difference_per_modality']}, fused {same['max_probability_difference']}")
        out += lines + [""]
    target = sp["lengths"].get("60")
    if target:
        best = target[trees[-1]]["wall_s"]
        out += [f"Target (issue 15): 60 s 720p30 talking head ≤ 10 s from a cold start on 2 cores: measured "
                f"{best:.1f} s here, {_met(best, 10.0, higher=False)}.", ""]
    seven, short = sp["lengths"].get("7"), sp["lengths"].get("10")
    if seven:
        best = seven[trees[-1]]["wall_s"]
        out += [f"Target (issue 15): a 7 s clip ≤ 4 s: measured {best:.1f} s here, {_met(best, 4.0, higher=False)}.", ""]
    elif short:
        best = short[trees[-1]]["wall_s"]
        out += [f"Target (issue 15): a 7 s clip ≤ 4 s; the 10 s clip here (longer, so a harder test) took "
                f"{best:.1f} s, {_met(best, 4.0, higher=False)}.", ""]
    long = sp["lengths"].get("600")
    if long:
        rss = long[trees[-1]]["peak_rss_mb"]
        out += [f"Target (issue 15): long inputs within 2.5 GB of memory: the 10-minute input peaked at "
                f"{rss:,.0f} MB ({_met(rss, 2500.0, higher=False)}; media is decoded 5 minutes at a time, so the "
                "peak does not grow with length).", ""]
    stages = sorted({k for L in sp["lengths"].values() for t in trees for k in L[t]["cold_stages_s"]})
    rows = [[f"{secs} s", t, *[L[t]["cold_stages_s"].get(k) for k in stages]]
            for secs, L in sp["lengths"].items() for t in trees]
    out += ["Stage split of the first cold run (wall seconds inside `analyze()`; the rest of the wall time is "
            "interpreter start, the CLI, imports done before `analyze()` and writing the JSON):", "",
            table(["input", "run", *stages], rows), ""]
    st = sp.get("startup", {})
    if st:
        out += [table(["run", "`mmva --help` s", "`import mmva.cli` s", "heavy libraries imported before analyze()"],
                      [[t, st[t]["help_wall_s"], st[t]["import_cli_wall_s"],
                        ", ".join(st[t]["heavy_imported_before_analyze"]) or "none"] for t in trees]), ""]
    imp = sp.get("import_top", {})
    if imp:
        out += ["Top import costs of one cold `mmva analyze` (10 s input; `python -X importtime`, cumulative seconds of "
                "each top-level import, as the analysis imports them):", ""]
        depth = max(len(v) for v in imp.values())
        out += [table(["#", *trees], [[i + 1, *[(f"{imp[t][i][0]} {imp[t][i][1]:.2f}" if i < len(imp[t]) else "")
                                             for t in trees]] for i in range(depth)]), ""]
    bt = sp.get("batch")
    if bt:
        out += [f"Many files in one command: a folder of {bt['clips']} clips of {bt['clip_seconds']:g} s "
                f"({bt['size']}, {bt['fps']} fps), one `mmva analyze FOLDER` process (the models load once):", "",
                table(["run", "wall s", "CPU s", "peak RSS MB", "s per clip"],
                      [[t, bt[t]["wall_s"], bt[t]["cpu_s"], bt[t]["peak_rss_mb"], bt[t]["per_clip_s"]]
                       for t in trees if t in bt]), ""]
        if bt.get("note"):
            out += [f"(Folder run: {bt['note']}.)", ""]
    if sp.get("note"):  # how the runs were made, when more than one run fed the tables
        out += [f"Runs: {sp['note']}", ""]
    out += [machine_line("speed", sp), ""]
    return "\n".join(out)


def section_text_models(tm: dict | None) -> str:
    """MELD dev table of the text models with and without context (bench_text_models.py, issue 16)."""
    out = ["### Text models on MELD dev, by context (issue 16)", ""]
    if tm is None:
        return "\n".join(out + ["`text_models.json`: not run yet (`python benchmarks/bench_text_models.py`).", ""])
    rows = []
    for r in tm["rows"]:
        e, s = r["scores"]["emotion"], r["scores"]["sentiment"]
        rows.append([r["model"], r["context"], e["raw"]["weighted_f1"], e["raw"]["macro_f1"], e["raw"]["accuracy"],
                     s["raw"]["weighted_f1"], s["raw"]["macro_f1"], s["raw"]["accuracy"],
                     e["bias_macro_crossfit"]["macro_f1"], r.get("inference_seconds_per_1000", "–"),
                     ", ".join(f"{x:.0f}" for x in r["train_seconds_per_epoch"]) if r.get("train_seconds_per_epoch") else "–"])
    out += [f"{tm['n']} dev utterances, x100; argmax of each model's logits (context: none, the previous utterances "
            "as a live stream has them, or both sides as a recorded video has them). Emotion macro-F1 with a per-class "
            "bias for macro-F1 fitted on one half of dev's dialogues and scored on the other (rare classes):", "",
            table(["model", "context", "emotion wF1", "emotion macro-F1", "emotion acc", "sentiment wF1",
                   "sentiment macro-F1", "sentiment acc", "emotion macro-F1, rare-class bias",
                   "s / 1000 utterances", "train s / epoch"], rows), ""]
    labels = None
    per = []
    for r in tm["rows"]:
        pc = r["scores"]["emotion"]["raw"]["per_class_f1"]
        labels = labels or list(pc)
        per.append([f"{r['model']} ({r['context']})", *[pc[c] for c in labels]])
    out += ["Per-class emotion F1 (argmax):", "", table(["model", *labels], per), "",
            machine_line("text_models", tm), ""]
    return "\n".join(out)


SECTIONS: list[tuple[tuple[str, ...], Callable[..., str]]] = [
    (("scaling", "analyze"), section_targets),
    (("scaling", "analyze"), section_speed), (("speed",), section_cold), (("train",), section_train),
    (("meld_dev", "text_accuracy", "fusion"), section_accuracy), (("text_models",), section_text_models), (("extract", "serve_load", "voice"), section_other),
    (("diarize",), section_diarize), (("voice_speakers", "voice_speakers_long"), section_voice_speakers), (("voice_heads",), section_voice_heads), (("face_heads",), section_face_heads),
]


def render(results: Path = HERE / "results") -> str:
    """All generated tables as one Markdown block (without the markers)."""
    parts = [f(*[_load(results, n) for n in names]) for names, f in SECTIONS]
    known = {n for names, _ in SECTIONS for n in names}
    rest = sorted(p.stem for p in results.glob("*.json") if p.stem not in known)
    if rest:
        parts.append("Also in results/ (see the script of the same name): " + ", ".join(f"`{n}.json`" for n in rest))
    return "\n".join(parts).rstrip() + "\n"


def update(readme: Path, block: str) -> str:
    """README text with the block between the markers replaced (markers appended if absent)."""
    text = readme.read_text() if readme.exists() else ""
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
    else:
        head, tail = text.rstrip() + "\n\n", "\n"
    return f"{head}{BEGIN}\n{block}{END}{tail}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(HERE / "results"))
    ap.add_argument("--readme", default=str(HERE / "README.md"))
    ap.add_argument("--check", action="store_true", help="exit 1 if the README is out of date")
    args = ap.parse_args()
    readme = Path(args.readme)
    new = update(readme, render(Path(args.results)))
    if args.check:
        if not readme.exists() or readme.read_text() != new:
            print(f"{readme}: out of date; run python benchmarks/report.py", file=sys.stderr)
            sys.exit(1)
        print(f"{readme}: up to date")
        return
    readme.write_text(new)
    print(f"wrote {readme}")


if __name__ == "__main__":
    main()
