"""The voice emotion head (contract G): audio in, calibrated 7-class emotion probabilities out.

A :class:`VoiceHead` wraps audio-only :class:`~mmva.model.multimodal.MultimodalSentimentAnalyzer`
checkpoints (text and video absent, masked) trained by the project's trainer on acted speech, plus
the normalisation and calibration that travel with them (``voice.json``):

- the *utterance* head (``voice_head.safetensors``) scores one clip of an unknown speaker: its
  prosody vector is standardised with the average training speaker's statistics;
- the *speaker* head (``voice_head_speaker.safetensors``, optional) is trained on per-speaker
  normalised features; :meth:`VoiceHead.predict_proba_batch` uses it when the caller says the clips
  come from one speaker and there are enough of them (``min_speaker_utterances``) to estimate
  that speaker's statistics (shrunk towards the population's).

Each head's logits are divided by a temperature fitted on held-out (leave-one-speaker-out) folds.
Audio with no speech (silence, a very low level, no voiced frames) gives ``None``: the voice
modality is then masked by whoever fuses it, never replaced by a guess.

>>> head = load_voice_head()                                   # doctest: +SKIP
>>> head.predict_proba(audio_16k).round(2)                     # doctest: +SKIP
array([0.05, 0.02, 0.08, 0.41, 0.22, 0.07, 0.15], dtype=float32)
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmva.io.clip import DecodedClip
from mmva.labels import EMOTIONS, softmax

log = logging.getLogger("mmva")

CONFIG_FILE = "voice.json"
MIN_RMS = 10 ** (-55 / 20)  # below -55 dBFS frame RMS there is no usable voice


def has_voice(audio: np.ndarray | None) -> bool:
    """Cheap first check: a non-empty, finite waveform whose loudest 25 ms frame is above -55 dBFS."""
    if audio is None or np.asarray(audio).size < 400:
        return False
    y = np.asarray(audio, dtype=np.float32).reshape(-1)
    if not np.isfinite(y).all():
        return False
    frames = y[: y.size // 400 * 400].reshape(-1, 400)
    return float(np.sqrt((frames ** 2).mean(1)).max()) >= MIN_RMS


@dataclass(frozen=True)
class Standardizer:
    """Feature statistics used before a head: ``(x - mean) / max(std, floor)``."""

    mean: np.ndarray
    std: np.ndarray

    def __call__(self, x: Any) -> Any:
        import torch

        from mmva.encoders.prosody import zscore

        return torch.from_numpy(zscore(x.numpy(), self.mean, self.std))

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> "Standardizer | None":
        if not raw:
            return None
        return cls(np.asarray(raw["mean"], dtype=np.float64), np.asarray(raw["std"], dtype=np.float64))

    def adapted(self, feats: np.ndarray, prior_weight: float) -> "Standardizer":
        """This (population) standardizer shrunk towards the statistics of ``feats`` (one speaker):
        weight n / (n + prior_weight) on the speaker's mean and variance."""
        n = len(feats)
        w = n / (n + prior_weight)
        mean = w * feats.mean(0) + (1 - w) * self.mean
        var = w * feats.var(0) + (1 - w) * self.std ** 2
        return Standardizer(mean, np.sqrt(var))


class _Head:
    """One checkpoint with its temperature and input standardisation."""

    def __init__(self, model: Any, temperature: float, standardizer: Standardizer | None,
                 source: str) -> None:
        if list(getattr(model, "modalities", [])) != ["audio"]:
            raise ValueError(f"{source}: expected an audio-only model, got modalities "
                             f"{getattr(model, 'modalities', None)}")
        self.model = model.eval()
        self.encoder = model.encoders["audio"]
        self.temperature = float(temperature)
        self.standardizer = standardizer
        self.source = source

    def probs(self, prepared: list[Any], standardizer: Standardizer | None = None) -> np.ndarray:
        import torch

        std = standardizer or self.standardizer
        batch = self.encoder.collate([std(p) if std is not None else p for p in prepared])
        with torch.no_grad():
            feats = self.model.encode({"audio": batch})
            logits = self.model.fuse(feats, masks={"audio": torch.ones(len(prepared))}, modality_dropout=0.0)["emotion"]
        return torch.softmax(logits.float() / self.temperature, dim=-1).numpy().astype(np.float32)


class _SingleClip:
    """``predict_proba`` and ``predict`` for one clip, over a head's ``predict_proba_batch``."""

    labels: tuple[str, ...]

    def predict_proba_batch(self, audios: list[np.ndarray | None], sample_rate: int = 16000, *,
                            same_speaker: bool = False) -> list[np.ndarray | None]:
        raise NotImplementedError

    def predict_proba(self, audio: np.ndarray | None, sample_rate: int = 16000) -> np.ndarray | None:
        """Calibrated probabilities ``(7,)`` (anger, disgust, fear, joy, neutral, sadness, surprise),
        or None when the audio holds no speech (silence, very low level, no voiced frames)."""
        return self.predict_proba_batch([audio], sample_rate)[0]

    def predict(self, audio: np.ndarray | None, sample_rate: int = 16000, top_k: int = 3) -> list[dict[str, Any]] | None:
        """Top-k ``[{"label", "confidence"}]``, best first, or None without speech."""
        probs = self.predict_proba(audio, sample_rate)
        if probs is None:
            return None
        order = np.argsort(-probs)[:top_k]
        return [{"label": self.labels[i], "confidence": float(probs[i])} for i in order]


class VoiceHead(_SingleClip):
    """Audio -> calibrated emotion probabilities ``(7,)`` in MELD order, or None without speech.

    >>> head = load_voice_head()                                   # doctest: +SKIP
    >>> head.predict_proba(np.zeros(16000, np.float32)) is None    # doctest: +SKIP
    True
    """

    def __init__(self, utterance: _Head, speaker: _Head | None = None, config: dict[str, Any] | None = None,
                 source: str = "") -> None:
        self.utterance_head = utterance
        self.speaker_head = speaker
        self.config = dict(config or {})
        self.source = source
        self.labels: tuple[str, ...] = tuple(self.config.get("labels", EMOTIONS))
        self.sample_rate = int(self.config.get("sample_rate", 16000))
        self.min_speaker_utterances = int(self.config.get("min_speaker_utterances", 10))
        self.prior_weight = float(self.config.get("speaker_prior_weight", 10))
        self._lock = threading.Lock()  # one forward at a time: shared eval-mode modules

    @property
    def encoder_name(self) -> str:
        return self.utterance_head.encoder.name

    def features(self, audio: np.ndarray | None, sample_rate: int = 16000) -> Any:
        """The encoder's input for one waveform (a torch tensor, before standardisation), or None without speech."""
        if not has_voice(audio):
            return None
        y = np.asarray(audio, dtype=np.float32).reshape(-1)
        if sample_rate != self.sample_rate:
            from mmva.encoders.dsp import resample

            y = resample(y, sample_rate, self.sample_rate)
        return self.utterance_head.encoder.prepare(DecodedClip(audio=y, sample_rate=self.sample_rate))

    def predict_proba_batch(self, audios: list[np.ndarray | None], sample_rate: int = 16000, *,
                            same_speaker: bool = False) -> list[np.ndarray | None]:
        """:meth:`predict_proba` for many clips. ``same_speaker=True`` (e.g. one talking head's
        utterances) normalises them with that speaker's own statistics and uses the speaker head,
        when there is one and at least ``min_speaker_utterances`` clips have speech."""
        prepared = [self.features(a, sample_rate) for a in audios]
        present = [i for i, p in enumerate(prepared) if p is not None]
        out: list[np.ndarray | None] = [None] * len(audios)
        if not present:
            return out
        xs = [prepared[i] for i in present]
        head, std = self.utterance_head, None
        sp = self.speaker_head
        if same_speaker and sp is not None and sp.standardizer is not None and len(xs) >= self.min_speaker_utterances:
            import torch

            head = sp
            std = sp.standardizer.adapted(torch.stack(xs).double().numpy(), self.prior_weight)
        with self._lock:
            probs = head.probs(xs, std)
        for j, i in enumerate(present):
            out[i] = probs[j]
        return out



def default_head_dir() -> Path:
    """The folder of the head that ships with mmva (``mmva/assets/voice``)."""
    return Path(str(resources.files("mmva") / "assets" / "voice"))


_CACHE: dict[str, VoiceHead] = {}
_CACHE_LOCK = threading.Lock()


def _load_head(folder: Path, spec: dict[str, Any]) -> _Head:
    from mmva.model.checkpoint import load_model

    path = folder / spec["file"]
    if not path.exists():
        raise FileNotFoundError(f"{path}: voice head weights missing (named in {folder / CONFIG_FILE})")
    return _Head(load_model(str(path)), spec.get("temperature", 1.0), Standardizer.from_dict(spec.get("standardizer")),
                 str(path))


class NumpyHead:
    """:class:`mmva.train.voice_head.Head` (standardise -> (Linear -> GELU ->) Linear) in NumPy, from its
    safetensors state: float32 arithmetic as torch's in eval mode (dropout off), same logits within 1e-5."""

    def __init__(self, state: dict[str, np.ndarray], hidden: int = 0, source: str = "") -> None:
        f32 = {k: np.asarray(v, np.float32) for k, v in state.items()}
        self.hidden = int(hidden)
        self.source = source
        self.mean, self.std = f32["mean"], f32["std"]
        names = ("net.1",) if self.hidden == 0 else ("net.1", "net.4")
        try:
            self.layers = [(f32[f"{n}.weight"].T.copy(), f32[f"{n}.bias"]) for n in names]
        except KeyError as exc:
            raise ValueError(f"{source}: not a voice head with hidden={hidden} (missing {exc})") from None
        if self.layers[0][0].shape[0] != self.mean.shape[0]:
            raise ValueError(f"{source}: the first layer takes {self.layers[0][0].shape[0]} features, "
                             f"the standardiser {self.mean.shape[0]}")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Logits ``(n, 7)`` of features ``(n, dim)``."""
        z = (np.asarray(x, np.float32) - self.mean) / self.std
        (w, b), rest = self.layers[0], self.layers[1:]
        z = z @ w + b
        for w, b in rest:  # the hidden layer's exact (erf) GELU, as torch's nn.GELU()
            from scipy.special import erf

            z = (0.5 * z * (1.0 + erf(z / np.float32(np.sqrt(2.0))))).astype(np.float32) @ w + b
        return z


def _speech_seconds(audio: np.ndarray, sample_rate: int) -> float:
    from mmva.analyze.asr import speech_regions

    if sample_rate != 16000:
        from mmva.encoders.dsp import resample

        audio = resample(audio, sample_rate, 16000)
    return float(sum(e - s for s, e in speech_regions(np.asarray(audio, np.float32))))


class FeatureVoiceHead(_SingleClip):
    """A voice head over a pooled utterance feature (format ``mmva-voice-head-2``; ``-3`` when the
    feature is Whisper's middle blocks, ``feature["blocks"]``).

    ``voice.json`` names the feature (``whisper``: mean + std of the Whisper encoder states,
    :mod:`mmva.encoders.whisper_states`), the heads (safetensors of :class:`mmva.train.voice_head.Head`)
    and their temperatures:

    - ``utterance``: one clip of an unknown speaker (features standardised inside the head);
    - ``speaker``: clips known to come from one speaker (a recording), each feature z-scored with
      that speaker's own statistics, shrunk towards the training speakers' average statistics with
      weight ``n / (n + speaker_prior_weight)``; used from ``min_speaker_utterances`` clips on.

    Same interface as :class:`VoiceHead`; audio without speech gives ``None``.
    """

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        from safetensors.numpy import load_file

        self.config = dict(config)
        self.source = str(folder)
        self.labels: tuple[str, ...] = tuple(self.config.get("labels", EMOTIONS))
        self.sample_rate = int(self.config.get("sample_rate", 16000))
        self.min_speaker_utterances = int(self.config.get("min_speaker_utterances", 5))
        self.prior_weight = float(self.config.get("speaker_prior_weight", 5))
        self.feature = dict(self.config.get("feature", {"kind": "whisper"}))
        self.heads: dict[str, tuple[NumpyHead, float]] = {}
        for name, spec in self.config["heads"].items():
            path = folder / spec["file"]
            if not path.exists():
                raise FileNotFoundError(f"{path}: voice head weights missing (named in {folder / CONFIG_FILE})")
            head = NumpyHead(load_file(str(path)), int(spec.get("hidden", 0)), str(path))
            self.heads[name] = (head, float(spec.get("temperature", 1.0)))
        if "utterance" not in self.heads:
            raise ValueError(f"{folder / CONFIG_FILE}: no 'utterance' head")
        pop = self.config.get("speaker_population", {})
        self._pop_mean = np.asarray(pop.get("mean", []), dtype=np.float64)
        self._pop_std = np.asarray(pop.get("std", []), dtype=np.float64)
        self._states: Any = None
        self._lock = threading.Lock()

    @property
    def speaker_head(self) -> Any:
        return self.heads.get("speaker")

    @property
    def encoder_name(self) -> str:
        return str(self.feature.get("kind", "whisper"))

    def _encoder(self) -> Any:
        if self._states is None:
            from mmva.encoders.whisper_states import shared_states

            self._states = shared_states(self.feature.get("path"), self.feature.get("blocks"))
        return self._states

    def _resample(self, y: np.ndarray, sample_rate: int) -> np.ndarray:
        if sample_rate == self.sample_rate:
            return y
        from mmva.encoders.dsp import resample

        return resample(y, sample_rate, self.sample_rate).astype(np.float32)

    def features_batch(self, audios: list[np.ndarray | None], sample_rate: int = 16000,
                       speech_seconds: Sequence[float] | None = None) -> list[np.ndarray | None]:
        """Pooled features per clip (None without speech). ``speech_seconds``: each clip's voice
        activity when the caller measured it with the same VAD (``mmva analyze`` does, on the whole
        window); else it is measured here, clip by clip."""
        out: list[np.ndarray | None] = [None] * len(audios)
        if speech_seconds is not None and len(speech_seconds) != len(audios):
            raise ValueError(f"speech_seconds has {len(speech_seconds)} items for {len(audios)} clips")
        loud = [i for i, a in enumerate(audios) if has_voice(a)]
        resampled = {i: self._resample(np.asarray(audios[i], np.float32).reshape(-1), sample_rate) for i in loud}
        # Loud is not speech (noise, music, a tone): Silero VAD, as the analyze pipeline uses, must
        # find at least 100 ms of speech, else the modality is absent rather than guessed.
        present = [i for i in loud if (speech_seconds[i] if speech_seconds is not None
                                       else _speech_seconds(resampled[i], self.sample_rate)) >= 0.1]
        if present:
            clips = [resampled[i] for i in present]
            parts = []
            for kind in self.encoder_name.split("+"):
                if kind == "whisper":
                    parts.append(self._encoder().pooled_batch(clips))
                elif kind == "acoustic":
                    from mmva.encoders.acoustic import acoustic_features

                    parts.append(np.stack([acoustic_features(c, self.sample_rate) for c in clips]))
                else:
                    raise ValueError(f"{self.source}: unknown voice feature {kind!r}")
            feats = np.concatenate(parts, axis=1)
            for j, i in enumerate(present):
                out[i] = feats[j]
        return out

    def warm_up(self) -> None:
        """Load the encoder and run both features once on a short tone (no VAD), off the critical path."""
        from mmva.encoders.acoustic import acoustic_features

        t = np.arange(self.sample_rate, dtype=np.float32) / self.sample_rate
        tone = (0.1 * np.sin(2 * np.pi * 160 * t)).astype(np.float32)
        if "whisper" in self.encoder_name:
            self._encoder().pooled_batch([tone])
        acoustic_features(tone, self.sample_rate)
        from mmva.analyze.asr import speech_regions

        speech_regions(tone)

    def features(self, audio: np.ndarray | None, sample_rate: int = 16000) -> Any:
        """The pooled feature of one clip as a torch tensor (for training callers), None without speech."""
        f = self.features_batch([audio], sample_rate)[0]
        if f is None:
            return None
        import torch

        return torch.from_numpy(f)

    def _speaker_z(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        w = n / (n + self.prior_weight)
        mean = w * x.mean(0) + (1 - w) * self._pop_mean
        var = w * x.var(0) + (1 - w) * self._pop_std ** 2
        std = np.sqrt(var)
        return ((x - mean) / np.maximum(std, 1e-3 * (np.abs(mean) + 1e-3))).astype(np.float32)

    def predict_proba_batch(self, audios: list[np.ndarray | None], sample_rate: int = 16000, *,
                            same_speaker: bool = False,
                            speech_seconds: Sequence[float] | None = None) -> list[np.ndarray | None]:
        return self.proba_from_features(self.features_batch(audios, sample_rate, speech_seconds),
                                        same_speaker=same_speaker)

    def proba_from_features(self, feats: list[np.ndarray | None], *,
                            same_speaker: bool = False) -> list[np.ndarray | None]:
        """:meth:`predict_proba_batch` on features from :meth:`features_batch` (None: no speech), so
        one extraction serves several groupings of the clips (benchmarks/bench_voice_speakers.py)."""
        present = [i for i, f in enumerate(feats) if f is not None]
        out: list[np.ndarray | None] = [None] * len(feats)
        if not present:
            return out
        x = np.stack([feats[i] for i in present]).astype(np.float64)
        name = "utterance"
        if (same_speaker and "speaker" in self.heads and len(present) >= self.min_speaker_utterances
                and self._pop_mean.size == x.shape[1]):
            name, x = "speaker", self._speaker_z(x)
        head, temperature = self.heads[name]
        with self._lock:
            logits = head(x.astype(np.float32))
        probs = softmax(logits / np.float32(temperature)).astype(np.float32)
        for j, i in enumerate(present):
            out[i] = probs[j]
        return out



def load_voice_head(path: str | None = None) -> Any:
    """Load a voice head (cached per folder): a folder with ``voice.json`` and the checkpoints it
    names, or None for the head shipped with mmva (loads offline from the package).

    >>> head = load_voice_head()                     # doctest: +SKIP
    >>> head.encoder_name                            # doctest: +SKIP
    'prosody'
    """
    folder = Path(path) if path else default_head_dir()
    if folder.is_file():
        folder = folder.parent
    cfg_path = folder / CONFIG_FILE
    if not cfg_path.exists():
        hint = ("the voice head that ships with mmva is missing: reinstall mmva, or train one with "
                "`mmva voice-train` (docs/voice.md)") if not path else "not a voice head folder (no voice.json)"
        raise FileNotFoundError(f"{cfg_path}: {hint}")
    key = str(cfg_path.resolve())
    with _CACHE_LOCK:
        if key not in _CACHE:
            config = json.loads(cfg_path.read_text())
            if config.get("format") in ("mmva-voice-head-2", "mmva-voice-head-3"):  # 3: Whisper blocks
                _CACHE[key] = FeatureVoiceHead(folder, config)
                return _CACHE[key]
            heads = config.get("heads", {})
            if "utterance" not in heads:
                raise ValueError(f"{cfg_path}: no 'utterance' head")
            speaker = _load_head(folder, heads["speaker"]) if "speaker" in heads else None
            _CACHE[key] = VoiceHead(_load_head(folder, heads["utterance"]), speaker, config, source=str(folder))
        return _CACHE[key]
