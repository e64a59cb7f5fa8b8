"""Self-describing, code-free checkpoints: one ``.safetensors`` file per deployable model.

The file holds every weight of a :class:`~mmva.model.multimodal.MultimodalSentimentAnalyzer` plus
string metadata: ``format``, ``version``, ``architecture``, ``config`` (the resolved run config as
JSON), ``encoders`` (name, output size, preprocessing, weight source per modality), ``labels`` and
``extra`` (e.g. the epoch and dev metrics). ``load_model(path)`` needs nothing else, and never
unpickles anything: safetensors holds raw tensors only.

>>> import tempfile, os
>>> from mmva.config import load_config
>>> from mmva.model.multimodal import MultimodalSentimentAnalyzer
>>> cfg = load_config("tiny")
>>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> _ = save_checkpoint(MultimodalSentimentAnalyzer(cfg), cfg, path)
>>> load_model(path).config.name
'tiny'
"""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import pickle
import re
import struct
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from safetensors.torch import save_file as st_save_file

from mmva.config import Config
from mmva.io import storage
from mmva.labels import EMOTIONS, MODALITIES, SENTIMENTS

log = logging.getLogger("mmva")

FORMAT = "mmva-checkpoint"
FORMAT_VERSION = 1
ARCHITECTURE = "MultimodalSentimentAnalyzer"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _version() -> str:
    from mmva import __version__

    return __version__


def checkpoint_metadata(model: torch.nn.Module, config: Config, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """The string metadata stored in the safetensors header (all values JSON or plain text)."""
    encoders = {
        m: {"name": enc.name, "output_dim": int(enc.output_dim), "preprocess": enc.preprocess,
            "weights": enc.weights_source()}
        for m, enc in getattr(model, "encoders", {}).items()
    }
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "version": _version(),
        "architecture": ARCHITECTURE,
        "config": json.dumps(config.to_dict()),
        "encoders": json.dumps(encoders, default=str),
        "labels": json.dumps({"emotion": list(EMOTIONS), "sentiment": list(SENTIMENTS),
                              "modalities": list(MODALITIES)}),
        "extra": json.dumps(extra or {}, default=str),
    }


def checkpoint_bytes(model: torch.nn.Module, config: Config, extra: dict[str, Any] | None = None) -> bytes:
    """Serialise a model to safetensors bytes (what :func:`save_checkpoint` writes)."""
    # Tied or shared storages are not allowed by safetensors: clone into contiguous tensors.
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    return st_save(state, metadata=checkpoint_metadata(model, config, extra))


def save_checkpoint(model: torch.nn.Module, config: Config, path: str | os.PathLike,
                    extra: dict[str, Any] | None = None) -> str:
    """Write one self-describing ``.safetensors`` file atomically (local path or ``s3://``).

    A crash or a full disk during the write leaves any previous file at ``path`` intact.

    >>> # save_checkpoint(model, config, "runs/a/best.safetensors", extra={"epoch": 3})
    """
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = checkpoint_metadata(model, config, extra)
    return storage.write_atomic(path, lambda tmp: _save_file(state, tmp, meta))


def _save_file(state: dict[str, torch.Tensor], tmp: str, meta: dict[str, str]) -> None:
    try:
        st_save_file(state, tmp, metadata=meta)
    except Exception as exc:
        # safetensors reports a full disk as its own error type: callers expect an OSError.
        found = re.search(r"os error (\d+)", str(exc))
        if "I/O error" not in str(exc):
            raise
        code = int(found.group(1)) if found else errno.EIO
        raise OSError(code, os.strerror(code), tmp) from exc


def save_training_state(state: dict[str, Any], path: str | os.PathLike) -> str:
    """Write a resume checkpoint (optimizer, loops...) atomically with ``torch.save``.

    Only plain types and tensors belong in it, so :func:`load_training_state` can use
    ``weights_only=True``.
    """
    return storage.write_atomic(path, lambda tmp: _torch_save(state, tmp))


def _torch_save(state: dict[str, Any], tmp: str) -> None:
    # Through a Python file object so a full disk surfaces as OSError (torch's own writer raises a
    # bare RuntimeError); the same error type as the safetensors export.
    try:
        with open(tmp, "wb") as fh:
            torch.save(state, fh)
    except RuntimeError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, OSError):
            raise cause from exc
        raise OSError(errno.EIO, f"could not write the checkpoint ({exc})", tmp) from exc


def load_training_state(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a resume checkpoint with ``torch.load(weights_only=True)``: pickled code is refused.

    >>> # state = load_training_state("runs/a/checkpoints/last.ckpt")
    """
    path = str(path)
    try:
        raw = storage.read_bytes(path)
    except FileNotFoundError:
        raise CheckpointError(path, "no such checkpoint file") from None
    try:
        return torch.load(io.BytesIO(raw), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unsupported object"
        raise CheckpointError(path, "refused: the file carries pickled objects beyond tensors and plain "
                                    f"types, which could run code when loaded ({first})") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(path, f"corrupt or truncated checkpoint ({exc})") from None


def _parse_header(path: str, head: bytes, size: int) -> dict[str, Any]:
    if len(head) < 8:
        raise CheckpointError(path, "not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", head[:8])
    if n <= 1 or n > _MAX_HEADER or 8 + n > size:
        hint = " (it looks like a pickle: mmva never unpickles checkpoints)" if head[:1] == b"\x80" else ""
        hint = hint or (" (it looks like a zip/torch.save file: mmva never unpickles checkpoints)"
                        if head[:2] == b"PK" else "")
        raise CheckpointError(path, f"not a safetensors file{hint}")
    return {"header_len": n}


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The decoded metadata of an mmva checkpoint, without loading the weights.

    >>> # read_metadata("best.safetensors")["config"]["model"]["text"]
    """
    path = str(path)
    fs, fs_path = storage.filesystem(path)
    try:
        with fs.open(fs_path, "rb") as fh:
            info = _parse_header(path, fh.read(8), fs.size(fs_path))
            header = json.loads(fh.read(info["header_len"]))
    except FileNotFoundError:
        raise CheckpointError(path, "no such checkpoint file") from None
    except IsADirectoryError:
        raise CheckpointError(path, "a folder, not a checkpoint file") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(path, "not a safetensors file (unreadable header)") from None
    return _decode_metadata(path, header.get("__metadata__") or {})


def _decode_metadata(path: str, raw: dict[str, str]) -> dict[str, Any]:
    if raw.get("format") != FORMAT:
        raise CheckpointError(path, "a safetensors file, but not an mmva checkpoint (no mmva metadata)")
    out: dict[str, Any] = dict(raw)
    for key in ("config", "encoders", "labels", "extra"):
        try:
            out[key] = json.loads(raw.get(key, "{}"))
        except json.JSONDecodeError:
            raise CheckpointError(path, f"metadata field {key!r} is not valid JSON") from None
    if out["labels"].get("emotion") != list(EMOTIONS) or out["labels"].get("sentiment") != list(SENTIMENTS):
        raise CheckpointError(path, f"label sets {out['labels']} differ from this mmva's {EMOTIONS}/{SENTIMENTS}")
    return out


def load_state(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Weights and decoded metadata of an mmva checkpoint (no code is executed)."""
    path = str(path)
    meta = read_metadata(path)
    try:
        state = st_load(storage.read_bytes(path))
    except Exception as exc:  # safetensors raises its own error type for truncated/corrupt data
        raise CheckpointError(path, f"corrupt or truncated safetensors data ({exc})") from None
    return state, meta


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Rebuild a :class:`MultimodalSentimentAnalyzer` from one checkpoint file, in eval mode.

    The returned model's ``.config`` is the full run :class:`~mmva.config.Config`;
    ``.checkpoint_metadata`` holds the rest of the metadata (version, encoders, extra). The encoders
    are built without their pretrained weights (no BERT-base or R3D-18 download): the checkpoint's
    weights replace every parameter anyway.

    >>> # model = load_model("runs/tiny/checkpoints/last.safetensors")
    """
    from mmva.model.multimodal import MultimodalSentimentAnalyzer

    state, meta = load_state(path)
    if meta.get("architecture") != ARCHITECTURE:
        raise CheckpointError(path, f"unknown architecture {meta.get('architecture')!r}")
    try:
        config = Config.from_dict(meta["config"])
    except (TypeError, ValueError) as exc:
        raise CheckpointError(path, f"config in the checkpoint is not valid for this mmva: {exc}") from None
    model = MultimodalSentimentAnalyzer(config, pretrained=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(path, f"weights do not match the architecture (missing {missing[:5]}, "
                                    f"unexpected {unexpected[:5]})")
    # The encoders' weight source is part of feature-cache keys: keep the one used in training.
    for m, info in meta["encoders"].items():
        if m in model.encoders:
            model.encoders[m]._weights_source = info.get("weights", "random init")
    model.checkpoint_metadata = meta
    model.checkpoint_path = str(path)
    return model.to(device).eval()


def is_checkpoint(path: str | os.PathLike) -> bool:
    """True when ``path`` is a readable mmva safetensors checkpoint."""
    try:
        read_metadata(path)
        return True
    except CheckpointError:
        return False


def checkpoint_summary(path: str | os.PathLike) -> dict[str, Any]:
    """A short description for ``mmva info``-style output: version, encoders, epoch and metrics."""
    meta = read_metadata(path)
    return {"path": str(path), "version": meta["version"], "config": meta["config"].get("name"),
            "encoders": {m: e["name"] for m, e in meta["encoders"].items()},
            "extra": meta["extra"], "size_bytes": Path(path).stat().st_size if not storage.is_remote(path) else None}
