"""The multi-task loss: class-weighted cross-entropy with label smoothing for emotion and sentiment.

Class weights come from the label columns of the training split only (counting labels never decodes
a clip), so they are known before the first batch is read.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.utils.class_weight import compute_class_weight
from torch import nn

from mmva.labels import EMOTIONS, SENTIMENTS, emotion_id, sentiment_id


def class_weights(label_ids: Iterable[int], num_classes: int, max_weight: float = 10.0) -> torch.Tensor:
    """"Balanced" weights ``n / (k * count_c)`` for the classes present; absent classes get 1.

    Unknown labels (-1) are ignored; weights are capped at ``max_weight`` so a class with a handful
    of examples cannot dominate the loss.

    >>> [round(w, 3) for w in class_weights([0, 0, 0, 1], 3).tolist()]
    [0.667, 2.0, 1.0]
    """
    y = np.asarray([i for i in label_ids if i is not None and i >= 0], dtype=int)
    out = np.ones(num_classes, dtype=np.float64)
    if y.size:
        present = np.unique(y)
        out[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.tensor(np.minimum(out, max_weight), dtype=torch.float32)


def label_ids(utterances: Iterable, task: str) -> list[int]:
    """Gold label ids of a task ("emotion" or "sentiment") from utterances; -1 where unknown."""
    convert = emotion_id if task == "emotion" else sentiment_id
    out = []
    for u in utterances:
        label = getattr(u, task, None)
        try:
            out.append(convert(label) if label else -1)
        except ValueError:
            out.append(-1)
    return out


class MultiTaskLoss(nn.Module):
    """``CE(emotion) + sentiment_weight * CE(sentiment)``; targets of -1 are ignored.

    >>> loss = MultiTaskLoss(torch.ones(7), torch.ones(3))
    >>> out = loss({"emotion": torch.zeros(2, 7), "sentiment": torch.zeros(2, 3)},
    ...            torch.tensor([0, 1]), torch.tensor([2, -1]))
    >>> round(float(out["loss"]), 3)
    3.045
    """

    def __init__(self, emotion_weights: torch.Tensor | None = None, sentiment_weights: torch.Tensor | None = None,
                 label_smoothing: float = 0.0, sentiment_weight: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("emotion_weights", emotion_weights if emotion_weights is not None
                             else torch.ones(len(EMOTIONS)))
        self.register_buffer("sentiment_weights", sentiment_weights if sentiment_weights is not None
                             else torch.ones(len(SENTIMENTS)))
        self.label_smoothing = label_smoothing
        self.sentiment_weight = sentiment_weight

    def _ce(self, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if not (target >= 0).any():  # no labelled item in this batch: contributes nothing
            return logits.sum() * 0.0
        return F.cross_entropy(logits.float(), target, weight=weight, ignore_index=-1,
                               label_smoothing=self.label_smoothing)

    def forward(self, logits: dict[str, torch.Tensor], emotion: torch.Tensor,
                sentiment: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self._ce(logits["emotion"], emotion, self.emotion_weights)
        s = self._ce(logits["sentiment"], sentiment, self.sentiment_weights)
        return {"loss": e + self.sentiment_weight * s, "emotion_loss": e, "sentiment_loss": s}
