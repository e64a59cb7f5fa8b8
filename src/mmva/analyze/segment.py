"""Words with timestamps -> utterances: split at sentence ends and pauses, cap the length, and
snap the boundaries to voice-activity regions (Whisper's word times drift into silences).

Hand-written because no library groups ASR words into utterances with these rules; the VAD itself
is faster-whisper's Silero model (see :mod:`mmva.analyze.asr`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

from mmva.types import Utterance

# Speaker of each word of one utterance, given the words' (start, end) spans (see mmva.analyze.diarize).
SpeakerOf = Callable[[Sequence[tuple[float, float]]], Sequence["str | None"]]

_SENTENCE_END = (".", "?", "!", "…")


@dataclass(frozen=True)
class Word:
    """One recognised word with its time span (seconds) and ASR confidence."""

    start: float
    end: float
    text: str
    probability: float = 1.0


@dataclass(frozen=True)
class SegmentOptions:
    """How words are grouped into utterances.

    ``pause``: a silence at least this long always ends an utterance; ``min_duration``: a sentence
    end only splits once the utterance is this long (so "Hello there." joins what follows);
    ``max_duration``: longer stretches are split at their widest gap (a comma preferred).
    """

    pause: float = 0.6
    min_duration: float = 1.0
    max_duration: float = 15.0
    window: float = 5.0  # fixed window length when there is no speech to segment (video without audio)


def _join(words: list[Word]) -> str:
    # Whisper words carry their own leading space; subtitle-free words may not.
    text = "".join(w.text if w.text[:1].isspace() else f" {w.text}" for w in words)
    return " ".join(text.split())


def _to_utterance(words: list[Word], speaker: str | None = None) -> Utterance:
    probs = [w.probability for w in words]
    return Utterance(text=_join(words), start_time=round(words[0].start, 3), end_time=round(words[-1].end, 3),
                     speaker=speaker, extra={"asr_confidence": round(sum(probs) / len(probs), 3)})


def _speaker_turns(words: list[Word], speaker_of: SpeakerOf | None) -> list[tuple[list[Word], str | None]]:
    """The words of one utterance cut where the speaker changes, each part with its speaker."""
    if speaker_of is None:
        return [(words, None)]
    labels = list(speaker_of([(w.start, w.end) for w in words]))
    out: list[tuple[list[Word], str | None]] = []
    for word, label in zip(words, labels):
        if out and out[-1][1] == label:
            out[-1][0].append(word)
        else:
            out.append(([word], label))
    return out


def _split_long(words: list[Word], max_duration: float) -> list[list[Word]]:
    """Split a run of words longer than ``max_duration`` at its widest gap (commas count extra)."""
    if len(words) < 2 or words[-1].end - words[0].start <= max_duration:
        return [words]
    best, best_score = 1, -math.inf
    span = words[-1].end - words[0].start
    for i in range(1, len(words)):
        gap = words[i].start - words[i - 1].end
        comma = 0.3 if words[i - 1].text.rstrip().endswith((",", ";", ":")) else 0.0
        # prefer cuts near the middle so both halves stay long enough to carry an emotion
        centre = 1.0 - abs((words[i].start - words[0].start) / span - 0.5)
        score = gap + comma + 0.2 * centre
        if score > best_score:
            best, best_score = i, score
    return _split_long(words[:best], max_duration) + _split_long(words[best:], max_duration)


def segment_words(words: list[Word], options: SegmentOptions = SegmentOptions(),
                  speaker_of: SpeakerOf | None = None) -> list[Utterance]:
    """Group time-stamped words into utterances.

    ``speaker_of`` (diarization) labels the words of each utterance with speakers; an utterance is
    cut where the label changes, and each part carries its ``speaker``.

    >>> ws = [Word(0.0, 0.5, " Hello"), Word(0.5, 1.2, " world."), Word(2.5, 3.0, " Bye.")]
    >>> [(u.text, u.start_time, u.end_time) for u in segment_words(ws)]
    [('Hello world.', 0.0, 1.2), ('Bye.', 2.5, 3.0)]
    """
    words = [w for w in words if w.text.strip()]
    groups: list[list[Word]] = []
    current: list[Word] = []
    for word in words:
        if current:
            gap = word.start - current[-1].end
            sentence_done = (current[-1].text.rstrip().endswith(_SENTENCE_END)
                             and current[-1].end - current[0].start >= options.min_duration)
            if gap >= options.pause or sentence_done:
                groups.append(current)
                current = []
        current.append(word)
    if current:
        groups.append(current)
    out: list[Utterance] = []
    for group in groups:
        for turn, speaker in _speaker_turns(group, speaker_of):
            out.extend(_to_utterance(part, speaker) for part in _split_long(turn, options.max_duration))
    return out


def snap_to_speech(utterances: list[Utterance], regions: list[tuple[float, float]],
                   tolerance: float = 0.75) -> list[Utterance]:
    """Move utterance boundaries onto the voice-activity regions they overlap.

    Whisper's word times drift up to a second into the surrounding silence; VAD regions are sharper.
    A boundary moves only to a region edge within ``tolerance`` seconds and never across a
    neighbouring utterance. Utterances overlapping no region are kept as they are.

    >>> u = [Utterance(text="hi", start_time=0.2, end_time=3.6)]
    >>> [(x.start_time, x.end_time) for x in snap_to_speech(u, [(0.5, 2.8)])]
    [(0.5, 2.8)]
    """
    if not regions:
        return utterances
    regions = sorted(regions)
    for i, utt in enumerate(utterances):
        assert utt.start_time is not None and utt.end_time is not None
        hits = [(s, e) for s, e in regions if s < utt.end_time and e > utt.start_time]
        if not hits:
            continue
        lo = utterances[i - 1].end_time if i > 0 else 0.0
        hi = utterances[i + 1].start_time if i + 1 < len(utterances) else math.inf
        start, end = hits[0][0], hits[-1][1]
        # Shrinking onto a region edge is always safe (no speech beyond it); growing is bounded.
        if start > utt.start_time or (utt.start_time - start <= tolerance and start >= (lo or 0.0)):
            utt.start_time = round(start, 3)
        if end < utt.end_time or (end - utt.end_time <= tolerance and end <= (hi or math.inf)):
            utt.end_time = round(end, 3)
        if utt.end_time <= utt.start_time:  # degenerate after snapping: keep a minimal span
            utt.end_time = round(utt.start_time + 0.1, 3)
    return utterances


def fixed_windows(duration: float, window: float = 5.0) -> list[Utterance]:
    """Windows of ``window`` seconds over ``[0, duration]`` (the last one shorter), with no text.

    Used for video without an audio track or subtitles: the face still says something.

    >>> [(u.start_time, u.end_time) for u in fixed_windows(12.0, 5.0)]
    [(0.0, 5.0), (5.0, 10.0), (10.0, 12.0)]
    """
    out = []
    t = 0.0
    while t < duration - 1e-6:
        end = min(duration, t + window)
        if end - t < 0.5 and out:  # fold a sliver into the previous window
            out[-1].end_time = round(end, 3)
            break
        out.append(Utterance(start_time=round(t, 3), end_time=round(end, 3)))
        t = end
    return out
