"""The default model: ships in the package, loads offline, predicts from any subset of modalities."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mmva
from mmva.labels import EMOTIONS, SENTIMENTS
from mmva.model.default import (default_model_dir, load_default_model,
                                pool_log_linear, sentiment_from_emotion)


@pytest.fixture(scope="module")
def model():
    return load_default_model()


def _top(dist: np.ndarray, labels) -> str:
    return labels[int(np.argmax(dist))]


def test_ships_small_self_describing_files():
    folder = default_model_dir()
    config = json.loads((folder / "config.json").read_text())
    total = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    assert total < 5 * 1024 * 1024
    assert (folder / "MODEL_CARD.md").exists()
    assert config["labels"] == {"emotion": list(EMOTIONS), "sentiment": list(SENTIMENTS)}
    assert config["dev_metrics"]["emotion"]["weighted_f1"] > 25.2  # beats the majority class


def test_loads_offline_and_is_cached(model, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert load_default_model() is model
    assert model.path == default_model_dir()


def test_text_predictions_are_distributions_and_sensible(model):
    texts = ["I'm so happy for you, this is the best day ever!",
             "Get out! I hate you, I can't stand you anymore!",
             "The meeting is at three o'clock."]
    out = model.predict(texts)
    assert len(out) == 3
    for p in out:
        assert p["modalities"] == ["text"]
        assert p["emotion"].shape == (7,) and p["sentiment"].shape == (3,)
        assert math.isclose(float(p["emotion"].sum()), 1.0, abs_tol=1e-4)
        assert math.isclose(float(p["sentiment"].sum()), 1.0, abs_tol=1e-4)
        assert np.allclose(p["per_modality"]["text"]["emotion"], p["emotion"], atol=1e-4)
    assert _top(out[0]["emotion"], EMOTIONS) == "joy"
    assert _top(out[0]["sentiment"], SENTIMENTS) == "positive"
    assert _top(out[1]["emotion"], EMOTIONS) in ("anger", "disgust")
    assert _top(out[1]["sentiment"], SENTIMENTS) == "negative"
    assert _top(out[2]["sentiment"], SENTIMENTS) == "neutral"


def test_context_changes_the_prediction_input(model):
    a = model.predict(["Really?"])[0]["emotion"]
    b = model.predict(["Really?"], contexts=[["My grandmother died this morning."]])[0]["emotion"]
    assert not np.allclose(a, b)


def test_megabytes_of_text_cost_what_is_kept(model):
    """Only max_length tokens are read: a 1 MB context shared by 512 texts is cut before tokenizing
    (it was tokenized in full once per text, minutes of CPU), and the kept tokens are the same."""
    import time

    tc = model.text
    big = "why would you even say that to me, really " * 25_000  # ~1 MB
    kept = big[-tc.config.max_length * 101:]
    whole = tc.encode(["Really?", big], [[big], ["a", big]])
    cut = tc.encode(["Really?", big[: tc.config.max_length * 101]], [[kept], ["a", kept]])
    for key in whole:
        assert np.array_equal(np.asarray(whole[key]), np.asarray(cut[key])), key
    started = time.perf_counter()
    tc.encode([f"text {i}" for i in range(512)], [[big]] * 512)
    assert time.perf_counter() - started < 5  # 0.2 s here; in full it was ~0.75 s per text


def test_empty_text_is_an_absent_modality_not_a_guess(model):
    out = model.predict(["", "   "], contexts=[["hello"], []])
    for p in out:
        assert p["modalities"] == [] and p["per_modality"] == {}
        assert np.allclose(p["emotion"], 1 / 7) and np.allclose(p["sentiment"], 1 / 3)


def test_analyze_text_matches_the_analyze_json_shape():
    res = mmva.analyze_text(["Oh my God, you won the lottery?!", ""], top_k=2)
    first, empty = res
    assert set(first) == {"text", "emotions", "sentiments", "modalities"}
    assert first["modalities"] == ["text"] and len(first["emotions"]) == 2 and len(first["sentiments"]) == 2
    conf = [e["confidence"] for e in first["emotions"]]
    assert conf == sorted(conf, reverse=True) and all(e["label"] in EMOTIONS for e in first["emotions"])
    assert empty == {"text": "", "emotions": [], "sentiments": [], "modalities": []}
    assert len(mmva.analyze_text(["fine"], top_k=10)[0]["emotions"]) == 7


def test_video_only_uses_the_face(model):
    from tests.media import face_frames, moving_frames

    face, noface = model.predict(["", ""], frames=[face_frames(4), moving_frames(4)])
    assert face["modalities"] == ["video"]
    assert math.isclose(float(face["emotion"].sum()), 1.0, abs_tol=1e-4)
    assert np.allclose(face["sentiment"], sentiment_from_emotion(face["emotion"]), atol=1e-4)
    assert noface["modalities"] == []


def test_audio_only_uses_the_voice(model):
    pytest.importorskip("mmva.model.voice", reason="voice head not installed")
    if model.voice_head() is None:
        pytest.skip("the voice head's files are not in this installation")
    from tests.media import silence, speak

    speech, quiet = model.predict(["", ""], audio=[speak("I can't believe this happened to me"), silence(1.0)])
    assert speech["modalities"] == ["audio"]
    assert math.isclose(float(speech["emotion"].sum()), 1.0, abs_tol=1e-4)
    assert quiet["modalities"] == []


def test_text_and_face_are_fused_by_the_stated_rule(model):
    from tests.media import face_frames

    text = "You did it, I'm so proud of you!"
    fused = model.predict([text], frames=[face_frames(4)])[0]
    assert fused["modalities"] == ["text", "video"]
    per = {m: np.asarray(p["emotion"]) for m, p in fused["per_modality"].items()}
    expected = pool_log_linear(per, model.fusion_weights)  # the weights config.json states
    assert np.allclose(fused["emotion"], expected, atol=1e-4)


def test_pooling_rule():
    p = np.array([0.7, 0.2, 0.1])
    assert np.allclose(pool_log_linear({"text": p}, {"text": 1.0}), p)
    q = np.array([0.1, 0.2, 0.7])
    mixed = pool_log_linear({"text": p, "video": q}, {"text": 1.0, "video": 1.0})
    assert np.isclose(mixed[0], mixed[2]) and math.isclose(mixed.sum(), 1.0)
    tilted = pool_log_linear({"text": p, "video": q}, {"text": 1.0, "video": 0.35})
    assert tilted[0] > tilted[2]  # text weighs more
    assert np.allclose(sentiment_from_emotion(np.eye(7)[0]), [1, 0, 0])  # anger -> negative
    assert np.allclose(sentiment_from_emotion(np.eye(7)[6]), [0, 1, 0])  # surprise -> neutral


# -- the training recipe, on a tiny MELD-format corpus ------------------------------------------
def _tiny_meld(root: Path, n_dialogues: int = 6) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = [("Oh wow, that is fantastic news!", "joy", "positive"),
             ("I hate this, get away from me!", "anger", "negative"),
             ("Okay, see you at noon.", "neutral", "neutral"),
             ("I miss her so much.", "sadness", "negative")]
    cols = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
            "Season", "Episode", "StartTime", "EndTime"]
    for split in ("train", "dev"):
        with open(root / f"{split}_sent_emo.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(cols)
            n = 0
            for d in range(n_dialogues):
                for u, (text, emo, sent) in enumerate(lines):
                    n += 1
                    w.writerow([n, text.replace("'", "\u2019"), "Ross", emo, sent, d, u, 1, 1,
                                "00:00:01,000", "00:00:02,000"])
            w.writerow([n + 1, "bad row", "Ross", "not-an-emotion", "neutral", 99, 0, 1, 1, "", ""])
    return root


def test_train_text_recipe_resumes_and_writes_an_installable_model(tmp_path):
    from mmva.model.default import DefaultModel, install_text_model
    from mmva.model.textclf import TextClassifier
    from mmva.train.text_finetune import TextTrainConfig, read_meld_text, train_text

    data = _tiny_meld(tmp_path / "meld")
    examples, problems = read_meld_text(data / "train_sent_emo.csv")
    assert len(examples) == 24 and len(problems) == 1 and "bad row" not in examples[-1].text
    assert examples[1].context == [examples[0].text] and examples[0].context == []
    cfg = TextTrainConfig(epochs=1, batch_size=8, lr=3e-3, head_lr=1e-2)
    first = train_text(str(data), str(tmp_path / "run"), cfg)
    assert len(first.history) == 1
    second = train_text(str(data), str(tmp_path / "run"), TextTrainConfig(epochs=2, batch_size=8, lr=3e-3,
                                                                         head_lr=1e-2))
    assert [r["epoch"] for r in second.history] == [1, 2]  # epoch 1 was not redone
    report = second.metrics["calibration"]["emotion"]
    assert report["temperature"] > 0 and "ece_before" in report and "ece_after" in report
    # The saved adapter reproduces the trained model's logits, merged (inference) or not.
    raw = TextClassifier.load(second.model_path, merge=False)
    merged = TextClassifier.load(second.model_path, merge=True)
    texts = [e.text for e in examples[:4]]
    a, b = raw.predict_logits(texts), merged.predict_logits(texts)
    assert torch.allclose(a["emotion"], b["emotion"], atol=1e-4)
    dest = install_text_model(second.run_dir, tmp_path / "installed")
    (dest / "MODEL_CARD.md").write_text("test")
    out = DefaultModel(dest).predict(["I hate this!"])[0]
    assert out["modalities"] == ["text"] and math.isclose(float(out["emotion"].sum()), 1.0, abs_tol=1e-4)


def test_temperature_fit_recovers_a_known_temperature():
    from mmva.train.text_finetune import fit_bias, fit_temperature

    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 5, generator=g) * 3.0
    y = torch.multinomial(torch.softmax(z / 2.0, -1), 1, generator=g).squeeze(1)
    assert abs(fit_temperature(z, y) - 2.0) < 0.2
    # A constant shift against class 0 is undone by the fitted bias.
    shifted = z.clone()
    shifted[:, 0] -= 3.0
    bias = fit_bias(shifted / 2.0, y)
    assert bias[0] > bias[1:].mean()
