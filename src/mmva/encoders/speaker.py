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

This module imports no torch: the network (:class:`mmva.encoders.speaker_net.SpeakerEncoder`) runs
from its ONNX form, exported once into ``$MMVA_CACHE/speaker-onnx/`` (:mod:`mmva.model.onnx_cache`;
torch is imported only for that export, or when the file can be neither read nor written) and run
with onnxruntime.

>>> enc = load_speaker_encoder()                         # doctest: +SKIP
>>> enc.embed_windows(audio_16k, [(0.0, 1.6), (1.6, 3.2)]).shape   # doctest: +SKIP
(2, 256)
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from mmva.encoders.weights import WeightsNotFound

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
N_MELS = 40
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms
WINDOW_FRAMES = 160  # 1.6 s: the partial-utterance length the encoder was trained on
EMBED_DIM = 256
TARGET_DBFS = -30.0  # resemblyzer's volume normalisation target
INSTALL_HINT = "pip install --no-deps 'resemblyzer>=0.1.4,<0.2' (install.sh does it)"
ONNX_FORMAT = "1"  # bump when the exported graph changes (its cached files are then made again)


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


def speaker_windows(audio: np.ndarray, spans: Sequence[tuple[float, float]]) -> np.ndarray:
    """The network's input for ``spans`` (seconds) of one 16 kHz recording: ``(n, 160, 40)`` float32
    power mel frames, each window scaled as if its audio were volume-normalised.

    A span shorter than 1.6 s has its mel frames repeated to 1.6 s (the LSTM's final state
    depends on the length, and batching needs one length); longer spans are cut to 1.6 s around
    their middle. Each window is volume-normalised first (:func:`normalise_volume`).
    """
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
    return np.stack(windows).astype(np.float32, copy=False)


class OnnxSpeakerEncoder:
    """The GE2E encoder run from its cached ONNX form: :meth:`embed_windows` as
    :class:`mmva.encoders.speaker_net.SpeakerEncoder`'s (same embeddings within 1e-5), without torch."""

    def __init__(self, session: object, file: Path | None = None) -> None:
        self.session = session
        self.file = file
        self._lock = threading.Lock()

    def embed_windows(self, audio: np.ndarray, spans: Sequence[tuple[float, float]],
                      batch: int = 64) -> np.ndarray:
        """(n, 256) unit embeddings of ``spans`` (seconds) of one 16 kHz recording (see
        :func:`speaker_windows` for how each span becomes a 1.6 s window)."""
        if not spans:
            return np.zeros((0, EMBED_DIM), np.float32)
        x = speaker_windows(audio, spans)
        with self._lock:
            out = [self.session.run(None, {"mels": x[i:i + batch]})[0] for i in range(0, len(x), batch)]
        return np.concatenate(out).astype(np.float32, copy=False)


def __getattr__(name: str) -> object:
    if name == "SpeakerEncoder":  # the torch module, in mmva.encoders.speaker_net
        from mmva.encoders.speaker_net import SpeakerEncoder

        return SpeakerEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@lru_cache(maxsize=2)
def load_speaker_encoder(onnx: bool = True, cache_dir: str | None = None) -> object:
    """The GE2E encoder with resemblyzer's weights (loaded once per process), on the CPU: its cached
    ONNX form (:class:`OnnxSpeakerEncoder`, exported on first use); with ``onnx=False``, or when that
    file can be neither read nor written, the torch module
    (:class:`mmva.encoders.speaker_net.SpeakerEncoder`). Both have ``embed_windows``."""
    weights = resemblyzer_weights()
    if onnx:
        from mmva.model.onnx_cache import cache_file, cached_session, lib_version

        def export(out: Path) -> None:
            from mmva.encoders.speaker_net import load_eager, save_onnx

            save_onnx(load_eager(weights), out)

        try:
            file = cache_file("speaker-onnx", "ge2e", [weights.read_bytes(), lib_version("torch"), ONNX_FORMAT],
                              cache_dir)
            # One intra-op thread: an LSTM over 160 steps is a chain of small matrix products, which
            # threads do not speed up on a CPU shared with the ASR (measured in the commit adding this).
            return OnnxSpeakerEncoder(cached_session(file, export, threads=1, what="speaker encoder"), file)
        except Exception as exc:  # no onnx package, a read-only cache...: the eager network serves
            log.warning("speaker encoder: no ONNX form (%s); running it on torch", exc)
    from mmva.encoders.speaker_net import load_eager

    return load_eager(weights)
