"""Audio features computed with torch (no torchaudio dependency): the reference's log-mel input."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=8)
def _mel_basis(sample_rate: int, n_fft: int, n_mels: int) -> torch.Tensor:
    import librosa  # filterbank only; librosa's is the well-tested Slaney mel scale

    return torch.from_numpy(librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)).float()


def log_mel(
    audio: np.ndarray | torch.Tensor,
    sample_rate: int = 16000,
    n_fft: int = 1024,
    hop_length: int = 512,
    n_mels: int = 64,
    frames: int | None = 300,
    normalize: bool = True,
) -> torch.Tensor:
    """``(1, n_mels, frames)`` log-mel spectrogram, padded or cropped to ``frames`` when given.

    Normalised per utterance to zero mean and unit variance, as the original system did.
    """
    wave = torch.as_tensor(audio, dtype=torch.float32).flatten()
    if wave.numel() < n_fft:
        wave = torch.nn.functional.pad(wave, (0, n_fft - wave.numel()))
    spec = torch.stft(wave, n_fft=n_fft, hop_length=hop_length, window=torch.hann_window(n_fft),
                      return_complex=True).abs().pow(2)  # (n_fft//2+1, t)
    mel = _mel_basis(sample_rate, n_fft, n_mels) @ spec  # (n_mels, t)
    out = torch.log(mel + 1e-6)
    if normalize:
        out = (out - out.mean()) / (out.std() + 1e-5)
    if frames is not None:
        t = out.shape[-1]
        out = torch.nn.functional.pad(out, (0, frames - t)) if t < frames else out[:, :frames]
    return out.unsqueeze(0)
