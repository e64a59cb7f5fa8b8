"""Generic manifests, so users train on their own data: CSV or JSONL, one utterance per row.

Columns (SPEC section 6): ``path`` and/or ``text`` (at least one), optional ``start``, ``end``
(seconds or ``HH:MM:SS,mmm``), ``emotion``, ``sentiment``, ``dialogue_id``, ``utterance_id``,
``speaker``, ``id``. A relative ``path`` is resolved against the manifest's folder and must stay
inside it (``../`` escapes are refused); absolute paths and URIs (``s3://``) are taken as written.
Every unusable row is skipped and reported with its line number; a listed file that does not
exist keeps its row with video and audio absent.
"""

from __future__ import annotations

import json
import posixpath
from collections import defaultdict
from pathlib import Path, PurePosixPath
from typing import Any

from mmva.data.meld import CorpusError, _label, decode_csv_bytes, fix_text, parse_timestamp, read_csv_rows
from mmva.io import storage
from mmva.labels import sentiment_of_emotion
from mmva.types import Utterance

MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")
_KNOWN = {"path", "text", "start", "end", "emotion", "sentiment", "dialogue_id", "utterance_id", "speaker", "id",
          "uid"}


def _read_jsonl(path: str, problems: list[str]) -> list[tuple[int, dict[str, Any]]]:
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        raise CorpusError(path, "file not found") from None
    rows = []
    for n, line in enumerate(decode_csv_bytes(raw, path, problems).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}: line {n}: not valid JSON ({exc.msg}); skipped")
            continue
        if not isinstance(obj, dict):
            problems.append(f"{path}: line {n}: expected a JSON object, got {type(obj).__name__}; skipped")
            continue
        rows.append((n, {str(k).strip().lower(): v for k, v in obj.items()}))
    return rows


def _folder(path: str) -> str:
    return posixpath.dirname(path) if storage.is_remote(path) else str(Path(path).resolve().parent)


def resolve_media_path(value: str, folder: str) -> tuple[str | None, str | None]:
    """(resolved path, refusal reason). Relative paths must stay inside `folder`.

    >>> resolve_media_path("clips/a.mp4", "/data")
    ('/data/clips/a.mp4', None)
    >>> resolve_media_path("../secret.mp4", "/data")[1]
    "path '../secret.mp4' leaves the manifest's folder /data"
    """
    value = value.strip()
    if storage.is_remote(value) or value.startswith("file://"):
        return value.removeprefix("file://"), None
    if Path(value).is_absolute():
        return value, None
    if storage.is_remote(folder):
        scheme, rest = folder.split("://", 1)
        joined = posixpath.normpath(posixpath.join(rest, value))
        if not (joined + "/").startswith(rest.rstrip("/") + "/"):
            return None, f"path {value!r} leaves the manifest's folder {folder}"
        return f"{scheme}://{joined}", None
    base = Path(folder)
    target = Path(posixpath.normpath(str(PurePosixPath(base.as_posix()) / value)))
    if base != target and base not in target.parents:
        return None, f"path {value!r} leaves the manifest's folder {folder}"
    return str(target), None


def _text(value: Any) -> str:
    return fix_text(value if isinstance(value, str) else ("" if value is None else str(value)))


def _row_to_utterance(row: dict[str, Any], where: str, folder: str, split: str, line: int,
                      has_sentiment: bool, problems: list[str]) -> Utterance | None:
    text = _text(row.get("text"))
    raw_path = row.get("path")
    raw_path = "" if raw_path is None else str(raw_path).strip()
    if not text and not raw_path:
        problems.append(f"{where}: neither text nor path; skipped")
        return None
    emotion, bad_e = _label(None if row.get("emotion") is None else str(row.get("emotion")), "emotion")
    sentiment, bad_s = _label(None if row.get("sentiment") is None else str(row.get("sentiment")), "sentiment")
    if bad_e or bad_s:
        problems.append(f"{where}: {bad_e or bad_s}; skipped")
        return None
    if sentiment is None and emotion is not None and not has_sentiment:
        sentiment = sentiment_of_emotion(emotion)
    times: dict[str, float | None] = {"start": None, "end": None}
    for key in times:
        value = row.get(key)
        if value not in (None, ""):
            try:
                times[key] = parse_timestamp(value)
            except ValueError as exc:
                problems.append(f"{where}: {key}: {exc}; skipped")
                return None
    if times["start"] is not None and times["end"] is not None and times["end"] <= times["start"]:
        problems.append(f"{where}: end {times['end']} is not after start {times['start']}; skipped")
        return None
    path = None
    extra: dict[str, Any] = {"line": line}
    if raw_path:
        path, refusal = resolve_media_path(raw_path, folder)
        if refusal:
            problems.append(f"{where}: {refusal}; kept with video and audio absent")
            extra["refused_path"] = raw_path
    utt_id = row.get("utterance_id")
    try:
        utt_id = int(utt_id) if utt_id not in (None, "") else None
    except (TypeError, ValueError):
        problems.append(f"{where}: utterance_id {utt_id!r} is not an integer; ignored")
        utt_id = None
    dia = row.get("dialogue_id")
    explicit = row.get("id") if row.get("id") not in (None, "") else row.get("uid")
    uid = f"{split}/{explicit}" if explicit not in (None, "") else ""
    extra.update({k: v for k, v in row.items() if k not in _KNOWN and v not in (None, "")})
    return Utterance(text=text, start_time=times["start"], end_time=times["end"], path=path, uid=uid,
                     speaker=_text(row.get("speaker")) or None,
                     dialogue_id=None if dia in (None, "") else str(dia).strip(), utterance_id=utt_id,
                     emotion=emotion, sentiment=sentiment, extra=extra)


def _assign_uids(utts: list[Utterance], split: str, problems: list[str], manifest: str) -> list[Utterance]:
    """Explicit ids must be unique (later duplicates skipped); derived ids are made unique."""
    seen: dict[str, int] = {}
    out = []
    for utt in utts:
        line = utt.extra.get("line")
        if utt.uid:
            if utt.uid in seen:
                problems.append(f"{manifest}: line {line}: duplicate id {utt.uid} (first on line {seen[utt.uid]}); "
                                "skipped")
                continue
        else:
            stem = Path(utt.path).stem if utt.path else f"row{line}"
            base = f"{split}/{stem}" + (f"@{utt.start_time:g}" if utt.start_time is not None else "")
            uid, n = base, 1
            while uid in seen:
                n += 1
                uid = f"{base}#{n}"
            utt.uid = uid
        seen[utt.uid] = line
        out.append(utt)
    return out


def check_files(utts: list[Utterance], problems: list[str]) -> None:
    """Unset ``path`` of rows whose file does not exist (one listing per folder, cheap on S3)."""
    listings: dict[str, set[str]] = {}
    by_folder: dict[str, list[Utterance]] = defaultdict(list)
    for utt in utts:
        if utt.path:
            folder = posixpath.dirname(utt.path) if storage.is_remote(utt.path) else str(Path(utt.path).parent)
            by_folder[folder].append(utt)
    for folder, group in by_folder.items():
        if folder not in listings:
            listings[folder] = set(storage.listdir(folder))
        for utt in group:
            name = posixpath.basename(utt.path) if storage.is_remote(utt.path) else Path(utt.path).name
            if name not in listings[folder]:
                problems.append(f"{utt.path}: file not found; {utt.uid} kept with video and audio absent")
                utt.extra["missing_path"] = utt.path
                utt.path = None


def read_manifest(path: str, split: str = "") -> tuple[list[Utterance], list[str]]:
    """Utterances of a CSV/JSONL manifest (files checked, ids unique) plus the problems found.

    >>> utts, problems = read_manifest("mydata/train.csv", "train")   # doctest: +SKIP
    """
    path = str(path)
    split = split or Path(path).stem
    problems: list[str] = []
    suffix = Path(path).suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise CorpusError(path, f"not a manifest (expected {', '.join(MANIFEST_SUFFIXES)})")
    if suffix == ".csv":
        header, csv_rows = read_csv_rows(path, problems)
        rows = [(line, {k.strip().lower(): v for k, v in r.items() if k != "__extra__"}) for line, r in csv_rows]
        columns = {h.strip().lower() for h in header}
        for line, r in csv_rows:
            if r.get("__extra__"):
                problems.append(f"{path}: line {line}: more fields than the header (unquoted comma?); skipped")
        bad_lines = {line for line, r in csv_rows if r.get("__extra__")}
        rows = [(line, r) for line, r in rows if line not in bad_lines]
        if not ({"path", "text"} & columns):
            raise CorpusError(path, f"missing column: a manifest needs 'path' or 'text' "
                                    f"(found: {', '.join(sorted(columns)) or 'nothing'})")
    else:
        rows = _read_jsonl(path, problems)
        columns = {k for _, r in rows for k in r}
    folder = _folder(path)
    has_sentiment = "sentiment" in columns
    utts = [u for line, row in rows
            if (u := _row_to_utterance(row, f"{path}: line {line}", folder, split, line, has_sentiment, problems))]
    utts = _assign_uids(utts, split, problems, path)
    check_files(utts, problems)
    return utts, problems
