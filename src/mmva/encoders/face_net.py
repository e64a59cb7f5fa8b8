"""mmva's own face-expression network (trained on FER+ by ``mmva face-train``).

A VGG-style CNN (four stages of two 3x3 convolutions with batch norm, 32-64-128-256 channels, 1.2 M
parameters, 2.3 MB in float16) on 48x48 grey crops, each crop standardised by its own mean and
spread so lighting and camera gain carry no information. Eight outputs in FER+ order (neutral,
happiness, surprise, sadness, anger, disgust, fear, contempt); contempt has no MELD class and is
dropped (renormalised away) when the probabilities are mapped to MELD order.

>>> net = FaceNet().eval()
>>> logits, emb = net(torch.zeros(2, 1, 48, 48))
>>> tuple(logits.shape), tuple(emb.shape)
((2, 8), (2, 256))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FERPLUS_LABELS: tuple[str, ...] = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear",
                                   "contempt")
# MELD order (anger, disgust, fear, joy, neutral, sadness, surprise) as columns of the FER+ output.
FERPLUS_TO_MELD: tuple[int, ...] = (4, 5, 6, 1, 0, 3, 2)
INPUT_SIZE = 48
WIDTHS = (32, 64, 128, 256)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-crop standardisation of ``(b, 1, h, w)`` float crops (any scale)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3 * (x.abs().amax(dim=(1, 2, 3), keepdim=True) + 1))
    return (x - mean) / std


def _stage(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FaceNet(nn.Module):
    """(b, 1, 48, 48) crops (raw grey levels; standardised inside) -> (logits (b, 8), embedding (b, 256))."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, n_classes: int = len(FERPLUS_LABELS),
                 dropout: float = 0.3) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        cin = 1
        for i, w in enumerate(widths):
            stages.append(_stage(cin, w))
            if i < len(widths) - 1:
                stages.append(nn.MaxPool2d(2))
            cin = w
        self.features = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(cin, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = self.features(standardise(x)).mean(dim=(2, 3))
        return self.head(self.dropout(emb)), emb


def to_meld(probs: torch.Tensor) -> torch.Tensor:
    """FER+ probabilities ``(..., 8)`` -> MELD-ordered ``(..., 7)``, contempt's share renormalised away."""
    p = probs[..., list(FERPLUS_TO_MELD)]
    return p / p.sum(dim=-1, keepdim=True).clamp_min(1e-12)
