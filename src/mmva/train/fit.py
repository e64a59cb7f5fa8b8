"""``fit()``: train a model on a corpus, with checkpoints, resume, TensorBoard and a skip report.

One loop for every model (house style rule 7): Lightning's Trainer around :class:`SentimentTask`.
A run directory holds::

    config.yaml                      the resolved config
    checkpoints/last.ckpt            resume state (optimizer, loops), loads with weights_only=True
    checkpoints/last.safetensors     deployable model after the latest epoch
    checkpoints/epoch003.{ckpt,safetensors}   the best-k epochs by dev emotion weighted-F1
    features/                        cached frozen-encoder outputs (unless train.cache_dir is set)
    tensorboard/                     losses, metrics, learning rate, confusion matrices
    metrics.json, skipped.csv        the best epoch's dev metrics; what was skipped and why
"""

from __future__ import annotations

import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Sequence

import lightning as L
import torch
import yaml
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from torch.utils.data import DataLoader

from mmva.config import Config, save_config
from mmva.io import storage
from mmva.labels import EMOTIONS, SENTIMENTS
from mmva.model.checkpoint import CheckpointError, load_training_state, save_checkpoint, save_training_state
from mmva.model.multimodal import MultimodalSentimentAnalyzer
from mmva.train.losses import class_weights, label_ids
from mmva.train.metrics import json_safe
from mmva.train.task import MONITOR, SentimentTask

log = logging.getLogger("mmva")


@dataclass
class FitResult:
    """What a training run produced: deployable checkpoints, dev metrics and the run folder."""

    best_checkpoint: str
    last_checkpoint: str
    metrics: dict[str, Any]
    run_dir: str
    skipped: list[tuple[str, str]] = field(default_factory=list)


# -- checkpoint plumbing ------------------------------------------------------------------------
class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O that never leaves a half-written file and never unpickles code.

    Lightning's default writes through an fsspec transaction without fsync and loads with
    ``weights_only=False`` for its own files; mmva wants crash-safe writes (temp file + fsync +
    rename, or one S3 PUT) and ``weights_only=True`` always.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        save_training_state(checkpoint, str(path))

    def load_checkpoint(self, path: Any, map_location: Any | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        return load_training_state(str(path), map_location=map_location or "cpu")

    def remove_checkpoint(self, path: Any) -> None:
        storage.remove(str(path))


def export_path(ckpt_path: str) -> str:
    """The deployable ``.safetensors`` that sits next to a Lightning ``.ckpt``."""
    return ckpt_path[: -len(".ckpt")] + ".safetensors" if ckpt_path.endswith(".ckpt") else ckpt_path + ".safetensors"


class ExportingCheckpoint(ModelCheckpoint):
    """Best-k + last checkpoints, each also exported as one self-describing safetensors file.

    A checkpoint that cannot be written (full disk, lost bucket) is reported and training goes
    on: the previous files are intact because every write is atomic.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.errors: list[str] = []

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        try:
            if trainer.is_global_zero:
                task = trainer.lightning_module
                save_checkpoint(task.model, task.config, export_path(filepath), extra=task.checkpoint_extra())
            super()._save_checkpoint(trainer, filepath)
        except OSError as exc:
            msg = f"{filepath}: checkpoint not written ({exc.strerror or exc}); the previous one is intact"
            log.error(msg)
            self.errors.append(msg)

    # Lightning 2.6 writes last.ckpt only when a top-k checkpoint was saved at the same step;
    # `--resume` and `last.safetensors` promise the latest epoch, so it is saved every epoch.
    def _save_last_if_missing(self, trainer: L.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            self._last_global_step_saved = trainer.global_step

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missing(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_if_missing(trainer)

    def _remove_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        if trainer.is_global_zero:
            storage.remove(export_path(filepath))


class Throughput(Callback):
    """Training clips per second (data loading included), per epoch and overall."""

    def __init__(self) -> None:
        self.clips = 0
        self.seconds = 0.0
        self._start = 0.0
        self._epoch_clips = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._epoch_clips = time.perf_counter(), 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                           batch: Any, batch_idx: int) -> None:
        self._epoch_clips += len(batch["uid"])

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = time.perf_counter() - self._start
        self.clips += self._epoch_clips
        self.seconds += seconds
        if seconds > 0:
            pl_module.log("train/clips_per_second", self._epoch_clips / seconds)

    @property
    def clips_per_second(self) -> float:
        return self.clips / self.seconds if self.seconds else 0.0


# -- helpers ------------------------------------------------------------------------------------
def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """``"auto"`` -> bf16-mixed on CPU, bf16-mixed or 16-mixed on CUDA (by hardware support).

    >>> resolve_precision("32")
    '32'
    """
    if precision != "auto":
        return precision
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if on_gpu:
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed"


def _check_resume_config(run_dir: str, config: Config) -> None:
    path = storage.join(run_dir, "config.yaml")
    if not storage.exists(path):
        return
    saved = Config.from_dict(yaml.safe_load(storage.read_text(path)))
    if saved != config:
        old, new = saved.to_dict(), config.to_dict()
        diffs = [f"{s}.{k}: {old[s][k]!r} -> {new[s][k]!r}" for s in ("data", "model", "train")
                 for k in new[s] if old[s].get(k) != new[s][k]]
        log.warning("resuming with a config that differs from the saved one: %s", "; ".join(diffs))


def _write_run_config(run_dir: str, config: Config) -> None:
    from mmva.train.distributed import is_main_process

    if not is_main_process():
        return
    if storage.is_remote(run_dir):
        storage.write_text_atomic(storage.join(run_dir, "config.yaml"), yaml.safe_dump(config.to_dict(), sort_keys=False))
    else:
        os.makedirs(run_dir, exist_ok=True)
        save_config(config, os.path.join(run_dir, "config.yaml"))


def _remove_stale_temp_files(ckpt_dir: str) -> None:
    """Delete temp files a killed run left mid-write (``.last.ckpt.*.tmp``); finished files stay."""
    from mmva.train.distributed import is_main_process

    if not is_main_process() or storage.is_remote(ckpt_dir) or not os.path.isdir(ckpt_dir):
        return  # object stores never show a partial upload
    for name in os.listdir(ckpt_dir):
        if name.startswith(".") and name.endswith(".tmp"):
            log.info("removing %s, left by an interrupted checkpoint write", name)
            os.remove(os.path.join(ckpt_dir, name))


def _prepare_cache(model: MultimodalSentimentAnalyzer, config: Config, run_dir: str,
                   utterances: list[Any], report: Any, stats: dict[str, Any],
                   progress: bool = True) -> tuple[Any, frozenset[str]]:
    """Extract frozen-encoder features once (contract C) so epochs read features, not videos."""
    frozen = model.frozen_modalities()
    if not (config.train.use_cache and frozen):
        return None, frozenset()
    from mmva.encoders.cache import FeatureCache
    from mmva.train.distributed import extract_features_sharded

    cache = FeatureCache(config.train.cache_dir or storage.join(run_dir, "features"))
    encoders = {m: model.encoders[m] for m in frozen}
    started = time.perf_counter()
    extracted = extract_features_sharded([u for u in utterances if u.path or u.text], encoders, cache,
                                         config.data, workers=max(1, config.data.num_workers), progress=progress)
    log.info("features of %s: %d computed, %d reused, %d failed in %.1f s", ", ".join(frozen),
             extracted.computed, extracted.reused, len(extracted.failed), time.perf_counter() - started)
    for uid, reason in extracted.failed:
        report.add(uid, reason)
    stats.update({"cache": cache.root, "modalities": list(frozen), "computed": extracted.computed,
                  "reused": extracted.reused, "failed": len(extracted.failed),
                  "seconds": round(time.perf_counter() - started, 2)})
    return cache, frozenset(frozen)


def make_loaders(config: Config, model: MultimodalSentimentAnalyzer, train_utts: list[Any], dev_utts: list[Any],
                 cache: Any, cached: frozenset[str]) -> tuple[DataLoader, DataLoader]:
    """Train/dev DataLoaders over :class:`mmva.data.UtteranceDataset` (process-sharded samplers)."""
    from mmva.data import UtteranceDataset, collate_batch
    from mmva.train.distributed import eval_sampler, train_sampler

    encoders = dict(model.encoders)
    d = config.data
    train_ds = UtteranceDataset(train_utts, encoders, d, cache=cache, cached=cached)
    dev_ds = UtteranceDataset(dev_utts, encoders, d, cache=cache, cached=cached)
    collate = partial(collate_batch, encoders=encoders)
    common: dict[str, Any] = {"batch_size": d.batch_size, "num_workers": d.num_workers, "collate_fn": collate,
                              "persistent_workers": d.num_workers > 0}
    train = DataLoader(train_ds, sampler=train_sampler(train_ds, seed=config.train.seed),
                       drop_last=len(train_ds) > d.batch_size, **common)  # batch norm: no batch of one
    dev = DataLoader(dev_ds, sampler=eval_sampler(dev_ds), **common)
    return train, dev


def _build_trainer(config: Config, run_dir: str, callbacks: list[Callback], progress: bool) -> L.Trainer:
    from lightning.pytorch.loggers import TensorBoardLogger

    from mmva.train.distributed import trainer_kwargs

    t = config.train
    kwargs = trainer_kwargs(t)
    # Frozen encoders stay in eval mode on purpose (inference-mode batch norm): not a surprise here.
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    return L.Trainer(
        max_epochs=t.epochs, precision=resolve_precision(t.precision, kwargs["accelerator"]),
        accumulate_grad_batches=t.accumulate_grad_batches,
        gradient_clip_val=t.grad_clip or None, gradient_clip_algorithm="norm",
        limit_train_batches=t.limit_train_batches, log_every_n_steps=t.log_every_n_steps,
        callbacks=callbacks, plugins=[AtomicCheckpointIO()],
        logger=TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False),
        num_sanity_val_steps=0, use_distributed_sampler=False, enable_progress_bar=progress,
        enable_model_summary=False, deterministic=False, **kwargs,
    )


# -- the entry point ----------------------------------------------------------------------------
def fit(config: Config, data: str, out_dir: str, *, resume: bool = False, train_split: str = "train",
        dev_split: str = "dev", progress: bool = True, callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train ``config``'s model on corpus ``data`` into ``out_dir``; ``resume`` continues its last.ckpt.

    ``callbacks`` are added to the trainer's own (``mmva tune`` reports each epoch's dev score and
    prunes through one).

    >>> # from mmva.config import load_config
    >>> # fit(load_config("tiny", ["train.epochs=3"]), "corpus/", "runs/tiny").metrics["emotion"]["weighted_f1"]
    """
    from mmva.data import SkipReport, load_corpus

    run_dir = str(out_dir)
    ckpt_dir = storage.join(run_dir, "checkpoints")
    last_ckpt = storage.join(ckpt_dir, "last.ckpt")
    if resume:
        if not storage.exists(last_ckpt):
            raise FileNotFoundError(f"{last_ckpt}: nothing to resume from (no last checkpoint in {run_dir})")
        _check_resume_config(run_dir, config)
    L.seed_everything(config.train.seed, workers=True, verbose=False)
    report = SkipReport()
    train_c, dev_c = load_corpus(data, train_split), load_corpus(data, dev_split)  # bad --data fails first
    if {u.uid for u in train_c.utterances} == {u.uid for u in dev_c.utterances}:
        log.warning("%s: splits %r and %r hold the same utterances (a single manifest file?), so dev scores, "
                    "early stopping and the best checkpoint measure training data; give a folder with "
                    "%s.csv and %s.csv instead", data, train_split, dev_split, train_split, dev_split)
    _write_run_config(run_dir, config)
    _remove_stale_temp_files(ckpt_dir)
    for corpus in (train_c, dev_c):
        report.add_problems(corpus.problems)
    model = MultimodalSentimentAnalyzer(config)
    features: dict[str, Any] = {}
    cache, cached = _prepare_cache(model, config, run_dir, [*train_c.utterances, *dev_c.utterances], report,
                                   features, progress)
    train_loader, dev_loader = make_loaders(config, model, train_c.utterances, dev_c.utterances, cache, cached)
    task = SentimentTask(
        model, config,
        class_weights(label_ids(train_c.utterances, "emotion"), len(EMOTIONS)) if config.train.class_weights else None,
        class_weights(label_ids(train_c.utterances, "sentiment"), len(SENTIMENTS)) if config.train.class_weights else None,
    )
    ckpt_cb = ExportingCheckpoint(dirpath=ckpt_dir, filename="epoch{epoch:03d}", auto_insert_metric_name=False,
                                  monitor=MONITOR, mode="max", save_top_k=config.train.save_top_k,
                                  save_last=True, enable_version_counter=False)
    meter = Throughput()
    own: list[Callback] = [ckpt_cb, meter, LearningRateMonitor(logging_interval="step"),
                           EarlyStopping(MONITOR, mode="max", patience=config.train.patience,
                                         check_on_train_epoch_end=False)]
    trainer = _build_trainer(config, run_dir, [*own, *callbacks], progress)
    started = time.perf_counter()
    try:
        trainer.fit(task, train_loader, dev_loader, ckpt_path=last_ckpt if resume else None, weights_only=True)
    finally:
        known = set(report.entries)
        report.extend(p for p in task.gathered_data_issues() if p not in known)
    result = _finish(run_dir, ckpt_cb, task, trainer, meter, report, started,
                     n_train=len(train_c.utterances), n_dev=len(dev_c.utterances), features=features)
    return result


def _finish(run_dir: str, ckpt_cb: ExportingCheckpoint, task: SentimentTask, trainer: L.Trainer,
            meter: Throughput, report: Any, started: float, n_train: int, n_dev: int,
            features: dict[str, Any]) -> FitResult:
    last = export_path(ckpt_cb.last_model_path) if ckpt_cb.last_model_path else ""
    best = export_path(ckpt_cb.best_model_path) if ckpt_cb.best_model_path else last
    if ckpt_cb.errors and best and not storage.exists(best):  # its write failed (e.g. full disk)
        best = last if last and storage.exists(last) else ""
    best_score = ckpt_cb.best_model_score
    metrics: dict[str, Any] = {
        "best_epoch": task.best_metrics.get("epoch"),
        "best_score": float(best_score) if best_score is not None else None,
        "monitor": MONITOR,
        "emotion": task.best_metrics.get("emotion", {}),
        "sentiment": task.best_metrics.get("sentiment", {}),
        "epochs_completed": int(trainer.current_epoch),
        "resumed_from_epoch": task.resumed_from_epoch,
        "stopped_early": bool(trainer.early_stopping_callback and trainer.early_stopping_callback.stopped_epoch),
        "history": task.history,
        "skipped_steps": task.skipped_steps,
        "checkpoint_errors": ckpt_cb.errors,
        "train_utterances": n_train, "dev_utterances": n_dev,
        "train_clips_per_second": round(meter.clips_per_second, 3),
        "features": features,  # the frozen-encoder feature cache: computed/reused entries
        "seconds": round(time.perf_counter() - started, 2),
    }
    skipped = list(report.entries)
    if trainer.is_global_zero:
        storage.write_text_atomic(storage.join(run_dir, "metrics.json"), json.dumps(json_safe(metrics), indent=2))
        storage.write_text_atomic(storage.join(run_dir, "skipped.csv"), report.to_csv())
        if report:
            log.info("%s", report.summary())
        if task.skipped_steps:
            log.warning("%d training step(s) skipped for a non-finite loss (listed in metrics.json)",
                        len(task.skipped_steps))
    return FitResult(best_checkpoint=best, last_checkpoint=last, metrics=metrics, run_dir=run_dir, skipped=skipped)


__all__ = ["FitResult", "fit", "resolve_precision", "AtomicCheckpointIO", "ExportingCheckpoint",
           "CheckpointError", "export_path", "make_loaders"]
