"""`mmva tune` on a generated corpus: a 4-trial study of the tiny config that finishes, prunes, resumes
after a `kill -9`, logs every trial's hyperparameters to TensorBoard (and MLflow when installed), and
whose best config retrains to the same dev score."""

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
import yaml

optuna = pytest.importorskip("optuna", reason="the tune extra (pip install -e .[tune]) is not installed")

from mmva.config import load_config  # noqa: E402
from mmva.train.tune import parse_space, tune  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# A learning rate that learns and one that cannot (1e-6): some trials fall below the median and are pruned.
SPACE = {"train.lr": {"choices": [1.0e-6, 0.003]}, "model.dropout": {"low": 0.0, "high": 0.4}}
FIXED = ["train.epochs=3"]
TRIALS = 4


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> str:
    from mmva.data import make_corpus

    return str(make_corpus(tmp_path_factory.mktemp("corpus"), n_per_class=3, seed=0))


def tune_command(corpus: str, out: Path, space: Path) -> list[str]:
    exe = shutil.which("mmva")
    cmd = [exe] if exe else [sys.executable, "-c", "from mmva.cli import app; app()"]
    return [*cmd, "tune", "--data", corpus, "--config", "tiny", "--trials", str(TRIALS), "--out", str(out),
            "--space", str(space), "--set", FIXED[0], "--prune-startup", "1", "--prune-warmup", "0", "--no-mlflow"]


def finished_trials(out: Path) -> list:
    study = optuna.load_study(study_name="mmva-tiny", storage=f"sqlite:///{out / 'study.db'}")
    return [t for t in study.get_trials(deepcopy=False) if t.state.is_finished()]


@pytest.fixture(scope="module")
def study(corpus: str, tmp_path_factory: pytest.TempPathFactory):
    """`mmva tune` killed with SIGKILL once a trial has finished, then resumed in-process to the end."""
    out = tmp_path_factory.mktemp("tune") / "study"
    space = out.parent / "space.yaml"
    space.write_text(yaml.safe_dump(SPACE, sort_keys=False))  # the order the sampler draws them in
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = open(out.parent / "tune.log", "wb")
    proc = subprocess.Popen(tune_command(corpus, out, space), stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (out / "study.db").exists() and finished_trials(out):
                break
            time.sleep(0.5)
        assert proc.poll() is None, f"mmva tune ended before it could be killed:\n{(out.parent / 'tune.log').read_text()}"
        assert finished_trials(out), "no trial finished in time"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    before_resume = len(finished_trials(out))
    result = tune("tiny", corpus, str(out), trials=TRIALS, overrides=FIXED, space=parse_space(SPACE),
                  prune_startup=1, prune_warmup=0, mlflow=False)
    return out, result, before_resume


def test_study_finishes_prunes_and_resumes_after_a_kill(study) -> None:
    out, result, before_resume = study
    assert 1 <= before_resume < TRIALS  # the kill came mid-study
    states = [t["state"] for t in result.trials]
    assert states.count("complete") + states.count("pruned") == TRIALS, result.trials
    assert states.count("pruned") >= 1 and states.count("complete") >= 1, result.trials
    # The trial that was running at the kill is left unfinished (failed once its heartbeat is stale) and
    # every trial has its own run folder, its config inside.
    assert len(result.trials) >= TRIALS
    for t in result.trials:
        if t["state"] in ("complete", "pruned"):
            run = Path(t["run_dir"])
            assert (run / "config.yaml").exists() and (run / "metrics.json").exists()
            saved = yaml.safe_load((run / "config.yaml").read_text())
            assert saved["train"]["lr"] == t["params"]["train.lr"] and saved["train"]["epochs"] == 3
    pruned = [t for t in result.trials if t["state"] == "pruned"]
    assert all(json.loads((Path(t["run_dir"]) / "metrics.json").read_text())["epochs_completed"] < 3
               or len(json.loads((Path(t["run_dir"]) / "metrics.json").read_text())["history"]) < 3
               for t in pruned)  # a pruned trial stopped before its last epoch
    best = json.loads((out / "best.json").read_text())
    assert best["best_trial"] == result.best_trial and best["best_value"] == result.best_value
    assert result.best_value == max(t["value"] for t in result.trials if t["state"] == "complete")


def test_every_trial_has_its_hyperparameters_in_tensorboard(study) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, result, _ = study
    for t in result.trials:
        if t["state"] not in ("complete", "pruned"):
            continue
        events = EventAccumulator(str(Path(t["run_dir"]) / "tensorboard")).Reload()
        content = events.PluginTagToContent("hparams")["_hparams_/session_start_info"]
        hparams = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
        assert hparams["train.lr"].number_value == pytest.approx(t["params"]["train.lr"])
        assert hparams["trial"].number_value == t["number"]
        assert bool(hparams["pruned"].number_value) == (t["state"] == "pruned")
        assert events.Scalars("hparams/best_dev_emotion_weighted_f1")
        assert events.Scalars("val/emotion_weighted_f1")  # the curves sit beside the HParams


def test_best_config_retrains_to_the_same_score(study, corpus: str, tmp_path: Path) -> None:
    from mmva.train.fit import fit

    out, result, _ = study
    config = load_config(str(out / "best.yaml"))  # what `mmva train --config OUT/best.yaml` loads
    assert config.train.lr == result.best_params["train.lr"]
    assert config.model.dropout == pytest.approx(result.best_params["model.dropout"])
    again = fit(config, corpus, str(tmp_path / "retrain"), progress=False)
    assert again.metrics["best_score"] == pytest.approx(result.best_value, abs=1e-6)


def test_trials_are_logged_to_mlflow(corpus: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mlflow = pytest.importorskip("mlflow", reason="mlflow is optional (pip install -e .[tune])")
    uri = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # honoured over OUT/mlflow.db
    result = tune("tiny", corpus, str(tmp_path / "study"), trials=2, overrides=["train.epochs=2"],
                  space=parse_space({"model.dropout": {"low": 0.0, "high": 0.4}}), prune_startup=5)
    assert not (tmp_path / "study" / "mlflow.db").exists() and (tmp_path / "elsewhere.db").exists()
    client = mlflow.tracking.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(result.study_name)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert "model.dropout" in run.data.params and run.data.tags["state"] == "complete"
        assert run.data.metrics["best_dev_emotion_weighted_f1"] >= 0
        history = client.get_metric_history(run.info.run_id, "val/emotion_weighted_f1")
        assert [m.step for m in history] == [0, 1]
