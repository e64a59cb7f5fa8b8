"""The GE2E speaker encoder as a torch module (resemblyzer's ``VoiceEncoder``), and its ONNX export.

:mod:`mmva.encoders.speaker` runs the exported form without torch; this module is imported only to
export it, or when the ONNX form cannot be used (``load_speaker_encoder(onnx=False)``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from mmva.encoders.speaker import EMBED_DIM, N_MELS, WINDOW_FRAMES, speaker_windows


class SpeakerEncoder(nn.Module):
    """GE2E: LSTM(40 -> 256, 3 layers) -> last hidden state -> linear -> ReLU -> unit length."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, EMBED_DIM)
        self._lock = threading.Lock()  # one forward at a time: the server analyses in threads

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        _, (hidden, _) = self.lstm(mels)  # mels (b, t, 40); hidden (layers, b, 256)
        e = torch.relu(self.linear(hidden[-1]))  # (b, 256)
        return e / e.norm(dim=1, keepdim=True).clamp_min(1e-8)

    @torch.no_grad()
    def embed_windows(self, audio: np.ndarray, spans: Sequence[tuple[float, float]],
                      batch: int = 64) -> np.ndarray:
        """(n, 256) unit embeddings of ``spans`` (seconds) of one 16 kHz recording
        (:func:`mmva.encoders.speaker.speaker_windows` says how each span becomes a 1.6 s window)."""
        if not spans:
            return np.zeros((0, EMBED_DIM), np.float32)
        x = torch.from_numpy(speaker_windows(audio, spans))
        with self._lock:
            out = [self(x[i:i + batch]) for i in range(0, len(x), batch)]
        return torch.cat(out).numpy()


def load_eager(weights: str | Path) -> SpeakerEncoder:
    """The encoder with resemblyzer's ``pretrained.pt`` weights, in eval mode on the CPU."""
    state = torch.load(weights, map_location="cpu", weights_only=True)["model_state"]
    enc = SpeakerEncoder()
    # The checkpoint also holds the GE2E loss's similarity scale and bias: training-only.
    enc.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity_")})
    return enc.eval()


def save_onnx(enc: SpeakerEncoder, out: str | Path) -> Path:
    """Export ``enc``'s forward to ONNX at ``out`` (atomically): input ``mels`` ``(batch, time, 40)``,
    output ``embedding`` ``(batch, 256)``; dynamic batch and time."""
    from mmva.model.onnx_cache import export_module

    example = torch.rand(2, WINDOW_FRAMES, N_MELS)
    return export_module(enc.eval(), (example,), out, ["mels"], ["embedding"],
                         {"mels": {0: "batch", 1: "time"}, "embedding": {0: "batch"}})
