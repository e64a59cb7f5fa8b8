"""Speaker embeddings: the GE2E voice encoder whose weights ship inside the ``resemblyzer`` wheel.

``resemblyzer`` (Apache-2.0) carries ``pretrained.pt`` (17 MB): a 3-layer LSTM over 40-band mel
spectrograms trained with the generalised end-to-end loss (Wan et al., 2018) on LibriSpeech, VoxCeleb
1 and 2; it maps 1.6 s of speech to a 256-d unit vector, and two stretches of one voice lie close in
cosine similarity. Only the weights are read, located through the installed package without importing
it: importing ``resemblyzer`` pulls in ``webrtcvad`` (a C extension built from source that imports
``pkg_resources``, gone from current setuptools) and ``scipy.ndimage.morphology`` (gone from current
SciPy), none of which the encoder itself needs. Hence ``pip install --no-deps resemblyzer``
(``install.sh`` does it). The network and its mel front end below are resemblyzer's
``VoiceEncoder`` and ``wav_to_mel_spectrogram`` with its hyper-parameters.

>>> enc = load_speaker_encoder()                         # doctest: +SKIP
>>> enc.embed_windows(audio_16k, [(0.0, 1.6), (1.6, 3.2)]).shape   # doctest: +SKIP
(2, 256)
"""

from __future__ import annotations

import importlib.util
import threading
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from mmva.encoders.weights import WeightsNotFound

SAMPLE_RATE = 16000
N_MELS = 40
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
WINDOW_FRAMES = 160  # 1.6 s: the partial-utterance length the encoder was trained on
EMBED_DIM = 256
TARGET_DBFS = -30.0  # resemblyzer's volume normalisation target
INSTALL_HINT = "pip install --no-deps 'resemblyzer>=0.1.4,<0.2' (install.sh does it)"


def resemblyzer_weights() -> Path:
    """Path of ``pretrained.pt`` inside the installed ``resemblyzer`` package (not imported).

    Raises :class:`WeightsNotFound` with the install command when the package is missing.
    """
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsNotFound(f"speaker diarization needs the resemblyzer weights: {INSTALL_HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "pretrained.pt"
    if not path.is_file():
        raise WeightsNotFound(f"resemblyzer is installed but has no pretrained.pt at {path}: {INSTALL_HINT}")
    return path


def speaker_encoder_available() -> bool:
    """True when the resemblyzer weights can be found."""
    try:
        resemblyzer_weights()
    except WeightsNotFound:
        return False
    return True


def mel_frames(audio: np.ndarray) -> np.ndarray:
    """(frames, 40) power mel spectrogram of 16 kHz audio, 25 ms windows every 10 ms (not log).

    librosa.feature.melspectrogram's numbers, computed by :mod:`mmva.encoders.dsp` (numpy only).
    """
    from mmva.encoders.dsp import melspectrogram

    mel = melspectrogram(np.asarray(audio, np.float32).reshape(-1), SAMPLE_RATE, N_FFT, HOP, N_MELS)
    return mel.astype(np.float32).T


def normalise_volume(audio: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Scale to ``target_dbfs`` RMS, as the encoder's training data was (silence is left as is)."""
    rms = float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if len(audio) else 0.0
    if rms < 1e-5:
        return audio
    return (audio * (10 ** (target_dbfs / 20) / rms)).astype(np.float32)


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
        """(n, 256) unit embeddings of ``spans`` (seconds) of one 16 kHz recording.

        A span shorter than 1.6 s has its mel frames repeated to 1.6 s (the LSTM's final state
        depends on the length, and batching needs one length); longer spans are cut to 1.6 s around
        their middle. Each window is volume-normalised first (:func:`normalise_volume`).
        """
        if not spans:
            return np.zeros((0, EMBED_DIM), np.float32)
        # One mel spectrogram for the whole audio; each window is then volume-normalised as each
        # training utterance was: scaling audio by g scales its power mel by g^2.
        mel = mel_frames(audio)
        target = 10 ** (TARGET_DBFS / 20)
        windows = []
        for start, end in spans:
            if end - start > WINDOW_FRAMES * HOP / SAMPLE_RATE:  # longer than 1.6 s: its middle
                mid = (start + end) / 2
                start, end = mid - 0.8, mid + 0.8
            a, b = max(0, int(round(start * SAMPLE_RATE))), min(len(audio), int(round(end * SAMPLE_RATE)))
            rms = float(np.sqrt(np.mean(np.square(audio[a:b], dtype=np.float64)))) if b > a else 0.0
            gain = (target / rms) ** 2 if rms >= 1e-5 else 1.0
            fa = min(a // HOP, len(mel) - 1)
            w = mel[fa:max(fa + 1, min(b // HOP, fa + WINDOW_FRAMES))] * np.float32(gain)
            windows.append(np.resize(w, (WINDOW_FRAMES, N_MELS)) if len(w) < WINDOW_FRAMES else w)
        x = torch.from_numpy(np.stack(windows))
        with self._lock:
            out = [self(x[i:i + batch]) for i in range(0, len(x), batch)]
        return torch.cat(out).numpy()


@lru_cache(maxsize=1)
def load_speaker_encoder() -> SpeakerEncoder:
    """The GE2E encoder with resemblyzer's weights (loaded once per process), on the CPU."""
    state = torch.load(resemblyzer_weights(), map_location="cpu", weights_only=True)["model_state"]
    enc = SpeakerEncoder()
    # The checkpoint also holds the GE2E loss's similarity scale and bias: training-only.
    enc.load_state_dict({k: v for k, v in state.items() if not k.startswith("similarity_")})
    return enc.eval()
