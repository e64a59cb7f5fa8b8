"""Prosody encoder: pitch, loudness, voicing/rate, voice-quality and spectral statistics (librosa).

An eGeMAPS-style set of utterance-level functionals computed with librosa (a well-kept, permissively
licensed library), so it needs no weights and no native research-licensed code. ``opensmile``'s
eGeMAPSv02 is available as an optional extra through :func:`egemaps_features`.

Frame-level descriptors (10-20 ms hop): F0 from probabilistic YIN (semitones), voicing probability,
RMS loudness (dB), spectral centroid/bandwidth/roll-off/flatness/slope, alpha ratio, Hammarberg index,
zero-crossing rate, MFCC 1-12. Functionals: means, spreads, percentiles, slopes, rates.

Normalisation (``normalize``): ``"utterance"`` (default) rescales every waveform to the same active
loudness before analysis, so recording level and microphone gain carry no information; ``"none"``
keeps absolute level. Per-speaker normalisation needs several utterances of one speaker and lives in
:mod:`mmva.model.voice` (``SpeakerNormalizer``).

>>> import numpy as np
>>> prosody_features(np.zeros(16000, dtype=np.float32)) is None  # silence: no speech, masked
True
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch

from mmva.encoders.base import Encoder, register_encoder
from mmva.io.clip import DecodedClip

log = logging.getLogger("mmva")

SAMPLE_RATE = 16000
N_FFT = 512  # 32 ms at 16 kHz
HOP = 160  # 10 ms
PITCH_FRAME = 1024  # pYIN needs a frame of at least two periods of fmin
PITCH_HOP = 320  # 20 ms: pYIN's Viterbi is the slow part, a coarser grid keeps it ~60 ms per clip
FMIN, FMAX = 60.0, 600.0
MIN_PEAK_DB = -55.0  # peak frame RMS below this (dBFS) is silence, whatever the pitch tracker says
MIN_VOICED_FRAMES = 5  # 100 ms of voicing at PITCH_HOP: less than that is not speech

_STAT5 = ("mean", "std", "p10", "p50", "p90")
# Raw feature vectors by hash of the samples: the normalisation variants of one run (raw, global,
# per speaker) differ only after the features, so a waveform is analysed once per process.
_MEMO: "OrderedDict[tuple[str, int, str], np.ndarray | None]" = OrderedDict()
_MEMO_SIZE = 20000
_MEMO_LOCK = threading.Lock()


def _names() -> tuple[str, ...]:
    names: list[str] = []
    names += [f"f0_{s}" for s in (*_STAT5, "range", "slope", "delta_abs", "rise_frac")]
    names += [f"loud_{s}" for s in (*_STAT5, "range", "slope", "delta_abs", "voiced_minus_unvoiced")]
    names += ["voiced_frac", "voicing_prob", "voiced_seg_rate", "voiced_seg_len", "pause_len",
              "onset_rate", "log_duration", "jitter", "shimmer_db"]
    for feat in ("centroid", "bandwidth", "rolloff", "flatness", "slope", "alpha_ratio", "hammarberg", "zcr"):
        names += [f"{feat}_mean", f"{feat}_std"]
    names += [f"mfcc{i}_mean" for i in range(1, 13)] + [f"mfcc{i}_std" for i in range(1, 13)]
    names += [f"dmfcc{i}_std" for i in range(1, 13)]
    return tuple(names)


FEATURE_NAMES: tuple[str, ...] = _names()
FEATURE_DIM = len(FEATURE_NAMES)


def _stats(x: np.ndarray) -> list[float]:
    if x.size == 0:
        return [0.0] * 5
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return [float(x.mean()), float(x.std()), float(p10), float(p50), float(p90)]


def _slope(x: np.ndarray, t: np.ndarray) -> float:
    if x.size < 3 or np.ptp(t) == 0:
        return 0.0
    return float(np.polyfit(t, x, 1)[0])


def _segments(flags: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) index pairs of runs of True."""
    padded = np.concatenate([[False], flags.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(np.int8)))
    return list(zip(edges[::2], edges[1::2]))


def _band_db(power: np.ndarray, freqs: np.ndarray, lo: float, hi: float, reduce: str = "sum") -> np.ndarray:
    band = power[(freqs >= lo) & (freqs < hi)]
    val = band.sum(0) if reduce == "sum" else band.max(0)
    return 10 * np.log10(val + 1e-10)


def _spectral(y: np.ndarray, sr: int, active: np.ndarray) -> list[float]:
    """Spectral and MFCC functionals over the active (speech) frames."""
    import librosa

    stft = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP)) ** 2  # (freq, t) power
    freqs = librosa.fft_frequencies(sr=sr, n_fft=N_FFT)
    n = stft.shape[1]
    act = np.resize(active, n) if active.size else np.ones(n, bool)
    if act.sum() < 3:
        act = np.ones(n, bool)
    S = stft[:, act]
    mag = np.sqrt(S)
    centroid = librosa.feature.spectral_centroid(S=mag, sr=sr, n_fft=N_FFT)[0]
    bandwidth = librosa.feature.spectral_bandwidth(S=mag, sr=sr, n_fft=N_FFT)[0]
    rolloff = librosa.feature.spectral_rolloff(S=mag, sr=sr, n_fft=N_FFT, roll_percent=0.85)[0]
    flatness = librosa.feature.spectral_flatness(S=mag)[0]
    # Spectral slope (dB per kHz, 0-5 kHz), alpha ratio and Hammarberg index as eGeMAPS defines them.
    sel = (freqs > 0) & (freqs <= 5000)
    logspec = 10 * np.log10(S[sel] + 1e-10)
    fk = freqs[sel] / 1000.0
    fk_c = fk - fk.mean()
    slope = (fk_c[:, None] * (logspec - logspec.mean(0))).sum(0) / (fk_c ** 2).sum()
    alpha = _band_db(S, freqs, 50, 1000) - _band_db(S, freqs, 1000, 5000)
    hammarberg = _band_db(S, freqs, 0, 2000, "max") - _band_db(S, freqs, 2000, 5000, "max")
    zcr_all = librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP)[0][:n]
    zcr = zcr_all[act[: zcr_all.size]]
    mel = librosa.feature.melspectrogram(S=S, sr=sr, n_mels=40)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=13)[1:]  # drop c0 (level)
    dmfcc = librosa.feature.delta(mfcc, width=min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2))) \
        if mfcc.shape[1] >= 3 else np.zeros_like(mfcc)
    out: list[float] = []
    # Frequencies in octaves around 1 kHz and levels in tens of dB keep every value near unit scale.
    for x in (np.log2(centroid / 1000 + 1e-3), np.log2(bandwidth / 1000 + 1e-3),
              np.log2(rolloff / 1000 + 1e-3), np.log10(flatness + 1e-6), slope, alpha / 10,
              hammarberg / 10, zcr * 10):
        out += [float(np.mean(x)), float(np.std(x))]
    out += list(mfcc.mean(1) / 20) + list(mfcc.std(1) / 10) + list(dmfcc.std(1) / 5)
    return out


def prosody_features(audio: np.ndarray, sample_rate: int = SAMPLE_RATE, *,
                     normalize: str = "utterance") -> np.ndarray | None:
    """Utterance-level prosody vector ``(FEATURE_DIM,)`` float32, or None when there is no speech.

    "No speech" = silence, a very low level (peak frame below -55 dBFS) or fewer than 100 ms of
    voiced frames (noise, music without a voice). Results are memoised per waveform content.

    >>> import numpy as np
    >>> t = np.arange(16000) / 16000
    >>> v = prosody_features((0.3 * np.sin(2 * np.pi * 150 * t)).astype(np.float32))
    >>> v.shape == (FEATURE_DIM,)
    True
    """
    y = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(-1))
    key = (hashlib.sha1(y.tobytes()).hexdigest(), int(sample_rate), normalize)
    with _MEMO_LOCK:
        if key in _MEMO:
            _MEMO.move_to_end(key)
            hit = _MEMO[key]
            return None if hit is None else hit.copy()
    out = _compute(y, sample_rate, normalize)
    with _MEMO_LOCK:
        _MEMO[key] = out
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)
    return None if out is None else out.copy()


def remember(audio: np.ndarray, sample_rate: int, normalize: str, features: np.ndarray | None) -> None:
    """Seed the memo with features known for this waveform (e.g. read back from the feature cache),
    so re-normalised variants of a corpus do not re-analyse its audio."""
    y = np.ascontiguousarray(np.asarray(audio, dtype=np.float32).reshape(-1))
    key = (hashlib.sha1(y.tobytes()).hexdigest(), int(sample_rate), normalize)
    with _MEMO_LOCK:
        _MEMO[key] = None if features is None else np.asarray(features, dtype=np.float32).copy()
        while len(_MEMO) > _MEMO_SIZE:
            _MEMO.popitem(last=False)


def _compute(audio: np.ndarray, sample_rate: int, normalize: str) -> np.ndarray | None:
    import librosa

    if normalize not in ("utterance", "none"):
        raise ValueError(f"normalize must be 'utterance' or 'none', not {normalize!r}")
    y = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sample_rate != SAMPLE_RATE:
        y = librosa.resample(y, orig_sr=sample_rate, target_sr=SAMPLE_RATE)
    sr = SAMPLE_RATE
    if y.size < PITCH_FRAME or not np.isfinite(y).all():
        return None
    rms = librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP)[0]
    rms_db = 20 * np.log10(rms + 1e-10)
    if rms_db.max() < MIN_PEAK_DB:
        return None
    active = rms_db > rms_db.max() - 40  # frames within 40 dB of the loudest: speech, not room noise
    if normalize == "utterance":
        # One gain for the whole utterance: active-frame RMS -> -20 dBFS. Removes level/mic gain only.
        gain = 0.1 / (np.sqrt(np.mean(rms[active] ** 2)) + 1e-10)
        y = np.clip(y * gain, -1.0, 1.0)
        rms_db = rms_db + 20 * np.log10(gain)
    # pYIN's HMM defaults assume a 10 ms hop: at 20 ms the per-frame voicing switch probability and
    # the pitch transition rate are doubled, else it labels whole utterances unvoiced.
    f0, voiced, vprob = librosa.pyin(y, fmin=FMIN, fmax=FMAX, sr=sr, frame_length=PITCH_FRAME,
                                     hop_length=PITCH_HOP, resolution=0.25, n_thresholds=50,
                                     switch_prob=0.02, max_transition_rate=72.0)
    # pYIN frames are 2x the loudness hop: compare on the loudness grid, 2 frames per pitch frame.
    loud_p = rms_db[::PITCH_HOP // HOP][: f0.size]
    voiced = voiced[: loud_p.size] & (loud_p > rms_db.max() - 40)
    if voiced.sum() < MIN_VOICED_FRAMES:
        return None
    dt = PITCH_HOP / sr
    t = np.arange(voiced.size) * dt
    st = 12 * np.log2(f0[: voiced.size][voiced] / 100.0) / 12  # octaves above 100 Hz
    tv = t[voiced]
    d_st = np.diff(st)
    feats: list[float] = _stats(st)
    feats += [float(np.ptp(np.percentile(st, [10, 90]))), _slope(st, tv),
              float(np.abs(d_st).mean()) if d_st.size else 0.0,
              float((d_st > 0).mean()) if d_st.size else 0.0]
    lv = rms_db[active] / 20  # loudness in units of 20 dB
    tl = np.arange(rms_db.size)[active] * HOP / sr
    unv = loud_p[~voiced & (loud_p > rms_db.max() - 40)]  # unvoiced speech, not digital silence
    feats += _stats(lv)
    feats += [float(np.ptp(np.percentile(lv, [10, 90]))), _slope(lv, tl),
              float(np.abs(np.diff(lv)).mean()) if lv.size > 1 else 0.0,
              float((loud_p[voiced].mean() - (unv.mean() if unv.size else rms_db.max() - 40)) / 20)]
    duration = y.size / sr
    segs = _segments(voiced)
    gaps = [s2 - e1 for (_, e1), (s2, _) in zip(segs, segs[1:])]
    onsets = librosa.onset.onset_detect(y=y, sr=sr, hop_length=HOP, units="time")
    # Frame-level jitter (relative period change between voiced neighbours) and shimmer (dB change):
    # proxies for the cycle-level measures, which need glottal-pulse marking that librosa lacks.
    period = 1.0 / f0[: voiced.size]
    both = voiced[1:] & voiced[:-1]
    jitter = float(np.mean(np.abs(np.diff(period))[both] / period[1:][both])) if both.any() else 0.0
    shimmer = float(np.mean(np.abs(np.diff(loud_p))[both]) / 10) if both.any() else 0.0
    feats += [float(voiced.mean()), float(np.nanmean(vprob[: voiced.size][voiced])),
              len(segs) / duration, float(np.mean([e - s for s, e in segs]) * dt),
              float(np.mean(gaps) * dt) if gaps else 0.0, len(onsets) / duration,
              float(np.log(duration)), jitter * 10, shimmer]
    feats += _spectral(y, sr, active)
    out = np.asarray(feats, dtype=np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def egemaps_features(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """openSMILE eGeMAPSv02 functionals (88,) — optional: ``pip install mmva[opensmile]``.

    openSMILE's native library is under a research/non-commercial license, hence not a dependency.
    """
    try:
        import opensmile
    except ImportError as exc:
        raise ImportError("egemaps_features needs the optional opensmile package: "
                          "pip install 'mmva[opensmile]'") from exc
    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                            feature_level=opensmile.FeatureLevel.Functionals)
    return smile.process_signal(np.asarray(audio, dtype=np.float32), sample_rate).to_numpy()[0].astype(np.float32)


REFERENCE_FORMAT = "mmva-prosody-reference"


def speaker_reference(features: dict[str, np.ndarray], files: dict[str, str] | None = None,
                      normalize: str = "utterance", population: list[str] | None = None) -> dict[str, Any]:
    """A per-speaker normalisation table: mean and std of each speaker's prosody vectors.

    ``features``: speaker -> ``(n, FEATURE_DIM)``; ``files``: media path -> speaker (how the encoder
    finds the speaker of a clip; empty = every clip takes the population statistics, i.e. plain
    global standardisation). ``population``: the speakers whose stats are averaged into the
    fallback used for unknown clips (default all). Uses no labels, so a held-out speaker's own
    recordings may inform its statistics (standard speaker normalisation).

    >>> ref = speaker_reference({"a": np.ones((3, FEATURE_DIM))}, {"/x.wav": "a"})
    >>> ref["speakers"]["a"]["n"]
    3
    """
    speakers = {}
    for spk, x in sorted(features.items()):
        x = np.asarray(x, dtype=np.float64).reshape(-1, FEATURE_DIM)
        speakers[spk] = {"n": int(len(x)), "mean": x.mean(0).round(6).tolist(), "std": x.std(0).round(6).tolist()}
    pop = [speakers[s] for s in (population if population is not None else speakers) if s in speakers]
    # Population stats: the average speaker (each speaker weighs the same), used for unknown clips.
    pop_stats = {"mean": np.mean([p["mean"] for p in pop], 0).round(6).tolist(),
                 "std": np.mean([p["std"] for p in pop], 0).round(6).tolist()} if pop else None
    files = dict(sorted((files or {}).items()))
    return {"format": REFERENCE_FORMAT, "version": 1, "features": "librosa-prosody-v2", "dim": FEATURE_DIM,
            "normalize": normalize, "speakers": speakers if files else {}, "files": files,
            "population": pop_stats}


def zscore(x: np.ndarray, mean: np.ndarray, std: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """``(x - mean) / std`` with a floor on std (a constant feature must not explode)."""
    return ((np.asarray(x) - mean) / np.maximum(std, floor)).astype(np.float32)


@register_encoder
class ProsodyEncoder(Encoder):
    """Prosody functionals as an audio encoder (no weights; output = the feature vector).

    ``prepare`` returns None (masked) for audio with no speech: no track, silence, no voiced frames.
    ``reference``: a JSON table from :func:`speaker_reference`; each clip (found by its media path)
    is then z-scored with its speaker's statistics (per-speaker normalisation in training).

    >>> ProsodyEncoder().output_dim == FEATURE_DIM
    True
    """

    name = "prosody"
    modality = "audio"

    def __init__(self, sample_rate: int = SAMPLE_RATE, normalize: str = "utterance",
                 reference: str | None = None) -> None:
        pre: dict[str, Any] = {"sample_rate": sample_rate, "normalize": normalize,
                               "features": "librosa-prosody-v2", "dim": FEATURE_DIM}
        self._files: dict[str, str] = {}
        self._stats: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._population: tuple[np.ndarray, np.ndarray] | None = None
        if reference:
            import hashlib
            import json

            from mmva.io import storage

            raw = storage.read_bytes(reference)
            table = json.loads(raw)
            if table.get("format") != REFERENCE_FORMAT or table.get("dim") != FEATURE_DIM:
                raise ValueError(f"{reference}: not a prosody speaker reference for {FEATURE_DIM} features")
            if table.get("normalize") != normalize:
                raise ValueError(f"{reference}: built with normalize={table.get('normalize')!r}, "
                                 f"encoder uses {normalize!r}")
            self._files = table["files"]
            self._stats = {s: (np.asarray(v["mean"]), np.asarray(v["std"])) for s, v in table["speakers"].items()}
            pop = table.get("population")
            self._population = (np.asarray(pop["mean"]), np.asarray(pop["std"])) if pop else None
            # The table's content (not its path) identifies the features in the cache.
            pre["speaker_reference"] = hashlib.sha256(raw).hexdigest()[:16]
        super().__init__(FEATURE_DIM, pre)

    @classmethod
    def options_from_data(cls, data: Any) -> dict[str, Any]:
        return {"sample_rate": data.sample_rate}

    def prepare(self, clip: DecodedClip) -> torch.Tensor | None:
        if not clip.has_audio:
            return None
        feats = prosody_features(clip.audio, clip.sample_rate or self.preprocess["sample_rate"],
                                 normalize=self.preprocess["normalize"])
        if feats is None:
            return None
        if self._stats or self._population is not None:
            speaker = self._files.get(str(clip.source))
            if speaker in self._stats:
                feats = zscore(feats, *self._stats[speaker])
            elif self._population is not None:
                feats = zscore(feats, *self._population)
            else:
                raise KeyError(f"{clip.source}: not in the speaker reference table; rebuild it for this corpus")
        return torch.from_numpy(feats)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.float()  # (b, FEATURE_DIM): the features are the representation
