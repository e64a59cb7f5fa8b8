"""The MELD recipe: read ``{split}_sent_emo.csv`` and find each row's clip ``dia{D}_utt{U}.mp4``.

The real files have curly quotes, ellipses, quoted commas and ``HH:MM:SS,mmm`` times; copies of the
raw release are often mojibake (``â€™`` for ``’``) or Windows-1252 bytes. The reader repairs text
with ``ftfy`` and reports every row it cannot use (with its line number) instead of failing.

MELD's ``StartTime``/``EndTime`` locate the utterance in the *episode*; the clip files are already
cut to the utterance, so they are kept in ``extra["episode_start"/"episode_end"]`` and the
utterance's own ``start_time``/``end_time`` stay ``None`` (the whole clip).
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any

import ftfy

from mmva.io import storage
from mmva.labels import EMOTIONS, SENTIMENTS, emotion_id, sentiment_id, sentiment_of_emotion
from mmva.types import Utterance

CLIP_FOLDERS = {"train": "train_splits", "dev": "dev_splits_complete", "test": "output_repeated_splits_test"}
REQUIRED_COLUMNS = ("Utterance", "Dialogue_ID", "Utterance_ID")
LABEL_COLUMNS = ("Emotion", "Sentiment")


class CorpusError(ValueError):
    """A corpus file that cannot be used at all: ``str(err) == f"{path}: {reason}"``."""

    def __init__(self, path: str, reason: str) -> None:
        self.path, self.reason = str(path), reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (CorpusError, (self.path, self.reason))


_TIME = re.compile(r"^\s*(?:(\d+):)?(\d{1,2}):(\d{1,2}(?:[.,]\d+)?)\s*$")


def parse_timestamp(text: str | float | int) -> float:
    """Seconds from ``HH:MM:SS,mmm`` (MELD, SRT), ``HH:MM:SS.mmm`` (VTT), ``MM:SS.mmm`` or plain seconds.

    >>> parse_timestamp("00:16:16,059")
    976.059
    >>> parse_timestamp("1:02.5")
    62.5
    """
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        s = str(text).strip()
        m = _TIME.match(s)
        if m:
            hours, minutes, seconds = m.group(1), m.group(2), m.group(3).replace(",", ".")
            if int(minutes) >= 60 and hours is not None:
                raise ValueError(f"invalid timestamp {text!r}: minutes must be < 60")
            if float(seconds) >= 60:
                raise ValueError(f"invalid timestamp {text!r}: seconds must be < 60")
            value = int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds)
        else:
            try:
                value = float(s.replace(",", "."))
            except ValueError:
                raise ValueError(f"invalid timestamp {text!r}: expected HH:MM:SS,mmm or seconds") from None
    if not value >= 0 or value == float("inf"):  # also rejects NaN
        raise ValueError(f"invalid timestamp {text!r}: must be a finite, non-negative number of seconds")
    return round(value, 6)


# A UTF-8 lead byte (Â, Ã, â) read as Windows-1252/Latin-1, followed by a continuation byte read the same way.
_MOJIBAKE = re.compile("[\u00c2\u00c3\u00e2][\u0080-\u00ff\u0152\u0153\u0160\u0161\u0178\u017d\u017e"
                       "\u0192\u02c6\u02dc\u2013-\u203a\u20ac\u2122]")


def fix_text(text: str | None) -> str:
    """Repair mojibake (``â€™`` -> ``’``), strip control characters and surrounding space.

    >>> fix_text("It\\u00e2\\u20ac\\u2122s fine")
    'It’s fine'
    """
    if not text:
        return ""
    # uncurl_quotes=False: MELD's ’ is data, not noise; only broken encodings are repaired, and only
    # where UTF-8-read-as-Windows-1252 marks appear: on its own, ftfy also "repairs" rare genuine
    # text (it reads "”é" as MacRoman mojibake of "ӎ").
    return ftfy.fix_text(text, uncurl_quotes=False, normalization="NFC",
                         fix_encoding=bool(_MOJIBAKE.search(text))).strip()


def decode_csv_bytes(data: bytes, path: str, problems: list[str]) -> str:
    """UTF-8 (with or without BOM), else Windows-1252 with a note: never a crash on stray bytes."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        problems.append(f"{path}: not valid UTF-8 (byte 0x{data[exc.start]:02x} on line {line}); "
                        "read as Windows-1252 and repaired")
        return data.decode("cp1252", errors="replace")


def read_csv_rows(path: str, problems: list[str]) -> tuple[list[str], list[tuple[int, dict[str, str]]]]:
    """Header and ``(line number, row)`` pairs of a CSV file or URI, with quoted commas and newlines."""
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        raise CorpusError(path, "file not found") from None
    text = decode_csv_bytes(raw, path, problems)
    if not text.strip():
        raise CorpusError(path, "empty file (no header row)")
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey="__extra__", restval=None)
    header = [h.strip() for h in (reader.fieldnames or [])]
    reader.fieldnames = header
    rows: list[tuple[int, dict[str, str]]] = []
    try:
        for row in reader:
            rows.append((reader.line_num, row))
    except csv.Error as exc:
        problems.append(f"{path}: CSV syntax error near line {reader.line_num} ({exc}); rows after it ignored")
    return header, rows


def _label(value: str | None, kind: str) -> tuple[str | None, str | None]:
    """(canonical label or None when empty, error text when the label is not known)."""
    value = (value or "").strip()
    if not value:
        return None, None
    try:
        if kind == "emotion":
            return EMOTIONS[emotion_id(value)], None
        return SENTIMENTS[sentiment_id(value)], None
    except ValueError as exc:
        return None, str(exc)


def _int(value: str | None) -> int:
    number = int(str(value).strip())
    if number < 0:
        raise ValueError("negative id")
    return number


def read_meld_csv(path: str, split: str) -> tuple[list[Utterance], list[str]]:
    """Rows of a MELD CSV as utterances (``path`` unset) plus the problems found.

    Rows with an unknown label, a non-numeric id or a duplicate id are skipped and reported; an
    empty utterance keeps its row (its media may still speak) with the text modality absent.

    >>> utts, problems = read_meld_csv("meld/dev_sent_emo.csv", "dev")   # doctest: +SKIP
    >>> len(utts), utts[0].uid
    (1109, 'dev/dia0_utt0')
    """
    problems: list[str] = []
    header, rows = read_csv_rows(path, problems)
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing or not any(c in header for c in LABEL_COLUMNS):
        need = ", ".join(missing) or " or ".join(LABEL_COLUMNS)
        raise CorpusError(path, f"missing MELD column(s): {need} (found: {', '.join(header) or 'nothing'})")
    has_sentiment = "Sentiment" in header
    seen: dict[tuple[int, int], int] = {}
    out: list[Utterance] = []
    for line, row in rows:
        where = f"{path}: line {line}"
        if row.get("__extra__"):
            problems.append(f"{where}: {len(row['__extra__'])} more field(s) than the header (unquoted comma?); skipped")
            continue
        try:
            dia, utt = _int(row.get("Dialogue_ID")), _int(row.get("Utterance_ID"))
        except (TypeError, ValueError):
            problems.append(f"{where}: Dialogue_ID/Utterance_ID not integers "
                            f"({row.get('Dialogue_ID')!r}, {row.get('Utterance_ID')!r}); skipped")
            continue
        name = f"dia{dia}_utt{utt}"
        if (dia, utt) in seen:
            problems.append(f"{where}: duplicate id {name} (first on line {seen[(dia, utt)]}); skipped")
            continue
        emotion, bad_e = _label(row.get("Emotion"), "emotion")
        sentiment, bad_s = _label(row.get("Sentiment"), "sentiment")
        if bad_e or bad_s:
            problems.append(f"{where} ({name}): {bad_e or bad_s}; skipped")
            continue
        if sentiment is None and emotion is not None and not has_sentiment:
            sentiment = sentiment_of_emotion(emotion)
        seen[(dia, utt)] = line
        text = fix_text(row.get("Utterance"))
        extra: dict[str, Any] = {"line": line}
        for key, col in (("episode_start", "StartTime"), ("episode_end", "EndTime")):
            if row.get(col):
                try:
                    extra[key] = parse_timestamp(row[col])
                except ValueError as exc:
                    problems.append(f"{where} ({name}): {col}: {exc}")
        for key in ("Season", "Episode", "Sr No."):
            if row.get(key):
                extra[key.lower().replace(" no.", "_no")] = row[key].strip()
        if not text:
            problems.append(f"{where} ({name}): empty utterance text; text modality absent")
        out.append(Utterance(text=text, uid=f"{split}/{name}", speaker=fix_text(row.get("Speaker")) or None,
                             dialogue_id=str(dia), utterance_id=utt, emotion=emotion, sentiment=sentiment,
                             extra=extra))
    return out, problems


def clip_folder(root: str, split: str) -> str | None:
    """The folder holding a split's clips: MELD's name (``train_splits``...), also nested as in the
    extracted raw release (``train/train_splits``), or simply ``{split}/``."""
    meld_name = CLIP_FOLDERS.get(split)
    for parts in ((meld_name,), (split, meld_name), (split,)):
        if all(parts) and storage.exists(storage.join(root, *parts)):
            return storage.join(root, *parts)
    return None


def attach_clips(utterances: list[Utterance], root: str, split: str, problems: list[str]) -> None:
    """Set ``utt.path`` to ``dia{D}_utt{U}.mp4`` when present; record every missing clip."""
    folder = clip_folder(root, split)
    if folder is None:
        wanted = " or ".join(f"{root}/{n}" for n in (CLIP_FOLDERS.get(split), split) if n)
        problems.append(f"{root}: no clip folder for split {split!r} (looked for {wanted}); "
                        "text only, video and audio absent")
        return
    names = set(storage.listdir(folder))  # one listing, not one stat per row (fast on S3)
    for utt in utterances:
        fname = f"dia{utt.dialogue_id}_utt{utt.utterance_id}.mp4"
        if fname in names:
            utt.path = storage.join(folder, fname)
        else:
            problems.append(f"{storage.join(folder, fname)}: clip not found; {utt.uid} kept with video and "
                            "audio absent")


def meld_csv_path(root: str, split: str) -> str:
    return storage.join(root, f"{split}_sent_emo.csv")


def load_meld(root: str, split: str) -> tuple[list[Utterance], list[str]]:
    """Utterances of one MELD split with clip paths attached, plus problems.

    >>> utts, problems = load_meld("MELD.Raw", "dev")   # doctest: +SKIP
    """
    utts, problems = read_meld_csv(meld_csv_path(root, split), split)
    attach_clips(utts, root, split, problems)
    return utts, problems
