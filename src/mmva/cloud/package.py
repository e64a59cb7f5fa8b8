"""The ``model.tar.gz`` a SageMaker endpoint serves, and how the serving side finds the model in it.

SageMaker extracts the archive into ``/opt/ml/model`` of the serving container. Two kinds of model
travel this way, both flat (no top folder) with a manifest ``mmva-model.json``:

- ``default-model``: the folder format of mmva's shipped default model (``config.json``,
  ``text_model.safetensors``, ...), written by ``mmva train-text --install`` or by the SageMaker
  entry point's ``recipe=text``.
- ``checkpoint``: one ``model.safetensors`` written by ``mmva train`` (the multimodal model).

``mmva serve`` (the container's ``serve``) loads either kind from ``/opt/ml/model`` through
:func:`mmva.model.predictor.load_predictor`.

The manifest: ``{"format": "mmva-model", "kind", "checkpoint" (checkpoint kind), "mmva_version",
"config_name", "metrics"}``. :func:`write_model_dir` lays a folder out (the entry point writes
``SM_MODEL_DIR`` with it; SageMaker tars that folder itself); :func:`package_model` builds the
archive for ``mmva sagemaker deploy``; :func:`find_model` is what a server calls on
``/opt/ml/model``.

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
DEFAULT_MODEL_CONFIG = "config.json"  # marks a default-model folder (mmva.model.default)
SAGEMAKER_MODEL_DIR = "/opt/ml/model"


class ModelPackageError(ValueError):
    """A model directory or archive that does not hold an mmva model; names the path and problem."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """Scalar metrics only (confusion matrices and histories stay with the run)."""
    out: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            inner = _headline(value)
            if inner:
                out[key] = inner
        elif isinstance(value, (int, float, str)):
            out[key] = value
    return out


def _checkpoint_manifest(checkpoint: str, metrics: dict[str, Any] | None) -> dict[str, Any]:
    from mmva.model.checkpoint import read_metadata

    meta = read_metadata(checkpoint)  # also validates that it is an mmva checkpoint
    config = meta.get("config") or {}
    extra = meta.get("extra") or {}
    saved = extra.get("dev") or extra.get("metrics") or {}  # fit() stores the epoch's dev metrics as "dev"
    return {"kind": "checkpoint", "checkpoint": CHECKPOINT_NAME,
            "config_name": config.get("name") if isinstance(config, dict) else None,
            "metrics": _headline(metrics if metrics is not None else saved)}


def _default_model_manifest(folder: Path, metrics: dict[str, Any] | None) -> dict[str, Any]:
    try:
        config = json.loads((folder / DEFAULT_MODEL_CONFIG).read_text())
    except (OSError, ValueError) as exc:
        raise ModelPackageError(folder / DEFAULT_MODEL_CONFIG, f"unreadable default-model config ({exc})") from None
    return {"kind": "default-model", "config_name": config.get("name"),
            "metrics": _headline(metrics if metrics is not None else config.get("dev_metrics", {}))}


def is_default_model_dir(path: str | os.PathLike) -> bool:
    """True for a local folder in the default-model format (has ``config.json``)."""
    return Path(path).is_dir() and (Path(path) / DEFAULT_MODEL_CONFIG).is_file()


def write_model_dir(source: str, model_dir: str | os.PathLike,
                    metrics: dict[str, Any] | None = None) -> Path:
    """Lay out a servable model folder from a checkpoint (local or ``s3://``) or a default-model folder.

    >>> # write_model_dir("runs/a/best.safetensors", os.environ["SM_MODEL_DIR"])
    """
    from mmva import __version__

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    if is_default_model_dir(source):
        if Path(source).resolve() != model_dir.resolve():
            for item in sorted(Path(source).iterdir()):
                if item.is_file() and item.name != MANIFEST_NAME:
                    storage.upload_file_atomic(item, model_dir / item.name)
        manifest = _default_model_manifest(model_dir, metrics)
    else:
        _copy(source, model_dir / CHECKPOINT_NAME)
        manifest = _checkpoint_manifest(str(model_dir / CHECKPOINT_NAME), metrics)
    manifest = {"format": MANIFEST_FORMAT, "mmva_version": __version__, **manifest}
    storage.write_text_atomic(model_dir / MANIFEST_NAME, json.dumps(manifest, indent=2, default=str))
    return model_dir


def _copy(uri: str, target: Path) -> None:
    local, is_temp = storage.local_copy(uri, suffix=".safetensors")
    try:
        storage.upload_file_atomic(local, target)
    finally:
        if is_temp:
            os.unlink(local)


def package_model(source: str, out: str, metrics: dict[str, Any] | None = None) -> str:
    """Build ``model.tar.gz`` from a checkpoint or a default-model folder; write it to ``out``.

    ``out`` may be local or ``s3://``. The archive is finished locally, then copied in one atomic
    write / single PUT, so a reader never sees half an archive. Returns ``out``.
    """
    with tempfile.TemporaryDirectory(prefix="mmva-package-") as tmp:
        model_dir = write_model_dir(source, Path(tmp, "model"), metrics)
        archive = Path(tmp, "model.tar.gz")
        with tarfile.open(archive, "w:gz") as tar:
            for item in sorted(model_dir.iterdir()):
                tar.add(item, arcname=item.name)  # flat: SageMaker extracts into /opt/ml/model
        storage.upload_file_atomic(archive, out)
    return out


def safe_extractall(tar: tarfile.TarFile, dest: Path) -> None:
    """Extract only plain files and folders that stay inside ``dest``.

    Python's ``filter="data"`` does this, but it only exists from 3.11.4 / 3.12 (Debian 12 ships
    3.11.2), so older interpreters get the same rule checked here by hand.
    """
    if hasattr(tarfile, "data_filter"):
        tar.extractall(dest, filter="data")  # no absolute paths, links out, devices
        return
    root = dest.resolve()
    for member in tar.getmembers():
        target = (root / member.name).resolve()
        if not (member.isfile() or member.isdir()):
            raise tarfile.TarError(f"{member.name!r} is a link or special file")
        if target != root and root not in target.parents:
            raise tarfile.TarError(f"{member.name!r} would be written outside the model folder")
    tar.extractall(dest)


def unpack_model(archive: str, dest: str | os.PathLike) -> Path:
    """Extract a ``model.tar.gz`` (local or ``s3://``) into ``dest``, refusing unsafe members."""
    local, is_temp = storage.local_copy(archive, suffix=".tar.gz")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(local, "r:*") as tar:
            safe_extractall(tar, dest)
    except tarfile.TarError as exc:
        raise ModelPackageError(archive, f"not a readable model archive ({exc})") from exc
    finally:
        if is_temp:
            os.unlink(local)
    return dest


def find_model(model_dir: str | os.PathLike = SAGEMAKER_MODEL_DIR) -> str:
    """What to load from a served model folder (``/opt/ml/model`` by default).

    A default-model folder itself (for :func:`mmva.model.default.load_default_model`), or the
    checkpoint file inside (for :func:`mmva.model.checkpoint.load_model`); a checkpoint path is
    returned as is. Without a manifest, a folder holding exactly one ``.safetensors`` file works.

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
            info = json.loads(manifest.read_text())
            kind = info.get("kind", "checkpoint")
            name = info.get("checkpoint", CHECKPOINT_NAME)
        except (ValueError, AttributeError) as exc:
            raise ModelPackageError(manifest, f"unreadable manifest ({exc})") from exc
        if kind == "default-model":
            if not is_default_model_dir(path):
                raise ModelPackageError(path, f"manifest says default-model but {DEFAULT_MODEL_CONFIG} is missing")
            return str(path)
        target = (path / name).resolve()
        if path.resolve() not in target.parents or not target.is_file():
            raise ModelPackageError(manifest, f"checkpoint {name!r} is missing from the folder")
        return str(target)
    if is_default_model_dir(path):
        return str(path)
    found = sorted(path.rglob("*.safetensors"))
    if len(found) != 1:
        what = "no .safetensors file" if not found else f"{len(found)} .safetensors files and no manifest"
        raise ModelPackageError(path, f"{what}; expected {CHECKPOINT_NAME} + {MANIFEST_NAME}")
    return str(found[0])


__all__ = ["ModelPackageError", "find_model", "is_default_model_dir", "package_model", "unpack_model",
           "write_model_dir", "CHECKPOINT_NAME", "MANIFEST_NAME", "SAGEMAKER_MODEL_DIR"]
