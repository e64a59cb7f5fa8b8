"""Fast utterance-level acoustic statistics: spectral envelope, pitch and energy.

The companion of the Whisper encoder states in the voice head: Whisper is trained to ignore how
something is said, so its states under-represent pitch level and range, loudness dynamics and voice
quality, which carry arousal across languages. Measured: adding these to the Whisper feature raises
the leave-one-corpus-out UAR by several points (docs/voice.md).

The features are librosa's (MFCC, YIN, RMS, spectral centroid/flatness/rolloff/contrast, zero
crossings), computed by :mod:`mmva.encoders.dsp`, a numpy-only copy of those librosa functions that
gives the same numbers without librosa's ~2.5 s of first-use imports (scipy.signal, numba); the
shipped voice head was trained on librosa's own output.

Cost: ~18 ms for a 3 s utterance on one core of the 2-core dev box (YIN instead of pYIN, which
costs ~10x more).

The waveform is first scaled to a fixed active loudness, so microphone gain carries no information.

>>> import numpy as np
>>> acoustic_features(np.zeros(16000, np.float32)).shape == (FEATURE_DIM,)
True
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from mmva.encoders import dsp

SAMPLE_RATE = 16000
N_FFT, HOP = 512, 160
N_MFCC = 40
FMIN, FMAX = 65.0, 500.0


def _names() -> tuple[str, ...]:
    names = [f"mfcc{i}_mean" for i in range(N_MFCC)] + [f"mfcc{i}_std" for i in range(N_MFCC)]
    names += [f"dmfcc{i}_std" for i in range(13)]
    names += [f"f0_{s}" for s in ("mean", "std", "p10", "p50", "p90", "range", "slope", "delta_abs")]
    names += ["voiced_frac", "loud_std", "loud_range", "loud_delta_abs", "loud_slope", "active_frac",
              "centroid_mean", "centroid_std", "flatness_mean", "rolloff_mean", "zcr_mean",
              "contrast_mean", "log_duration"]
    return tuple(names)


FEATURE_NAMES = _names()
FEATURE_DIM = len(FEATURE_NAMES)


def _slope(v: np.ndarray) -> float:
    if v.size < 3:
        return 0.0
    t = np.linspace(0.0, 1.0, v.size)
    return float(np.polyfit(t, v, 1)[0])


def acoustic_features(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``(FEATURE_DIM,)`` float32 statistics of one utterance (zeros-safe: silence gives finite values)."""
    y = np.asarray(audio, dtype=np.float32).reshape(-1)
    if not np.isfinite(y).all():
        raise ValueError("audio is not finite everywhere")
    if sample_rate != SAMPLE_RATE:
        y = dsp.resample(y, sample_rate, SAMPLE_RATE)
    y, rms, active = fixed_loudness(y, dsp.rms)
    S = np.abs(dsp.stft(y, N_FFT, HOP)) ** 2
    mfcc = dsp.mfcc(dsp.power_to_db(dsp.mel_filters(SAMPLE_RATE, N_FFT, 64) @ S), N_MFCC)
    dmfcc = dsp.delta(mfcc[:13], width=min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2))) \
        if mfcc.shape[1] >= 3 else np.zeros((13, 1))
    f0 = dsp.yin(y, FMIN, FMAX, SAMPLE_RATE, frame_length=1024, hop=HOP)
    mag = np.sqrt(S)
    return statistics(y, rms, active, mfcc, dmfcc, f0, dsp.spectral_centroid(mag, SAMPLE_RATE),
                      dsp.spectral_flatness(mag), dsp.spectral_rolloff(mag, SAMPLE_RATE),
                      dsp.zero_crossing_rate(y, N_FFT, HOP), dsp.spectral_contrast(mag, SAMPLE_RATE, n_bands=4))


def fixed_loudness(y: np.ndarray, rms_of: Callable[[np.ndarray, int, int], np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``y`` padded to one FFT window and scaled so its active frames (RMS over a tenth of the
    loudest) have RMS 0.1, with its frame RMS (``rms_of(y, N_FFT, HOP)``, scaled too) and the active
    mask; silence is left as is."""
    if y.size < N_FFT:
        y = np.pad(y, (0, N_FFT - y.size))
    rms = rms_of(y, N_FFT, HOP)
    active = rms > max(rms.max() * 0.1, 1e-5)
    level = float(np.sqrt(np.mean(rms[active] ** 2))) if active.any() else 0.0
    if level > 0:
        y = y * (0.1 / level)
        rms = rms * (0.1 / level)
    return y, rms, active


def statistics(y: np.ndarray, rms: np.ndarray, active: np.ndarray, mfcc: np.ndarray, dmfcc: np.ndarray,
               f0: np.ndarray, centroid: np.ndarray, flat: np.ndarray, rolloff: np.ndarray, zcr: np.ndarray,
               contrast: np.ndarray) -> np.ndarray:
    """The :data:`FEATURE_NAMES` statistics of an utterance's frame-level features (float32, finite)."""
    n = min(len(f0), len(rms))
    voiced = active[:n] & (f0[:n] > FMIN * 1.05) & (f0[:n] < FMAX * 0.95)
    semis = 12 * np.log2(f0[:n][voiced] / 100.0) if voiced.any() else np.zeros(1)
    p10, p50, p90 = np.percentile(semis, [10, 50, 90])
    loud = 20 * np.log10(rms + 1e-5)
    loud_act = loud[active] if active.any() else loud
    feats = [mfcc.mean(1), mfcc.std(1), dmfcc.std(1),
             [semis.mean(), semis.std(), p10, p50, p90, p90 - p10, _slope(semis),
              float(np.abs(np.diff(semis)).mean()) if semis.size > 1 else 0.0],
             [voiced.mean() if n else 0.0, loud_act.std(), np.percentile(loud_act, 95) - np.percentile(loud_act, 5),
              float(np.abs(np.diff(loud_act)).mean()) if loud_act.size > 1 else 0.0, _slope(loud_act),
              active.mean(), np.log1p(centroid.mean()), centroid.std() / (centroid.mean() + 1e-6),
              np.log(flat.mean() + 1e-8), np.log1p(rolloff.mean()), zcr.mean(), contrast.mean(),
              np.log(y.size / SAMPLE_RATE)]]
    out = np.concatenate([np.asarray(f, dtype=np.float64).reshape(-1) for f in feats]).astype(np.float32)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)
