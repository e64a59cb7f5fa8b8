"""Output writers behind ``get_writer(fmt)`` (as in openai/whisper): json, csv, srt, vtt, html.

Every writer turns a :class:`~mmva.analyze.timeline.Timeline` into text; :func:`write_outputs`
stores the chosen formats atomically (local folder or ``s3://`` prefix).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import PurePosixPath
from typing import Callable

from mmva.analyze.timeline import Timeline
from mmva.io import storage
from mmva.labels import EMOTIONS, SENTIMENTS
from mmva.types import Utterance

FORMATS = ("json", "csv", "srt", "vtt", "html")


class Writer:
    """Base writer: ``extension`` and ``to_string(timeline)``."""

    extension = ""

    def to_string(self, timeline: Timeline) -> str:
        raise NotImplementedError

    def write(self, timeline: Timeline, path: str) -> str:
        """Write atomically to a local path or URI; returns the path."""
        storage.write_text_atomic(path, self.to_string(timeline))
        return path


class JSONWriter(Writer):
    extension = "json"

    def to_string(self, timeline: Timeline) -> str:
        return json.dumps(timeline.to_dict(), indent=2, ensure_ascii=False) + "\n"


class CSVWriter(Writer):
    """One row per utterance: times, text, top emotion/sentiment, every probability, modalities."""

    extension = "csv"

    def to_string(self, timeline: Timeline) -> str:
        buf = io.StringIO()
        out = csv.writer(buf, lineterminator="\n")
        out.writerow(["index", "start_time", "end_time", "text", "emotion", "emotion_confidence", "sentiment",
                      "sentiment_confidence", "modalities", *[f"p_emotion_{e}" for e in EMOTIONS],
                      *[f"p_sentiment_{s}" for s in SENTIMENTS]])
        for i, u in enumerate(timeline.utterances):
            emo = u.emotions[0] if u.emotions else {"label": "", "confidence": ""}
            sen = u.sentiments[0] if u.sentiments else {"label": "", "confidence": ""}
            ep, sp = u.extra.get("emotion_probs", {}), u.extra.get("sentiment_probs", {})
            out.writerow([i, _blank(u.start_time), _blank(u.end_time), u.text, emo["label"], emo["confidence"],
                          sen["label"], sen["confidence"], "+".join(u.modalities),
                          *[ep.get(e, "") for e in EMOTIONS], *[sp.get(s, "") for s in SENTIMENTS]])
        return buf.getvalue()


def _blank(x: float | None) -> float | str:
    return "" if x is None else x


def cue_text(u: Utterance) -> str:
    """Subtitle cue: ``[joy 82% · positive] the words`` (the words alone when nothing was predicted)."""
    if not u.emotions:
        return u.text or "[no prediction]"
    emo, sen = u.emotions[0], u.sentiments[0]
    tag = f"[{emo['label']} {emo['confidence']:.0%} · {sen['label']}]"
    return f"{tag} {u.text}".strip()


class _SubtitleWriter(Writer):
    fmt = ""

    def to_string(self, timeline: Timeline) -> str:
        import pysubs2  # the same library reads .srt/.vtt input, so both directions agree

        subs = pysubs2.SSAFile()
        for u in timeline.utterances:
            if u.start_time is None or u.end_time is None:
                continue  # transcript lines have no times: nothing to cue
            subs.append(pysubs2.SSAEvent(start=int(round(u.start_time * 1000)), end=int(round(u.end_time * 1000)),
                                         text=cue_text(u)))
        return subs.to_string(self.fmt)


class SRTWriter(_SubtitleWriter):
    extension = fmt = "srt"


class VTTWriter(_SubtitleWriter):
    extension = fmt = "vtt"


class HTMLWriter(Writer):
    """Self-contained report (inline CSS and SVG, no network): see :mod:`mmva.analyze.report`."""

    extension = "html"

    def to_string(self, timeline: Timeline) -> str:
        from mmva.analyze.report import render_html

        return render_html(timeline)


_WRITERS: dict[str, Callable[[], Writer]] = {
    "json": JSONWriter, "csv": CSVWriter, "srt": SRTWriter, "vtt": VTTWriter, "html": HTMLWriter,
}


def get_writer(fmt: str) -> Writer:
    """The writer for ``fmt`` (json, csv, srt, vtt, html).

    >>> get_writer("srt").extension
    'srt'
    """
    key = fmt.strip().lower().lstrip(".")
    if key not in _WRITERS:
        raise ValueError(f"unknown output format {fmt!r}; choose from {', '.join(FORMATS)}")
    return _WRITERS[key]()


def parse_formats(spec: str | list[str]) -> list[str]:
    """``"json,html"`` or ``["json", "html"]`` or ``"all"`` -> validated list of formats."""
    items = spec.split(",") if isinstance(spec, str) else [p for s in spec for p in s.split(",")]
    items = [s.strip().lower() for s in items if s.strip()]
    if "all" in items:
        return list(FORMATS)
    for s in items:
        get_writer(s)
    return list(dict.fromkeys(items))


def output_stem(source: str) -> str:
    """``talk.mp4`` -> ``talk.mmva`` (outputs are ``talk.mmva.json``, ``talk.mmva.srt``, ...)."""
    return f"{PurePosixPath(source.replace(chr(92), '/')).stem}.mmva"


def write_outputs(timeline: Timeline, out_dir: str, formats: list[str], stem: str | None = None) -> list[str]:
    """Write each format to ``out_dir/<stem>.<ext>``; returns the written paths."""
    stem = stem or output_stem(timeline.source)
    storage.makedirs(out_dir)
    return [get_writer(fmt).write(timeline, storage.join(out_dir, f"{stem}.{get_writer(fmt).extension}"))
            for fmt in formats]
