"""Voice features from the Whisper encoder that mmva already runs for speech recognition.

Whisper's encoder (CTranslate2, the same int8 model as the ASR pass) turns an utterance's log-mel
spectrogram into one state per 20 ms; those states carry speaker, prosody and voice-quality cues that
hand-made functionals miss (BASELINES.md: +10 to +20 points over prosody on unseen corpora).

The utterance is encoded on its own, not padded to Whisper's 30 s window: CTranslate2 accepts a
shorter input (the encoder uses the first positions), which costs ~12 ms for a 3 s utterance on two
cores instead of ~400 ms for a padded window, and makes the feature independent of what else is in
the window. Training (``mmva voice-train``) and analysis use this same function, so an utterance is
prepared exactly as in training.

Pooled feature: mean and standard deviation over the frames (``2 * d``: 768 for tiny, 1024 for base).

>>> enc = WhisperStates()                                   # doctest: +SKIP
>>> enc.pooled(np.zeros(16000, np.float32)).shape           # doctest: +SKIP
(768,)
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any, Sequence

import numpy as np

SAMPLE_RATE = 16000
HOP = 160  # Whisper's log-mel hop: 10 ms
MAX_FRAMES = 3000  # 30 s: Whisper's positional table ends there
MIN_FRAMES = 20  # 200 ms: less than that is not an utterance


def _pieces(mel: np.ndarray) -> list[np.ndarray]:
    """A log-mel padded to at least ``MIN_FRAMES`` (with its minimum) and cut into pieces of at most
    ``MAX_FRAMES`` (Whisper's 30 s positional table)."""
    if mel.shape[1] < MIN_FRAMES:
        mel = np.pad(mel, ((0, 0), (0, MIN_FRAMES - mel.shape[1])), constant_values=float(mel.min()))
    return [mel[:, s: s + MAX_FRAMES] for s in range(0, mel.shape[1], MAX_FRAMES)]


@lru_cache(maxsize=4)
def _feature_extractor(n_mels: int) -> Any:
    from faster_whisper.feature_extractor import FeatureExtractor

    return FeatureExtractor(feature_size=n_mels)


def _load_ct2(path: str | None, threads: int) -> Any:
    import ctranslate2

    from mmva.analyze.asr import default_asr_path

    return ctranslate2.models.Whisper(path or default_asr_path(), device="cpu", compute_type="int8",
                                      intra_threads=threads)


class WhisperStates:
    """Encoder states of a CTranslate2 Whisper model, per utterance.

    ``model`` may be an already loaded ``ctranslate2.models.Whisper`` (e.g. ``faster_whisper``'s
    ``WhisperModel.model`` from the ASR pass) so the weights are loaded once per process.
    """

    def __init__(self, path: str | None = None, *, model: Any = None, threads: int = 0, name: str = "",
                 lock: threading.Lock | None = None) -> None:
        self.path = path
        if model is None:
            from mmva.analyze.asr import asr_threads

            model = _load_ct2(path, threads or asr_threads())
        self._model = model
        self.n_mels = int(getattr(self._model, "n_mels", 80) or 80)
        self.name = name or ("whisper-tiny.en" if path is None else str(path))
        self._lock = lock or threading.Lock()  # a CTranslate2 model serves one call at a time here

    @property
    def dim(self) -> int:
        return 2 * self.states(np.zeros(SAMPLE_RATE // 2, np.float32)).shape[1]

    def _mel(self, audio: np.ndarray) -> np.ndarray:
        y = np.asarray(audio, dtype=np.float32).reshape(-1)
        mel = _feature_extractor(self.n_mels)(y)  # (n_mels, frames)
        return mel[:, : max(mel.shape[1] - 1, 1)]  # the extractor adds one frame past the end

    def _encode(self, mels: list[np.ndarray]) -> list[np.ndarray]:
        """Encode log-mels of one length bucket: pad to the longest (even) length, keep each one's
        own frames (one state per two mel frames)."""
        import ctranslate2

        n = max(m.shape[1] for m in mels)
        n += n % 2
        batch = np.zeros((len(mels), self.n_mels, n), np.float32)
        for i, m in enumerate(mels):
            batch[i, :, : m.shape[1]] = m
        with self._lock:
            out = self._model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=True)
        states = np.asarray(out, dtype=np.float32)
        return [states[i, : max(1, (m.shape[1] + 1) // 2)] for i, m in enumerate(mels)]

    def states(self, audio: np.ndarray) -> np.ndarray:
        """``(frames, d)`` encoder states of one 16 kHz waveform (long audio in 30 s pieces)."""
        return self.states_batch([audio])[0]

    def states_batch(self, audios: Sequence[np.ndarray], max_batch_frames: int = 6000) -> list[np.ndarray]:
        """States of many waveforms, batched by similar length (padding wastes compute)."""
        mels = [self._mel(a) for a in audios]
        pieces: list[tuple[int, np.ndarray]] = []
        for i, m in enumerate(mels):
            pieces.extend((i, piece) for piece in _pieces(m))
        order = sorted(range(len(pieces)), key=lambda k: pieces[k][1].shape[1])
        results: dict[int, np.ndarray] = {}
        group: list[int] = []
        for k in order + [-1]:
            longest = pieces[group[-1]][1].shape[1] if group else 0
            if k == -1 or (group and (len(group) + 1) * max(longest, pieces[k][1].shape[1]) > max_batch_frames):
                if group:
                    for g, st in zip(group, self._encode([pieces[g][1] for g in group])):
                        results[g] = st
                group = []
            if k != -1:
                group.append(k)
        out: list[list[np.ndarray]] = [[] for _ in audios]
        for k, (i, _) in enumerate(pieces):
            out[i].append(results[k])
        return [np.concatenate(parts, axis=0) for parts in out]

    @staticmethod
    def pool(states: np.ndarray) -> np.ndarray:
        """Mean and standard deviation over frames: ``(2 * d,)``."""
        return np.concatenate([states.mean(0), states.std(0)]).astype(np.float32)

    def pooled(self, audio: np.ndarray) -> np.ndarray:
        return self.pool(self.states(audio))

    def pooled_batch(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self.pool(s) for s in self.states_batch(audios)]) if len(audios) else np.zeros((0, 0), np.float32)


class WhisperBlockStates:
    """Pooled states of Whisper's middle encoder blocks (:mod:`mmva.encoders.whisper_numpy`).

    ``blocks=(1, 2)``: each block's states are pooled to mean + std over frames and the blocks'
    pooled vectors averaged (``2 * d`` values, 768 for tiny), the voice head's feature since issue 13
    (leave-one-corpus-out UAR 43 -> 50 % against the last layer, docs/voice.md). The weights are read
    from the same CTranslate2 folder as the speech recognition's; no CTranslate2 call is made, and
    each utterance is encoded unpadded, on its own.
    """

    def __init__(self, path: str | None = None, blocks: Sequence[int] = (1, 2)) -> None:
        from mmva.analyze.asr import default_asr_path
        from mmva.encoders.whisper_numpy import encoder_layers

        self.blocks = tuple(int(b) for b in blocks)
        if not self.blocks or min(self.blocks) < 0:
            raise ValueError(f"whisper blocks must be non-negative block numbers, got {blocks!r}")
        self.path = path
        self._encoder = encoder_layers(path or default_asr_path(), max(self.blocks))
        self.n_mels = self._encoder.n_mels
        self.name = f"whisper-tiny.en blocks {'+'.join(map(str, self.blocks))}" if path is None else str(path)

    @property
    def dim(self) -> int:
        return 2 * self._encoder.dim

    _mel = WhisperStates._mel

    def states(self, audio: np.ndarray) -> list[np.ndarray]:
        """``(frames, d)`` states after each of ``blocks`` (in that order) of one 16 kHz waveform."""
        pieces = [self._encoder(piece) for piece in _pieces(self._mel(audio))]
        return [np.concatenate([p[b] for p in pieces]) for b in self.blocks]

    def pooled(self, audio: np.ndarray) -> np.ndarray:
        return np.mean([WhisperStates.pool(st) for st in self.states(audio)], axis=0).astype(np.float32)

    def pooled_batch(self, audios: Sequence[np.ndarray]) -> np.ndarray:
        return np.stack([self.pooled(a) for a in audios]) if len(audios) else np.zeros((0, self.dim), np.float32)


_SHARED: dict[tuple[str, tuple[int, ...]], WhisperStates | WhisperBlockStates] = {}
_SHARED_LOCK = threading.Lock()


def shared_states(path: str | None = None, blocks: Sequence[int] | None = None) -> WhisperStates | WhisperBlockStates:
    """One :class:`WhisperStates` per model folder per process (with ``blocks``: one
    :class:`WhisperBlockStates`, the middle blocks in NumPy).

    The default model (``path=None``) is the speech recognition's own model on the CPU
    (:func:`mmva.analyze.asr.load_asr`: the same folder, int8 and thread count as a separate load,
    and the same states: CTranslate2's int8 encoder gives identical states on any thread count),
    so ``mmva analyze`` reads those weights once.
    """
    key = (path or "", tuple(blocks or ()))
    with _SHARED_LOCK:
        if key not in _SHARED:
            if blocks:
                _SHARED[key] = WhisperBlockStates(path, blocks)
            elif path is None:
                from mmva.analyze.asr import load_asr

                asr = load_asr(None, "cpu")
                # the ASR's own lock: the same model may be transcribing in another thread
                _SHARED[key] = WhisperStates(model=asr.model, lock=getattr(asr, "_mmva_lock", None))
            else:
                _SHARED[key] = WhisperStates(path)
        return _SHARED[key]
