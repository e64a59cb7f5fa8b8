"""The few librosa 0.11 features the analyze path needs, in plain numpy (issue 15: cold start).

Why hand-written: :func:`mmva.encoders.acoustic.acoustic_features` and
:func:`mmva.encoders.speaker.mel_frames` used ``librosa.feature`` / ``librosa.yin``, whose first use
imports scipy.signal (about 1.1 s of scipy's import-time docstring machinery), numba and its JIT
set-up: measured on the 2-core dev box, the first ``acoustic_features`` call in a fresh process
took 2.6-4.2 s (``python -X importtime``: scipy.signal 1.0-1.9 s cumulative, numba 0.3 s) for
~20 ms of arithmetic; with this module it takes 0.05-0.1 s (numpy is already imported by then;
this module adds ~4 ms). The functions below reproduce librosa's exact steps and dtypes (float32
where librosa is float32) so that the shipped voice head, trained on librosa's numbers, sees the
same features: tests/test_dsp.py compares each one with librosa on real speech, noise, silence and
short clips. All are bit-identical except the MFCCs (a float64 DCT matrix instead of scipy's float32
DCT) and their deltas, and YIN (a shorter FFT for the autocorrelation than librosa's): relative differences ~1e-6,
1e-4 at worst in a frame. Only what the two callers use is here. Warm, ``acoustic_features`` of a
3 s clip takes ~18 ms against librosa's ~20 ms (numpy's FFT is slower than scipy's, but YIN's
autocorrelation here uses a shorter one).

Conventions copied from librosa (0.11): frames are centred (``n_fft // 2`` zero padding each side,
``edge`` padding for the zero-crossing rate), the window is the periodic Hann window (scipy's
``get_window('hann', n, fftbins=True)``), mel filters are Slaney-scale with Slaney area
normalisation, ``power_to_db`` uses ``ref=1, amin=1e-10, top_db=80``, MFCCs are the orthonormal
DCT-II (here a matrix product), ``delta`` is a Savitzky-Golay first derivative (polyorder 1) with
``mode='interp'`` edges, and pitch is YIN (cumulative-mean-normalised difference, absolute
threshold 0.1, parabolic refinement).

Resampling (not 16 kHz input, off the common path: analyze decodes at 16 kHz) calls ``soxr`` as
librosa's default ``res_type='soxr_hq'`` does (soxr imports in ~3 ms; it is librosa's own
dependency), then fixes the length to ``ceil(n * ratio)`` as librosa does.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


def frame(x: np.ndarray, length: int, hop: int) -> np.ndarray:
    """``(length, n_frames)`` strided view of 1-D ``x`` (librosa.util.frame, same memory layout)."""
    return np.lib.stride_tricks.sliding_window_view(x, length)[::hop].T


def _centre(y: np.ndarray, n: int, mode: str = "constant") -> np.ndarray:
    return np.pad(y, (n // 2, n // 2), mode=mode)


@lru_cache(maxsize=8)
def hann(n: int) -> np.ndarray:
    """Periodic Hann window, computed as scipy's general_cosine does (float64, read-only)."""
    w = 0.5 + 0.5 * np.cos(np.linspace(-np.pi, np.pi, n + 1)[:-1])
    w.flags.writeable = False
    return w


def stft(y: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """``(1 + n_fft // 2, frames)`` complex64 centred STFT (librosa.stft defaults, Fortran order)."""
    frames = frame(_centre(y, n_fft), n_fft, hop)
    out = np.empty((1 + n_fft // 2, frames.shape[1]), np.complex64, order="F")
    out[:] = np.fft.rfft(hann(n_fft)[:, None] * frames, axis=0)  # float64 transform, as librosa
    return out


def rms(y: np.ndarray, frame_length: int, hop: int) -> np.ndarray:
    """``(frames,)`` float32 frame RMS of ``y`` (librosa.feature.rms(y=...)[0])."""
    x = frame(_centre(y, frame_length), frame_length, hop)
    return np.sqrt(np.mean(np.square(x, dtype=np.float32), axis=-2))


def zero_crossing_rate(y: np.ndarray, frame_length: int, hop: int) -> np.ndarray:
    """``(frames,)`` fraction of sign changes per frame (librosa: edge padding, |x| <= 1e-10 is 0)."""
    x = frame(_centre(y, frame_length, "edge"), frame_length, hop)
    sign = np.signbit(np.where(np.abs(x) <= x.dtype.type(1e-10), 0, x))
    crossings = np.zeros(x.shape, bool)
    crossings[1:] = sign[1:] != sign[:-1]
    return np.mean(crossings, axis=-2)


_F_SP, _LOGSTEP = 200.0 / 3, np.log(6.4) / 27.0  # Slaney mel: linear below 1 kHz, logarithmic above
_MIN_LOG_MEL = 1000.0 / _F_SP


def _hz_to_mel(f: float) -> float:
    return _MIN_LOG_MEL + np.log(f / 1000.0) / _LOGSTEP if f >= 1000.0 else f / _F_SP


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    return np.where(m >= _MIN_LOG_MEL, 1000.0 * np.exp(_LOGSTEP * (m - _MIN_LOG_MEL)), _F_SP * m)


@lru_cache(maxsize=8)
def mel_filters(sr: int, n_fft: int, n_mels: int) -> np.ndarray:
    """``(n_mels, 1 + n_fft // 2)`` float32 Slaney mel filterbank, Slaney-normalised (librosa.filters.mel)."""
    fft_f = np.fft.rfftfreq(n_fft, 1.0 / sr)
    mel_f = _mel_to_hz(np.linspace(_hz_to_mel(0.0), _hz_to_mel(sr / 2), n_mels + 2))
    fdiff, ramps = np.diff(mel_f), np.subtract.outer(mel_f, fft_f)
    w = np.maximum(0, np.minimum(-ramps[:-2] / fdiff[:-1, None], ramps[2:] / fdiff[1:, None])).astype(np.float32)
    w *= 2.0 / (mel_f[2:] - mel_f[:-2])[:, None]
    w.flags.writeable = False
    return w


def melspectrogram(y: np.ndarray, sr: int, n_fft: int, hop: int, n_mels: int) -> np.ndarray:
    """``(n_mels, frames)`` float32 power mel spectrogram (librosa.feature.melspectrogram(y=...))."""
    S = np.abs(stft(y, n_fft, hop)) ** 2
    return mel_filters(sr, S.shape[0] * 2 - 2, n_mels) @ S


def power_to_db(S: np.ndarray, amin: float = 1e-10, top_db: float | None = 80.0) -> np.ndarray:
    """``10 log10(max(S, amin))`` (ref 1), floored at ``max - top_db`` (librosa.power_to_db)."""
    db = 10.0 * np.log10(np.maximum(amin, S))
    return np.maximum(db, db.max() - top_db) if top_db is not None else db


@lru_cache(maxsize=8)
def _dct_matrix(n_out: int, n_in: int) -> np.ndarray:
    k, n = np.arange(n_out)[:, None], np.arange(n_in)[None, :]
    d = np.sqrt(2.0 / n_in) * np.cos(np.pi * k * (2 * n + 1) / (2 * n_in))
    d[0] /= np.sqrt(2.0)
    return d


def mfcc(S_db: np.ndarray, n_mfcc: int) -> np.ndarray:
    """``(n_mfcc, frames)`` orthonormal DCT-II over the mel axis (librosa.feature.mfcc(S=...))."""
    return (_dct_matrix(n_mfcc, S_db.shape[0]) @ S_db).astype(S_db.dtype)


def delta(data: np.ndarray, width: int = 9) -> np.ndarray:
    """First derivative along the last axis (librosa.feature.delta: Savitzky-Golay, polyorder 1,
    ``mode='interp'``: the first and last ``width // 2`` points take the edge window's fit)."""
    n = data.shape[-1]
    if width < 3 or width % 2 != 1 or width > n:
        raise ValueError(f"width={width} must be odd, >= 3 and <= {n}")
    # Slope of the least-squares line through `width` equally spaced points, as weights.
    c = np.linalg.pinv(np.vander(np.arange(width, dtype=np.float64), 2, increasing=True))[1]
    slopes = np.lib.stride_tricks.sliding_window_view(data, width, axis=-1) @ c
    starts = np.clip(np.arange(n) - width // 2, 0, n - width)
    return slopes[..., starts].astype(data.dtype)


def yin(y: np.ndarray, fmin: float, fmax: float, sr: int, frame_length: int, hop: int,
        trough_threshold: float = 0.1) -> np.ndarray:
    """``(frames,)`` float64 F0 in Hz by YIN (librosa.yin, centred with zero padding)."""
    frames = frame(_centre(y, frame_length), frame_length, hop)
    lo, hi = int(np.floor(sr / fmax)), min(int(np.ceil(sr / fmin)), frame_length - 1)
    # Autocorrelation by FFT (librosa.autocorrelate). librosa pads to the full length 2 * frame_length - 1
    # (2048 here); lags <= hi only need frame_length + hi (1280 here): 2.8x faster with numpy's FFT,
    # the same values up to float32 rounding (as numpy's and scipy's FFTs differ anyway).
    n = _fast_len(frame_length + hi)
    spec = np.fft.rfft(frames, n=n, axis=-2)
    acf = np.fft.irfft(spec.real ** 2 + spec.imag ** 2, n=n, axis=-2)[:hi + 1]
    # Difference function d(k) = 2 (acf(0) - acf(k)) - sum_{m<k} y(m)^2, then its cumulative mean normalisation.
    energy = np.cumsum(np.square(frames), axis=-2)
    d = np.zeros((hi + 1,) + frames.shape[1:], energy.dtype)
    d[1:] = 2 * (acf[0:1] - acf[1:hi + 1]) - energy[:hi]
    mean = np.cumsum(d[1:], axis=-2) / np.arange(1, hi + 1)[:, None]
    cmnd = d[lo:] / (mean[lo - 1:hi] + np.finfo(mean.dtype).tiny)
    # Parabolic shift of each interior point (0 where the optimum would leave [k-1, k+1]).
    a = cmnd[2:] + cmnd[:-2] - 2 * cmnd[1:-1]
    b = (cmnd[2:] - cmnd[:-2]) / 2
    shifts = np.zeros_like(cmnd)
    with np.errstate(divide="ignore", invalid="ignore"):
        shifts[1:-1] = np.where(np.abs(b) >= np.abs(a), 0, -b / a)
    # First local minimum below the threshold, else the global minimum.
    trough = np.zeros(cmnd.shape, bool)
    trough[1:-1] = (cmnd[1:-1] < cmnd[:-2]) & (cmnd[1:-1] <= cmnd[2:])
    trough[-1] = cmnd[-1] < cmnd[-2]
    trough[0] = cmnd[0] < cmnd[1]
    below = trough & (cmnd < trough_threshold)
    period = np.where(below.any(axis=0), np.argmax(below, axis=0), np.argmin(cmnd, axis=0))
    period = lo + period + np.take_along_axis(shifts, period[None], axis=0)[0]
    return sr / period


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (scipy.fft.next_fast_len for real transforms)."""
    while True:
        k = n
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return n
        n += 1


def spectral_centroid(S: np.ndarray, sr: int) -> np.ndarray:
    """``(frames,)`` magnitude-weighted mean frequency (librosa.feature.spectral_centroid(S=...))."""
    freq = np.fft.rfftfreq(2 * S.shape[0] - 2, 1.0 / sr)[:, None]
    length = np.sum(np.abs(S).astype(np.float64), axis=-2, keepdims=True)
    length[length < np.finfo(S.dtype).tiny] = 1.0
    norm = np.empty_like(S)
    norm[:] = S / length
    return np.sum(freq * norm, axis=-2)


def spectral_flatness(S: np.ndarray, amin: float = 1e-10) -> np.ndarray:
    """``(frames,)`` geometric over arithmetic mean of the power ``S ** 2`` (librosa, from magnitudes)."""
    p = np.maximum(amin, S ** 2.0)
    return np.exp(np.mean(np.log(p), axis=-2)) / np.mean(p, axis=-2)


def spectral_rolloff(S: np.ndarray, sr: int, roll_percent: float = 0.85) -> np.ndarray:
    """``(frames,)`` lowest bin frequency below which ``roll_percent`` of the magnitude lies (librosa)."""
    freq = np.fft.rfftfreq(2 * S.shape[0] - 2, 1.0 / sr)[:, None]
    total = np.cumsum(S, axis=-2)
    ind = np.where(total < roll_percent * total[-1:], np.nan, 1)
    return np.nanmin(ind * freq, axis=-2)


def spectral_contrast(S: np.ndarray, sr: int, n_bands: int = 6, fmin: float = 200.0,
                      quantile: float = 0.02) -> np.ndarray:
    """``(n_bands + 1, frames)`` dB peak minus valley per octave band (librosa.feature.spectral_contrast)."""
    freq = np.fft.rfftfreq(2 * S.shape[0] - 2, 1.0 / sr)
    octa = np.zeros(n_bands + 2)
    octa[1:] = fmin * 2.0 ** np.arange(n_bands + 1)
    valley = np.zeros((n_bands + 1, S.shape[1]))
    peak = np.zeros_like(valley)
    for k, (f_low, f_high) in enumerate(zip(octa[:-1], octa[1:])):
        band = (freq >= f_low) & (freq <= f_high)
        idx = np.flatnonzero(band)
        if k > 0:
            band[idx[0] - 1] = True
        if k == n_bands:
            band[idx[-1] + 1:] = True
        sub = S[band][:-1] if k < n_bands else S[band]
        q = max(int(np.rint(quantile * np.sum(band))), 1)
        srt = np.sort(sub, axis=-2)
        valley[k] = np.mean(srt[:q], axis=-2)
        peak[k] = np.mean(srt[-q:], axis=-2)
    return power_to_db(peak) - power_to_db(valley)


def resample(y: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """librosa.resample's default (``soxr_hq``, length fixed to ``ceil(n * target / orig)``)."""
    if orig_sr == target_sr:
        return y
    import soxr

    n = int(np.ceil(y.shape[-1] * float(target_sr) / orig_sr))
    out = soxr.resample(y, orig_sr, target_sr, quality="soxr_hq")[:n]
    return np.asarray(np.pad(out, (0, n - out.shape[-1])), dtype=y.dtype)
