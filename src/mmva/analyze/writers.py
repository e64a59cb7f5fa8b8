"""Output writers behind ``get_writer(fmt)`` (as in openai/whisper): json, csv, srt, vtt, html.

Every writer turns a :class:`~mmva.analyze.timeline.Timeline` into text; :func:`write_outputs`
stores the chosen formats atomically (local folder or ``s3://`` prefix).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path, PurePosixPath
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
    """One row per utterance: times, speaker, text, top emotion/sentiment, every probability, modalities."""

    extension = "csv"

    def to_string(self, timeline: Timeline) -> str:
        buf = io.StringIO()
        # RFC 4180 line ends: a field holding a carriage return is then quoted (with "\n" it is not).
        out = csv.writer(buf, lineterminator="\r\n")
        out.writerow(["index", "start_time", "end_time", "speaker", "text", "emotion", "emotion_confidence", "sentiment",
                      "sentiment_confidence", "modalities", *[f"p_emotion_{e}" for e in EMOTIONS],
                      *[f"p_sentiment_{s}" for s in SENTIMENTS]])
        for i, u in enumerate(timeline.utterances):
            emo = u.emotions[0] if u.emotions else {"label": "", "confidence": ""}
            sen = u.sentiments[0] if u.sentiments else {"label": "", "confidence": ""}
            ep, sp = u.extra.get("emotion_probs", {}), u.extra.get("sentiment_probs", {})
            out.writerow([i, _blank(u.start_time), _blank(u.end_time), safe_cell(u.speaker or ""), safe_cell(u.text),
                          emo["label"], emo["confidence"],
                          sen["label"], sen["confidence"], "+".join(u.modalities),
                          *[ep.get(e, "") for e in EMOTIONS], *[sp.get(s, "") for s in SENTIMENTS]])
        return buf.getvalue()


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(text: str) -> str:
    """A text cell a spreadsheet shows as text, never runs as a formula (OWASP CSV injection):
    a cell starting with ``= + - @``, tab or carriage return gets a leading apostrophe.

    >>> safe_cell("=SUM(A1:A3)"), safe_cell("fine"), safe_cell("-5 degrees")
    ("'=SUM(A1:A3)", 'fine', "'-5 degrees")
    """
    return "'" + text if text.startswith(_FORMULA_START) else text


def _blank(x: float | None) -> float | str:
    return "" if x is None else x


def cue_text(u: Utterance) -> str:
    """Subtitle cue: ``Speaker 1: [joy 82% · positive] the words`` (no ``Speaker 1:`` when the
    speaker is unknown; the words alone when nothing was predicted)."""
    who = f"{u.speaker}: " if u.speaker else ""
    if not u.emotions:
        return who + (u.text or "[no prediction]")
    emo, sen = u.emotions[0], u.sentiments[0]
    tag = f"[{emo['label']} {emo['confidence']:.0%} · {sen['label']}]"
    return f"{who}{tag} {u.text}".strip()


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
    """Self-contained report (inline CSS, SVG and script, no network): see :mod:`mmva.analyze.report`.

    ``video`` is the player's source, relative to the report. Unset, :meth:`write` links the
    analysed file itself when it is a local file reachable from the report's folder; a report
    written to ``s3://`` or of a remote source has no player unless given one (``--embed-video``).
    """

    extension = "html"

    def __init__(self, video: str | None = None) -> None:
        self.video = video

    def to_string(self, timeline: Timeline) -> str:
        from mmva.analyze.report import render_html

        return render_html(timeline, video=self.video)

    def write(self, timeline: Timeline, path: str) -> str:
        video = self.video if self.video is not None else media_link(timeline.source, path)
        storage.write_text_atomic(path, HTMLWriter(video).to_string(timeline))
        return path


def media_link(source: str, report: str) -> str | None:
    """The URL of ``source`` relative to the report at ``report`` (percent-encoded), or None when
    either is remote, the source is not an existing video or audio file, or no relative path
    joins them (another drive).

    >>> media_link("talks/my talk.mp4", "reports/talk.mmva.html")   # doctest: +SKIP
    '../talks/my%20talk.mp4'
    """
    from urllib.parse import quote

    if storage.is_remote(source) or storage.is_remote(report) or not Path(source).is_file():
        return None
    if not _is_media(source):
        return None
    try:
        rel = os.path.relpath(os.path.abspath(source), os.path.dirname(os.path.abspath(report)))
    except ValueError:
        return None
    return quote(Path(rel).as_posix())


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


class OutputError(OSError):
    """An output cannot be written: an unwritable destination, or a name another input of the same
    command already wrote (outputs are never overwritten within one command)."""


def output_stem(source: str, keep_extension: bool = False) -> str:
    """``talk.mp4`` -> ``talk.mmva`` (outputs are ``talk.mmva.json``, ``talk.mmva.srt``, ...);
    ``keep_extension`` gives ``talk.mp4.mmva``, for when ``talk.wav`` is analysed too."""
    name = _path(source)
    return f"{name.name if keep_extension else name.stem}.mmva"


def check_output_dir(out_dir: str) -> None:
    """Make sure files can be written into ``out_dir`` (created if missing) before any work is done.

    Raises :class:`OutputError` naming the folder and the reason. ``s3://`` prefixes are not
    probed (a test object would be visible to others); their write errors arrive per file.

    >>> check_output_dir("/proc/mmva")    # doctest: +SKIP
    OutputError: /proc/mmva: cannot write outputs here: [Errno 2] No such file or directory: '/proc/mmva'
    """
    if storage.is_remote(out_dir):
        return
    try:
        storage.makedirs(out_dir)
        fd, probe = tempfile.mkstemp(prefix=".mmva-write-test.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{out_dir}: cannot write outputs here: {exc.strerror or exc}") from None


def plan_outputs(sources: list[str], out_dir: str, roots: list[str] = ()) -> dict[str, tuple[str, str]]:
    """Where each source's outputs go, ``{source: (folder, stem)}``, with no two sources sharing a name.

    A source inside one of the ``roots`` (folders given on the command line) keeps its sub-folder
    under ``out_dir``. Names that would clash (``talk.mp4`` and ``talk.wav``; ``Talk.mp4`` and
    ``talk.mp4`` on a case-insensitive disk) keep their extension (``talk.mp4.mmva``); files of the
    same name from different folders (``a/talk.mp4``, ``b/talk.mp4``) go into sub-folders named
    after the part of their paths that differs (``out/a/``, ``out/b/``).

    >>> plan_outputs(["c/talk.mp4", "c/talk.wav", "c/notes.txt"], "out")
    {'c/talk.mp4': ('out', 'talk.mp4.mmva'), 'c/talk.wav': ('out', 'talk.wav.mmva'), 'c/notes.txt': ('out', 'notes.mmva')}
    """
    plan = {src: (_mirror(src, out_dir, roots), output_stem(src)) for src in sources}
    for group in _clashes(plan):
        if len({_path(src).name for src in group}) > 1:  # the extensions tell them apart
            for src in group:
                plan[src] = (plan[src][0], output_stem(src, keep_extension=True))
    for group in _clashes(plan):
        parents = [_path(src).parent.parts for src in group]
        common = 0
        while all(len(p) > common and p[common] == parents[0][common] for p in parents):
            common += 1
        for src, parts in zip(group, parents):
            rel = [p.replace(":", "") for p in parts[common:] if p not in ("/", "..", ".")]
            plan[src] = (storage.join(plan[src][0], *rel) if rel else plan[src][0], plan[src][1])
    for group in _clashes(plan):  # only names differing in case are left: number them
        for i, src in enumerate(group[1:], start=2):
            plan[src] = (plan[src][0], f"{plan[src][1][:-len('.mmva')]}-{i}.mmva")
    return plan


def _path(source: str) -> PurePosixPath:
    return PurePosixPath(source.replace(chr(92), "/"))


def _mirror(src: str, out_dir: str, roots: list[str]) -> str:
    """``out_dir`` plus the sub-folder of ``src`` below the root folder it was found in."""
    if "://" in src:
        return out_dir
    for root in roots:
        if Path(src).is_relative_to(root) and Path(src).parent != Path(root):
            return str(Path(out_dir, Path(src).parent.relative_to(root)))
    return out_dir


def _clashes(plan: dict[str, tuple[str, str]]) -> list[list[str]]:
    groups: dict[str, list[str]] = {}
    for src, (folder, stem) in plan.items():
        groups.setdefault(_key(storage.join(folder, stem)), []).append(src)
    return [g for g in groups.values() if len(g) > 1]


def _key(path: str) -> str:
    # Case-folded: macOS and Windows disks treat Talk and talk as one file.
    return (path if storage.is_remote(path) else os.path.normpath(os.path.abspath(path))).casefold()


def _is_media(source: str) -> bool:
    """A video or audio file (not a subtitle file, a transcript or a text request)."""
    from mmva.analyze.pipeline import input_kind

    return bool(source) and source != "text" and input_kind(source) == "media"


def write_outputs(timeline: Timeline, out_dir: str, formats: list[str], stem: str | None = None,
                  written: set[str] | None = None, embed_video: bool = False) -> list[str]:
    """Write each format to ``out_dir/<stem>.<ext>``; returns the written paths.

    ``written`` is the set of outputs this command wrote before: a path in it is refused with an
    :class:`OutputError` (before anything of this timeline is written) instead of overwritten; the
    new paths are added to it. ``embed_video`` (with ``html``, for a video or audio source) first
    writes a small playable copy ``<stem>.mp4`` (:func:`mmva.io.proxy.write_proxy`) beside the
    report, and the report's player plays that copy.
    """
    stem = stem or output_stem(timeline.source)
    proxy = embed_video and "html" in formats and _is_media(timeline.source)
    paths = [storage.join(out_dir, f"{stem}.{get_writer(fmt).extension}") for fmt in formats]
    if proxy:
        paths.insert(0, storage.join(out_dir, f"{stem}.mp4"))
    if written is not None:
        for path in paths:
            if _key(path) in written:
                raise OutputError(f"{path}: already written by this command for another input; not overwritten")
    storage.makedirs(out_dir)
    done = []
    writers = [get_writer(fmt) for fmt in formats]
    if proxy:
        from urllib.parse import quote

        from mmva.io.proxy import write_proxy

        done.append(write_proxy(timeline.source, paths.pop(0)))
        writers = [HTMLWriter(quote(f"{stem}.mp4")) if isinstance(w, HTMLWriter) else w for w in writers]
        if written is not None:
            written.add(_key(done[0]))
    for writer, path in zip(writers, paths):
        done.append(writer.write(timeline, path))
        if written is not None:
            written.add(_key(path))
    return done
