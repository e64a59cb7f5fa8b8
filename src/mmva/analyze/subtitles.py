"""Utterances from subtitle files (.srt/.vtt/.ass through pysubs2), embedded subtitle streams and
plain transcripts (one utterance per line)."""

from __future__ import annotations

import re
from pathlib import Path

from mmva.io import storage
from mmva.types import Utterance

SUBTITLE_EXTENSIONS = (".srt", ".vtt", ".ass", ".ssa")
TRANSCRIPT_EXTENSIONS = (".txt",)

_TAG = re.compile(r"<[^>]+>|\{\\[^}]*\}")  # HTML-ish (<i>, <v Bob>) and ASS override tags


class SubtitleError(ValueError):
    """A subtitle or transcript file that cannot be read; the message names the file."""


def clean_text(text: str) -> str:
    """Subtitle text without markup or line breaks.

    >>> clean_text("<i>Hello</i>\\\\Nthere  {\\\\an8}friend")
    'Hello there friend'
    """
    text = text.replace("\\N", " ").replace("\\n", " ")
    return " ".join(_TAG.sub("", text).split())


def cues_to_utterances(cues: list[tuple[float, float, str]], problems: list[str] | None = None,
                       source: str = "") -> list[Utterance]:
    """``[(start, end, text)]`` -> utterances sorted by time; empty cues are dropped, and a cue
    ending before it starts is skipped and named in ``problems`` (with ``source``, its file)."""
    out = []
    for start, end, text in sorted(cues, key=lambda c: (c[0], c[1])):
        text = clean_text(text)
        if not text:
            continue
        if end <= start:
            note(problems, f"{source + ': ' if source else ''}subtitle cue {cue_span(start, end, text)} "
                           f"ends before it starts; skipped")
            continue
        out.append(Utterance(text=text, start_time=round(float(start), 3), end_time=round(float(end), 3)))
    return out


def cue_span(start: float, end: float, text: str) -> str:
    """``00:00:05.000-00:00:04.000 ('the words')``: how problems name a cue."""
    short = text if len(text) <= 40 else text[:37] + "..."
    return f"{_clock(start)}-{_clock(end)} ({short!r})"


def _clock(t: float) -> str:
    sign, t = ("-" if t < 0 else ""), abs(t)
    return f"{sign}{int(t // 3600):02d}:{int(t % 3600 // 60):02d}:{t % 60:06.3f}"


def note(problems: list[str] | None, message: str) -> None:
    if problems is not None:
        problems.append(message)


# A time with a minus sign (pysubs2 reads "-00:00:01,000" as +1 s without a word).
_NEGATIVE_TIME = re.compile(r"(^|-->)\s*-\s*\d")


def read_subtitles(path: str, problems: list[str] | None = None) -> list[Utterance]:
    """Utterances of an .srt/.vtt/.ass file (local path or URI); cues skipped for a negative time
    or an end before the start are named in ``problems``.

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "a.srt")
    >>> _ = open(p, "w").write("1\\n00:00:01,000 --> 00:00:02,500\\nHi <b>there</b>\\n")
    >>> [(u.start_time, u.end_time, u.text) for u in read_subtitles(p)]
    [(1.0, 2.5, 'Hi there')]
    """
    import pysubs2

    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError as exc:
        raise SubtitleError(f"{path}: subtitle file not found") from exc
    text = raw.decode("utf-8-sig", errors="replace")
    fmt = {".srt": "srt", ".vtt": "vtt", ".ass": "ass", ".ssa": "ssa"}.get(Path(path).suffix.lower())
    try:
        subs = pysubs2.SSAFile.from_string(text, format_=fmt)
    except Exception as exc:  # pysubs2 raises several types for malformed files
        raise SubtitleError(f"{path}: not a readable subtitle file ({exc})") from exc
    events = [ev for ev in subs if not ev.is_comment]
    timings = [line.strip() for line in text.splitlines() if "-->" in line] if fmt in ("srt", "vtt") else []
    cues = []
    for i, ev in enumerate(events):
        if len(timings) == len(events) and _NEGATIVE_TIME.search(timings[i]):
            note(problems, f"{path}: subtitle cue {timings[i]} ({clean_text(ev.plaintext)[:40]!r}) has a negative "
                           f"time; skipped")
            continue
        cues.append((ev.start / 1000.0, ev.end / 1000.0, ev.plaintext))
    utts = cues_to_utterances(cues, problems, path)
    if not utts and text.strip():
        raise SubtitleError(f"{path}: no subtitle cues found")
    return utts


def read_transcript(path: str) -> list[Utterance]:
    """One utterance per non-empty line of a plain-text transcript (no times: text only).

    >>> import tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "t.txt")
    >>> _ = open(p, "w").write("I love it.\\n\\nThis is awful.\\n")
    >>> [u.text for u in read_transcript(p)]
    ['I love it.', 'This is awful.']
    """
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError as exc:
        raise SubtitleError(f"{path}: transcript not found") from exc
    if b"\x00" in raw[:4096]:
        raise SubtitleError(f"{path}: not a text file (binary content)")
    lines = raw.decode("utf-8-sig", errors="replace").splitlines()
    # Plain text is plain text: no subtitle markup is stripped ("x < 5 and y > 2" stays whole).
    return [Utterance(text=" ".join(line.split()), extra={"line": i + 1})
            for i, line in enumerate(lines) if line.strip()]


def sidecar_subtitles(media_path: str) -> str | None:
    """A subtitle file beside a local media file with the same stem (talk.mp4 -> talk.srt), if any."""
    if storage.is_remote(media_path):
        return None
    p = Path(media_path)
    for ext in SUBTITLE_EXTENSIONS:
        for cand in (p.with_suffix(ext), p.with_suffix(ext.upper())):
            if cand.is_file():
                return str(cand)
    return None
