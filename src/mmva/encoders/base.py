"""The encoder interface and its registry (house style rules 3 and timm's `create_model`).

Every encoder turns one modality of a decoded clip into a fixed-size vector:

- ``prepare(clip)`` runs on the CPU, in DataLoader workers: it takes a :class:`~mmva.io.media.DecodedClip`
  (text, uint8 frames, 16 kHz waveform) and returns the tensor(s) this encoder consumes, or ``None``
  when the modality is absent (no audio track, no face, no words): the model then masks it.
- ``forward(batch)`` maps the collated prepared inputs to ``(batch, output_dim)``.
- ``preprocess`` is the preprocessing config that travels with the weights; it is part of the
  feature-cache key, so a change of preprocessing never reuses stale features.

Adding an encoder touches one file: subclass :class:`Encoder`, decorate with ``@register_encoder``.
"""

from __future__ import annotations

import fnmatch
from typing import Any, Callable, ClassVar

import torch
from torch import nn

_REGISTRY: dict[str, type["Encoder"]] = {}


class Encoder(nn.Module):
    """Base class: one modality in, ``(batch, output_dim)`` out."""

    name: ClassVar[str] = ""
    modality: ClassVar[str] = ""  # "text", "video" or "audio"
    # Whether the model's projection after this encoder adds ReLU + dropout (the reference's
    # text projection is a bare Linear; its video and audio projections are not).
    projection_activation: ClassVar[bool] = True

    def __init__(self, output_dim: int, preprocess: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.output_dim = output_dim
        self.preprocess = dict(preprocess or {})

    @classmethod
    def options_from_data(cls, data: Any) -> dict[str, Any]:
        """Constructor options derived from a :class:`~mmva.config.DataConfig` (frame count, ...)."""
        return {}

    @classmethod
    def untrained_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """``options`` changed so the constructor fetches no pretrained weights.

        Used when a checkpoint is loaded: its own weights overwrite whatever the encoder starts
        with, so a download (BERT-base, R3D-18) or a weight file of the training machine would be
        wasted. The default drops an explicit ``weights`` path; encoders that fetch weights by
        themselves also turn that off.
        """
        return {k: v for k, v in options.items() if k != "weights"}

    def prepare(self, clip: Any) -> Any:
        """Turn a decoded clip into this encoder's input, or None when the modality is absent."""
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        """Batch prepared inputs (all non-None). Default: stack tensors / dicts of tensors."""
        return default_collate(items)

    def forward(self, batch: Any) -> torch.Tensor:  # (b, output_dim)
        raise NotImplementedError

    def weights_source(self) -> str:
        """Where the weights came from ("random init", a path, a package); shown to users."""
        return getattr(self, "_weights_source", "random init")

    def freeze(self) -> "Encoder":
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        return self

    def cache_key(self) -> dict[str, Any]:
        """What identifies this encoder's outputs in the feature cache (besides the clip hash)."""
        return {"encoder": self.name, "preprocess": self.preprocess, "weights": self.weights_source()}


def default_collate(items: list[Any]) -> Any:
    first = items[0]
    if isinstance(first, torch.Tensor):
        return torch.stack(items)
    if isinstance(first, dict):
        return {k: default_collate([it[k] for it in items]) for k in first}
    raise TypeError(f"cannot collate items of type {type(first).__name__}")


def register_encoder(cls: type[Encoder]) -> type[Encoder]:
    """Class decorator: make an encoder available by its ``name``."""
    if not cls.name or cls.modality not in ("text", "video", "audio"):
        raise ValueError(f"{cls.__name__} needs a name and a modality of text/video/audio")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"encoder name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtin() -> None:
    # Importing the modules registers their encoders; done lazily so `import mmva` stays fast.
    from mmva.encoders import builtin  # noqa: F401


def create_encoder(name: str, **options: Any) -> Encoder:
    """Build a registered encoder by name.

    >>> create_encoder("tiny-text").output_dim
    32
    """
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown encoder {name!r}; registered: {', '.join(list_encoders())}")
    return _REGISTRY[name](**options)


def encoder_class(name: str) -> type[Encoder]:
    _load_builtin()
    if name not in _REGISTRY:
        raise KeyError(f"unknown encoder {name!r}; registered: {', '.join(list_encoders())}")
    return _REGISTRY[name]


def list_encoders(pattern: str = "*", modality: str | None = None) -> list[str]:
    """Registered encoder names matching a glob, optionally for one modality."""
    _load_builtin()
    return sorted(
        n for n, c in _REGISTRY.items()
        if fnmatch.fnmatch(n, pattern) and (modality is None or c.modality == modality)
    )


Factory = Callable[..., Encoder]
