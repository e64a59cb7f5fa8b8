"""mmva.encoders.dsp against librosa (issue 15): each function, and the acoustic_features / mel_frames
built on them, on real espeak-ng speech, white noise, silence, a clip shorter than a frame and
non-16 kHz input; and a fresh process computing both imports neither librosa, scipy nor numba."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import librosa
import numpy as np
import pytest

import mmva
from mmva.encoders import dsp
from mmva.encoders.acoustic import (FEATURE_NAMES, FMAX, FMIN, HOP, N_FFT, N_MFCC, SAMPLE_RATE, acoustic_features,
                                    fixed_loudness, statistics)
from mmva.encoders.speaker import mel_frames
from tests.media import silence, speak

SR = 16000


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    low = speak("I really did not expect to see you here today", pitch=20, amplitude=60)
    high = speak("What on earth are you doing with my car", voice="en-gb+f2", pitch=85, amplitude=180)
    return {"speech": low, "speech_high": high,
            "noise": (0.05 * rng.standard_normal(SR)).astype(np.float32),
            "silence": silence(1.0),
            "short": low[8000:8300].copy()}  # shorter than every n_fft here


CLIPS = ["speech", "speech_high", "noise", "silence", "short"]


def close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-5, scale: float | None = None) -> None:
    """Same shape and dtype, and equal to float32 rounding relative to ``scale`` (default: the array's)."""
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == b.dtype
    scale = float(np.abs(b).max()) if scale is None else scale
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(scale, 1e-6))


@pytest.mark.parametrize("name", CLIPS)
def test_spectral_functions_match_librosa(clips: dict[str, np.ndarray], name: str) -> None:
    y = clips[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # librosa warns that n_fft exceeds the short clip
        D = librosa.stft(y, n_fft=N_FFT, hop_length=HOP)
        ref_mel40 = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=400, hop_length=160, n_mels=40)
    close(dsp.stft(y, N_FFT, HOP), D)
    close(dsp.melspectrogram(y, SR, 400, 160, 40), ref_mel40)
    S = np.abs(D) ** 2
    mel = librosa.feature.melspectrogram(S=S, sr=SR, n_mels=64)
    close(dsp.mel_filters(SR, N_FFT, 64) @ S, mel)
    db = librosa.power_to_db(mel)
    close(dsp.power_to_db(mel), db)
    mfcc = librosa.feature.mfcc(S=db, n_mfcc=N_MFCC)
    close(dsp.mfcc(db, N_MFCC), mfcc)  # scipy's float32 DCT vs a float64 matrix product: rounding only
    if mfcc.shape[1] >= 3:
        width = min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2))
        # relative to the input's scale: scipy's edge fit of a constant -800 row of silence gives 2e-5
        close(dsp.delta(mfcc[:13], width), librosa.feature.delta(mfcc[:13], width=width),
              scale=float(np.abs(mfcc).max()))
    M = np.sqrt(S)
    close(dsp.spectral_centroid(M, SR), librosa.feature.spectral_centroid(S=M, sr=SR)[0])
    close(dsp.spectral_flatness(M), librosa.feature.spectral_flatness(S=M)[0])
    close(dsp.spectral_rolloff(M, SR), librosa.feature.spectral_rolloff(S=M, sr=SR)[0])
    close(dsp.spectral_contrast(M, SR, n_bands=4), librosa.feature.spectral_contrast(S=M, sr=SR, n_bands=4))


@pytest.mark.parametrize("name", CLIPS)
def test_time_domain_functions_match_librosa(clips: dict[str, np.ndarray], name: str) -> None:
    y = clips[name]
    if y.size < N_FFT:
        y = np.pad(y, (0, N_FFT - y.size))  # as acoustic_features does
    close(dsp.rms(y, N_FFT, HOP), librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP)[0])
    close(dsp.zero_crossing_rate(y, N_FFT, HOP),
          librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP)[0])
    # numpy's and scipy's float32 FFTs round differently: F0 agrees to ~1e-6, not bit for bit (worst
    # seen 1.1e-4 over 10k frames of 40 clips, where the parabola is nearly flat); a different
    # period choice would differ by several percent
    close(dsp.yin(y, FMIN, FMAX, SR, 1024, HOP),
          librosa.yin(y, fmin=FMIN, fmax=FMAX, sr=SR, frame_length=1024, hop_length=HOP), rtol=1e-3)


def test_resample_is_librosas(clips: dict[str, np.ndarray]) -> None:
    y = clips["speech"]
    for sr in (8000, 22050, 44100):
        close(dsp.resample(y, SR, sr), librosa.resample(y, orig_sr=SR, target_sr=sr), rtol=1e-6)
    assert dsp.resample(y, SR, SR) is y


def test_delta_edges_are_the_edge_windows_fit() -> None:
    x = np.array([[0.0, 1.0, 4.0, 9.0, 16.0, 25.0, 36.0]], np.float32)  # slope of t^2 fits
    d = dsp.delta(x, 5)
    np.testing.assert_allclose(d, librosa.feature.delta(x, width=5), atol=1e-6)
    assert d[0, 0] == d[0, 1] == d[0, 2] and d[0, -1] == d[0, -3]
    with pytest.raises(ValueError):
        dsp.delta(x, 9)


def _librosa_acoustic_features(audio: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """acoustic_features with librosa's frame-level features, as before dsp.py (what the voice head
    was trained on), through the same loudness scaling and statistics."""
    y = np.asarray(audio, dtype=np.float32).reshape(-1)
    if sample_rate != SAMPLE_RATE:
        y = librosa.resample(y, orig_sr=sample_rate, target_sr=SAMPLE_RATE)
    y, rms, active = fixed_loudness(
        y, lambda y, n_fft, hop: librosa.feature.rms(y=y, frame_length=n_fft, hop_length=hop)[0])
    S = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP)) ** 2
    mel = librosa.feature.melspectrogram(S=S, sr=SAMPLE_RATE, n_mels=64)
    mfcc = librosa.feature.mfcc(S=librosa.power_to_db(mel), n_mfcc=N_MFCC)
    dmfcc = librosa.feature.delta(mfcc[:13], width=min(9, mfcc.shape[1] - (1 - mfcc.shape[1] % 2))) \
        if mfcc.shape[1] >= 3 else np.zeros((13, 1))
    f0 = librosa.yin(y, fmin=FMIN, fmax=FMAX, sr=SAMPLE_RATE, frame_length=1024, hop_length=HOP)
    mag = np.sqrt(S)
    return statistics(y, rms, active, mfcc, dmfcc, f0, librosa.feature.spectral_centroid(S=mag, sr=SAMPLE_RATE)[0],
                      librosa.feature.spectral_flatness(S=mag)[0],
                      librosa.feature.spectral_rolloff(S=mag, sr=SAMPLE_RATE)[0],
                      librosa.feature.zero_crossing_rate(y, frame_length=N_FFT, hop_length=HOP)[0],
                      librosa.feature.spectral_contrast(S=mag, sr=SAMPLE_RATE, n_bands=4))


def _inputs(clips: dict[str, np.ndarray]) -> list[tuple[np.ndarray, int]]:
    y = clips["speech"]
    return [(clips[n], SR) for n in CLIPS] + [(librosa.resample(y, orig_sr=SR, target_sr=44100), 44100),
                                              (librosa.resample(y, orig_sr=SR, target_sr=8000), 8000)]


def test_acoustic_features_are_librosas_and_so_is_the_voice_head_output(clips: dict[str, np.ndarray]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = np.stack([_librosa_acoustic_features(y, sr) for y, sr in _inputs(clips)]).astype(np.float64)
    new = np.stack([acoustic_features(y, sr) for y, sr in _inputs(clips)]).astype(np.float64)
    assert new.shape == ref.shape == (len(_inputs(clips)), len(FEATURE_NAMES))
    # each feature within 1e-5 of its largest magnitude over the clips (measured: <= 2e-6)
    scale = np.maximum(np.abs(ref).max(0), 1e-3)
    assert np.all(np.abs(new - ref) <= 1e-5 * scale), FEATURE_NAMES[int(np.argmax(np.abs(new - ref).max(0) / scale))]
    # The shipped head (its Whisper half held at the training mean) gives the same probabilities.
    from mmva.model.voice import load_voice_head

    head = load_voice_head()
    whisper = np.asarray(head.heads["utterance"][0].mean)[: -ref.shape[1]]
    for same_speaker in (False, True):
        p_ref, p_new = ([np.concatenate([whisper, f]).astype(np.float32) for f in x] for x in (ref, new))
        for a, b in zip(head.proba_from_features(p_ref, same_speaker=same_speaker),
                        head.proba_from_features(p_new, same_speaker=same_speaker)):
            np.testing.assert_allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name", CLIPS)
def test_mel_frames_are_librosas(clips: dict[str, np.ndarray], name: str) -> None:
    y = clips[name]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = librosa.feature.melspectrogram(y=y, sr=SR, n_fft=400, hop_length=160, n_mels=40).T
    close(mel_frames(y), ref)


def test_a_fresh_process_imports_neither_librosa_scipy_nor_numba() -> None:
    code = ("import sys\nimport numpy as np\nfrom mmva.encoders.acoustic import acoustic_features\n"
            "from mmva.encoders.speaker import mel_frames\n"
            "y = (0.1 * np.sin(2 * np.pi * 160 * np.arange(32000) / 16000)).astype(np.float32)\n"
            "assert acoustic_features(y).shape == (114,) and mel_frames(y).shape == (201, 40)\n"
            "print(*(m in sys.modules for m in ('librosa', 'scipy', 'scipy.signal', 'numba')))")
    src = str(Path(mmva.__file__).resolve().parents[1])  # the mmva under test
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False"] * 4
