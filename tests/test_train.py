"""Training end to end on a generated MELD-format corpus: fit -> evaluate -> resume, a modality
removed at evaluation, frozen encoders read from the feature cache, NaN/inf losses skipped, and a
`kill -9` during `mmva train` followed by `--resume`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback

from mmva.config import load_config
from mmva.model.checkpoint import load_model, load_training_state, read_metadata

CHANCE_EMOTION = 1 / 7  # the generated corpus is balanced over the 7 emotions


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> str:
    from mmva.data import make_corpus

    return str(make_corpus(tmp_path_factory.mktemp("corpus"), n_per_class=6, seed=0))


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    from mmva.train.fit import fit

    run = tmp_path_factory.mktemp("runs") / "tiny"
    cfg = load_config("tiny", ["train.epochs=8"])
    return cfg, fit(cfg, corpus, str(run), progress=False)


def test_fit_beats_chance_and_writes_a_self_describing_run(trained):
    cfg, result = trained
    m = result.metrics
    assert m["epochs_completed"] == 8 and [h["epoch"] for h in m["history"]] == list(range(8))
    assert m["emotion"]["support"] == 42
    assert m["emotion"]["accuracy"] > 2 * CHANCE_EMOTION, m["emotion"]
    assert m["emotion"]["weighted_f1"] > 2 * CHANCE_EMOTION
    majority = 24 / 42  # 4 of the 7 emotions map to "negative"
    assert m["sentiment"]["accuracy"] > majority, m["sentiment"]
    assert m["best_score"] == pytest.approx(max(h["val/emotion_weighted_f1"] for h in m["history"]), abs=1e-5)
    assert m["train_clips_per_second"] > 0 and m["skipped_steps"] == [] and m["checkpoint_errors"] == []

    run = Path(result.run_dir)
    assert yaml.safe_load((run / "config.yaml").read_text()) == cfg.to_dict()
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] == m["best_epoch"]
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert "last.ckpt" in names and "last.safetensors" in names
    assert len([n for n in names if n.startswith("epoch") and n.endswith(".safetensors")]) == cfg.train.save_top_k
    assert not [n for n in names if n.endswith(".tmp")]
    meta = read_metadata(result.best_checkpoint)
    assert meta["config"] == cfg.to_dict() and meta["extra"]["epoch"] == m["best_epoch"]
    assert read_metadata(result.last_checkpoint)["extra"]["epoch"] == 7

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "tensors": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in ("train/loss_epoch", "train/emotion_loss", "train/sentiment_loss", "val/emotion_loss",
                "val/sentiment_loss", "val/emotion_weighted_f1", "val/sentiment_accuracy",
                "val/emotion_macro_f1", "val/sentiment_weighted_precision"):
        assert tag in scalars, (tag, sorted(scalars))
    assert any(t.startswith("lr-") for t in scalars)
    assert "val/emotion_confusion" in events.Tags()["images"]
    assert len(events.Scalars("val/emotion_weighted_f1")) == 8


def test_evaluate_rebuilds_from_the_checkpoint_and_matches_training(trained, corpus, tmp_path):
    from mmva.train.evaluate import evaluate

    _, result = trained
    out = tmp_path / "metrics.json"
    ev = evaluate(result.best_checkpoint, corpus, "dev", str(out), predictions=str(tmp_path / "pred.jsonl"))
    assert ev["evaluated"] == 42
    assert ev["emotion"]["weighted_f1"] == pytest.approx(result.metrics["emotion"]["weighted_f1"], abs=1e-6)
    assert ev["sentiment"]["accuracy"] == pytest.approx(result.metrics["sentiment"]["accuracy"], abs=1e-6)
    assert json.loads(out.read_text())["emotion"]["confusion_matrix"] == ev["emotion"]["confusion_matrix"]
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert len(rows) == 42 and abs(sum(rows[0]["emotion_probs"]) - 1) < 1e-3


def test_a_modality_removed_at_evaluation_still_runs(trained, corpus):
    from mmva.train.evaluate import evaluate

    _, result = trained
    full = evaluate(result.best_checkpoint, corpus, "dev")
    text_only = evaluate(result.best_checkpoint, corpus, "dev", drop=["video", "audio"])
    assert text_only["evaluated"] == 42 and text_only["dropped_modalities"] == ["audio", "video"]
    assert text_only["modalities_used"]["video"] == 0 and text_only["modalities_used"]["text"] == 42
    no_text = evaluate(result.best_checkpoint, corpus, "dev", drop=["text"])
    assert no_text["evaluated"] == 42 and no_text["modalities_used"]["text"] == 0
    for r in (text_only, no_text):
        assert 0.0 <= r["emotion"]["accuracy"] <= 1.0
        assert sum(map(sum, r["emotion"]["confusion_matrix"])) == 42
    assert (text_only["emotion"]["confusion_matrix"] != full["emotion"]["confusion_matrix"]
            or no_text["emotion"]["confusion_matrix"] != full["emotion"]["confusion_matrix"])
    with pytest.raises(ValueError, match="cannot drop smell"):
        evaluate(result.best_checkpoint, corpus, "dev", drop=["smell"])


def test_resume_continues_from_the_saved_epoch(trained, corpus, tmp_path):
    from mmva.train.fit import fit

    cfg, result = trained
    run = tmp_path / "run"
    shutil.copytree(result.run_dir, run)
    saved = load_training_state(run / "checkpoints" / "last.ckpt")
    assert saved["epoch"] == 7
    more = fit(load_config("tiny", ["train.epochs=10"]), corpus, str(run), resume=True, progress=False)
    m = more.metrics
    assert m["resumed_from_epoch"] == 8 and m["epochs_completed"] == 10
    assert [h["epoch"] for h in m["history"]] == list(range(10))  # history carried across the resume
    assert m["history"][:8] == result.metrics["history"]
    assert read_metadata(more.last_checkpoint)["extra"]["epoch"] == 9
    assert load_training_state(run / "checkpoints" / "last.ckpt")["global_step"] > saved["global_step"]
    with pytest.raises(FileNotFoundError, match="nothing to resume from"):
        fit(cfg, corpus, str(tmp_path / "empty"), resume=True)


def test_frozen_encoders_train_from_the_feature_cache(corpus, tmp_path):
    from mmva.encoders.cache import FeatureCache
    from mmva.train.fit import fit

    cfg = load_config("tiny", ["train.epochs=2", "model.freeze_video=true", "model.freeze_text=true",
                               "model.audio=null", f"train.cache_dir={tmp_path / 'cache'}"])
    first = fit(cfg, corpus, str(tmp_path / "a"), progress=False)
    feats = first.metrics["features"]
    assert sorted(feats["modalities"]) == ["text", "video"]
    # content-addressed: utterances with the same words share one text entry
    assert feats["computed"] + feats["reused"] == 2 * 84 and feats["computed"] > 84 and feats["failed"] == 0
    cache = FeatureCache(str(tmp_path / "cache"))
    assert len(list(cache.keys("tiny-video"))) == 84
    second = fit(cfg, corpus, str(tmp_path / "b"), progress=False)
    assert second.metrics["features"]["computed"] == 0 and second.metrics["features"]["reused"] == 2 * 84
    # the same seed and the same cached features give the same model
    assert second.metrics["history"] == first.metrics["history"]
    model = load_model(second.last_checkpoint)
    assert model.frozen_modalities() == ["text", "video"]


def _feature_batches(n: int, bad: set[int], seed: int = 0):
    """Batches of cached-feature rows whose first 7 dims carry the emotion; `bad` batches hold inf."""
    from torch.utils.data import DataLoader

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        y = torch.randint(0, 7, (16,), generator=g)
        x = torch.randn(16, 32, generator=g) * 0.3
        x[torch.arange(16), y] += 2.0
        if i in bad:
            x[3, 5] = float("inf")
        out.append({"uid": [f"b{i}_{j}" for j in range(16)], "inputs": {}, "features": {"text": x},
                    "masks": {"text": torch.ones(16)}, "emotion": y, "sentiment": y % 3})
    return DataLoader(out, batch_size=None)  # each item is already a batch


class _WatchBatch(Callback):
    """Compares the model's state before and after one batch index."""

    def __init__(self, index: int) -> None:
        self.index, self.unchanged, self.changed_by_next, self._before = index, [], False, None

    def _state(self, module):
        return {k: v.detach().clone() for k, v in module.model.state_dict().items()}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx in (self.index, self.index + 1):
            self._before = self._state(module)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        after = self._state(module)
        same = all(torch.equal(after[k], v) for k, v in self._before.items()) if self._before else None
        if batch_idx == self.index:
            self.unchanged.append(same)
        elif batch_idx == self.index + 1:
            self.changed_by_next = not same
        self._before = None


def test_nan_or_inf_loss_skips_the_step_and_training_goes_on(tmp_path):
    from mmva.model.multimodal import MultimodalSentimentAnalyzer
    from mmva.train.fit import _build_trainer
    from mmva.train.task import NonFiniteLossError, SentimentTask

    cfg = load_config("tiny", ["model.video=null", "model.audio=null", "train.epochs=3"])
    torch.manual_seed(0)
    task = SentimentTask(MultimodalSentimentAnalyzer(cfg), cfg)
    train = _feature_batches(12, bad={4})
    watch = _WatchBatch(4)
    trainer = _build_trainer(cfg, str(tmp_path), [watch], progress=False)
    trainer.fit(task, train, _feature_batches(4, bad=set(), seed=1))
    assert len(task.skipped_steps) == 3  # the poisoned batch, once per epoch
    assert {s["batch"] for s in task.skipped_steps} == {4} and "b4_0" in task.skipped_steps[0]["uids"]
    assert task.skipped_steps[0]["loss"] in ("nan", "inf")
    assert watch.unchanged == [True, True, True]  # the bad batch changed no weight and no statistic
    assert watch.changed_by_next  # ... while the following good batch trained normally
    assert trainer.current_epoch == 3
    for name, t in [*task.model.named_parameters(), *task.model.named_buffers()]:
        assert torch.isfinite(t.float()).all(), name  # nothing poisoned, batch-norm statistics included
    assert task.history[-1]["val/emotion_accuracy"] > 0.5

    # a loss that never recovers stops with a clear message instead of training on garbage
    task = SentimentTask(MultimodalSentimentAnalyzer(cfg), cfg, max_bad_steps=3)
    trainer = _build_trainer(cfg, str(tmp_path / "b"), [], progress=False)
    with pytest.raises(NonFiniteLossError, match="NaN/inf for 4 steps in a row"):
        trainer.fit(task, _feature_batches(6, bad=set(range(6))), _feature_batches(2, bad=set()))


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from mmva.cli import app; app()", *args]


def test_kill_9_during_training_then_resume_loses_at_most_one_epoch(corpus, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    last = run / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(_cli("train", "--data", corpus, "--config", "tiny", "--set", "train.epochs=50",
                                 "--out", str(run), "--no-progress"),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline and proc.poll() is None:
            if last.exists() and load_training_state(last)["epoch"] >= 0:
                break
            time.sleep(0.3)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    saved = load_training_state(last)["epoch"]  # the last epoch that was checkpointed before the kill
    assert saved >= 0
    # no half-written checkpoint: every one on disk loads (a kill mid-write leaves only a temp file)
    for f in (run / "checkpoints").glob("*.safetensors"):
        load_model(f)
    target = saved + 2
    done = subprocess.run(_cli("train", "--data", corpus, "--out", str(run), "--resume", "--no-progress",
                               "--set", f"train.epochs={target}"),
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_from_epoch"] == saved + 1  # continues right after the last checkpoint
    assert metrics["epochs_completed"] == target
    assert [h["epoch"] for h in metrics["history"]] == list(range(target))
    assert read_metadata(run / "checkpoints" / "last.safetensors")["extra"]["epoch"] == target - 1
    assert "resuming" in done.stderr and "best checkpoint" in done.stderr  # Rich console on stderr
    assert not list((run / "checkpoints").glob(".*.tmp"))  # temp files of the killed run are cleared


def test_corrupt_and_missing_clips_are_reported_and_training_goes_on(corpus, tmp_path):
    from mmva.train.fit import fit

    data = tmp_path / "corpus"
    shutil.copytree(corpus, data)
    (data / "train_splits" / "dia0_utt0.mp4").write_bytes(os.urandom(4096))  # not a video at all
    (data / "dev_splits_complete" / "dia0_utt1.mp4").unlink()  # a clip that is missing
    result = fit(load_config("tiny", ["train.epochs=1"]), str(data), str(tmp_path / "run"), progress=False)
    assert result.metrics["epochs_completed"] == 1
    assert result.metrics["emotion"]["support"] == 42  # the text of both utterances still counts
    skipped = (tmp_path / "run" / "skipped.csv").read_text()
    assert "dia0_utt0.mp4" in skipped and "dia0_utt1.mp4" in skipped
    bad = [why for what, why in result.skipped if what == "train/dia0_utt0"]
    assert bad and "dia0_utt0.mp4" in bad[0] and len(bad[0]) > len(str(data)) + 20  # file and reason
