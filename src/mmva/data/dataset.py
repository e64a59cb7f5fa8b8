"""Turn utterances into model inputs: decode each clip once, let each encoder ``prepare`` it, batch.

``UtteranceDataset`` runs in DataLoader workers (it is picklable: utterances, encoders and plain
configs only). For modalities whose features are cached it reads the cache instead, and decodes no
media at all when every media modality is cached. ``collate_batch`` fills absent rows with zeros
of the right shape *and* a mask of 0, so the model treats them as missing, not as data.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch.utils.data import Dataset, get_worker_info

from mmva.config import DataConfig
from mmva.encoders.base import Encoder
from mmva.io.clip import DecodedClip
from mmva.io.media import MediaError, decode_clip
from mmva.labels import emotion_id, sentiment_id
from mmva.types import Utterance

log = logging.getLogger("mmva")

MEDIA = ("video", "audio")
MIN_DECODE_SIDE = 256  # decode at least this large: face detectors need more than the 32-112 px models see


class UtteranceDataset(Dataset):
    """Items ``{"uid", "inputs", "features", "emotion", "sentiment", "problems"}`` for each utterance.

    ``inputs[m]`` is ``encoders[m].prepare(clip)`` (None when the modality is absent or read from
    the cache); ``features[m]`` a cached ``(D,)`` tensor (None when not cached or stored as absent).
    ``cached`` names the modalities to read from ``cache``; a cache miss falls back to ``prepare``.

    >>> ds = UtteranceDataset(corpus.utterances, model.encoders, cfg.data)   # doctest: +SKIP
    >>> ds[0]["inputs"]["video"].shape                                        # doctest: +SKIP
    torch.Size([8, 3, 32, 32])
    """

    def __init__(self, utterances: list[Utterance], encoders: dict[str, Encoder], data: DataConfig,
                 cache: Any | None = None, cached: frozenset[str] = frozenset()) -> None:
        self.utterances = list(utterances)
        self.encoders = dict(encoders)
        self.data = data
        self.cache = cache
        self.cached = frozenset(cached) & set(self.encoders) if cache is not None else frozenset()

    def __len__(self) -> int:
        return len(self.utterances)

    def _from_cache(self, utt: Utterance) -> tuple[dict[str, Any], list[str]]:
        """{modality: tensor or None} for cache hits; the modalities that missed."""
        from mmva.encoders.cache import MISSING  # the encoders team's sentinel for "not cached"

        hits: dict[str, Any] = {}
        misses: list[str] = []
        for m in sorted(self.cached):
            value = self.cache.get(self.cache.key(utt, self.encoders[m], self.data))
            if value is MISSING:
                misses.append(m)
            else:
                hits[m] = value
        return hits, misses

    def _decode(self, utt: Utterance, media: list[str], problems: list[str]) -> DecodedClip:
        clip = DecodedClip(text=utt.text, context=list(utt.extra.get("context", [])), source=utt.path or "",
                           sample_rate=self.data.sample_rate)
        if not media:
            return clip
        if not utt.path:
            missing = utt.extra.get("missing_path") or utt.extra.get("refused_path")
            problems.append(f"{missing}: clip not found" if missing else "no media file")
            return clip
        try:
            decoded = decode_clip(utt.path, start=utt.start_time, end=utt.end_time,
                                  num_frames=self.data.num_frames,
                                  max_side=max(MIN_DECODE_SIDE, self.data.frame_size),
                                  sample_rate=self.data.sample_rate, text=utt.text,
                                  want_video="video" in media, want_audio="audio" in media)
        except MediaError as err:
            problems.append(str(err))
            return clip
        decoded.context = clip.context
        problems.extend(f"{utt.path}: {p}" for p in decoded.problems)
        return decoded

    def __getitem__(self, index: int) -> dict[str, Any]:
        with _one_thread():
            return self._item(index)

    def _item(self, index: int) -> dict[str, Any]:
        utt = self.utterances[index]
        problems: list[str] = []
        features: dict[str, Any] = {m: None for m in self.encoders}
        inputs: dict[str, Any] = {m: None for m in self.encoders}
        todo = [m for m in self.encoders if m not in self.cached]
        if self.cached:
            hits, misses = self._from_cache(utt)
            features.update(hits)
            todo += misses
        clip = self._decode(utt, [m for m in todo if m in MEDIA], problems)  # at most one decode
        for m in todo:
            try:
                inputs[m] = self.encoders[m].prepare(clip)
            except Exception as exc:  # one encoder's failure masks its modality, the item goes on
                problems.append(f"{utt.path or utt.uid}: {m} encoder could not prepare input "
                                f"({type(exc).__name__}: {exc})")
                inputs[m] = None
        return {"uid": utt.uid, "inputs": inputs, "features": features,
                "emotion": emotion_id(utt.emotion) if utt.emotion else -1,
                "sentiment": sentiment_id(utt.sentiment) if utt.sentiment else -1,
                "problems": problems}


@contextmanager
def _one_thread() -> Iterator[None]:
    """Prepare one item single-threaded, as DataLoader workers already do.

    Per-item tensors are tiny; in the main process (``num_workers=0``) torch's thread pool costs
    more than the work: measured 3.9 vs 52.6 items/s on a loaded 2-core machine.
    """
    if get_worker_info() is not None:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _zeros_like(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    if isinstance(value, dict):
        return {k: _zeros_like(v) for k, v in value.items()}
    raise TypeError(f"cannot build an empty stand-in for {type(value).__name__}")


def collate_batch(items: list[dict[str, Any]], encoders: dict[str, Encoder]) -> dict[str, Any]:
    """Batch dataset items: ``inputs``/``features`` per modality with zero rows + ``masks`` for absences.

    Keys: ``uid``, ``inputs`` {m: collated batch or None}, ``features`` {m: (b, D)} (only modalities
    with at least one cached row), ``feature_mask`` {m: (b,)} (1 where the row comes from
    ``features``), ``masks`` {m: (b,) 1 present / 0 absent}, ``emotion``/``sentiment`` (b,) long
    (-1 = unknown), ``skipped`` [(uid, reason)] for items with no modality at all (dropped) and
    ``problems`` [(uid, reason)] for the rest.

    >>> loader = DataLoader(ds, batch_size=8,
    ...                     collate_fn=functools.partial(collate_batch, encoders=model.encoders))  # doctest: +SKIP
    """
    skipped: list[tuple[str, str]] = []
    kept = []
    for it in items:
        if any(v is not None for v in it["inputs"].values()) or any(v is not None for v in it["features"].values()):
            kept.append(it)
        else:
            why = "; ".join(it["problems"]) or "no usable modality"
            skipped.append((it["uid"], f"no usable modality ({why})"))
    problems = [(it["uid"], p) for it in kept for p in it["problems"]]
    batch: dict[str, Any] = {"uid": [it["uid"] for it in kept], "inputs": {}, "features": {}, "feature_mask": {},
                             "masks": {},
                             "emotion": torch.tensor([it["emotion"] for it in kept], dtype=torch.long),
                             "sentiment": torch.tensor([it["sentiment"] for it in kept], dtype=torch.long),
                             "skipped": skipped, "problems": problems}
    for m, enc in encoders.items():
        has_in = [it["inputs"].get(m) is not None for it in kept]
        has_ft = [it["features"].get(m) is not None for it in kept]
        batch["masks"][m] = torch.tensor([float(a or f) for a, f in zip(has_in, has_ft)])
        if any(has_in):
            template = next(it["inputs"][m] for it, h in zip(kept, has_in) if h)
            filler = _zeros_like(template)
            batch["inputs"][m] = enc.collate([it["inputs"][m] if h else filler for it, h in zip(kept, has_in)])
        else:
            batch["inputs"][m] = None
        if any(has_ft):
            dim = next(it["features"][m] for it, h in zip(kept, has_ft) if h).shape[-1]
            rows = [it["features"][m].float().reshape(-1) if h else torch.zeros(dim) for it, h in zip(kept, has_ft)]
            batch["features"][m] = torch.stack(rows) if rows else torch.zeros(0, dim)
            batch["feature_mask"][m] = torch.tensor([float(h) for h in has_ft])
    if skipped:
        log.warning("dropped %d item(s) with no usable modality: %s", len(skipped),
                    ", ".join(uid for uid, _ in skipped[:5]))
    return batch
