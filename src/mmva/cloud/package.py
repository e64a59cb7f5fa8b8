"""The ``model.tar.gz`` a SageMaker endpoint serves, and how the serving side finds the model in it.

Layout (SageMaker extracts the archive into ``/opt/ml/model`` of the serving container)::

    model.safetensors   the mmva checkpoint (self-describing: config, encoders, labels, weights)
    mmva-model.json     manifest: {"format": "mmva-model", "checkpoint": "model.safetensors",
                        "mmva_version", "metrics", "config_name"}

The training entry point writes exactly these two files into ``SM_MODEL_DIR`` (SageMaker tars that
folder itself); :func:`package_model` builds the same archive from any checkpoint for
``mmva sagemaker deploy``. :func:`find_model` is what a server calls on ``/opt/ml/model``.

>>> # package_model("runs/a/best.safetensors", "s3://bucket/models/a/model.tar.gz")
"""

from __future__ import annotations

import json
import os
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from mmva.io import storage

CHECKPOINT_NAME = "model.safetensors"
MANIFEST_NAME = "mmva-model.json"
MANIFEST_FORMAT = "mmva-model"
SAGEMAKER_MODEL_DIR = "/opt/ml/model"


class ModelPackageError(ValueError):
    """A model directory or archive that does not hold an mmva model; names the path and problem."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalar metrics only (per-class tables, confusion matrices and histories stay in the run)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            inner = _headline(value)
            if inner:
                out[key] = inner
        elif isinstance(value, (int, float, str)) and key not in ("history",):
            out[key] = value
    return out


def _manifest(checkpoint: str, metrics: dict[str, Any] | None) -> dict[str, Any]:
    from mmva import __version__
    from mmva.model.checkpoint import read_metadata

    meta = read_metadata(checkpoint)  # also validates that it is an mmva checkpoint
    config = meta.get("config") or {}
    return {"format": MANIFEST_FORMAT, "checkpoint": CHECKPOINT_NAME, "mmva_version": __version__,
            "config_name": config.get("name") if isinstance(config, dict) else None,
            "metrics": _headline(metrics if metrics is not None else _saved_metrics(meta.get("extra") or {}))}


def _saved_metrics(extra: dict[str, Any]) -> dict[str, Any]:
    # fit() stores the dev metrics of the saved epoch under "dev"
    return extra.get("dev") or extra.get("metrics") or {}


def write_model_dir(checkpoint: str, model_dir: str | os.PathLike,
                    metrics: dict[str, Any] | None = None) -> Path:
    """Lay out a servable model folder (``model.safetensors`` + manifest) from a checkpoint.

    ``checkpoint`` may be local or ``s3://``. Returns the folder.

    >>> # write_model_dir("runs/a/best.safetensors", os.environ["SM_MODEL_DIR"])
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    _copy(checkpoint, model_dir / CHECKPOINT_NAME)
    manifest = _manifest(str(model_dir / CHECKPOINT_NAME), metrics)
    storage.write_text_atomic(model_dir / MANIFEST_NAME, json.dumps(manifest, indent=2, default=str))
    return model_dir


def _copy(uri: str, target: Path) -> None:
    local, is_temp = storage.local_copy(uri, suffix=".safetensors")
    try:
        storage.upload_file_atomic(local, target)
    finally:
        if is_temp:
            os.unlink(local)


def package_model(checkpoint: str, out: str, metrics: dict[str, Any] | None = None) -> str:
    """Build ``model.tar.gz`` from a checkpoint and write it to ``out`` (local or ``s3://``).

    The archive is finished locally, then copied in one atomic write / single PUT, so a reader
    never sees half an archive. Returns ``out``.
    """
    with tempfile.TemporaryDirectory(prefix="mmva-package-") as tmp:
        model_dir = write_model_dir(checkpoint, Path(tmp, "model"), metrics)
        archive = Path(tmp, "model.tar.gz")
        with tarfile.open(archive, "w:gz") as tar:
            for name in (CHECKPOINT_NAME, MANIFEST_NAME):
                tar.add(model_dir / name, arcname=name)  # flat: SageMaker extracts into /opt/ml/model
        storage.upload_file_atomic(archive, out)
    return out


def unpack_model(archive: str, dest: str | os.PathLike) -> Path:
    """Extract a ``model.tar.gz`` (local or ``s3://``) into ``dest``, refusing unsafe members."""
    local, is_temp = storage.local_copy(archive, suffix=".tar.gz")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(local, "r:*") as tar:
            tar.extractall(dest, filter="data")  # no absolute paths, links out, devices
    except tarfile.TarError as exc:
        raise ModelPackageError(archive, f"not a readable model archive ({exc})") from exc
    finally:
        if is_temp:
            os.unlink(local)
    return dest


def find_model(model_dir: str | os.PathLike = SAGEMAKER_MODEL_DIR) -> str:
    """The checkpoint inside a served model folder (``/opt/ml/model`` by default).

    Reads the manifest when there is one; otherwise accepts a folder holding exactly one
    ``.safetensors`` file, or a checkpoint path itself.

    >>> # load_model(find_model("/opt/ml/model"))
    """
    path = Path(model_dir)
    if path.is_file():
        return str(path)
    if not path.is_dir():
        raise ModelPackageError(path, "no such model folder or checkpoint")
    manifest = path / MANIFEST_NAME
    if manifest.is_file():
        try:
            name = json.loads(manifest.read_text())["checkpoint"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelPackageError(manifest, f"unreadable manifest ({exc})") from exc
        target = (path / name).resolve()
        if path.resolve() not in target.parents or not target.is_file():
            raise ModelPackageError(manifest, f"checkpoint {name!r} is missing from the folder")
        return str(target)
    found = sorted(path.rglob("*.safetensors"))
    if len(found) != 1:
        what = "no .safetensors file" if not found else f"{len(found)} .safetensors files and no manifest"
        raise ModelPackageError(path, f"{what}; expected {CHECKPOINT_NAME} + {MANIFEST_NAME}")
    return str(found[0])
