"""Feature cache: frozen-encoder outputs computed once per (source content, encoder, preprocessing).

Layout: one small safetensors file per entry, ``{root}/{encoder}/{sha[:2]}/{sha}.safetensors``, on a
local path or ``s3://`` (through :mod:`mmva.io.storage`). An entry holds the feature vector, or no
tensor and ``absent=1`` when the modality is absent for that utterance (no face, no audio track, no
words): "absent" is an answer too, so it is cached rather than recomputed.

Why one file per entry and not shards: each write is a single atomic file replace (S3: a single PUT),
so a run killed at any moment leaves finished entries readable and nothing half-written, and several
processes (``torchrun``) can fill one cache without coordination. Keys are content addresses, so
two writers of one key write the same bytes.

>>> cache = FeatureCache("/tmp/mmva-doc-cache")
>>> cache.put("tiny-text/" + "0" * 64, torch.ones(3))
>>> cache.get("tiny-text/" + "0" * 64)
tensor([1., 1., 1.])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import threading
import time
import weakref
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from mmva.config import DataConfig
from mmva.encoders.base import Encoder
from mmva.io import storage
from mmva.io.clip import DecodedClip
from mmva.types import Utterance

log = logging.getLogger("mmva")

FORMAT = "mmva-feature-1"


class _Missing:
    """Sentinel: the key is not in the cache (``None`` means "cached: modality absent")."""

    _instance: "_Missing | None" = None

    def __new__(cls) -> "_Missing":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __reduce__(self) -> str:
        return "MISSING"


MISSING = _Missing()


# --------------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------------
_hash_lock = threading.Lock()
_file_hashes: dict[tuple[str, int, float], str] = {}


def file_digest(path: str) -> str:
    """Content identity of a media file, memoised per (path, size, mtime) within the process.

    Local files: sha256 of the bytes. S3 objects: their ETag (a digest S3 computes from the content),
    so the key costs one HEAD request instead of a full download.
    """
    fs, p = storage.filesystem(path)
    info = fs.info(p)
    size = int(info.get("size") or 0)
    stamp = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
    memo = (path, size, float(stamp.timestamp()) if hasattr(stamp, "timestamp") else float(stamp))
    with _hash_lock:
        if memo in _file_hashes:
            return _file_hashes[memo]
    etag = info.get("ETag") or info.get("etag")
    if storage.is_remote(path) and etag:
        digest = f"etag:{str(etag).strip(chr(34))}:{size}"
    else:
        h = hashlib.sha256()
        with fs.open(p, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
        digest = f"sha256:{h.hexdigest()}"
    with _hash_lock:
        _file_hashes[memo] = digest
    return digest


_digest_lock = threading.Lock()
_weight_digests: "weakref.WeakKeyDictionary[Encoder, str]" = weakref.WeakKeyDictionary()


def weights_digest(encoder: Encoder) -> str:
    """sha256 of the encoder's parameters and buffers, computed once per encoder object.

    Part of every key because ``cache_key()`` names where weights came from, not what they are: two
    randomly initialised encoders (R3D-18 offline, the tiny debug encoders) or a fine-tuned copy of
    a shipped one report the same source but compute different features. The cache is for frozen
    encoders: an encoder trained further after its first key keeps its first digest in this process.
    """
    with _digest_lock:
        if encoder in _weight_digests:
            return _weight_digests[encoder]
        h = hashlib.sha256()
        for name, t in encoder.state_dict().items():
            h.update(name.encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        _weight_digests[encoder] = h.hexdigest()[:32]
        return _weight_digests[encoder]


def decode_options(data: DataConfig) -> dict[str, Any]:
    """How :func:`extract_features` decodes media for the encoders; part of every media key.

    Frames are decoded with their longer side at ``max(256, frame_size)``, as
    :class:`mmva.data.UtteranceDataset` does for a cache miss, so both paths see the same pixels:
    enough for face detection and for the video encoder's own resize.
    """
    return {"num_frames": data.num_frames, "max_side": max(256, data.frame_size), "sample_rate": data.sample_rate}


def _context(utt: Utterance) -> list[str]:
    return [str(t) for t in (utt.extra or {}).get("context", [])]


def source_identity(utt: Utterance, encoder: Encoder, data: DataConfig) -> dict[str, Any]:
    """What the encoder reads from this utterance: its text (and used context) or its media."""
    if encoder.modality == "text":
        turns = int(encoder.preprocess.get("context_turns") or 0)
        return {"text": utt.text or "", "context": _context(utt)[-turns:] if turns else []}
    opts = decode_options(data)
    keep = ("num_frames", "max_side") if encoder.modality == "video" else ("sample_rate",)
    return {"media": file_digest(utt.path) if utt.path else None, "start": utt.start_time,
            "end": utt.end_time, "decode": {k: opts[k] for k in keep}}


# --------------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------------
def _metadata(blob: bytes) -> dict[str, str]:
    # safetensors: 8-byte little-endian header length, then a JSON header with "__metadata__".
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8:8 + n]).get("__metadata__") or {}


class FeatureCache:
    """Content-addressed store of encoder outputs on a local folder or ``s3://`` prefix.

    >>> cache = FeatureCache("/tmp/mmva-doc-cache")
    >>> cache.get("minilm/" + "f" * 64)
    MISSING
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = str(root).rstrip("/") if storage.is_remote(root) else str(root)
        self.remote = storage.is_remote(self.root)
        self._fs: Any = None
        self._fs_pid = -1

    def _remote_fs(self) -> Any:
        # One filesystem object per process (storage.filesystem makes a fresh S3 client per call, too
        # slow for thousands of small entries; and clients must not cross a fork).
        if self._fs is None or self._fs_pid != os.getpid():
            self._fs, _ = storage.filesystem(self.root)
            self._fs_pid = os.getpid()
        return self._fs

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None, "_fs_pid": -1}

    def __repr__(self) -> str:
        return f"FeatureCache({self.root!r})"

    def key(self, utt: Utterance, encoder: Encoder, data: DataConfig | None = None) -> str:
        """``"{encoder}/{sha256}"`` over the utterance's source content, ``encoder.cache_key()`` and
        the encoder's weights (:func:`weights_digest`)."""
        data = data or DataConfig()
        payload = {"source": source_identity(utt, encoder, data), "encoder": encoder.cache_key(),
                   "weights": weights_digest(encoder), "modality": encoder.modality}
        blob = json.dumps(payload, sort_keys=True, default=str).encode()
        return f"{encoder.name}/{hashlib.sha256(blob).hexdigest()}"

    def path(self, key: str) -> str:
        name, _, sha = key.rpartition("/")
        if not name or len(sha) < 8:
            raise ValueError(f"not a feature-cache key: {key!r}")
        return storage.join(self.root, name, sha[:2], f"{sha}.safetensors")

    def _read(self, key: str) -> bytes | None:
        path = self.path(key)
        try:
            if self.remote:
                return self._remote_fs().cat_file(path)  # s3fs takes full URIs
            with open(path, "rb") as fh:
                return fh.read()
        except FileNotFoundError:
            return None

    def get(self, key: str) -> torch.Tensor | None | _Missing:
        """The cached feature, ``None`` if cached as "modality absent", or ``MISSING``."""
        blob = self._read(key)
        if blob is None:
            return MISSING
        try:
            meta = _metadata(blob)
            if meta.get("absent") == "1":
                return None
            return st_load(blob)["feature"]
        except Exception as exc:  # not written by us (writes are atomic): report and recompute
            log.warning("feature cache entry %s is unreadable (%s); it will be recomputed", self.path(key), exc)
            return MISSING

    def contains(self, key: str) -> bool:
        """Whether ``key`` has a readable entry."""
        return self.get(key) is not MISSING

    def get_many(self, keys: Iterable[str], workers: int = 8) -> dict[str, torch.Tensor | None | _Missing]:
        """``get`` for many keys, with a thread pool (object stores answer slowly but in parallel)."""
        keys = list(keys)
        if not self.remote or len(keys) < 2:
            return {k: self.get(k) for k in keys}
        with ThreadPoolExecutor(workers) as pool:
            return dict(zip(keys, pool.map(self.get, keys)))

    def put(self, key: str, value: torch.Tensor | None, meta: dict[str, str] | None = None) -> None:
        """Store a feature (or ``None`` = modality absent) atomically: readers see all of it or nothing."""
        info = {"format": FORMAT, "absent": "1" if value is None else "0", **(meta or {})}
        tensors = {} if value is None else {"feature": value.detach().to("cpu").contiguous().clone()}
        blob = st_save(tensors, metadata=info)
        if self.remote:
            self._remote_fs().pipe_file(self.path(key), blob)  # one PUT: an object appears whole or not at all
        else:
            # No fsync (~10 ms per ~1 KB entry, minutes for MELD's 30,000 entries): a killed process
            # cannot tear a renamed file; a power cut can, and `get` then finds the entry unreadable
            # (safetensors checks its header against the length) and it is recomputed.
            storage.write_bytes_atomic(self.path(key), blob, fsync=False)

    def remove_stale_temp(self, max_age_s: float = 3600.0) -> int:
        """Delete temp files that killed writers left behind (local caches; S3 leaves none).

        Only files older than ``max_age_s``: another process may be writing into the same cache now.
        """
        if self.remote or not os.path.isdir(self.root):
            return 0
        removed, cutoff = 0, time.time() - max_age_s
        for folder, _, files in os.walk(self.root):
            for name in files:
                path = os.path.join(folder, name)
                if name.startswith(".") and name.endswith(".tmp") and os.path.getmtime(path) < cutoff:
                    Path(path).unlink(missing_ok=True)
                    removed += 1
        return removed

    def keys(self, encoder: str | None = None) -> Iterator[str]:
        """Every stored key (of one encoder, or all)."""
        base = storage.join(self.root, encoder) if encoder else self.root
        if not storage.exists(base):
            return
        for path in storage.walk_files(base):
            name = Path(path).name
            if name.endswith(".safetensors") and not name.startswith("."):
                enc = Path(path).parent.parent.name
                yield f"{enc}/{name[:-len('.safetensors')]}"


# --------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------
@dataclass
class ExtractReport:
    """What :func:`extract_features` did. ``computed`` counts entries written by this run (``absent``
    of them as "modality absent"); ``reused`` entries already in the cache; ``failed`` (uid, reason)."""

    computed: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    absent: int = 0
    utterances: int = 0
    seconds: float = 0.0

    def summary(self) -> str:
        rate = self.utterances / self.seconds if self.seconds > 0 else 0.0
        text = (f"{self.utterances} utterances in {self.seconds:.1f} s ({rate:.2f}/s): {self.computed} entries "
                f"computed ({self.absent} absent modality), {self.reused} reused, {len(self.failed)} failed")
        for uid, reason in self.failed[:20]:
            text += f"\n  skipped {uid}: {reason}"
        if len(self.failed) > 20:
            text += f"\n  ... and {len(self.failed) - 20} more"
        return text


@dataclass
class _Prepared:
    uid: str
    todo: dict[str, tuple[str, Any]]  # modality -> (key, prepared input or None = absent)
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _decode(utt: Utterance, data: DataConfig, want: set[str]) -> DecodedClip:
    from mmva.io.media import decode_clip

    opts = decode_options(data)
    clip = decode_clip(utt.path, start=utt.start_time, end=utt.end_time, num_frames=opts["num_frames"],
                       max_side=opts["max_side"], sample_rate=opts["sample_rate"], text=utt.text or "",
                       want_video="video" in want, want_audio="audio" in want)
    clip.context = _context(utt)
    return clip


def _prepare_one(utt: Utterance, encoders: dict[str, Encoder], cache: FeatureCache,
                 data: DataConfig) -> _Prepared:
    """Worker: keys, cache lookup, decode (once, only the streams still needed) and prepare."""
    uid = utt.uid or (str(utt.path) if utt.path else (utt.text or "")[:40])
    out = _Prepared(uid, {})
    keys: dict[str, str] = {}
    for m, enc in encoders.items():
        try:
            keys[m] = cache.key(utt, enc, data)
        except Exception as exc:  # e.g. the media file vanished or cannot be read
            out.failed.append((uid, f"{utt.path}: {exc}"))
    missing = {m: k for m, k in keys.items() if not cache.contains(k)}
    out.reused = len(keys) - len(missing)
    clip = DecodedClip(text=utt.text or "", context=_context(utt), source=str(utt.path or ""))
    media = {m for m in missing if m != "text"}
    if media and utt.path:
        try:
            clip = _decode(utt, data, media)
        except Exception as exc:  # MediaError names the file; the text side still goes on
            out.failed.append((uid, str(exc)))
            missing = {m: k for m, k in missing.items() if m not in media}
    for m, key in missing.items():
        try:
            out.todo[m] = (key, encoders[m].prepare(clip))
        except Exception as exc:
            out.failed.append((uid, f"{encoders[m].name}: {type(exc).__name__}: {exc}"))
    return out


class _Batcher:
    """Collects prepared inputs of one encoder and runs its forward a batch at a time."""

    def __init__(self, encoder: Encoder, cache: FeatureCache, report: ExtractReport, batch_size: int) -> None:
        self.encoder, self.cache, self.report, self.batch_size = encoder, cache, report, batch_size
        self.items: list[tuple[str, str, Any]] = []  # (uid, key, prepared)

    def add(self, uid: str, key: str, prepared: Any) -> None:
        if prepared is None:  # absent modality: an answer, stored as such
            self.cache.put(key, None, {"uid": uid})
            self.report.computed += 1
            self.report.absent += 1
            return
        self.items.append((uid, key, prepared))
        if len(self.items) >= self.batch_size:
            self.flush()

    def _run(self, items: list[tuple[str, str, Any]]) -> None:
        with torch.inference_mode():
            out = self.encoder(self.encoder.collate([p for _, _, p in items]))
        for (uid, key, _), row in zip(items, out.float()):
            self.cache.put(key, row, {"uid": uid})
            self.report.computed += 1

    def flush(self) -> None:
        items, self.items = self.items, []
        if not items:
            return
        try:
            self._run(items)
        except Exception:  # find the item that breaks the batch; the others still get cached
            for item in items:
                try:
                    self._run([item])
                except Exception as exc:
                    self.report.failed.append((item[0], f"{self.encoder.name}: {type(exc).__name__}: {exc}"))


def _progress(enabled: bool, total: int) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]extract"), BarColumn(), MofNCompleteColumn(), TextColumn("clips"),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled)


def extract_features(utterances: Iterable[Utterance], encoders: dict[str, Encoder], cache: FeatureCache,
                     data: DataConfig | None = None, workers: int = 2, progress: bool = True,
                     batch_size: int = 32, torch_threads: int | None = None) -> ExtractReport:
    """Compute and cache every missing (utterance, encoder) feature; resumable and parallel.

    Decoding and ``prepare`` run on ``workers`` threads (PyAV, OpenCV and the tokenizers release the
    GIL, and threads share the loaded encoders, where processes would each load their own copy);
    the forward passes run batched in the calling thread. Every entry is written as soon as its
    batch is done, so a killed run loses at most one batch, and a rerun recomputes nothing finished.
    ``torch_threads`` sets torch's intra-op threads for the run (restored after): 1 is much faster
    for small encoders on a busy machine, where waiting intra-op threads dominate.

    >>> from mmva.encoders import create_encoder
    >>> report = extract_features([Utterance(text="hi", uid="u1")], {"text": create_encoder("tiny-text")},
    ...                           FeatureCache("/tmp/mmva-doc-cache"), progress=False)
    >>> report.computed + report.reused
    1
    """
    data = data or DataConfig()
    utterances = list(utterances)
    report = ExtractReport(utterances=len(utterances))
    for enc in encoders.values():
        enc.eval()
    batchers = {m: _Batcher(enc, cache, report, batch_size) for m, enc in encoders.items()}
    if cache.remove_stale_temp():
        log.info("removed temp files left in %s by an earlier interrupted run", cache.root)
    saved_threads = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    try:
        _run_extract(utterances, encoders, cache, data, workers, progress, batchers, report)
    finally:
        torch.set_num_threads(saved_threads)
    return report


def _run_extract(utterances: list[Utterance], encoders: dict[str, Encoder], cache: FeatureCache,
                 data: DataConfig, workers: int, progress: bool, batchers: dict[str, _Batcher],
                 report: ExtractReport) -> None:
    start = time.perf_counter()
    window = max(2, workers) * 4  # bounded look-ahead: memory stays flat on big corpora
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="mmva-extract") as pool, \
            _progress(progress, len(utterances)) as bar:
        task = bar.add_task("extract", total=len(utterances))
        pending: deque[Future[_Prepared]] = deque()
        it = iter(utterances)
        while True:
            while len(pending) < window and (utt := next(it, None)) is not None:
                pending.append(pool.submit(_prepare_one, utt, encoders, cache, data))
            if not pending:
                break
            done = pending.popleft().result()
            report.reused += done.reused
            report.failed.extend(done.failed)
            for m, (key, prepared) in done.todo.items():
                batchers[m].add(done.uid, key, prepared)
            bar.advance(task)
        for b in batchers.values():
            b.flush()
    report.seconds = time.perf_counter() - start
