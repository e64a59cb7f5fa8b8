"""The face network and the speaker encoder run from cached ONNX forms, the voice heads in NumPy
(issue 15): the same outputs as the torch networks, each cached file made once, a corrupt one made
again, and a warm `mmva analyze` of a video (default model, Haar detector) that imports no torch."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage.data import astronaut

from mmva.data.synth import face_photo, speak
from mmva.encoders.face import DetectorConfig, FaceHead, crop_face, detect_faces
from mmva.encoders.speaker import OnnxSpeakerEncoder, load_speaker_encoder, speaker_encoder_available
from tests.media import talking_head


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# -- face ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Eight 48x48 face crops from real photos (the shipped head's framing), some shifted."""
    found = []
    for image in (astronaut(), face_photo(96), face_photo(160)):
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        box = detect_faces(image, DetectorConfig(backend="haar"))[0]
        found += [crop_face(grey, (box[0] + dx, box[1], box[2], box[3]), 0.02, 48) for dx in (0, 3, -4)]
    return np.stack(found[:8])


@pytest.fixture(scope="module")
def eager_face() -> FaceHead:
    return FaceHead(onnx=False)


def test_face_onnx_gives_the_torch_probabilities_and_embeddings(crops: np.ndarray, eager_face: FaceHead,
                                                                tmp_path: Path) -> None:
    fast = FaceHead(cache_dir=tmp_path)
    assert fast.session is not None and eager_face.session is None and fast.net is None
    assert fast.onnx_file is not None and fast.onnx_file.parent == tmp_path and fast.onnx_file.exists()
    for batch in (crops, crops[:1], crops[3:6]):
        (p, e), (q, f) = fast.classify(batch), eager_face.classify(batch)
        assert p.shape == (len(batch), 7) and e.shape == (len(batch), 256) and p.dtype == np.float32
        np.testing.assert_allclose(p, q, atol=1e-4)
        np.testing.assert_allclose(e, f, atol=1e-4)
        np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
    assert fast.classify(crops[:0])[0].shape == (0, 7)
    assert oct(fast.onnx_file.stat().st_mode & 0o777) == oct(0o644 & ~_umask())  # others can read it


def test_face_onnx_file_is_reused_and_a_corrupt_one_made_again(crops: np.ndarray, eager_face: FaceHead, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    import mmva.encoders.face_net as face_net

    file = FaceHead(cache_dir=tmp_path).onnx_file
    assert file is not None and [p.name for p in tmp_path.iterdir()] == [file.name]

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    with monkeypatch.context() as m:
        m.setattr(face_net, "save_onnx", no_export)
        assert FaceHead(cache_dir=tmp_path).onnx_file == file  # read, not made again
    file.write_bytes(b"not an ONNX model")
    with caplog.at_level(logging.WARNING):
        again = FaceHead(cache_dir=tmp_path)
    assert "unreadable" in caplog.text and again.session is not None
    np.testing.assert_allclose(again.classify(crops)[0], eager_face.classify(crops)[0], atol=1e-4)
    assert file.stat().st_size > 1_000_000  # ~4.7 MB of float32 weights


def test_face_runs_on_torch_when_no_onnx_file_can_be_made(crops: np.ndarray, eager_face: FaceHead, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("")  # the cache folder cannot be made under a file
    with caplog.at_level(logging.WARNING):
        head = FaceHead(cache_dir=blocked / "face-onnx")
    assert head.session is None and head.net is not None and "running it on torch" in caplog.text
    np.testing.assert_allclose(head.classify(crops)[0], eager_face.classify(crops)[0], atol=1e-6)


def test_old_face_names_still_import() -> None:
    from mmva.encoders.face import FaceExpression, MiniXception, load_mini_xception, normalise_crops  # noqa: F401
    from mmva.encoders.face_xception import FaceExpression as moved

    assert FaceExpression is moved
    probs, emb = FaceHead(str(__import__("mmva.encoders.face", fromlist=["x"]).default_weights_path())).classify(
        np.zeros((2, 64, 64), np.uint8))
    assert probs.shape == (2, 7) and emb.shape == (2, 128)  # the fer mini-Xception, on torch


# -- speaker -------------------------------------------------------------------------------------
needs_speaker = pytest.mark.skipif(not speaker_encoder_available(), reason="resemblyzer weights not installed")


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 10 s of espeak-ng speech, two voices."""
    a = np.concatenate([speak("the quick brown fox jumps over the lazy dog and runs away into the forest",
                              voice="en-us"),
                        speak("she sells sea shells by the sea shore, and the shells she sells are sea shells",
                              voice="en-us+f3", pitch=70)])
    return np.resize(a, 160000).astype(np.float32)


SPANS = [(float(s), float(s) + 1.5) for s in np.arange(0, 8.5, 0.75)] + [(0.2, 0.9), (3.0, 7.0), (9.5, 10.0)]


@needs_speaker
def test_speaker_onnx_gives_the_torch_embeddings(speech: np.ndarray, tmp_path: Path) -> None:
    fast = load_speaker_encoder(cache_dir=str(tmp_path))
    eager = load_speaker_encoder(onnx=False)
    assert isinstance(fast, OnnxSpeakerEncoder) and fast.file is not None and fast.file.exists()
    x, y = fast.embed_windows(speech, SPANS), eager.embed_windows(speech, SPANS)
    assert x.shape == (len(SPANS), 256) and x.dtype == np.float32
    np.testing.assert_allclose(x, y, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, atol=1e-5)
    np.testing.assert_allclose(fast.embed_windows(speech, SPANS[:1]), y[:1], atol=1e-4)  # batch of one
    np.testing.assert_allclose(fast.embed_windows(speech, SPANS, batch=4), y, atol=1e-4)
    assert fast.embed_windows(speech, []).shape == (0, 256)
    # Windows of another length than 1.6 s: the time axis is dynamic too.
    from mmva.encoders.speaker import speaker_windows

    import torch

    short = speaker_windows(speech, SPANS[:3])[:, :70]
    with torch.no_grad():
        np.testing.assert_allclose(fast.session.run(None, {"mels": short})[0], eager(torch.from_numpy(short)).numpy(),
                                   atol=1e-4)


@needs_speaker
def test_speaker_onnx_file_is_reused_and_a_corrupt_one_made_again(speech: np.ndarray, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    import mmva.encoders.speaker_net as speaker_net

    first = load_speaker_encoder(cache_dir=str(tmp_path))
    file = first.file
    load_speaker_encoder.cache_clear()

    def no_export(*args: object) -> None:
        raise AssertionError("exported again")

    with monkeypatch.context() as m:
        m.setattr(speaker_net, "save_onnx", no_export)
        assert load_speaker_encoder(cache_dir=str(tmp_path)).file == file
    load_speaker_encoder.cache_clear()
    file.write_bytes(b"\x08\x01garbage")
    with caplog.at_level(logging.WARNING):
        again = load_speaker_encoder(cache_dir=str(tmp_path))
    load_speaker_encoder.cache_clear()
    assert "unreadable" in caplog.text and isinstance(again, OnnxSpeakerEncoder)
    np.testing.assert_allclose(again.embed_windows(speech, SPANS), first.embed_windows(speech, SPANS), atol=1e-6)


# -- voice heads ---------------------------------------------------------------------------------
def test_voice_heads_in_numpy_give_the_torch_logits() -> None:
    import torch
    from safetensors.numpy import load_file

    from mmva.model.voice import NumpyHead, default_head_dir, load_voice_head
    from mmva.train.voice_head import Head

    rng = np.random.default_rng(0)
    shipped = load_voice_head()
    for name, (head, temperature) in shipped.heads.items():
        state = load_file(head.source)
        ref = Head(state["mean"].shape[0], 0).eval()
        ref.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        x = (state["mean"] + rng.normal(0, 2, (9, len(state["mean"]))) * state["std"]).astype(np.float32)
        with torch.no_grad():
            want = ref(torch.from_numpy(x))
        np.testing.assert_allclose(head(x), want.numpy(), atol=1e-4)
        got = shipped.proba_from_features(list(x.astype(np.float64)), same_speaker=name == "speaker")
        if name == "utterance":  # the speaker head z-scores with the clips' own statistics first
            np.testing.assert_allclose(np.stack(got), torch.softmax(want / temperature, -1).numpy(), atol=1e-5)
    assert Path(shipped.heads["utterance"][0].source).parent == default_head_dir()
    torch.manual_seed(0)
    hidden = Head(20, 16).eval()  # a head with a hidden layer (GELU) too
    with torch.no_grad():
        hidden.mean.normal_()
        hidden.std.uniform_(0.5, 2)
        x = rng.normal(0, 1, (5, 20)).astype(np.float32)
        want = hidden(torch.from_numpy(x)).numpy()
    got = NumpyHead({k: v.numpy() for k, v in hidden.state_dict().items()}, 16)(x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="hidden=16"):
        NumpyHead({k: v.numpy() for k, v in Head(20, 0).state_dict().items()}, 16)


# -- a warm process ------------------------------------------------------------------------------
CHILD = """
import sys, time
import mmva
from mmva.model.predictor import load_predictor
t = mmva.analyze(sys.argv[1], model=load_predictor(face_detector="haar"))
u = t.utterances[0]
print(u.emotions[0]["label"], "+".join(sorted(u.modalities)), len(t.utterances), "torch" in sys.modules,
      "torchvision" in sys.modules,
      ",".join(m for m in ("librosa", "numba", "sklearn", "scipy.signal", "scipy.optimize", "transformers")
               if m in sys.modules) or "-")
"""


@needs_speaker
def test_a_warm_analysis_of_a_video_imports_no_torch_librosa_or_scikit_learn(tmp_path: Path) -> None:
    video = talking_head(tmp_path / "talk.mp4", "hello there, how are you today")
    env = {**os.environ, "MMVA_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    runs = [subprocess.run([sys.executable, "-c", CHILD, str(video)], capture_output=True, text=True, env=env,
                           timeout=600) for _ in range(2)]
    for r in runs:
        assert r.returncode == 0, r.stderr[-3000:]
    first, second = (r.stdout.strip().split("\n")[-1].split() for r in runs)
    assert first[:3] == second[:3]  # the same result ...
    assert set(second[1].split("+")) == {"text", "audio", "video"}  # ... from the face and the voice too
    assert first[3] == "True"  # the cold process exported the networks with torch ...
    assert second[3:5] == ["False", "False"], runs[1].stdout  # ... the warm one imported neither
    # nor any of the other libraries whose imports cost seconds of a cold start (issue 15)
    assert second[5] == "-", runs[1].stdout
    assert {p.parent.name for p in (tmp_path / "cache").rglob("*.onnx")} == {"text-onnx", "face-onnx", "speaker-onnx"}
