"""The prosody encoder on real (espeak-ng) speech: shapes, absence, normalisation, speaker tables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mmva.encoders.base import create_encoder, list_encoders
from mmva.encoders.prosody import FEATURE_DIM, FEATURE_NAMES, ProsodyEncoder, prosody_features, speaker_reference
from mmva.io.clip import DecodedClip
from tests.media import silence, speak, tone

SENTENCE = "I really did not expect to see you here today"


@pytest.fixture(scope="module")
def voice() -> np.ndarray:
    return speak(SENTENCE)


def _feat(x: np.ndarray, name: str) -> float:
    return float(x[FEATURE_NAMES.index(name)])


def test_registered_as_audio_encoder() -> None:
    assert "prosody" in list_encoders(modality="audio")
    enc = create_encoder("prosody")
    assert enc.output_dim == FEATURE_DIM == len(FEATURE_NAMES)
    assert enc.cache_key()["preprocess"]["normalize"] == "utterance"


def test_speech_gives_finite_vector_and_batches(voice: np.ndarray) -> None:
    enc = ProsodyEncoder()
    x = enc.prepare(DecodedClip(audio=voice, sample_rate=16000))
    assert x is not None and x.shape == (FEATURE_DIM,) and torch.isfinite(x).all()
    out = enc(enc.collate([x, x]))
    assert out.shape == (2, FEATURE_DIM)


@pytest.mark.parametrize("audio", [silence(1.0), np.zeros(100, np.float32),
                                   np.random.default_rng(0).normal(0, 0.2, 16000).astype(np.float32),
                                   (tone(1.0) * 1e-4).astype(np.float32)],
                         ids=["silence", "too-short", "white-noise", "inaudible-tone"])
def test_no_speech_is_masked(audio: np.ndarray) -> None:
    assert prosody_features(audio) is None
    assert ProsodyEncoder().prepare(DecodedClip(audio=audio)) is None


def test_no_audio_track_is_masked() -> None:
    assert ProsodyEncoder().prepare(DecodedClip(audio=None, text="hello")) is None


def test_pitch_follows_the_voice(voice: np.ndarray) -> None:
    low, high = prosody_features(speak(SENTENCE, pitch=20)), prosody_features(speak(SENTENCE, pitch=85))
    # espeak-ng -p 20 vs -p 85 is more than half an octave apart in median F0
    assert _feat(high, "f0_p50") - _feat(low, "f0_p50") > 0.4


def test_utterance_normalisation_removes_recording_level(voice: np.ndarray) -> None:
    quiet, loud = voice * 0.05, voice * (0.95 / np.abs(voice).max())  # -26 dB vs full scale, no clipping
    a, b = prosody_features(quiet), prosody_features(loud)
    level = FEATURE_NAMES.index("loud_mean")
    assert abs(a[level] - b[level]) < 0.05  # same level after gain normalisation
    raw_a, raw_b = prosody_features(quiet, normalize="none"), prosody_features(loud, normalize="none")
    assert raw_b[level] - raw_a[level] > 1.0  # without it: > 20 dB apart
    assert np.allclose(np.delete(a, level), np.delete(b, level), atol=0.15)


def test_resampling_input(voice: np.ndarray) -> None:
    import librosa

    at_22k = librosa.resample(voice, orig_sr=16000, target_sr=22050)
    a, b = prosody_features(voice), prosody_features(at_22k, 22050)
    assert abs(_feat(a, "f0_p50") - _feat(b, "f0_p50")) < 0.05


def test_speaker_reference_zscores_by_speaker(tmp_path, voice: np.ndarray) -> None:
    v_low = speak(SENTENCE, pitch=25)
    fa, fb = prosody_features(voice), prosody_features(v_low)
    files = {"/a.wav": "A", "/b.wav": "B"}
    ref = speaker_reference({"A": np.stack([fa, fa * 1.1]), "B": np.stack([fb, fb * 0.9])}, files)
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(ref))
    enc = ProsodyEncoder(reference=str(path))
    za = enc.prepare(DecodedClip(audio=voice, source="/a.wav")).numpy()
    mean, std = np.array(ref["speakers"]["A"]["mean"]), np.array(ref["speakers"]["A"]["std"])
    assert np.allclose(za, (fa - mean) / np.maximum(std, 1e-3), atol=1e-4)
    # unknown clip -> the population (average speaker) statistics
    zu = enc.prepare(DecodedClip(audio=voice, source="/elsewhere.wav")).numpy()
    pmean = np.array(ref["population"]["mean"])
    pstd = np.maximum(np.array(ref["population"]["std"]), 1e-3)
    assert np.allclose(zu, (fa - pmean) / pstd, atol=1e-4)
    # the table's content is part of the cache key
    assert enc.cache_key() != ProsodyEncoder().cache_key()


def test_reference_must_match_normalisation(tmp_path) -> None:
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(speaker_reference({"A": np.zeros((2, FEATURE_DIM))}, normalize="none")))
    with pytest.raises(ValueError, match="normalize"):
        ProsodyEncoder(reference=str(path))
