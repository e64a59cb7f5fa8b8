"""Training and evaluation: ``fit`` (Lightning loop), ``evaluate``, metrics, losses.

>>> from mmva.train import compute_metrics
>>> compute_metrics([0, 1], [0, 1], ["a", "b"])["accuracy"]
1.0
"""

from __future__ import annotations

from typing import Any

from mmva.train.metrics import compute_metrics

_LAZY = {"fit": "mmva.train.fit", "FitResult": "mmva.train.fit", "evaluate": "mmva.train.evaluate",
         "SentimentTask": "mmva.train.task"}


def __getattr__(name: str) -> Any:
    # Lightning loads on first use, so `from mmva.train import compute_metrics` stays light.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mmva.train' has no attribute {name!r}")


__all__ = ["compute_metrics", *_LAZY]
