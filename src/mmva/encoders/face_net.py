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

from pathlib import Path

import torch
from torch import nn

from mmva.encoders.face import FACE_NET_INPUT, FERPLUS_LABELS

# The labels and input size live in the torch-free mmva.encoders.face (which runs this network's ONNX form).
INPUT_SIZE = FACE_NET_INPUT
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


def load_face_net(path: str | Path) -> FaceNet:
    """The network of a ``mmva-face-net`` safetensors file, in eval mode, float32."""
    from safetensors.torch import load_file

    net = FaceNet()
    net.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
    return net.eval()


def mirror_logits(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean logits of crops ``x`` and of their mirror images (as training's scores), and the
    embeddings of ``x``."""
    logits, emb = net(x)
    logits2, _ = net(torch.flip(x, dims=[-1]))
    return (logits + logits2) / 2, emb


class _Mirror(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mirror_logits(self.net, x)


def save_onnx(net: FaceNet, out: str | Path) -> Path:
    """Export :func:`mirror_logits` of ``net`` to ONNX at ``out`` (atomically): input ``crops``
    ``(batch, 1, 48, 48)`` float raw grey levels, outputs ``logits`` ``(batch, 8)`` and ``embedding``
    ``(batch, 256)``; dynamic batch."""
    from mmva.model.onnx_cache import export_module

    example = torch.rand(2, 1, INPUT_SIZE, INPUT_SIZE) * 255
    return export_module(_Mirror(net.float().eval()).eval(), (example,), out, ["crops"], ["logits", "embedding"],
                         {"crops": {0: "batch"}, "logits": {0: "batch"}, "embedding": {0: "batch"}})

