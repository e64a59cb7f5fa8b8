"""Cached ONNX forms of mmva's torch networks, so that a warm process runs them without importing torch.

Importing torch costs about 2 s of every cold command on a small machine (issue 15), while the
networks of the default analysis are small. The first process that needs a network exports it with
torch's exporter into a folder of ``$MMVA_CACHE`` (:func:`mmva.encoders.weights.cache_root`); later
processes run that file with onnxruntime (already a dependency, through faster-whisper). Used by the
text model (:mod:`mmva.model.text_onnx`), the face-expression network (:mod:`mmva.encoders.face`) and
the GE2E speaker encoder (:mod:`mmva.encoders.speaker`).

A cached file is named by a hash of what made it (weights content, exporting library versions,
format), written atomically (a reader never sees half a file; mode 0644 under the usual umask), its
time refreshed whenever it is loaded, and files of the same folder unused for :data:`STALE_DAYS` are
removed when a new one is written. A file that cannot be read (corrupt, truncated) is written again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable, Iterable

log = logging.getLogger(__name__)
STALE_DAYS = 30


def lib_version(lib: str) -> str:
    """The installed version of ``lib``, ``"-"`` when it is not installed."""
    try:
        return version(lib)
    except PackageNotFoundError:
        return "-"


def cache_file(folder: str, stem: str, parts: Iterable[bytes | str], cache_dir: str | Path | None = None) -> Path:
    """``<cache_dir or $MMVA_CACHE/folder>/<stem>-<hash of parts>.onnx``: where the ONNX form made
    from ``parts`` (weights bytes, versions, format) is, or would be, cached."""
    from mmva.encoders.weights import cache_root

    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
        h.update(b"|")
    return Path(cache_dir or cache_root() / folder) / f"{stem}-{h.hexdigest()[:20]}.onnx"


def prune(kept: Path, days: float = STALE_DAYS) -> list[Path]:
    """Remove the other ONNX files of ``kept``'s folder not used for ``days`` (one per weights and
    library versions ever loaded). A file's time is refreshed whenever it is loaded (:func:`touch`)."""
    cutoff = time.time() - days * 86400
    gone = []
    for other in Path(kept).parent.glob("*.onnx"):
        try:
            if other != Path(kept) and other.stat().st_mtime < cutoff:
                other.unlink(missing_ok=True)
                gone.append(other)
        except OSError:  # removed meanwhile by another process, or not ours to remove
            pass
    return gone


def touch(file: Path) -> None:
    """Mark ``file`` as in use, so :func:`prune` keeps it (a read-only cache still serves)."""
    try:
        os.utime(file)
    except OSError:
        pass


def session(file: str | Path, threads: int = 1) -> Any:
    """An onnxruntime CPU session over ``file`` with ``threads`` intra-op threads (errors only logged)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(threads))
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    if threads > 1:  # idle pool threads would spin on a CPU shared with the decoder and the ASR
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])


def export_module(module: Any, args: tuple, out: str | Path, input_names: list[str], output_names: list[str],
                  dynamic_axes: dict[str, dict[int, str]], opset: int = 17) -> Path:
    """Export a torch module (eval mode, float32) to ``out`` atomically with torch's TorchScript-based
    exporter (needs the ``onnx`` package)."""
    import warnings

    import torch

    from mmva.io.storage import write_atomic

    def export(tmp: str) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation notices
            torch.onnx.export(module, args, tmp, input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False)

    return Path(write_atomic(out, export))


def cached_session(file: Path, export: Callable[[Path], Any], threads: int = 1, what: str = "network") -> Any:
    """An onnxruntime session over the cached ``file``; when it is missing or unreadable, ``export(file)``
    writes it first (the only step that needs torch), then stale files of its folder are pruned.
    Raises when the file can neither be read nor written (the caller then runs the eager network)."""
    if file.exists():
        try:
            sess = session(file, threads)
            touch(file)
            return sess
        except Exception as exc:  # corrupt or truncated: written again below
            log.warning("%s: cached ONNX form of the %s unreadable (%s); exporting it again", file, what, exc)
    export(file)
    prune(file)
    return session(file, threads)
