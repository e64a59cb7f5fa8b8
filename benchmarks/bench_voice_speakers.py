"""The voice head on recordings of several speakers: does per-speaker normalisation after diarization
recover the per-speaker gain? (issue 21)

Recordings are built from one shared speech-emotion corpus (``$MMVA_DATA/speech-emotion``, else
``--data``; default ``../shared/data/speech-emotion`` beside the repository): 2, 3 or 4 of its speakers,
6-12 clips each (``--clips``; silence trimmed), in shuffled order with pauses of 0.2-0.8 s. Every clip is one
utterance (oracle segmentation), scored by the voice head four ways:

- ``none``: each clip alone (the utterance head: no speaker statistics);
- ``recording``: the whole recording normalised as one speaker (``same_speaker=True``: what analyze
  did before diarization);
- ``oracle``: each true speaker's clips normalised together (what perfect diarization would give);
- ``diarized``: each speaker found by :class:`mmva.analyze.diarize.Diarizer` (number of speakers found
  automatically, oracle voice activity: the clip spans) normalised together, as ``mmva analyze`` does
  (:meth:`mmva.model.default.DefaultModel.audio_probs`, ``speakers=``): a speaker with fewer clips than
  the speaker head needs gets the single-clip head;
- ``diarized_pooled`` (a candidate rule, not what analyze does): the same, but a diarized speaker with
  too few clips takes the whole-recording normalisation instead.

Scores per corpus over all its clips: accuracy and UAR (mean recall over the corpus's classes;
predictions over all 7), with a 95 % bootstrap interval over recordings, and the paired difference
to ``recording``.

The shipped head was trained on every clip of these corpora, so its scores here are in-sample
(optimistic). With ``--features DIR`` (the feature cache of ``mmva voice-fit --work``: whisper.npz and
acoustic.npz over the whole speech-emotion set) the same recordings are also scored by heads refitted
without the corpus under test (leave-one-corpus-out, the shipped recipe and temperatures), which never
heard those speakers.

    nice -n 10 python benchmarks/bench_voice_speakers.py [--features runs/voice/feats]
    # writes benchmarks/results/voice_speakers.json; then python benchmarks/report.py
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import end_load, machine_info  # noqa: E402

from mmva.labels import EMOTIONS  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("none", "recording", "oracle", "diarized", "diarized_pooled")


def default_data() -> Path:
    """``$MMVA_DATA/speech-emotion``, else the shared data folder beside the repository."""
    base = os.environ.get("MMVA_DATA")
    return Path(base) / "speech-emotion" if base else ROOT.parent / "shared" / "data" / "speech-emotion"


def read_corpus(folder: Path) -> list[dict[str, str]]:
    labels = folder / "labels.csv"
    if not labels.is_file():
        raise SystemExit(f"{labels}: no such file (give --data, or set MMVA_DATA to the folder holding speech-emotion/)")
    with open(labels, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        if r["emotion"] not in EMOTIONS:
            raise SystemExit(f"{labels}: unknown emotion {r['emotion']!r} for {r['file']}")
    return rows


def build_recordings(folder: Path, rows: list[dict[str, str]], n: int, rng: np.random.Generator,
                     clips_per_speaker: tuple[int, int] = (6, 12)) -> list[dict]:
    """``n`` recordings of 2-4 speakers (as many of each count as ``n`` allows), each speaker with a
    number of clips drawn from ``clips_per_speaker`` (inclusive)."""
    import librosa

    by: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by.setdefault(r["speaker"], []).append(r)
    lo, hi = clips_per_speaker
    speakers = sorted(s for s, clips in by.items() if len(clips) >= hi)
    counts = [k for k in (2, 3, 4) if k <= len(speakers)]
    recordings = []
    for i in range(n):
        k = counts[i % len(counts)]
        who = list(rng.choice(speakers, size=k, replace=False))
        picked = [(s, by[s][j]) for s in who
                  for j in rng.choice(len(by[s]), size=int(rng.integers(lo, hi + 1)), replace=False)]
        order = rng.permutation(len(picked))
        parts, clips, t = [], [], 0
        for j in order:
            speaker, row = picked[j]
            path = folder / row["file"]
            try:
                audio, _ = librosa.load(str(path), sr=16000, mono=True)
            except Exception as exc:  # noqa: BLE001 - name the bad file, whatever the decoder raised
                raise SystemExit(f"{path}: cannot read audio ({exc})") from None
            audio, _ = librosa.effects.trim(audio, top_db=35)
            if parts:
                gap = int(rng.uniform(0.2, 0.8) * 16000)
                parts.append(np.zeros(gap, np.float32))
                t += gap
            clips.append({"audio": audio.astype(np.float32), "start": t / 16000, "end": (t + len(audio)) / 16000,
                          "speaker": speaker, "label": EMOTIONS.index(row["emotion"]), "key": _key(path)})
            parts.append(audio.astype(np.float32))
            t += len(audio)
        recordings.append({"audio": np.concatenate(parts), "clips": clips, "speakers": k})
    return recordings


def _key(path: Path | str) -> str:
    """corpus/folder/file: a clip's name whatever the data folder's location."""
    return "/".join(Path(path).parts[-3:])


def diarize(recording: dict) -> list[str | None]:
    from mmva.analyze.diarize import Diarizer

    spans = [(c["start"], c["end"]) for c in recording["clips"]]
    track = Diarizer().track(recording["audio"], spans)
    return [track.label(s, e) for s, e in spans]


def grouped_probs(head: Any, feats: list[np.ndarray | None], groups: list[Any] | None,
                  same_speaker: bool) -> list[np.ndarray | None]:
    """The voice head's probabilities with each group's clips normalised together, as
    ``DefaultModel.audio_probs`` groups them (``groups=None``: one group)."""
    keys = groups if groups is not None else [None] * len(feats)
    out: list[np.ndarray | None] = [None] * len(feats)
    for g in dict.fromkeys(keys):
        idx = [i for i, k in enumerate(keys) if k == g]
        got = head.proba_from_features([feats[i] for i in idx], same_speaker=same_speaker or g is not None)
        for i, p in zip(idx, got):
            out[i] = p
    return out


def pooled_small(head: Any, feats: list[np.ndarray | None], groups: list[Any], diarized: list[Any],
                 recording: list[Any]) -> list[Any]:
    """A candidate rule: a diarized speaker with too few clips for the speaker head takes the
    whole-recording normalisation instead of none."""
    count: dict[Any, int] = {}
    for g, f in zip(groups, feats):
        count[g] = count.get(g, 0) + (f is not None)
    return [r if count[g] < head.min_speaker_utterances else d for g, d, r in zip(groups, diarized, recording)]


def score(preds: list[list[int]], labels: list[list[int]]) -> dict[str, float]:
    """Accuracy and UAR (mean recall over the classes present) of pooled clips."""
    p, y = np.concatenate(preds), np.concatenate(labels)
    recalls = [float(np.mean(p[y == c] == c)) for c in np.unique(y)]
    return {"accuracy": float(np.mean(p == y)), "uar": float(np.mean(recalls))}


def summarise(per_way: dict[str, list[list[int]]], labels: list[list[int]], rng: np.random.Generator,
              boot: int = 1000) -> dict[str, Any]:
    """Scores per way, a 95 % bootstrap interval over recordings, and paired differences to ``recording``."""
    out: dict[str, Any] = {}
    n = len(labels)
    draws = [rng.integers(0, n, n) for _ in range(boot)]
    for way, preds in per_way.items():
        s = score(preds, labels)
        samples = {m: [] for m in s}
        diffs: dict[str, list[float]] = {m: [] for m in s}
        for d in draws:
            got = score([preds[i] for i in d], [labels[i] for i in d])
            base = score([per_way["recording"][i] for i in d], [labels[i] for i in d])
            for m in s:
                samples[m].append(got[m])
                diffs[m].append(got[m] - base[m])
        base_all = score(per_way["recording"], labels)
        out[way] = {**{m: round(v, 4) for m, v in s.items()},
                    **{f"{m}_ci95": [round(float(np.percentile(samples[m], q)), 4) for q in (2.5, 97.5)] for m in s},
                    **({f"{m}_vs_recording": round(s[m] - base_all[m], 4) for m in s} if way != "recording" else {}),
                    **({f"{m}_vs_recording_ci95": [round(float(np.percentile(diffs[m], q)), 4) for q in (2.5, 97.5)]
                        for m in s} if way != "recording" else {})}
    return out


def held_out_head(shipped: Any, features: Path, data: Path, corpus: str, workdir: Path) -> Any:
    """The shipped head's recipe refitted on every corpus but ``corpus`` (cached features)."""
    from safetensors.torch import save_file

    from mmva.model.voice import load_voice_head
    from mmva.train.voice_head import HeadSpec, fit_head, normalise, speaker_population

    x, keys = _cached(features, cache_kinds(shipped))
    meta: dict[str, tuple[int, str, str]] = {}
    for c in sorted(p.name for p in data.iterdir() if (p / "labels.csv").is_file()):
        for r in read_corpus(data / c):
            meta[_key(data / c / r["file"])] = (EMOTIONS.index(r["emotion"]), r["speaker"], c)
    keep = [i for i, k in enumerate(keys) if k in meta and meta[k][2] != corpus]
    if not keep:
        raise SystemExit(f"{features}: no cached feature matches a clip of {data} outside {corpus}")
    x = x[keep]
    y = np.array([meta[keys[i]][0] for i in keep])
    spk = [meta[keys[i]][1] for i in keep]
    corp = [meta[keys[i]][2] for i in keep]
    config = json.loads(json.dumps(shipped.config))
    folder = workdir / f"without-{corpus}"
    folder.mkdir(parents=True, exist_ok=True)
    for name, spec in config["heads"].items():
        hs = HeadSpec(**spec["spec"])
        head = fit_head(normalise(x, spk, hs.normalization), y, corp, hs)
        save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(folder / spec["file"]))
    config["speaker_population"] = speaker_population(x, spk)
    config["trained_without"] = corpus
    (folder / "voice.json").write_text(json.dumps(config))
    return load_voice_head(str(folder))


def cache_kinds(head: Any) -> str:
    """The feature-cache names (``mmva voice-fit --work``) of a head's feature. A head on Whisper's
    middle blocks reports its kind as ``whisper+acoustic`` (what its encoder dispatches on), but its
    Whisper part is cached as ``whisper-b12`` (blocks 1 and 2), not as the last layer's ``whisper``:
    refitting on the wrong one scores features the head was never fitted to."""
    from mmva.train.voice_features import blocks_kind

    blocks = getattr(head, "feature", {}).get("blocks")
    return "+".join(blocks_kind(blocks) if blocks and k == "whisper" else k for k in head.encoder_name.split("+"))


def _cached(features: Path, kinds: str) -> tuple[np.ndarray, list[str]]:
    parts, keys = [], None
    for kind in kinds.split("+"):
        path = features / f"{kind}.npz"
        if not path.is_file():
            raise SystemExit(f"{path}: no such feature cache (the --work folder of `mmva voice-fit`)")
        z = np.load(path, allow_pickle=False)
        k = [_key(p) for p in z["paths"].tolist()]
        if keys is not None and k != keys:
            raise SystemExit(f"{path}: clips in another order than {kinds.split('+')[0]}.npz")
        keys = k
        parts.append(z["x"])
    return np.nan_to_num(np.concatenate(parts, axis=1)), keys or []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(default_data()), help="the speech-emotion folder (default: %(default)s)")
    ap.add_argument("--corpora", default="savee,nemo,spanish,ased", help="corpora to build recordings from")
    ap.add_argument("--n", type=int, default=12, help="recordings per corpus")
    ap.add_argument("--clips", default="6,12", help="clips per speaker and recording: lowest,highest")
    ap.add_argument("--features", default=None, help="feature cache of `mmva voice-fit --work`: also score "
                                                       "heads refitted without each corpus")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "voice_speakers.json"))
    args = ap.parse_args()
    import torch

    from mmva.model.voice import load_voice_head

    torch.set_num_threads(1)
    data = Path(args.data)
    clips = tuple(int(v) for v in args.clips.split(","))
    if len(clips) != 2 or not 1 <= clips[0] <= clips[1]:
        raise SystemExit(f"--clips {args.clips}: give lowest,highest (e.g. 6,12)")
    shipped = load_voice_head()
    if not hasattr(shipped, "proba_from_features"):
        raise SystemExit(f"{shipped.source}: this benchmark needs a feature voice head (mmva-voice-head-2)")
    info, t_start = machine_info(), time.time()
    rng = np.random.default_rng(0)
    workdir = Path(tempfile.mkdtemp(prefix="mmva-voice-speakers-"))
    results: dict[str, Any] = {}
    for corpus in [c for c in args.corpora.split(",") if c]:
        t0 = time.time()
        recordings = build_recordings(data / corpus, read_corpus(data / corpus), args.n, rng, clips)
        t_diar = time.time()
        found = [diarize(r) for r in recordings]
        t_diar = time.time() - t_diar
        feats = [shipped.features_batch([c["audio"] for c in r["clips"]]) for r in recordings]
        labels = [[c["label"] for c in r["clips"]] for r in recordings]
        heads = {"shipped": shipped}
        t_fit = time.time()
        if args.features:
            heads["held_out"] = held_out_head(shipped, Path(args.features), data, corpus, workdir)
        t_fit = time.time() - t_fit
        entry: dict[str, Any] = {
            "recordings": len(recordings), "clips": sum(len(lab) for lab in labels),
            "speakers_per_recording": [r["speakers"] for r in recordings],
            "speakers_found": [len(set(f)) for f in found],
            "count_right": round(float(np.mean([len(set(f)) == r["speakers"] for f, r in zip(found, recordings)])), 3),
            "diarization_purity": round(_purity(found, recordings), 4),
            "diarize_seconds": round(t_diar, 1), "held_out_fit_seconds": round(t_fit, 1)}
        for name, head in heads.items():
            per_way: dict[str, list[list[int]]] = {w: [] for w in WAYS}
            for r, f, fd in zip(recordings, feats, found):
                ways = {"none": grouped_probs(head, f, None, False), "recording": grouped_probs(head, f, None, True),
                        "oracle": grouped_probs(head, f, [c["speaker"] for c in r["clips"]], True),
                        "diarized": grouped_probs(head, f, fd, True)}
                ways["diarized_pooled"] = pooled_small(head, f, fd, ways["diarized"], ways["recording"])
                for w, probs in ways.items():  # a clip without speech (none here, in practice) counts as wrong
                    per_way[w].append([int(np.argmax(p)) if p is not None else -1 for p in probs])
            entry[name] = summarise(per_way, labels, np.random.default_rng(1))
        entry["seconds"] = round(time.time() - t0, 1)
        results[corpus] = entry
        print(corpus, json.dumps({k: {w: (v[w]["uar"], v[w]["accuracy"]) for w in WAYS}
                                  for k, v in entry.items() if isinstance(v, dict)}), flush=True)
    out = {"what": "voice head accuracy on mixed-speaker recordings: no / whole-recording / oracle-speaker / "
                   "diarized-speaker normalisation (clips of 2-4 speakers of one corpus)",
           "clips_per_speaker": list(clips),
           "ways": list(WAYS), "min_speaker_utterances": shipped.min_speaker_utterances,
           "in_sample_note": "the shipped head was trained on every clip of these corpora; 'held_out' heads "
                             "were refitted without the corpus under test",
           "corpora": results, "machine": end_load(info), "seconds": round(time.time() - t_start, 1),
           "command": " ".join(["python", *[a if not Path(a).is_absolute() else Path(a).name for a in sys.argv]])}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")


def _purity(found: list[list[str | None]], recordings: list[dict]) -> float:
    """Share of clips whose diarized speaker's majority true speaker is their own."""
    right = total = 0
    for f, r in zip(found, recordings):
        true = [c["speaker"] for c in r["clips"]]
        for lab in set(f):
            members = [t for t, g in zip(true, f) if g == lab]
            right += max(members.count(t) for t in set(members))
            total += len(members)
    return right / max(1, total)


if __name__ == "__main__":
    main()
