"""SageMaker training entry point: ``python -m mmva.cloud.entry`` (also ``mmva sagemaker-entry``).

It reads what SageMaker provides, from the ``SM_*`` variables when the SageMaker training toolkit
set them, else from the files SageMaker always writes under ``/opt/ml``:

- data: ``SM_CHANNEL_<NAME>`` or ``/opt/ml/input/data/<name>`` (channel ``training`` by default;
  a ``data`` hyperparameter may name an ``s3://`` corpus instead, read in place);
- hyperparameters: ``SM_HPS`` or ``/opt/ml/input/config/hyperparameters.json``: ``recipe``
  (``fit``: the multimodal model of ``mmva train``, default; ``text``: the default text model of
  ``mmva train-text``, which the serving container loads), ``config`` (preset or path), any
  ``section.key`` override (``train.epochs: "3"``; ``text.epochs: "2"`` for the text recipe),
  ``train-split``, ``dev-split``, ``run-dir``, ``processes-per-host``;
- hosts: ``SM_HOSTS``/``SM_CURRENT_HOST`` or ``resourceconfig.json``; GPUs: ``SM_NUM_GPUS``.

With several hosts or GPUs it re-launches itself under ``torchrun`` (one process per GPU, the
first host as rendezvous). Checkpoints go to ``/opt/ml/checkpoints`` when the job has a
CheckpointConfig (so a restarted spot job resumes), else to ``SM_OUTPUT_DATA_DIR``. At the end,
rank 0 writes the servable model (see :mod:`mmva.cloud.package`) into ``SM_MODEL_DIR``, which
SageMaker uploads as ``model.tar.gz``. On failure the reason goes to ``/opt/ml/output/failure``.

Every ``/opt/ml`` path moves with ``SM_PREFIX`` (tests point it at a temp folder).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger("mmva")

# Keys the SageMaker SDK adds for its own script mode; not ours to interpret.
_SDK_KEYS = ("sagemaker_", "_tuning_objective_metric")
_ENTRY_KEYS = ("recipe", "config", "data", "data-channel", "train-split", "dev-split", "run-dir",
               "processes-per-host", "master-port", "resume")


def _prefix() -> Path:
    return Path(os.environ.get("SM_PREFIX", "/opt/ml"))


def _json_env(name: str) -> Any:
    raw = os.environ.get(name)
    return json.loads(raw) if raw else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None


def _parse(value: Any) -> Any:
    # SageMaker passes every hyperparameter as a string (the SDK JSON-encodes them first).
    if not isinstance(value, str):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError:
        return value  # not YAML: the plain string


@dataclass(frozen=True)
class SageMakerEnv:
    """Everything the entry point takes from SageMaker, resolved once."""

    channels: dict[str, str]
    model_dir: str
    output_data_dir: str
    checkpoint_dir: str | None
    hosts: tuple[str, ...]
    current_host: str
    num_gpus: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)

    @property
    def host_rank(self) -> int:
        return self.hosts.index(self.current_host) if self.current_host in self.hosts else 0

    @classmethod
    def from_environment(cls) -> "SageMakerEnv":
        """Read ``SM_*`` variables, falling back to the files under ``/opt/ml`` (or ``SM_PREFIX``)."""
        prefix = _prefix()
        channels = {k[len("SM_CHANNEL_"):].lower(): v for k, v in os.environ.items()
                    if k.startswith("SM_CHANNEL_")}
        data_root = prefix / "input" / "data"
        if not channels and data_root.is_dir():
            channels = {p.name: str(p) for p in sorted(data_root.iterdir()) if p.is_dir()}
        config_dir = Path(os.environ.get("SM_INPUT_CONFIG_DIR", prefix / "input" / "config"))
        hps = _json_env("SM_HPS")
        if hps is None:
            hps = _read_json(config_dir / "hyperparameters.json") or {}
        resource = _read_json(config_dir / "resourceconfig.json") or {}
        hosts = _json_env("SM_HOSTS") or resource.get("hosts") or ["algo-1"]
        current = os.environ.get("SM_CURRENT_HOST") or resource.get("current_host") or hosts[0]
        checkpoint_dir = os.environ.get("SM_CHECKPOINT_DIR", str(prefix / "checkpoints"))
        gpus = os.environ.get("SM_NUM_GPUS")
        return cls(
            channels=channels,
            model_dir=os.environ.get("SM_MODEL_DIR", str(prefix / "model")),
            output_data_dir=os.environ.get("SM_OUTPUT_DATA_DIR", str(prefix / "output" / "data")),
            checkpoint_dir=checkpoint_dir if Path(checkpoint_dir).is_dir() else None,
            hosts=tuple(hosts), current_host=current,
            num_gpus=int(gpus) if gpus is not None else _count_gpus(),
            hyperparameters={k: _parse(v) for k, v in hps.items() if not k.startswith(_SDK_KEYS)},
        )

    def data_root(self) -> str:
        """The corpus to train on: the ``data`` hyperparameter, else the data channel."""
        hp = self.hyperparameters
        if hp.get("data"):
            return str(hp["data"])
        wanted = hp.get("data-channel")
        names = [wanted] if wanted else ["training", "train", "data"]
        for name in names:
            if name in self.channels:
                return self.channels[name]
        if not wanted and len(self.channels) == 1:
            return next(iter(self.channels.values()))
        raise ValueError(f"no data: channel {' / '.join(names)} not among {sorted(self.channels) or 'none'}"
                         " and no 'data' hyperparameter")

    def overrides(self) -> list[str]:
        """``section.key=value`` config overrides from the hyperparameters."""
        out = []
        for key, value in self.hyperparameters.items():
            if key in _ENTRY_KEYS or (self.recipe == "text" and key.startswith("text.")):
                continue
            if "." not in key:
                raise ValueError(f"hyperparameter {key!r}: expected a section.key override "
                                 f"(e.g. train.epochs) or one of {', '.join(_ENTRY_KEYS)}")
            out.append(f"{key}={json.dumps(value) if not isinstance(value, str) else value}")
        return out

    @property
    def recipe(self) -> str:
        """``fit`` (the multimodal model, ``mmva train``) or ``text`` (the servable default model)."""
        recipe = str(self.hyperparameters.get("recipe") or "fit")
        if recipe not in ("fit", "text"):
            raise ValueError(f"hyperparameter recipe={recipe!r}: expected 'fit' or 'text'")
        return recipe

    def text_options(self) -> dict[str, Any]:
        """``text.<field>`` hyperparameters: fields of :class:`~mmva.train.text_finetune.TextTrainConfig`."""
        return {k[len("text."):]: v for k, v in self.hyperparameters.items() if k.startswith("text.")}

    def run_dir(self) -> str:
        if self.hyperparameters.get("run-dir"):
            return str(self.hyperparameters["run-dir"])
        if self.checkpoint_dir:
            return str(Path(self.checkpoint_dir) / "run")
        return str(Path(self.output_data_dir) / "run")

    def processes_per_host(self) -> int:
        return int(self.hyperparameters.get("processes-per-host") or max(1, self.num_gpus))


def _count_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def torchrun_command(env: SageMakerEnv) -> list[str] | None:
    """The ``torchrun`` command that runs this entry point on every host and GPU, or None for one process."""
    procs = env.processes_per_host()
    if len(env.hosts) <= 1 and procs <= 1:
        return None
    port = int(env.hyperparameters.get("master-port") or 29500)
    master = env.hosts[0] if len(env.hosts) > 1 else "127.0.0.1"  # SageMaker resolves algo-N names
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={len(env.hosts)}",
            f"--node_rank={env.host_rank}", f"--nproc_per_node={procs}",
            f"--master_addr={master}", f"--master_port={port}", "-m", "mmva.cloud.entry"]


def _metric_lines(metrics: dict[str, Any], name: str = "") -> list[str]:
    """``dev/emotion_weighted_f1=0.610000``-style lines, matched by the job's MetricDefinitions."""
    lines = []
    for key, value in metrics.items():
        key = str(key)
        for prefix in ("dev/", "val/", "dev_", "val_"):
            key = key[len(prefix):] if not name and key.startswith(prefix) else key
        full = f"{name}_{key}" if name else key
        if isinstance(value, dict):
            lines += _metric_lines(value, full)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"dev/{full.replace('/', '_')}={value:.6f}")
    return lines


def train_text_model(env: SageMakerEnv) -> dict[str, Any]:
    """``recipe=text``: fine-tune the default text model and install it as the servable model."""
    from mmva.cloud.package import write_model_dir
    from mmva.model.default import install_text_model
    from mmva.train.text_finetune import TextTrainConfig, train_text

    fields = {f.name for f in dataclasses.fields(TextTrainConfig)} - {"model"}
    unknown = set(env.text_options()) - fields
    if unknown:
        raise ValueError(f"unknown text.* hyperparameter(s) {', '.join(sorted(unknown))}; "
                         f"TextTrainConfig has {', '.join(sorted(fields))}")
    data = env.data_root()
    if "://" in data:
        raise ValueError(f"recipe=text reads a local corpus (a SageMaker channel), not {data}")
    run_dir = env.run_dir()
    log.info("SageMaker text recipe: data %s, run dir %s", data, run_dir)
    result = train_text(data, run_dir, TextTrainConfig(**env.text_options()), resume=True,
                        train_split=str(env.hyperparameters.get("train-split") or "train"),
                        dev_split=str(env.hyperparameters.get("dev-split") or "dev"))
    staged = Path(run_dir) / "installed"
    install_text_model(run_dir, staged)
    write_model_dir(str(staged), env.model_dir)
    return result.metrics


def train(env: SageMakerEnv) -> dict[str, Any]:
    """Train with the job's config and data; on rank 0, write the servable model. Returns metrics."""
    if env.recipe == "text":
        if env.host_rank != 0:  # one CPU-sized job: the other hosts have nothing to do
            log.info("recipe=text trains on %s only; %s exits", env.hosts[0], env.current_host)
            return {}
        metrics = train_text_model(env)
        _write_metrics(env, metrics)
        return metrics
    from mmva.cloud.package import write_model_dir
    from mmva.config import load_config
    from mmva.train import distributed
    from mmva.train.fit import fit

    config = load_config(str(env.hyperparameters.get("config") or "tiny"), env.overrides())
    from mmva.io import storage

    run_dir = env.run_dir()
    # A restarted job (spot interruption) finds its checkpoints in /opt/ml/checkpoints: continue.
    resume = bool(env.hyperparameters.get("resume", True)) and storage.exists(
        storage.join(run_dir, "checkpoints", "last.ckpt"))
    log.info("SageMaker training: config %s, data %s, run dir %s, host %s of %s", config.name,
             env.data_root(), run_dir, env.current_host, list(env.hosts))
    result = fit(config, env.data_root(), run_dir, resume=resume,
                 train_split=str(env.hyperparameters.get("train-split") or "train"),
                 dev_split=str(env.hyperparameters.get("dev-split") or "dev"))
    if distributed.is_main_process():
        write_model_dir(result.best_checkpoint, env.model_dir, metrics=result.metrics)
        _write_metrics(env, result.metrics)
    return result.metrics


def _write_metrics(env: SageMakerEnv, metrics: dict[str, Any]) -> None:
    out = Path(env.output_data_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
    for line in _metric_lines(metrics):
        print(line, flush=True)


def _write_failure(message: str) -> None:
    failure = _prefix() / "output" / "failure"
    try:
        failure.parent.mkdir(parents=True, exist_ok=True)
        failure.write_text(message[-1000:])  # SageMaker shows this as the job's FailureReason
    except OSError:
        pass


def main(argv: list[str] | None = None) -> int:
    """Run the training job; exit code 0 on success, 1 with a failure file otherwise."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from mmva.train import distributed

    try:
        env = SageMakerEnv.from_environment()
        command = None if distributed.launched_by_torchrun() or env.recipe == "text" else torchrun_command(env)
        if command:
            log.info("launching: %s", " ".join(command))
            return subprocess.call(command)
        train(env)
        return 0
    except Exception as exc:  # the job must end with a readable reason, whatever failed
        traceback.print_exc()
        _write_failure(f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
