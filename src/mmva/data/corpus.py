"""One entry point for every corpus layout, and the report of what was skipped.

``load_corpus(root, split)`` accepts a MELD folder (``{split}_sent_emo.csv`` + clip folder), a
folder with a manifest ``{split}.csv``/``{split}.jsonl``, or the path of a manifest or MELD CSV.
It never stops at a bad row or a missing clip: those land in ``Corpus.problems``.
"""

from __future__ import annotations

import csv
import io
import posixpath
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from mmva.data.manifest import MANIFEST_SUFFIXES, read_manifest
from mmva.data.meld import CorpusError, attach_clips, load_meld, meld_csv_path, read_meld_csv
from mmva.io import storage
from mmva.labels import EMOTIONS, SENTIMENTS
from mmva.types import Utterance


@dataclass
class Corpus:
    """The utterances of one split and the problems met while reading it."""

    utterances: list[Utterance]
    problems: list[str] = field(default_factory=list)
    root: str = ""
    split: str = ""

    def __len__(self) -> int:
        return len(self.utterances)

    def label_counts(self, task: str = "emotion") -> list[int]:
        """Per-class counts from the label column (no clip decoding), in label-id order.

        >>> Corpus([Utterance(emotion="joy")]).label_counts()[3]
        1
        """
        names = EMOTIONS if task == "emotion" else SENTIMENTS
        counts = Counter(getattr(u, task) for u in self.utterances)
        return [counts.get(n, 0) for n in names]


@dataclass
class SkipReport:
    """Collects ``(uid or path, reason)`` for everything skipped or degraded during a run.

    >>> report = SkipReport()
    >>> report.add("dev/dia1_utt0", "clip not found")
    >>> print(report.summary())
    1 item(s) skipped or degraded:
      clip not found: 1 (dev/dia1_utt0)
    """

    entries: list[tuple[str, str]] = field(default_factory=list)

    def add(self, what: str, reason: str) -> None:
        self.entries.append((str(what), str(reason)))

    def extend(self, pairs: Iterable[tuple[str, str]]) -> None:
        for what, reason in pairs:
            self.add(what, reason)

    def add_problems(self, problems: Iterable[str]) -> None:
        """Add ``"{path}: {reason}"`` problem strings (as in :attr:`Corpus.problems`)."""
        for text in problems:
            what, _, reason = text.partition(": ")
            self.add(what, reason or text)

    def add_batch(self, batch: dict) -> None:
        """Add a collated batch's ``skipped`` and ``problems`` entries."""
        self.extend(batch.get("skipped", []))
        self.extend(batch.get("problems", []))

    def __len__(self) -> int:
        return len(self.entries)

    def __bool__(self) -> bool:
        return bool(self.entries)

    def summary(self, examples: int = 3, max_reasons: int = 20) -> str:
        """Counts per reason (details such as line numbers folded), with a few example items."""
        if not self.entries:
            return "nothing skipped"
        groups: dict[str, list[str]] = defaultdict(list)
        for what, reason in self.entries:
            groups[_reason_kind(reason)].append(what)
        lines = [f"{len(self.entries)} item(s) skipped or degraded:"]
        for reason, items in sorted(groups.items(), key=lambda kv: -len(kv[1]))[:max_reasons]:
            shown = ", ".join(dict.fromkeys(items[:examples]))
            more = ", ..." if len(items) > examples else ""
            lines.append(f"  {reason}: {len(items)} ({shown}{more})")
        if len(groups) > max_reasons:
            lines.append(f"  ... and {len(groups) - max_reasons} other reason(s)")
        return "\n".join(lines)

    def to_csv(self) -> str:
        """Every entry, as CSV text (``item,reason``)."""
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["item", "reason"])
        writer.writerows(self.entries)
        return buf.getvalue()


_DETAIL = re.compile(r"line \d+|dia\d+_utt\d+|\([^)]*\)|'[^']*'|\"[^\"]*\"|\d+(\.\d+)?")


def _reason_kind(reason: str) -> str:
    # "line 12 (dia3_utt1): unknown emotion label 'x'..." and "line 40 ...": one group
    reason = re.sub(r"^\S*[/\\]\S*: ", "", reason)  # "/data/x.mp4: no audio stream" groups with the rest
    kind = re.sub(r"(#\s*)+", "# ", _DETAIL.sub("#", reason.split(";")[0]))
    return re.sub(r"^[#\s:]+", "", kind).strip(" :") or reason


def add_context(utterances: list[Utterance]) -> None:
    """``extra["context"]``: texts of the earlier utterances of the same dialogue, oldest first.

    Order within a dialogue is ``utterance_id`` when every row has one, else file order.
    """
    dialogues: dict[str, list[Utterance]] = defaultdict(list)
    for utt in utterances:
        if utt.dialogue_id is not None:
            dialogues[utt.dialogue_id].append(utt)
        else:
            utt.extra.setdefault("context", [])
    for group in dialogues.values():
        if all(u.utterance_id is not None for u in group):
            group = sorted(group, key=lambda u: u.utterance_id)
        texts: list[str] = []
        for utt in group:
            utt.extra["context"] = list(texts)
            if utt.text:
                texts.append(utt.text)


def _looks_like_meld(path: str) -> bool:
    head = storage.read_bytes(path)[:4096].decode("utf-8", "replace")
    first = head.splitlines()[0] if head else ""
    return "Dialogue_ID" in first and "Utterance_ID" in first


def load_corpus(root: str, split: str) -> Corpus:
    """Read one split of a MELD-format corpus or a manifest (local path or ``s3://``).

    >>> corpus = load_corpus("data/meld", "dev")   # doctest: +SKIP
    >>> len(corpus.utterances), corpus.problems[:1]
    (1109, ['data/meld/dev_splits_complete/dia110_utt7.mp4: clip not found; ...'])
    """
    root = str(root)
    if Path(root).suffix.lower() in MANIFEST_SUFFIXES and storage.exists(root) and not _isdir(root):
        if Path(root).suffix.lower() == ".csv" and _looks_like_meld(root):
            # a MELD CSV given directly: its clips live beside it
            split = split or Path(root).stem.replace("_sent_emo", "")
            utts, problems = read_meld_csv(root, split)
            attach_clips(utts, _parent(root), split, problems)
        else:
            utts, problems = read_manifest(root, split)
    elif storage.exists(meld_csv_path(root, split)):
        utts, problems = load_meld(root, split)
    else:
        for suffix in (".csv", ".jsonl", ".json"):
            candidate = storage.join(root, f"{split}{suffix}")
            if storage.exists(candidate):
                utts, problems = read_manifest(candidate, split)
                break
        else:
            if not storage.exists(root):
                raise CorpusError(root, "corpus folder not found")
            raise CorpusError(root, f"no data for split {split!r}: expected {split}_sent_emo.csv (MELD) "
                                    f"or a manifest {split}.csv / {split}.jsonl")
    add_context(utts)
    return Corpus(utterances=utts, problems=problems, root=root, split=split)


def _isdir(path: str) -> bool:
    fs, p = storage.filesystem(path)
    return fs.isdir(p)


def _parent(path: str) -> str:
    return posixpath.dirname(path) if storage.is_remote(path) else str(Path(path).parent)
