"""Helpers for runs over several processes or machines (``torchrun``; gloo on CPU, NCCL on GPU).

Lightning's DDP strategy does the gradient all-reduce; what it does not decide for us lives here:

- :func:`trainer_kwargs` maps a :class:`~mmva.config.TrainConfig` onto Lightning's ``accelerator``,
  ``devices``, ``num_nodes`` and ``strategy`` so they agree with the world ``torchrun`` created
  (Lightning refuses a ``devices * num_nodes`` that differs from ``WORLD_SIZE``).
- :func:`train_sampler` / :func:`eval_sampler`: the same shuffled order in one process and in N, so a
  global batch holds the same utterances whatever the process count; validation without the
  padding duplicates of :class:`~torch.utils.data.DistributedSampler`.
- :func:`gather_list` and :func:`gather_predictions`: metrics over the whole validation set are
  computed from gathered predictions (de-duplicated by utterance id), never averaged per rank.
- :func:`shard` and :func:`extract_features_sharded`: feature extraction split across processes.

``data.batch_size`` is per process: the global batch is ``batch_size * world_size``.

>>> shard(list(range(5)), rank=1, world=2)
[1, 3]
"""

from __future__ import annotations

import dataclasses
import logging
import os
from datetime import timedelta
from typing import Any, Callable, Hashable, Sequence, TypeVar

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import LayerSync, TorchSyncBatchNorm
from lightning.pytorch.strategies import DDPStrategy
from torch import nn
from torch.utils.data import Dataset, DistributedSampler, Sampler

log = logging.getLogger("mmva")
T = TypeVar("T")


# -- who am I ----------------------------------------------------------------------------------
def launched_by_torchrun() -> bool:
    """True in a process started by ``torchrun`` (or any launcher that sets the rank variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def world_size() -> int:
    """Number of processes in the run (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1)) if launched_by_torchrun() else 1


def rank() -> int:
    """Global rank of this process (0 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0)) if launched_by_torchrun() else 0


_current_rank = rank  # `shard` takes a parameter named rank


def local_rank() -> int:
    """Rank of this process on its machine (selects the GPU)."""
    return int(os.environ.get("LOCAL_RANK", 0)) if launched_by_torchrun() else 0


def is_main_process() -> bool:
    """True on global rank 0: the one process that writes checkpoints, logs and reports."""
    return rank() == 0


def default_backend() -> str:
    """Gloo for CPU tensors, plus NCCL for CUDA tensors when this process has a GPU.

    Both at once, because the group is often created before the Trainer decides where the model
    runs (feature extraction comes first), and a CPU run on a GPU machine still needs gloo.
    """
    if torch.cuda.is_available() and dist.is_nccl_available():
        return "cpu:gloo,cuda:nccl"
    return "gloo"


def init_process_group(backend: str | None = None, timeout_s: float = 1800.0) -> bool:
    """Join the process group ``torchrun`` prepared, if any. Returns True when distributed.

    Safe to call repeatedly and before Lightning (which then reuses the group).
    """
    if not launched_by_torchrun() or int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    if not dist.is_initialized():
        backend = backend or default_backend()
        if "nccl" in backend:
            torch.cuda.set_device(local_rank())
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    return True


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# -- Lightning -----------------------------------------------------------------------------
def trainer_kwargs(train: Any) -> dict[str, Any]:
    """Lightning ``Trainer`` arguments for ``train`` (a TrainConfig) in the current world.

    Under ``torchrun`` the world is fixed by the launcher: ``devices`` = processes per machine,
    ``num_nodes`` = machines, DDP with gloo (CPU) or NCCL (GPU) and synchronised batch norm
    (:class:`SyncedDDPStrategy`). Otherwise it is one process on one device; asking for more
    without torchrun is an error that says how to launch it.

    >>> from mmva.config import TrainConfig
    >>> trainer_kwargs(TrainConfig(accelerator="cpu", devices="auto"))["devices"]
    1
    """
    accelerator = train.accelerator
    if not launched_by_torchrun():
        several = (isinstance(train.devices, int) and train.devices > 1) or str(train.devices) == "-1" \
            or str(train.strategy).startswith("ddp")
        if several:
            # Lightning would start the other processes after the data loaders were built for one
            # process: every process would train on all the data. torchrun sets the world first.
            raise ValueError(
                f"train.devices={train.devices!r} / train.strategy={train.strategy!r}: several processes are "
                "started with torchrun, e.g. `torchrun --standalone --nproc_per_node 4 --no-python mmva train ...`"
                " (see docs/scaling.md)")
        devices = 1 if train.devices == "auto" else train.devices  # one process: one device
        return {"accelerator": accelerator, "devices": devices, "strategy": train.strategy}
    world = int(os.environ["WORLD_SIZE"])
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    strategy: Any = train.strategy
    if strategy == "auto":
        strategy = SyncedDDPStrategy(accelerator) if world > 1 else "auto"
    return {"accelerator": accelerator, "devices": per_node, "num_nodes": max(1, world // per_node),
            "strategy": strategy}


def train_sampler(dataset: Dataset, *, seed: int, shuffle: bool = True) -> DistributedSampler:
    """This process's share of one shuffled order, the same order for any number of processes.

    With one process it is a seeded shuffle of everything; with N, process r takes every N-th
    index of that same permutation, so each global batch (N local batches) holds the same items.
    Pass ``use_distributed_sampler=False`` to the Trainer so Lightning keeps it; Lightning calls
    ``set_epoch`` on it every epoch.
    """
    return DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=shuffle,
                              seed=seed, drop_last=False)


def eval_sampler(dataset: Dataset) -> Sampler[int]:
    """This process's share of a validation set, in order and without padding duplicates."""
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=False)


class _AllGather(torch.autograd.Function):
    """Differentiable all-gather: ``(d,)`` per process -> ``(world, d)`` on every process.

    Written out because ``torch.distributed.nn.functional`` is deprecated and its replacement is
    private. Backward: every process's loss depends on every slice, so the gradient of this
    process's slice is the sum over processes (an all-reduce) of the gradients of that slice.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics span every process, on CPU (gloo) as well as GPU.

    ``torch.nn.SyncBatchNorm`` refuses CPU tensors; without synchronisation each process would
    normalise with the statistics of its own slice of the batch, so N processes would not train
    the same model as one. One differentiable all-gather of (count, mean, centred sum of squares)
    per layer gives the global batch's mean and variance. Outside training or in one process it is plain
    batch norm. The state dict is the same as ``nn.BatchNorm*d``'s.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (batch, channels, ...), got {input.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        xf = x.float()
        n_local = xf.numel() / max(1, c)
        mean_local = xf.mean(dims)
        m2_local = ((xf - mean_local.view([1, c] + [1] * (x.dim() - 2))) ** 2).sum(dims)
        count = torch.full((1,), n_local, dtype=torch.float32, device=x.device)
        # Per-process (count, mean, centred sum of squares), combined with Chan's parallel formula:
        # stable where sum(x^2)/n - mean^2 would cancel.
        parts = _AllGather.apply(torch.cat([count, mean_local, m2_local]))  # (world, 2c + 1)
        counts, means, m2s = parts[:, :1], parts[:, 1:c + 1], parts[:, c + 1:]
        n = counts.sum()
        mean = (counts * means).sum(0) / n
        var = (m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)) / n  # biased, as batch norm normalises
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * var.detach() * n / (n - 1).clamp_min(1.0))
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every batch-norm layer of ``module`` by :class:`GlooSyncBatchNorm` (weights kept)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlooSyncBatchNorm):
        new = GlooSyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                module.track_running_stats)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        if module.affine:
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child))
    return module


class GlooLayerSync(LayerSync):
    """Lightning layer-sync plugin: batch norm -> :class:`GlooSyncBatchNorm`."""

    def apply(self, model: nn.Module) -> nn.Module:
        return convert_sync_batchnorm(model)

    def revert(self, model: nn.Module) -> nn.Module:
        return model  # same state dict as plain batch norm: nothing to undo


class SyncedDDPStrategy(DDPStrategy):
    """Lightning's DDP (gloo on CPU, NCCL on GPU) with batch norm synchronised across processes.

    Synchronised batch norm is what makes N processes with ``batch_size`` each train the model
    that one process with ``N * batch_size`` trains; Lightning's ``sync_batchnorm=True`` is
    GPU-only (``torch.nn.SyncBatchNorm``), so CPU runs use :class:`GlooLayerSync`.
    """

    def __init__(self, accelerator: str = "cpu", **kwargs: Any) -> None:
        gpu = accelerator in ("gpu", "cuda")
        kwargs.setdefault("process_group_backend", "nccl" if gpu else "gloo")
        # A modality absent from every item of one process's batch leaves its projection unused
        # there; without this DDP would wait forever for that gradient (or fail on the next step).
        kwargs.setdefault("find_unused_parameters", True)
        super().__init__(**kwargs)
        self._mmva_layer_sync: LayerSync = TorchSyncBatchNorm() if gpu else GlooLayerSync()

    def setup(self, trainer: Any) -> None:
        # The Trainer resets _layer_sync from its own flags; set ours just before it is applied.
        self._layer_sync = self._layer_sync or self._mmva_layer_sync
        super().setup(trainer)


# -- collectives -------------------------------------------------------------------------------
def gather_list(items: Sequence[T], key: Callable[[T], Hashable] | None = None) -> list[T]:
    """Concatenate every process's ``items`` (rank order), on every process.

    With ``key``, later duplicates (the padding a DistributedSampler adds) are dropped.

    >>> gather_list([3, 1, 3], key=lambda x: x)
    [3, 1]
    """
    items = list(items)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(parts, items)
        items = [x for part in parts for x in part]
    if key is None:
        return items
    seen: set[Hashable] = set()
    out = []
    for x in items:
        k = key(x)
        if k not in seen:
            seen.add(k)
            out.append(x)
    return out


def gather_predictions(uids: Sequence[str], y_true: Sequence[int], y_pred: Sequence[int],
                       probs: Sequence[Any] | None = None) -> dict[str, list[Any]]:
    """The whole validation set's predictions from every process, one entry per utterance id.

    Returns ``{"uid", "y_true", "y_pred"[, "probs"]}`` lists sorted by uid, ready for
    ``compute_metrics``: metrics over the union, not an average of per-rank metrics.

    >>> gather_predictions(["b", "a"], [1, 0], [1, 1])["y_pred"]
    [1, 1]
    """
    rows = list(zip(uids, y_true, y_pred, probs if probs is not None else [None] * len(uids)))
    rows = sorted(gather_list(rows, key=lambda r: r[0]), key=lambda r: r[0])
    out: dict[str, list[Any]] = {"uid": [r[0] for r in rows], "y_true": [int(r[1]) for r in rows],
                                 "y_pred": [int(r[2]) for r in rows]}
    if probs is not None:
        out["probs"] = [r[3] for r in rows]
    return out


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` from process ``src`` on every process (identity in a single process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]
    return obj


def shard(items: Sequence[T], rank: int | None = None, world: int | None = None) -> list[T]:
    """This process's share of ``items``: every ``world``-th item starting at ``rank``."""
    r = _current_rank() if rank is None else rank
    w = world_size() if world is None else world
    return list(items[r::w])


def merge_reports(reports: Sequence[Any]) -> Any:
    """Merge per-process dataclass reports: counts add up, lists concatenate, times take the max
    (the processes ran side by side)."""
    first = reports[0]
    values: dict[str, Any] = {}
    for f in dataclasses.fields(first):
        vals = [getattr(r, f.name) for r in reports]
        if isinstance(vals[0], float) and (f.name in ("seconds", "elapsed") or f.name.endswith("_s")):
            values[f.name] = max(vals)
        elif isinstance(vals[0], (int, float)) and not isinstance(vals[0], bool):
            values[f.name] = sum(vals)
        elif isinstance(vals[0], list):
            values[f.name] = [x for v in vals for x in v]
        else:
            values[f.name] = vals[0]
    return dataclasses.replace(first, **values)


def extract_features_sharded(utterances: Sequence[Any], encoders: dict[str, Any], cache: Any,
                             data: Any, **kwargs: Any) -> Any:
    """``extract_features`` with the utterances split across the processes of a ``torchrun``.

    Each process encodes its share into the shared (content-addressed) cache; every process gets
    the merged report once all are done. In one process it is plain ``extract_features``.
    """
    from mmva.encoders.cache import extract_features

    distributed = init_process_group()
    mine = shard(utterances) if distributed else list(utterances)
    if distributed and not is_main_process():
        kwargs["progress"] = False  # one progress bar, from rank 0
    report = extract_features(mine, encoders, cache, data, **kwargs)
    if not distributed:
        return report
    merged = merge_reports(gather_list([report]))
    barrier()
    return merged
