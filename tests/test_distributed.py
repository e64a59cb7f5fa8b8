"""Distributed training helpers under a real `torchrun` (2 CPU processes, gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mmva.train import distributed

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def torchrun(script: Path, nproc: int, *args: str, timeout: float = 240,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``script`` under torchrun with ``nproc`` CPU processes; fail the test with its output."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", **(env or {})}
    proc = subprocess.run([*TORCHRUN, f"--nproc_per_node={nproc}", str(script), *args],
                          capture_output=True, text=True, timeout=timeout, env=full_env)
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


HELPERS_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    from mmva.train import distributed as d

    assert d.init_process_group() and d.world_size() == 2
    data = list(range(11))  # odd on purpose: DistributedSampler pads, eval_sampler must not
    sampler = d.train_sampler(data, seed=7)
    sampler.set_epoch(1)
    mine = list(sampler)
    ev = list(d.eval_sampler(data))
    preds = d.gather_predictions([f"u{i:02d}" for i in ev], [i % 3 for i in ev], [i % 2 for i in ev])
    padded = d.gather_list([f"u{i:02d}" for i in mine], key=lambda u: u)
    out = {"rank": d.rank(), "train": mine, "eval": ev, "preds": preds, "padded_unique": len(padded),
           "main": d.is_main_process(), "shard": d.shard(data),
           "kwargs": {k: str(v) for k, v in d.trainer_kwargs(
               __import__("mmva.config", fromlist=["TrainConfig"]).TrainConfig()).items()}}
    # Batch norm over the global batch: rank r holds rows r::2 of the same 8 x 5 input.
    torch.manual_seed(0)
    x, w = torch.randn(8, 5), torch.randn(8, 5)
    bn = d.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm1d(5)))[0]
    y = bn(x[d.rank()::2].requires_grad_())
    (y * w[d.rank()::2]).sum().backward()
    grads = [bn.weight.grad.clone(), bn.bias.grad.clone()]
    for g in grads:
        torch.distributed.all_reduce(g)  # what DDP does (sum; the single-process loss is the sum too)
    out["bn"] = {"y": y.tolist(), "wgrad": grads[0].tolist(), "bgrad": grads[1].tolist(),
                 "running_var": bn.running_var.tolist(), "type": type(bn).__name__}
    with open(f"{sys.argv[1]}/rank{d.rank()}.json", "w") as fh:
        json.dump(out, fh)
    d.barrier()
""")


def test_samplers_and_gathering_across_two_processes(tmp_path):
    script = tmp_path / "helpers.py"
    script.write_text(HELPERS_SCRIPT)
    torchrun(script, 2, str(tmp_path))
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["main"] and not r1["main"]

    # The same shuffled order as one process: each global batch of 2 x b holds the same items.
    single = distributed.train_sampler(list(range(11)), seed=7)
    single.set_epoch(1)
    order = list(single)
    b = 2
    for step in range(11 // (2 * b)):  # full global batches (the last one holds a padding repeat)
        two = set(r0["train"][step * b:(step + 1) * b]) | set(r1["train"][step * b:(step + 1) * b])
        assert two == set(order[step * 2 * b:(step + 1) * 2 * b])

    # Validation: every item exactly once across ranks, gathered identically on both ranks.
    assert sorted(r0["eval"] + r1["eval"]) == list(range(11))
    assert r0["preds"] == r1["preds"]
    assert r0["preds"]["uid"] == [f"u{i:02d}" for i in range(11)]
    assert r0["preds"]["y_true"] == [i % 3 for i in range(11)]
    assert r0["padded_unique"] == 11  # padding duplicates from DistributedSampler are dropped
    assert sorted(r0["shard"] + r1["shard"]) == list(range(11))

    # Synchronised batch norm on CPU equals one process's batch norm over the whole batch.
    torch.manual_seed(0)
    x, w = torch.randn(8, 5), torch.randn(8, 5)
    ref = torch.nn.BatchNorm1d(5)
    y = ref(x)
    (y * w).sum().backward()
    assert r0["bn"]["type"] == "GlooSyncBatchNorm"
    for r, res in ((0, r0), (1, r1)):
        torch.testing.assert_close(torch.tensor(res["bn"]["y"]), y[r::2].detach(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(res["bn"]["wgrad"]), ref.weight.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(res["bn"]["bgrad"]), ref.bias.grad, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(torch.tensor(res["bn"]["running_var"]), ref.running_var, atol=1e-5, rtol=1e-5)

    # Lightning gets a world that matches torchrun's: 2 devices on 1 node, DDP over gloo.
    assert r0["kwargs"]["devices"] == "2" and r0["kwargs"]["num_nodes"] == "1"
    assert r0["kwargs"]["accelerator"] == "cpu" and "SyncedDDPStrategy" in r0["kwargs"]["strategy"]


def test_single_process_helpers_need_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.init_process_group()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
    assert distributed.gather_predictions(["b", "a"], [1, 0], [0, 0]) == {
        "uid": ["a", "b"], "y_true": [0, 1], "y_pred": [0, 0]}
    from mmva.config import TrainConfig

    assert distributed.trainer_kwargs(TrainConfig(devices=4, strategy="ddp", accelerator="gpu")) == {
        "accelerator": "gpu", "devices": 4, "strategy": "ddp"}
