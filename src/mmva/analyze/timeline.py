"""The result of ``mmva analyze``: a list of utterances with predictions plus a whole-video summary.

The JSON form (``Timeline.to_dict()``) is versioned by ``SCHEMA_VERSION``. Each ``utterances`` entry
keeps the original API's fields ``start_time``, ``end_time``, ``text``, ``emotions`` and
``sentiments`` (``[{"label", "confidence"}]``, best first) and adds ``modalities``, ``per_modality``,
``emotion_probs``, ``sentiment_probs`` and optional extras.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

from mmva.labels import EMOTIONS, SENTIMENTS
from mmva.types import Utterance

SCHEMA_VERSION = "1.0"
_DIGITS = 4


def top_k(probs: Iterable[float], labels: tuple[str, ...], k: int) -> list[dict[str, Any]]:
    """``[{"label", "confidence"}]`` of the ``k`` most probable labels, best first.

    >>> top_k([0.1, 0.7, 0.2], ("negative", "neutral", "positive"), 2)
    [{'label': 'neutral', 'confidence': 0.7}, {'label': 'positive', 'confidence': 0.2}]
    """
    p = np.asarray(list(probs), dtype=float)
    order = np.argsort(-p, kind="stable")[: max(1, min(k, len(labels)))]
    return [{"label": labels[i], "confidence": round(float(p[i]), _DIGITS)} for i in order]


def _as_dict(probs: Iterable[float], labels: tuple[str, ...]) -> dict[str, float]:
    return {lab: round(float(p), _DIGITS) for lab, p in zip(labels, probs)}


def apply_prediction(utt: Utterance, pred: dict[str, Any] | None, k: int = 3) -> Utterance:
    """Fill an utterance's prediction fields from one DefaultModel.predict() entry (None: nothing used)."""
    if pred is None or not pred.get("modalities"):
        utt.emotions, utt.sentiments, utt.modalities, utt.per_modality = [], [], [], {}
        return utt
    utt.emotions = top_k(pred["emotion"], EMOTIONS, k)
    utt.sentiments = top_k(pred["sentiment"], SENTIMENTS, k)
    utt.modalities = list(pred["modalities"])
    utt.per_modality = {
        m: {"emotion": _as_dict(v["emotion"], EMOTIONS), "sentiment": _as_dict(v["sentiment"], SENTIMENTS)}
        for m, v in (pred.get("per_modality") or {}).items()
    }
    utt.extra["emotion_probs"] = _as_dict(pred["emotion"], EMOTIONS)
    utt.extra["sentiment_probs"] = _as_dict(pred["sentiment"], SENTIMENTS)
    if pred.get("face_crop") is not None:
        utt.extra["face_crop"] = png_data_uri(pred["face_crop"])
    if pred.get("face_box") is not None:  # which face was read: {"x", "y", "w", "h"}, fractions of the frame
        utt.extra["face_box"] = dict(pred["face_box"])
    if pred.get("face_chosen"):  # with several faces: "mouth", "speaker" or "largest"
        utt.extra["face_chosen"] = pred["face_chosen"]
    return utt


def png_data_uri(image: np.ndarray) -> str:
    """A uint8 grey ``(h, w)`` or RGB ``(h, w, 3)`` image as a ``data:image/png;base64,...`` URI
    (lossless: the report shows the very pixels the face head read).

    >>> png_data_uri(np.zeros((2, 2), np.uint8))[:22]
    'data:image/png;base64,'
    """
    import base64

    import cv2

    img = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError(f"cannot encode an image of shape {img.shape} as PNG")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def _weight(u: Utterance) -> float:
    if u.start_time is None or u.end_time is None:
        return 1.0  # transcript lines: every utterance counts once
    return max(0.0, u.end_time - u.start_time)


def _share(utts: list[Utterance], key: str, labels: tuple[str, ...]) -> dict[str, float]:
    totals = dict.fromkeys(labels, 0.0)
    for u in utts:
        top = getattr(u, key)
        if top:
            totals[top[0]["label"]] += _weight(u)
    total = sum(totals.values())
    return {k: round(v / total, _DIGITS) if total else 0.0 for k, v in totals.items()}


def sentiment_score(u: Utterance) -> float | None:
    """P(positive) - P(negative) in [-1, 1], or None when the utterance has no prediction."""
    probs = u.extra.get("sentiment_probs")
    if not probs:
        return None
    return round(probs["positive"] - probs["negative"], _DIGITS)


def _sentiment_over_time(utts: list[Utterance], duration: float | None, bins: int = 20) -> list[dict[str, Any]]:
    """Duration-weighted sentiment score per time bin (per utterance when there are no times)."""
    scored = [(u, sentiment_score(u)) for u in utts]
    scored = [(u, s) for u, s in scored if s is not None]
    if not scored:
        return []
    if any(u.start_time is None for u, _ in scored) or not duration:
        return [{"index": i, "score": s, "label": _score_label(s)} for i, (_, s) in enumerate(scored)]
    width = max(1.0, math.ceil(duration / bins))
    out = []
    for b in range(int(math.ceil(duration / width))):
        lo, hi = b * width, min(duration, (b + 1) * width)
        num = den = 0.0
        for u, s in scored:
            overlap = min(hi, u.end_time) - max(lo, u.start_time)  # type: ignore[operator]
            if overlap > 0:
                num += s * overlap
                den += overlap
        score = round(num / den, _DIGITS) if den else None
        out.append({"start": round(lo, 3), "end": round(hi, 3), "score": score,
                    "label": _score_label(score) if score is not None else None})
    return out


def _score_label(score: float, margin: float = 0.2) -> str:
    return "positive" if score > margin else "negative" if score < -margin else "neutral"


def speaker_summary(utts: list[Utterance]) -> dict[str, dict[str, Any]]:
    """Per speaker (in order of first appearance): utterances, talk time, dominant emotion and
    sentiment, and the share of the speaker's talk time per emotion and sentiment.

    >>> u = Utterance(text="hi", start_time=0.0, end_time=2.0, speaker="Speaker 1",
    ...               emotions=[{"label": "joy", "confidence": 0.9}], sentiments=[{"label": "positive", "confidence": 0.8}])
    >>> s = speaker_summary([u])["Speaker 1"]
    >>> s["talk_time"], s["dominant_emotion"], s["emotion_share"]["joy"]
    (2.0, 'joy', 1.0)
    """
    out: dict[str, dict[str, Any]] = {}
    by: dict[str, list[Utterance]] = {}
    for u in utts:
        if u.speaker:
            by.setdefault(u.speaker, []).append(u)
    for name, own in by.items():
        predicted = [u for u in own if u.emotions]
        emo, sent = _share(predicted, "emotions", EMOTIONS), _share(predicted, "sentiments", SENTIMENTS)
        timed = [u for u in own if u.start_time is not None and u.end_time is not None]
        out[name] = {
            "n_utterances": len(own),
            "talk_time": round(sum(u.end_time - u.start_time for u in timed), 3),  # type: ignore[operator]
            "dominant_emotion": max(emo, key=emo.__getitem__) if predicted else None,
            "dominant_sentiment": max(sent, key=sent.__getitem__) if predicted else None,
            "emotion_share": emo,
            "sentiment_share": sent,
        }
    return out


def summarize(utts: list[Utterance], duration: float | None = None) -> dict[str, Any]:
    """Whole-video summary: time share per emotion/sentiment, dominant ones, sentiment over time,
    and ``speakers`` (:func:`speaker_summary`) when the utterances carry speakers."""
    predicted = [u for u in utts if u.emotions]
    emo_share = _share(predicted, "emotions", EMOTIONS)
    sent_share = _share(predicted, "sentiments", SENTIMENTS)
    mean_emo = dict.fromkeys(EMOTIONS, 0.0)
    total_w = sum(_weight(u) for u in predicted)
    for u in predicted:
        for k, v in u.extra.get("emotion_probs", {}).items():
            mean_emo[k] += v * _weight(u) / (total_w or 1.0)
    usage = {m: sum(m in u.modalities for u in utts) for m in ("text", "audio", "video")}
    timed = [u for u in utts if u.start_time is not None and u.end_time is not None]
    out = {
        "n_utterances": len(utts),
        "n_predicted": len(predicted),
        "speech_time": round(sum(u.end_time - u.start_time for u in timed), 3),  # type: ignore[operator]
        "dominant_emotion": max(emo_share, key=lambda k: (emo_share[k], mean_emo[k])) if predicted else None,
        "dominant_sentiment": max(sent_share, key=sent_share.__getitem__) if predicted else None,
        "emotion_share": emo_share,
        "sentiment_share": sent_share,
        "emotion_mean": {k: round(v, _DIGITS) for k, v in mean_emo.items()},
        "sentiment_over_time": _sentiment_over_time(predicted, duration),
        "modality_usage": usage,
    }
    speakers = speaker_summary(utts)
    if speakers:
        out["n_speakers"] = len(speakers)
        out["speakers"] = speakers
    return out


def utterance_to_dict(u: Utterance) -> dict[str, Any]:
    """JSON form of one analysed utterance; the original API's fields always come first."""
    out: dict[str, Any] = {
        "start_time": u.start_time, "end_time": u.end_time, "text": u.text,
        "emotions": u.emotions, "sentiments": u.sentiments, "modalities": u.modalities,
        "per_modality": u.per_modality,
    }
    if u.speaker:
        out["speaker"] = u.speaker
    for key in ("emotion_probs", "sentiment_probs"):
        out[key] = u.extra.get(key, {})
    out.update({k: v for k, v in u.extra.items() if k not in out})
    return out


def utterance_from_dict(d: dict[str, Any]) -> Utterance:
    known = {"start_time", "end_time", "text", "emotions", "sentiments", "modalities", "per_modality",
             "speaker"}
    return Utterance(text=d.get("text", ""), start_time=d.get("start_time"), end_time=d.get("end_time"),
                     emotions=list(d.get("emotions", [])), sentiments=list(d.get("sentiments", [])),
                     modalities=list(d.get("modalities", [])), per_modality=dict(d.get("per_modality", {})),
                     speaker=d.get("speaker"), extra={k: v for k, v in d.items() if k not in known})


@dataclass
class Timeline:
    """Analysed utterances of one source plus the summary.

    >>> t = Timeline(source="talk.mp4", duration=3.0, utterances=[Utterance(text="hi", start_time=0, end_time=1)])
    >>> t.to_dict()["utterances"][0]["text"], t.to_dict()["schema_version"]
    ('hi', '1.0')
    """

    source: str
    duration: float | None = None
    utterances: list[Utterance] = field(default_factory=list)
    segmentation: str = ""  # "subtitles", "embedded-subtitles", "asr", "transcript", "windows"
    model: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    media: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        return summarize(self.utterances, self.duration)

    def to_dict(self) -> dict[str, Any]:
        """The versioned analyze JSON."""
        return {
            "schema_version": SCHEMA_VERSION,
            "source": self.source,
            "duration": self.duration,
            "segmentation": self.segmentation,
            "media": self.media,
            "utterances": [utterance_to_dict(u) for u in self.utterances],
            "summary": self.summary,
            "model": self.model,
            "problems": self.problems,
            "timings": {k: round(v, 3) for k, v in self.timings.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Timeline":
        """Rebuild from ``to_dict()`` output (the summary is recomputed)."""
        major = str(d.get("schema_version", "1")).split(".")[0]
        if major != SCHEMA_VERSION.split(".")[0]:
            raise ValueError(f"analyze JSON schema {d.get('schema_version')} is not supported "
                             f"(this mmva writes {SCHEMA_VERSION})")
        return cls(source=d.get("source", ""), duration=d.get("duration"),
                   utterances=[utterance_from_dict(u) for u in d.get("utterances", [])],
                   segmentation=d.get("segmentation", ""), model=dict(d.get("model", {})),
                   problems=list(d.get("problems", [])), timings=dict(d.get("timings", {})),
                   media=dict(d.get("media", {})))
