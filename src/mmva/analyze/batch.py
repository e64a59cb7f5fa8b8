"""A whole collection analysed in one resumable run, in this process or on a Ray cluster.

``analyze_collection(source, dest)`` lists the files of ``source`` (a folder, a glob, a CSV/JSONL
manifest with a ``path`` column, or an ``s3://`` prefix), plans each file's outputs exactly as
``mmva analyze`` names them (:func:`mmva.analyze.writers.plan_outputs`), skips the files a previous
run finished, and analyses the rest, largest first, with :func:`mmva.analyze.pipeline.analyze`:

- in this process, one file after another, the models loaded once;
- on Ray (``ray_address``), on a pool of actors (:class:`BatchWorker`) that each load the models
  once and take one file at a time, so a worker that dies loses only the file it held.

Exactly once in effect: every output is written atomically (:func:`mmva.io.storage.write_atomic`),
then a small record ``DEST/.mmva-batch/records/<folder>/<stem>.json`` says the file is done (or
why it failed, after how many attempts). A rerun skips a file whose record says done and whose
outputs are all there, so a killed worker or driver costs only the files in flight. A failure that
may pass (a worker lost, a network or disk error) is retried up to ``retries`` times in all, across
runs; a file that cannot be analysed (corrupt media) fails once and is reported, not retried,
until its size changes or ``retry_failed`` is set. At the end ``DEST/summary.csv`` and
``DEST/summary.parquet`` hold one row per file of the collection (:data:`SUMMARY_COLUMNS`).

>>> report = analyze_collection("s3://archive/interviews/", "s3://archive/mmva/")   # doctest: +SKIP
>>> report.counts()                                                                   # doctest: +SKIP
{'ok': 11, 'failed': 1, 'analysed': 12, 'skipped': 0}
"""

from __future__ import annotations

import collections
import csv
import glob as globlib
import io
import json
import logging
import os
import posixpath
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

from mmva.analyze.pipeline import AUDIO_EXTENSIONS, VIDEO_EXTENSIONS, expand_inputs
from mmva.analyze.subtitles import SUBTITLE_EXTENSIONS
from mmva.io import storage

log = logging.getLogger("mmva")

STATE_DIR = ".mmva-batch"  # under DEST: one record per file (a dot folder: never taken as input)
SUMMARY_COLUMNS = ("source", "status", "error", "duration", "n_utterances", "dominant_emotion",
                   "dominant_sentiment", "n_speakers", "attempts", "seconds", "size", "outputs", "worker")
MANIFEST_EXTENSIONS = (".csv", ".jsonl")
_MEDIA = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS + SUBTITLE_EXTENSIONS
# Errors that may not happen again: a lost connection, a full disk, a worker that died.
_TRANSIENT = (OSError, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class BatchOptions:
    """What to do with each file: ``analyze()``'s arguments, the formats, and the retry budget."""

    formats: tuple[str, ...] = ("json",)
    model: str | None = None  # as analyze(model=...): a checkpoint, default-model folder or model.tar.gz
    asr_model: str | None = None
    device: str = "cpu"
    top_k: int = 3
    diarize: bool = True
    speakers: int | None = None
    retries: int = 2  # extra attempts after a failure that may pass (in all, across runs)
    retry_failed: bool = False  # also retry files recorded as failed for good (e.g. after fixing them)
    threads: int | None = None  # torch threads per worker (None: torch's default)
    face_detector: str | None = None  # as load_predictor(face_detector=...): auto, mtcnn or haar

    @property
    def max_attempts(self) -> int:
        return 1 + max(0, self.retries)


@dataclass(frozen=True)
class Task:
    """One file to analyse: where it is, how big, where its outputs and record go, which attempt."""

    source: str
    size: int
    folder: str
    stem: str
    record: str
    attempt: int = 1

    def outputs(self, formats: Iterable[str]) -> list[str]:
        from mmva.analyze.writers import get_writer

        return [storage.join(self.folder, f"{self.stem}.{get_writer(f).extension}") for f in formats]


@dataclass
class BatchReport:
    """The rows of the summary table (one per file, sorted by source) and what this run did."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    analysed: int = 0  # files attempted in this run
    skipped: int = 0  # files a previous run had finished (or failed for good)
    seconds: float = 0.0
    summary_files: list[str] = field(default_factory=list)
    workers: int = 0
    executor: str = "in-process"

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.rows if r["status"] != "ok"]

    def counts(self) -> dict[str, int]:
        return {"ok": len(self.rows) - len(self.failed), "failed": len(self.failed), "analysed": self.analysed,
                "skipped": self.skipped}


# -------------------------------------------------------------------------------------------------
# what to analyse, and where each output goes


def list_sources(source: str) -> tuple[list[tuple[str, int]], str | None]:
    """``([(file, size in bytes)], root)`` for a folder, glob, manifest, ``s3://`` prefix or single file.

    ``root`` is the folder (or prefix) whose sub-folders are mirrored under the destination; None
    for a manifest and for a single file.

    >>> list_sources("talks/*.mp4")            # doctest: +SKIP
    ([('talks/a.mp4', 1048576), ('talks/b.mp4', 524288)], 'talks')
    """
    source = str(source)
    if any(c in source for c in "*?["):
        return _glob(source)
    if source.lower().endswith(MANIFEST_EXTENSIONS):
        return _with_sizes(_manifest_paths(source)), None
    fs, path = storage.filesystem(source)
    if storage.is_remote(source):
        if fs.isfile(path):
            return _with_sizes([source]), None
        root = source.rstrip("/")
        found = fs.find(path, detail=True)
        scheme = source.split("://")[0]
        files = [(f"{scheme}://{p}", int(info.get("size") or 0)) for p, info in sorted(found.items())
                 if _wanted(posixpath.relpath(p, path.rstrip("/")))]
        return files, root
    if not Path(source).exists():
        raise FileNotFoundError(f"{source}: no such file or folder")
    if Path(source).is_dir():
        return _with_sizes(expand_inputs([source])), source
    return _with_sizes([source]), None


def _wanted(rel: str) -> bool:
    """A media or subtitle file that is not ours and not inside a hidden folder."""
    parts = rel.split("/")
    return (posixpath.splitext(rel)[1].lower() in _MEDIA and ".mmva." not in parts[-1]
            and not any(p.startswith(".") for p in parts))


def _glob(pattern: str) -> tuple[list[tuple[str, int]], str | None]:
    head = pattern[: min(pattern.index(c) for c in "*?[" if c in pattern)]
    root = head.rsplit("/", 1)[0] if "/" in head else "."
    if storage.is_remote(pattern):
        fs, path = storage.filesystem(pattern)
        scheme = pattern.split("://")[0]
        found = fs.glob(path, detail=True)
        return [(f"{scheme}://{p}", int(i.get("size") or 0)) for p, i in sorted(found.items())
                if i.get("type") != "directory" and _wanted(posixpath.basename(p))], root
    files = sorted(p for p in globlib.glob(pattern, recursive=True) if Path(p).is_file() and _wanted(Path(p).name))
    return _with_sizes(files), root


def _manifest_paths(manifest: str) -> list[str]:
    """The distinct ``path`` values of a CSV or JSONL manifest (relative ones against its folder)."""
    from mmva.data.manifest import resolve_media_path
    from mmva.data.meld import read_csv_rows

    problems: list[str] = []
    if manifest.lower().endswith(".csv"):
        header, rows = read_csv_rows(manifest, problems)
        column = "path" if "path" in header else header[0]
        values = [row.get(column) or "" for _, row in rows]
    else:
        values = [str(json.loads(line).get("path") or "") for line in storage.read_text(manifest).splitlines()
                  if line.strip()]
    folder = posixpath.dirname(manifest) if storage.is_remote(manifest) else str(Path(manifest).resolve().parent)
    paths: dict[str, None] = {}
    for value in values:
        if value.strip():
            path, refusal = resolve_media_path(value, folder)
            if refusal:
                log.warning("%s: %s; skipped", manifest, refusal)
            elif path:
                paths.setdefault(path)
    return list(paths)


def _with_sizes(paths: list[str]) -> list[tuple[str, int]]:
    """Sizes looked up in parallel (one request each on S3); a missing file counts 0 and fails later."""
    def size(path: str) -> int:
        try:
            fs, p = storage.filesystem(path)
            return int(fs.size(p) or 0)
        except OSError:
            return 0

    with ThreadPoolExecutor(16) as pool:
        return list(zip(paths, pool.map(size, paths)))


def plan_batch(files: list[str], dest: str, root: str | None = None) -> dict[str, tuple[str, str]]:
    """``{source: (folder, stem)}``: each file's sub-folder below ``root`` mirrored under ``dest``,
    names as ``mmva analyze`` gives them (:func:`mmva.analyze.writers.plan_outputs`: no two files share
    an output). The plan depends only on the list of files, so a rerun finds the same outputs.

    >>> plan_batch(["s3://b/in/x/talk.mp4", "s3://b/in/talk.mp4"], "out", "s3://b/in")
    {'s3://b/in/talk.mp4': ('out', 'talk.mmva'), 's3://b/in/x/talk.mp4': ('out/x', 'talk.mmva')}
    """
    from mmva.analyze.writers import plan_outputs

    files = sorted(files)
    if root is None:
        return plan_outputs(files, dest)
    base = root.rstrip("/") + "/" if storage.is_remote(root) else root
    groups: dict[tuple[str, ...], list[str]] = collections.defaultdict(list)
    for f in files:
        rel = (posixpath.relpath(posixpath.dirname(f), base.rstrip("/")) if storage.is_remote(f)
               else os.path.relpath(os.path.dirname(f) or ".", root))
        parts = tuple(p for p in rel.replace(os.sep, "/").split("/") if p not in ("", ".", ".."))
        groups[parts].append(f)
    plan: dict[str, tuple[str, str]] = {}
    for parts, group in sorted(groups.items()):
        plan.update(plan_outputs(group, storage.join(dest, *parts) if parts else dest))
    return plan


def plan_tasks(source: str, dest: str) -> list[Task]:
    """Every file of ``source`` as a :class:`Task` (attempt 1), largest first."""
    dest = dest.rstrip("/") if storage.is_remote(dest) else dest
    files, root = list_sources(source)
    sizes = dict(files)
    plan = plan_batch(list(sizes), dest, root)
    tasks = []
    for src, (folder, stem) in plan.items():
        rel = (posixpath.relpath(folder, dest) if storage.is_remote(dest) else os.path.relpath(folder, dest))
        parts = [p for p in rel.replace(os.sep, "/").split("/") if p not in ("", ".")]
        record = storage.join(dest, STATE_DIR, "records", *parts, f"{stem}.json")
        tasks.append(Task(src, sizes[src], folder, stem, record))
    return sorted(tasks, key=lambda t: (-t.size, t.source))


# -------------------------------------------------------------------------------------------------
# the worker: models loaded once, one file at a time


class BatchWorker:
    """Loads the models once, then analyses one :class:`Task` per :meth:`run` call.

    The same class runs in this process and as a Ray actor (``ray.remote(BatchWorker)``).
    """

    def __init__(self, options: BatchOptions) -> None:
        from mmva.analyze import asr as asr_mod
        from mmva.model.predictor import load_predictor

        if options.threads:
            import torch

            torch.set_num_threads(options.threads)
        self.options = options
        t0 = time.perf_counter()
        self.predictor = load_predictor(options.model, asr_mod.resolve_device(options.device),
                                        face_detector=options.face_detector)
        # The ASR model is cached per process by load_asr: loading it here keeps it off the first file.
        asr_mod.load_asr(options.asr_model, asr_mod.resolve_device(options.device))
        self.load_seconds = round(time.perf_counter() - t0, 3)
        self.pid = os.getpid()
        self.name = f"{socket.gethostname()}:{self.pid}"  # in each row: which process (and models) did it

    def run(self, task: Task) -> dict[str, Any]:
        """Analyse ``task.source``, write its outputs and then its record; return its summary row."""
        from mmva.analyze.pipeline import analyze
        from mmva.analyze.writers import write_outputs

        t0 = time.perf_counter()
        o = self.options
        try:
            timeline = analyze(task.source, model=self.predictor, asr_model=o.asr_model, device=o.device,
                               top_k=o.top_k, diarize=o.diarize, speakers=o.speakers)
            outputs = write_outputs(timeline, task.folder, list(o.formats), task.stem)
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, the batch goes on
            row = failure_row(task, _reason(exc), isinstance(exc, _TRANSIENT), time.perf_counter() - t0)
        else:
            s = timeline.summary
            row = {**_empty_row(task), "status": "ok", "duration": timeline.duration,
                   "n_utterances": s.get("n_utterances"), "dominant_emotion": s.get("dominant_emotion"),
                   "dominant_sentiment": s.get("dominant_sentiment"), "n_speakers": s.get("n_speakers"),
                   "seconds": round(time.perf_counter() - t0, 3), "outputs": ";".join(outputs)}
        row["worker"] = self.name
        write_record(task, row)
        return row

    def ping(self) -> int:
        """The worker's process id, once its models are loaded."""
        return self.pid


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _empty_row(task: Task) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(SUMMARY_COLUMNS)
    row.update({"source": task.source, "attempts": task.attempt, "size": task.size, "error": ""})
    return row


def failure_row(task: Task, error: str, transient: bool, seconds: float = 0.0) -> dict[str, Any]:
    """The row (and record content) of a failed attempt."""
    return {**_empty_row(task), "status": "failed", "error": error, "transient": transient,
            "seconds": round(seconds, 3)}


def write_record(task: Task, row: dict[str, Any]) -> None:
    """The file's record, written atomically after its outputs: the mark that it is done (or failed)."""
    storage.write_text_atomic(task.record, json.dumps(row, ensure_ascii=False) + "\n")


# -------------------------------------------------------------------------------------------------
# the driver


def analyze_collection(source: str, dest: str, options: BatchOptions | None = None, *,
                       ray_address: str | None = None, workers: int | None = None, cpus_per_worker: float = 1.0,
                       gpus_per_worker: float = 0.0,
                       on_row: Callable[[dict[str, Any]], None] | None = None) -> BatchReport:
    """Analyse every file of ``source`` into ``dest`` (local folder or ``s3://`` prefix); resumable.

    ``ray_address`` (``"auto"``, ``"127.0.0.1:6379"``, ``"ray://head:10001"``, or ``"local"`` for a
    private Ray on this machine) runs the files on a pool of ``workers`` Ray actors (default: as many
    as the cluster has CPUs for, ``cpus_per_worker`` each); None analyses them in this process.
    ``on_row(row)`` is called after each attempt. Returns the :class:`BatchReport`; the summary table
    is written to ``dest/summary.csv`` and ``dest/summary.parquet`` (Parquet needs pyarrow).

    >>> analyze_collection("talks/", "out/", BatchOptions(formats=("json", "html")))   # doctest: +SKIP
    """
    from mmva.analyze.writers import check_output_dir, parse_formats

    options = options or BatchOptions()
    options = replace(options, formats=tuple(parse_formats(list(options.formats))))
    dest = dest.rstrip("/") if storage.is_remote(dest) else dest
    check_output_dir(dest)
    t0 = time.perf_counter()
    tasks = plan_tasks(source, dest)
    if not tasks:
        raise FileNotFoundError(f"{source}: no media, subtitle or transcript files found")
    todo, done = _resume(tasks, dest, options)
    report = BatchReport(skipped=len(done), analysed=len(todo))
    rows = {r["source"]: r for r in done}
    queue = _Queue(todo, options, rows, on_row)
    if todo and ray_address:
        from mmva.analyze.batch_ray import run_on_ray

        report.executor = f"ray ({ray_address})"
        report.workers = run_on_ray(queue, options, ray_address, workers, cpus_per_worker, gpus_per_worker)
    elif todo:
        report.workers = 1
        worker = BatchWorker(options)
        while (task := queue.pop()) is not None:
            queue.finish(task, worker.run(task))
    report.rows = [_public(rows[t.source]) for t in sorted(tasks, key=lambda t: t.source)]
    report.summary_files = write_summary(report.rows, dest)
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


class _Queue:
    """Tasks largest first; a failure that may pass goes back at the end until its attempts run out."""

    def __init__(self, tasks: list[Task], options: BatchOptions, rows: dict[str, dict[str, Any]],
                 on_row: Callable[[dict[str, Any]], None] | None) -> None:
        self.pending = collections.deque(tasks)
        self.options, self.rows, self.on_row = options, rows, on_row

    def pop(self) -> Task | None:
        return self.pending.popleft() if self.pending else None

    def __len__(self) -> int:
        return len(self.pending)

    def finish(self, task: Task, row: dict[str, Any]) -> None:
        self.rows[task.source] = row
        if self.on_row is not None:
            self.on_row(row)
        if row["status"] != "ok" and row.get("transient") and task.attempt < self.options.max_attempts:
            self.pending.append(replace(task, attempt=task.attempt + 1))

    def lost(self, task: Task, error: str) -> None:
        """The worker holding ``task`` died: record it (unless it had finished) and maybe retry."""
        record = read_record(task.record)
        if record and record.get("status") == "ok" and record.get("size") == task.size:
            self.finish(task, record)  # it died after finishing this file
            return
        row = failure_row(task, error, transient=True)
        write_record(task, row)
        self.finish(task, row)


def read_record(path: str) -> dict[str, Any] | None:
    try:
        return json.loads(storage.read_text(path))
    except (OSError, ValueError):
        return None


def _listing(dest: str) -> set[str]:
    """Every file under ``dest``, in one listing (not one request per file)."""
    try:
        return {_norm(p) for p in storage.walk_files(dest)}
    except FileNotFoundError:
        return set()


def _norm(path: str) -> str:
    return path if storage.is_remote(path) else os.path.abspath(path)


def _resume(tasks: list[Task], dest: str, options: BatchOptions) -> tuple[list[Task], list[dict[str, Any]]]:
    """(tasks to run, rows of the files a previous run finished or failed for good)."""
    present = _listing(dest)
    _remove_stale_temp_files(present)
    with ThreadPoolExecutor(16) as pool:
        records = list(pool.map(lambda t: read_record(t.record) if _norm(t.record) in present else None, tasks))
    todo, done = [], []
    for task, rec in zip(tasks, records):
        if not rec or rec.get("source") != task.source or rec.get("size") != task.size:
            todo.append(task)  # never done, or the file changed since
        elif rec.get("status") == "ok" and all(_norm(p) in present for p in task.outputs(options.formats)):
            done.append(rec)
        elif rec.get("status") == "ok":
            todo.append(task)  # an output is missing (deleted, or a format asked for now)
        elif options.retry_failed:
            todo.append(task)
        elif rec.get("transient") and int(rec.get("attempts") or 0) < options.max_attempts:
            todo.append(replace(task, attempt=int(rec["attempts"]) + 1))
        else:
            done.append(rec)
    return todo, done


def _remove_stale_temp_files(present: set[str]) -> None:
    """Temp files that a killed run's local writes left (``.talk.mmva.json.<random>.tmp``, see
    :func:`mmva.io.storage.write_atomic`): never an output, only litter. S3 writes leave none."""
    for path in [p for p in present if not storage.is_remote(p)]:
        name = os.path.basename(path)
        if name.startswith(".") and name.endswith(".tmp") and (".mmva." in name or name.startswith(".summary.")):
            Path(path).unlink(missing_ok=True)
            present.discard(path)


def _public(row: dict[str, Any]) -> dict[str, Any]:
    return {k: row.get(k) for k in SUMMARY_COLUMNS}


def summary_csv(rows: list[dict[str, Any]]) -> str:
    """The summary table as CSV (RFC 4180; text cells safe for spreadsheets)."""
    from mmva.analyze.writers import safe_cell

    buf = io.StringIO()
    out = csv.writer(buf, lineterminator="\r\n")
    out.writerow(SUMMARY_COLUMNS)
    for row in rows:
        out.writerow(["" if row.get(c) is None else safe_cell(row[c]) if isinstance(row[c], str) else row[c]
                      for c in SUMMARY_COLUMNS])
    return buf.getvalue()


def write_summary(rows: list[dict[str, Any]], dest: str) -> list[str]:
    """``dest/summary.csv`` and, with pyarrow, ``dest/summary.parquet``; returns the written paths."""
    csv_path = storage.join(dest, "summary.csv")
    storage.write_text_atomic(csv_path, summary_csv(rows))
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        log.warning("summary.parquet not written: it needs pyarrow (pip install 'mmva[ray]' or pyarrow)")
        return [csv_path]
    types = {"duration": pa.float64(), "seconds": pa.float64(), "n_utterances": pa.int64(), "n_speakers": pa.int64(),
             "attempts": pa.int64(), "size": pa.int64()}
    schema = pa.schema([(c, types.get(c, pa.string())) for c in SUMMARY_COLUMNS])
    table = pa.Table.from_pylist([_public(r) for r in rows], schema=schema)
    parquet_path = storage.join(dest, "summary.parquet")
    storage.write_atomic(parquet_path, lambda tmp: pq.write_table(table, tmp))
    return [csv_path, parquet_path]


__all__ = ["BatchOptions", "BatchReport", "BatchWorker", "SUMMARY_COLUMNS", "Task", "analyze_collection",
           "list_sources", "plan_batch", "plan_tasks", "summary_csv", "write_summary"]
