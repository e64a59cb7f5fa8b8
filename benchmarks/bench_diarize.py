"""Speaker diarization: DER and speaker-count accuracy, and the cost on 60 s and 10 min of speech.

Conversations are generated with known turns:

- ``espeak``: 2-4 espeak-ng voices (different variant, pitch and rate; ``synth.CONVERSATION_VOICES``)
  taking 10 turns of one sentence each, pauses of 0.2-0.8 s;
- ``savee`` / ``nemo`` / ...: real recorded speakers of the shared speech-emotion corpora
  (``../shared/data/speech-emotion``, when present): clips of 2-4 speakers of one corpus concatenated
  as 10 turns (acted emotional speech, so each speaker's voice varies with the emotion).

Each conversation is diarized with :class:`mmva.analyze.diarize.Diarizer` over the reference speech
regions (oracle voice activity: the figure measures who-spoke-when, not speech detection) and scored
with ``pyannote.metrics``' DiarizationErrorRate (no collar, so boundary errors count in full). The
cost is the diarizer's time (embedding + clustering) on 60 s and 10 min of generated conversation.

    python benchmarks/bench_diarize.py                     # writes benchmarks/results/diarize.json
    python benchmarks/bench_diarize.py --n 10 --thresholds 0.2,0.25,0.3
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import end_load, machine_info  # noqa: E402

from mmva.analyze.diarize import Diarizer, DiarizeOptions  # noqa: E402
from mmva.data.synth import conversation  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT.parent / "shared" / "data" / "speech-emotion"
SENTENCES = [
    "I think we should start the meeting now, everyone is here.", "Sure, but I have not finished the slides yet.",
    "Did anyone book the room for tomorrow morning?", "Yes, I booked it last week, it is on the third floor.",
    "That is great news, thank you so much for doing that.", "I am not sure the budget will be enough this year.",
    "Can we move the review to Friday afternoon instead?", "Honestly, I did not expect that result at all.",
    "Let us go through the agenda one item at a time.", "We have to call the client before the end of the day.",
    "Why did nobody tell me about the change of plans?", "I will send everyone the notes right after this call.",
]


def espeak_conversation(rng: np.random.Generator, k: int, turns: int = 10) -> tuple[np.ndarray, list]:
    who = _speaker_order(rng, k, turns)
    lines = [(int(w), SENTENCES[int(rng.integers(len(SENTENCES)))]) for w in who]
    return conversation(lines, pauses=(0.2, 0.8), seed=int(rng.integers(1 << 30)))


def _speaker_order(rng: np.random.Generator, k: int, turns: int) -> list[int]:
    """``turns`` speakers, each of the ``k`` at least once, never the same twice in a row."""
    while True:
        order = [int(rng.integers(k))]
        while len(order) < turns:
            nxt = int(rng.integers(k))
            if nxt != order[-1]:
                order.append(nxt)
        if len(set(order)) == k:
            return order


def corpus_clips(name: str) -> dict[str, list[Path]]:
    rows = list(csv.DictReader(open(SPEECH / name / "labels.csv", encoding="utf-8")))
    by: dict[str, list[Path]] = {}
    for r in rows:
        by.setdefault(r["speaker"], []).append(SPEECH / name / r["file"])
    return by


def real_conversation(rng: np.random.Generator, clips: dict[str, list[Path]], k: int,
                      turns: int = 10) -> tuple[np.ndarray, list]:
    import librosa

    speakers = list(rng.choice(sorted(clips), size=k, replace=False))
    parts, ref, t = [], [], 0
    for i, w in enumerate(_speaker_order(rng, k, turns)):
        path = clips[speakers[w]][int(rng.integers(len(clips[speakers[w]])))]
        audio, _ = librosa.load(str(path), sr=16000, mono=True)
        audio, _ = librosa.effects.trim(audio, top_db=35)
        if i:
            gap = int(rng.uniform(0.2, 0.8) * 16000)
            parts.append(np.zeros(gap, np.float32))
            t += gap
        ref.append((t / 16000, (t + len(audio)) / 16000, w))
        parts.append(audio.astype(np.float32))
        t += len(audio)
    return np.concatenate(parts), ref


def der(reference: list, hypothesis: list) -> float:
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = Annotation(), Annotation()
    for s, e, k in reference:
        ref[Segment(s, e)] = str(k)
    for s, e, k in hypothesis:
        hyp[Segment(s, e)] = str(k)
    return float(DiarizationErrorRate()(ref, hyp))


def score_set(convs: list, options: DiarizeOptions) -> dict:
    ders, right, total_speech = [], 0, 0.0
    errors = 0.0
    for audio, ref in convs:
        regions = [(s, e) for s, e, _ in ref]
        track = Diarizer(options).track(audio, regions)
        hyp = [(s, e, track.label(s, e)) for s, e in regions]
        d = der(ref, hyp)
        speech = sum(e - s for s, e in regions)
        ders.append(d)
        errors += d * speech
        total_speech += speech
        right += len({h for *_, h in hyp}) == len({k for *_, k in ref})
    return {"der": round(errors / total_speech, 4), "der_median": round(float(np.median(ders)), 4),
            "count_accuracy": round(right / len(convs), 3), "n": len(convs)}


def cost(seconds: float, rng: np.random.Generator) -> dict:
    """Diarizer time on a generated conversation of about ``seconds`` (3 voices)."""
    audio, ref = espeak_conversation(rng, 3, turns=24)
    reps = max(1, int(np.ceil(seconds / (len(audio) / 16000))))
    length = len(audio) / 16000
    audio = np.tile(audio, reps)[: int(seconds * 16000)]
    regions = [(s + r * length, e + r * length) for r in range(reps) for s, e, _ in ref
               if e + r * length <= seconds]
    d = Diarizer()
    Diarizer().track(audio[:32000], [(0.0, 2.0)])  # warm: imports (librosa), weights, first LSTM call
    t0 = time.perf_counter()
    d.track(audio, regions)
    return {"audio_seconds": round(len(audio) / 16000, 1), "diarize_seconds": round(time.perf_counter() - t0, 3),
            "speech_seconds": round(sum(e - s for s, e in regions), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=12, help="conversations per set and speaker count")
    ap.add_argument("--thresholds", default="", help="also score these clustering thresholds (comma-separated)")
    ap.add_argument("--corpora", default="savee,nemo,spanish", help="shared speech-emotion corpora to mix")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "diarize.json"))
    args = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    t_start = time.time()
    info = machine_info()
    sets: dict[str, list] = {"espeak": [espeak_conversation(rng, k) for k in (2, 3, 4) for _ in range(args.n)]}
    for name in [c for c in args.corpora.split(",") if c and (SPEECH / c / "labels.csv").exists()]:
        clips = corpus_clips(name)
        sets[name] = [real_conversation(rng, clips, k) for k in (2, 3, 4) if k <= len(clips) for _ in range(args.n)]
    default = DiarizeOptions()
    thresholds = sorted({default.threshold, *[float(x) for x in args.thresholds.split(",") if x]})
    results = {name: {f"{th:g}": score_set(convs, DiarizeOptions(threshold=th)) for th in thresholds}
               for name, convs in sets.items()}
    given = {name: score_set(convs[: args.n], DiarizeOptions(speakers=2)) for name, convs in sets.items()}
    costs = [cost(60.0, rng), cost(600.0, rng)]
    out = {"what": "speaker diarization: DER (pyannote.metrics, no collar, oracle voice activity) and cost",
           "default_threshold": default.threshold, "by_threshold": results, "two_speakers_given": given,
           "cost": costs, "machine": end_load(info),
           "seconds": round(time.time() - t_start, 1), "command": " ".join(["python", *sys.argv])}
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("by_threshold", "two_speakers_given", "cost")}, indent=1))


if __name__ == "__main__":
    main()
