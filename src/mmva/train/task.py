"""The training task: a LightningModule around :class:`MultimodalSentimentAnalyzer`.

Model (pure tensors) vs task (labels, loss, metrics, optimiser) as in pyannote: the model knows
nothing about training, the task knows nothing about files. Lightning supplies mixed precision,
gradient accumulation, clipping, checkpoints/resume and strategies (DDP under ``torchrun``).

A batch is what :func:`mmva.data.collate_batch` returns::

    {"uid": [str], "inputs": {m: prepared batch | None}, "features": {m: (b, D)},
     "masks": {m: (b,)}, "emotion": (b,) long, "sentiment": (b,) long}

``features`` carries cached outputs of frozen encoders; the other modalities are encoded here.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning as L
import torch

from mmva.config import Config
from mmva.labels import EMOTIONS, SENTIMENTS
from mmva.model.multimodal import MultimodalSentimentAnalyzer
from mmva.train.losses import MultiTaskLoss
from mmva.train.metrics import compute_metrics, confusion_image, confusion_markdown, flat_scalars

log = logging.getLogger("mmva")

MONITOR = "val/emotion_weighted_f1"  # early stopping and best-k checkpoints follow this


class NonFiniteLossError(RuntimeError):
    """Raised when the loss stays NaN/inf for too many consecutive steps to be a bad batch."""


def model_inputs(model: MultimodalSentimentAnalyzer, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Encoder features for every modality of a batch: cached rows as given, the others encoded now.

    A modality can mix both in one batch (cache misses fall back to decoding): ``feature_mask``
    says which rows came from the cache.
    """
    cached = {m: x for m, x in (batch.get("features") or {}).items() if x is not None and m in model.encoders}
    todo = {m: x for m, x in (batch.get("inputs") or {}).items() if x is not None and m in model.encoders}
    out = model.encode(todo)
    for m, ft in cached.items():
        if m not in out:
            out[m] = ft
            continue
        from_cache = (batch.get("feature_mask") or {}).get(m)
        if from_cache is not None:
            keep = from_cache.to(out[m].device).bool().unsqueeze(1)  # (b, 1)
            out[m] = torch.where(keep, ft.to(out[m].dtype), out[m])
    return out


def predict_batch(model: MultimodalSentimentAnalyzer, batch: dict[str, Any],
                  drop: tuple[str, ...] | frozenset[str] = ()) -> dict[str, torch.Tensor]:
    """Logits of a collated batch; modalities named in ``drop`` are treated as absent."""
    kept = {**batch, "inputs": {m: x for m, x in (batch.get("inputs") or {}).items() if m not in drop},
            "features": {m: x for m, x in (batch.get("features") or {}).items() if m not in drop}}
    masks = {m: v for m, v in (batch.get("masks") or {}).items() if m not in drop}
    return model.fuse(model_inputs(model, kept), masks)


class SentimentTask(L.LightningModule):
    """Multi-task (emotion + sentiment) training of one model.

    >>> from mmva.config import load_config
    >>> cfg = load_config("tiny")
    >>> task = SentimentTask(MultimodalSentimentAnalyzer(cfg), cfg)
    >>> task.loss_fn.label_smoothing == cfg.train.label_smoothing
    True
    """

    def __init__(self, model: MultimodalSentimentAnalyzer, config: Config,
                 emotion_weights: torch.Tensor | None = None, sentiment_weights: torch.Tensor | None = None,
                 max_bad_steps: int = 20) -> None:
        super().__init__()
        self.model = model
        self.config = config
        t = config.train
        self.loss_fn = MultiTaskLoss(emotion_weights, sentiment_weights, t.label_smoothing, t.sentiment_loss_weight)
        self.max_bad_steps = max_bad_steps
        self.skipped_steps: list[dict[str, Any]] = []  # non-finite losses: step, epoch, uids, value
        self.history: list[dict[str, Any]] = []  # dev metrics per epoch
        self.val_metrics: dict[str, Any] = {}  # full dev metrics of the latest epoch
        self.best_metrics: dict[str, Any] = {}  # ... and of the best epoch so far
        self.resumed_from_epoch: int | None = None
        self._bad_in_a_row = 0
        self._val_rows: list[tuple[str, int, int, int, int]] = []
        self.data_issues: dict[tuple[str, str], None] = {}  # (uid, reason) from the loaders, once each

    def _note_data_issues(self, batch: dict[str, Any]) -> None:
        for pair in [*batch.get("skipped", []), *batch.get("problems", [])]:
            self.data_issues.setdefault((str(pair[0]), str(pair[1])), None)

    def gathered_data_issues(self) -> list[tuple[str, str]]:
        """Every process's data problems, deduplicated (call on all ranks)."""
        from mmva.train.distributed import gather_list

        return gather_list(list(self.data_issues), key=lambda pair: pair)

    # -- steps ------------------------------------------------------------------------------
    def forward(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.model.fuse(model_inputs(self.model, batch), batch.get("masks"))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        self._note_data_issues(batch)
        # BatchNorm updates its running statistics during the forward pass: keep a copy so a
        # batch that produces NaN/inf cannot poison the model even though its step is skipped.
        saved = {n: b.detach().clone() for n, b in self.model.named_buffers()}
        if len(batch["uid"]) < 2:  # batch norm needs two items; collate may have dropped the rest
            return self._no_step()
        out = self(batch)
        losses = self.loss_fn(out, batch["emotion"], batch["sentiment"])
        loss = losses["loss"]
        if not torch.isfinite(loss):
            return self._skip_step(batch, batch_idx, float(loss.detach()), saved)
        self._bad_in_a_row = 0
        n = len(batch["uid"])
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=n)
        self.log("train/emotion_loss", losses["emotion_loss"], on_step=False, on_epoch=True, batch_size=n)
        self.log("train/sentiment_loss", losses["sentiment_loss"], on_step=False, on_epoch=True, batch_size=n)
        return loss

    def _skip_step(self, batch: dict[str, Any], batch_idx: int, value: float,
                   saved: dict[str, torch.Tensor]) -> torch.Tensor | None:
        with torch.no_grad():
            buffers = dict(self.model.named_buffers())
            for name, old in saved.items():
                buffers[name].copy_(old)
        self._bad_in_a_row += 1
        record = {"epoch": int(self.current_epoch), "global_step": int(self.global_step),
                  "batch": int(batch_idx), "loss": str(value), "uids": list(batch["uid"])[:16]}
        self.skipped_steps.append(record)
        log.warning("non-finite loss (%s) at epoch %d batch %d: step skipped (utterances %s)",
                    value, record["epoch"], batch_idx, ", ".join(record["uids"][:4]))
        if self._bad_in_a_row > self.max_bad_steps:
            raise NonFiniteLossError(
                f"training stopped: the loss was NaN/inf for {self._bad_in_a_row} steps in a row "
                f"(last at epoch {record['epoch']}, batch {batch_idx}); lower train.lr, use "
                "train.precision=32 or check the data; the last checkpoint is intact")
        return self._no_step()

    def _no_step(self) -> torch.Tensor | None:
        if self.trainer.world_size > 1:
            # Every process must run backward for DDP's all-reduce: a zero loss connected to the
            # trainable weights gives zero gradients instead of skipping on this rank only.
            return sum((p * 0.0).sum() for p in self.model.parameters() if p.requires_grad)
        return None  # Lightning skips backward and the optimiser step

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._note_data_issues(batch)
        if not batch["uid"]:
            return
        out = self(batch)
        losses = self.loss_fn(out, batch["emotion"], batch["sentiment"])
        n = len(batch["uid"])
        if torch.isfinite(losses["loss"]):
            self.log("val/loss", losses["loss"], on_epoch=True, batch_size=n, sync_dist=True)
            self.log("val/emotion_loss", losses["emotion_loss"], on_epoch=True, batch_size=n, sync_dist=True)
            self.log("val/sentiment_loss", losses["sentiment_loss"], on_epoch=True, batch_size=n, sync_dist=True)
        e_pred = out["emotion"].argmax(-1).tolist()
        s_pred = out["sentiment"].argmax(-1).tolist()
        self._val_rows.extend(zip(batch["uid"], batch["emotion"].tolist(), e_pred,
                                  batch["sentiment"].tolist(), s_pred))

    def on_validation_epoch_start(self) -> None:
        self._val_rows = []

    def on_validation_epoch_end(self) -> None:
        from mmva.train.distributed import gather_list

        # Metrics over the whole dev set: predictions gathered from every process, deduplicated
        # by utterance id (samplers may pad), never an average of per-process scores.
        rows = sorted(gather_list(self._val_rows, key=lambda r: r[0]), key=lambda r: r[0])
        self._val_rows = []
        if not rows:
            return
        emotion = compute_metrics([r[1] for r in rows], [r[2] for r in rows], EMOTIONS)
        sentiment = compute_metrics([r[3] for r in rows], [r[4] for r in rows], SENTIMENTS)
        scalars = {**flat_scalars(emotion, "val/emotion"), **flat_scalars(sentiment, "val/sentiment")}
        scalars = {k: (0.0 if math.isnan(v) else v) for k, v in scalars.items()}
        # identical on every rank already, so no sync
        self.log_dict({k: v for k, v in scalars.items() if k != MONITOR}, sync_dist=False)
        self.log(MONITOR, scalars[MONITOR], prog_bar=True, sync_dist=False)
        if self.trainer.sanity_checking:
            return
        self.val_metrics = {"epoch": int(self.current_epoch), "emotion": emotion, "sentiment": sentiment}
        self.history.append({"epoch": int(self.current_epoch), **scalars})
        if not self.best_metrics or scalars[MONITOR] > self.best_metrics["score"]:
            self.best_metrics = {**self.val_metrics, "score": scalars[MONITOR]}
        self._log_confusion(emotion, sentiment)

    def _log_confusion(self, emotion: dict[str, Any], sentiment: dict[str, Any]) -> None:
        logger = self.logger
        if logger is None or not self.trainer.is_global_zero:
            return
        writer = getattr(logger, "experiment", None)
        if writer is None or not hasattr(writer, "add_image"):
            return
        for task, metrics in (("emotion", emotion), ("sentiment", sentiment)):
            writer.add_text(f"val/{task}_confusion", confusion_markdown(metrics), self.global_step)
            writer.add_image(f"val/{task}_confusion", confusion_image(metrics), self.global_step,
                             dataformats="HWC")

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        t = self.config.train
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            # Biases, norms and the learned "missing modality" vectors are not weight-decayed.
            (no_decay if p.ndim < 2 or name.startswith("missing") else decay).append(p)
        groups = [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]], lr=t.lr)
        if t.scheduler == "none":
            return optimizer
        if t.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                               patience=max(1, t.patience // 2))
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": sched, "monitor": MONITOR, "interval": "epoch"}}
        if t.scheduler != "cosine":
            raise ValueError(f"train.scheduler must be cosine, plateau or none, not {t.scheduler!r}")
        from transformers import get_cosine_schedule_with_warmup

        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = get_cosine_schedule_with_warmup(optimizer, int(round(t.warmup_ratio * total)), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -- checkpoint state ----------------------------------------------------------------------
    def checkpoint_extra(self) -> dict[str, Any]:
        """What goes into the ``extra`` metadata of exported safetensors checkpoints."""
        extra: dict[str, Any] = {"epoch": int(self.current_epoch), "global_step": int(self.global_step)}
        if self.val_metrics:
            extra["dev"] = {task: flat_scalars(self.val_metrics[task], task)
                            for task in ("emotion", "sentiment")}
            extra["dev_epoch"] = self.val_metrics["epoch"]
        if self.skipped_steps:
            extra["skipped_steps"] = len(self.skipped_steps)
        return extra

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Plain types only: resume checkpoints load with torch.load(weights_only=True).
        checkpoint["mmva"] = {"config": self.config.to_dict(), "history": self.history,
                              "skipped_steps": self.skipped_steps, "val_metrics": self.val_metrics,
                              "best_metrics": self.best_metrics}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("mmva") or {}
        self.history = list(state.get("history", []))
        self.skipped_steps = list(state.get("skipped_steps", []))
        self.val_metrics = dict(state.get("val_metrics", {}))
        self.best_metrics = dict(state.get("best_metrics", {}))
        self.resumed_from_epoch = int(checkpoint.get("epoch", -1)) + 1  # epochs completed before resume
