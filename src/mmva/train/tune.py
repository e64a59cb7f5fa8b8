"""``tune()``: hyperparameter search over :func:`mmva.train.fit.fit` with Optuna.

Each trial is one ``fit()`` of a config drawn from a search space (TPE sampler), into its own run
folder; it reports the dev emotion weighted-F1 after every epoch and is stopped early (pruned) when
that score is below the median of the finished trials at the same epoch. The study lives in an
Optuna storage (SQLite file in the output folder by default, or any SQLAlchemy URL such as
``postgresql://...``), so a killed search resumes where it stopped and several processes or
machines can work on one study. A study folder holds::

    study.db                           the Optuna study (unless --storage names another)
    trials/trial-0007/                 each trial's run folder (config.yaml, checkpoints, metrics.json,
                                       tensorboard/ with the trial's hyperparameters as HParams)
    best.yaml                          the best trial's resolved config: `mmva train --config best.yaml`
    best.json                          its number, score, hyperparameters and every trial's outcome
    mlflow.db                          one MLflow run per trial, when mlflow is installed
                                       (MLFLOW_TRACKING_URI wins)

Frozen encoders' features go to one cache shared by every trial (``features/``), so only the first
trial extracts them: over cached features each trial trains the heads only.

Example::

    result = tune("tiny", "toy/", "runs/tune", trials=20, overrides=["train.epochs=6"])
    result.best_value, result.best_params, result.best_config
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml
from lightning.pytorch.callbacks import Callback

from mmva.config import Config, load_config, save_config
from mmva.train.task import MONITOR

log = logging.getLogger("mmva")

BEST_METRIC = "hparams/best_dev_emotion_weighted_f1"  # the trial's score in TensorBoard's HParams tab


@dataclass(frozen=True)
class Param:
    """One searched config key: a float or int range (``log`` for a log scale) or a list of ``choices``."""

    key: str  # "section.key", e.g. "train.lr"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None

    def suggest(self, trial: Any) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.key, list(self.choices))
        if isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(self.step, float):
            return trial.suggest_int(self.key, self.low, self.high, step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log,  # type: ignore[arg-type]
                                   step=None if self.step is None else float(self.step))


def parse_space(raw: dict[str, Any]) -> list[Param]:
    """A search space from a mapping (a ``--space`` YAML file)::

        train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
        model.dropout: {low: 0.0, high: 0.5}
        data.batch_size: {choices: [8, 16, 32]}

    >>> [p.key for p in parse_space({"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}})]
    ['train.lr']
    """
    params = []
    for key, spec in raw.items():
        section, _, name = str(key).partition(".")
        if not name or section not in ("data", "model", "train"):
            raise ValueError(f"search space key {key!r}: expected data.<key>, model.<key> or train.<key>")
        if not isinstance(spec, dict) or not ({"choices"} <= set(spec) or {"low", "high"} <= set(spec)):
            raise ValueError(f"search space {key!r}: give {{low, high[, log, step]}} or {{choices: [...]}}")
        unknown = set(spec) - {"low", "high", "log", "step", "choices"}
        if unknown:
            raise ValueError(f"search space {key!r}: unknown field(s) {', '.join(sorted(unknown))}")
        choices = tuple(spec["choices"]) if "choices" in spec else None
        params.append(Param(key=str(key), low=spec.get("low"), high=spec.get("high"), log=bool(spec.get("log")),
                            step=spec.get("step"), choices=choices))
    return params


def default_space(config: Config) -> list[Param]:
    """What ``mmva tune`` searches without ``--space``: the optimiser and the regularisers, around the config."""
    lr = config.train.lr
    return [Param("train.lr", lr / 10, lr * 10, log=True),
            Param("train.weight_decay", 1e-6, 1e-2, log=True),
            Param("model.dropout", 0.0, 0.5),
            Param("model.modality_dropout", 0.0, 0.3),
            Param("train.label_smoothing", 0.0, 0.15)]


@dataclass
class TuneResult:
    """What a search produced (all trials of the study, this process's and others')."""

    study_name: str
    storage: str
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_config: str | None  # best.yaml
    trials: list[dict[str, Any]] = field(default_factory=list)  # number, state, value, params, run_dir

    def count(self, state: str) -> int:
        return sum(t["state"] == state for t in self.trials)


class TrialMonitor(Callback):
    """Reports dev emotion weighted-F1 to the Optuna trial after each epoch, stops the run when the
    pruner says so, and writes the trial's hyperparameters and score as TensorBoard HParams."""

    def __init__(self, trial: Any, params: dict[str, Any]) -> None:
        self.trial = trial
        self.params = params
        self.best: float | None = None
        self.pruned_at: int | None = None

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        value = trainer.callback_metrics.get(MONITOR)
        if trainer.sanity_checking or value is None:
            return
        value, epoch = float(value), int(trainer.current_epoch)
        self.best = value if self.best is None else max(self.best, value)
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True  # end the run cleanly (checkpoints, metrics.json), then prune

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.logger is None:
            return
        hparams = {**self.params, "trial": self.trial.number, "pruned": self.pruned_at is not None}
        trainer.logger.log_hyperparams(hparams, {BEST_METRIC: self.best if self.best is not None else 0.0})


def _config_for(base: Config, params: dict[str, Any], out_dir: str) -> Config:
    raw = base.to_dict()
    for key, value in params.items():
        section, name = key.split(".", 1)
        if name not in raw[section]:
            raise ValueError(f"search space key {key!r}: the config has no {section}.{name}")
        raw[section][name] = value
    if base.train.use_cache and not base.train.cache_dir:
        raw["train"]["cache_dir"] = os.path.join(out_dir, "features")  # frozen features once for all trials
    return Config.from_dict(raw)


def _mlflow_log(out_dir: str, study_name: str, trial: Any, params: dict[str, Any], metrics: dict[str, Any],
                state: str, value: float | None, run_dir: str) -> None:
    """One MLflow run per trial, when mlflow is installed (``MLFLOW_TRACKING_URI``, else ``OUT/mlflow.db``).

    Tracking is a record of the search, not part of it: a failure is logged and the trial goes on.
    """
    try:
        import mlflow
    except ImportError:
        return
    try:
        _mlflow_run(mlflow, out_dir, study_name, trial, params, metrics, state, value, run_dir)
    except Exception as exc:  # an unreachable tracking server must not fail the trial
        log.warning("trial %d not logged to MLflow: %s: %s", trial.number, type(exc).__name__, exc)


def _mlflow_run(mlflow: Any, out_dir: str, study_name: str, trial: Any, params: dict[str, Any],
                metrics: dict[str, Any], state: str, value: float | None, run_dir: str) -> None:
    # A local SQLite file by default: MLflow 3 refuses its old folder store (./mlruns) unless told to.
    mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI")
                            or f"sqlite:///{Path(out_dir, 'mlflow.db').resolve()}")
    mlflow.set_experiment(study_name)
    with mlflow.start_run(run_name=f"trial-{trial.number:04d}"):
        mlflow.log_params(params)
        mlflow.set_tags({"optuna.study": study_name, "optuna.trial": trial.number, "state": state,
                         "run_dir": run_dir})
        for row in metrics.get("history", []):
            for name, v in row.items():
                if name != "epoch" and isinstance(v, (int, float)):
                    mlflow.log_metric(name, float(v), step=int(row["epoch"]))
        if value is not None:
            mlflow.log_metric("best_dev_emotion_weighted_f1", value)


def _storage(url: str, heartbeat_s: int) -> Any:
    import optuna
    from optuna import storages

    # A trial whose process died (kill -9, a lost machine) stops beating; after the grace period the
    # next process marks it failed and queues its hyperparameters again, once.
    retry: dict[str, Any]
    if hasattr(storages, "RetryHeartbeatStaleTrialCallback"):  # optuna >= 4.9
        retry = {"heartbeat_stale_trial_callback": storages.RetryHeartbeatStaleTrialCallback(max_retry=1)}
    else:
        retry = {"failed_trial_callback": storages.RetryFailedTrialCallback(max_retry=1)}
    with warnings.catch_warnings():  # heartbeats are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return storages.RDBStorage(url, heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s, **retry)


def tune(config: str, data: str, out_dir: str, *, trials: int, overrides: Sequence[str] = (),
         space: Sequence[Param] | None = None, storage: str | None = None, study_name: str | None = None,
         seed: int = 0, prune_startup: int = 2, prune_warmup: int = 1, mlflow: bool = True,
         heartbeat_s: int = 60, progress: bool = False) -> TuneResult:
    """Search hyperparameters of ``config`` on corpus ``data`` until the study has ``trials`` finished
    (completed or pruned) trials; writes ``OUT/best.yaml``. Safe to rerun: it resumes the study.

    >>> # tune("tiny", "toy/", "runs/tune", trials=20).best_config   # 'runs/tune/best.yaml'
    """
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    from mmva.train.fit import fit

    base = load_config(config, list(overrides))
    space = list(space) if space is not None else default_space(base)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    url = storage or f"sqlite:///{Path(out_dir, 'study.db').resolve()}"
    name = study_name or f"mmva-{base.name}"
    study = optuna.create_study(
        study_name=name, storage=_storage(url, heartbeat_s), direction="maximize", load_if_exists=True,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=prune_startup, n_warmup_steps=prune_warmup))
    # Seeded by the trials already there: a resumed search must not replay the random start-up trials.
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.get_trials(deepcopy=False)))
    finished = (TrialState.COMPLETE, TrialState.PRUNED)

    def objective(trial: Any) -> float:
        params = {p.key: p.suggest(trial) for p in space}
        cfg = _config_for(base, params, out_dir)
        run_dir = os.path.join(out_dir, "trials", f"trial-{trial.number:04d}")
        trial.set_user_attr("run_dir", run_dir)
        trial.set_user_attr("config", cfg.to_dict())
        monitor = TrialMonitor(trial, params)
        result = fit(cfg, data, run_dir, progress=progress, callbacks=[monitor])
        value = result.metrics.get("best_score")
        state = "pruned" if monitor.pruned_at is not None else "complete"
        if mlflow:
            _mlflow_log(out_dir, name, trial, params, result.metrics, state, value, run_dir)
        if monitor.pruned_at is not None:
            raise optuna.TrialPruned(f"dev emotion weighted-F1 below the median at epoch {monitor.pruned_at}")
        return float(value) if value is not None else 0.0

    remaining = trials - len(study.get_trials(deepcopy=False, states=finished))
    if remaining > 0:
        study.optimize(objective, n_trials=remaining, callbacks=[MaxTrialsCallback(trials, states=finished)])
    return _write_best(study, out_dir, url)


def _write_best(study: Any, out_dir: str, url: str) -> TuneResult:
    from optuna.trial import TrialState

    rows = [{"number": t.number, "state": t.state.name.lower(), "value": t.value, "params": t.params,
             "run_dir": t.user_attrs.get("run_dir")} for t in study.get_trials(deepcopy=False)]
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return TuneResult(study.study_name, url, None, None, {}, None, rows)
    best = max(done, key=lambda t: t.value)
    best_config = Config.from_dict(best.user_attrs["config"])
    path = os.path.join(out_dir, "best.yaml")
    save_config(best_config, path)
    summary = {"study": study.study_name, "storage": url, "best_trial": best.number, "best_value": best.value,
               "best_params": best.params, "best_run_dir": best.user_attrs.get("run_dir"), "config": path,
               "monitor": MONITOR, "trials": rows}
    Path(out_dir, "best.json").write_text(json.dumps(summary, indent=2, default=str))
    log.info("best trial %d: %s = %.4f; its config is %s", best.number, MONITOR, best.value, path)
    return TuneResult(study.study_name, url, best.number, best.value, dict(best.params), path, rows)


def load_space(path: str | None, config: Config) -> list[Param]:
    """The ``--space`` YAML file's search space, or :func:`default_space`."""
    if not path:
        return default_space(config)
    return parse_space(yaml.safe_load(Path(path).read_text()) or {})


__all__ = ["Param", "TrialMonitor", "TuneResult", "default_space", "load_space", "parse_space", "tune"]
