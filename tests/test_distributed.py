"""Distributed training under a real `torchrun` (2 CPU processes, gloo) against 1 process.

One module-scoped run does the work (process start-up dominates on 2 cores): the same script runs
once as a plain process and once under ``torchrun --nproc_per_node 2``; under torchrun it first
exercises the helpers (samplers, gathering, synchronised batch norm), then both train.
"""

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

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from mmva.config import TrainConfig, load_config
    from mmva.train import distributed as d
    from mmva.train.fit import fit


    def check_helpers(out_dir):
        assert d.init_process_group() and d.world_size() == 2
        data = list(range(11))  # odd on purpose: DistributedSampler pads, eval_sampler must not
        sampler = d.train_sampler(data, seed=7)
        sampler.set_epoch(1)
        mine = list(sampler)
        ev = list(d.eval_sampler(data))
        preds = d.gather_predictions([f"u{i:02d}" for i in ev], [i % 3 for i in ev], [i % 2 for i in ev])
        padded = d.gather_list([f"u{i:02d}" for i in mine], key=lambda u: u)
        out = {"train": mine, "eval": ev, "preds": preds, "padded_unique": len(padded),
               "main": d.is_main_process(), "shard": d.shard(data),
               "kwargs": {k: str(v) for k, v in d.trainer_kwargs(TrainConfig()).items()}}
        # Batch norm over the global batch: rank r holds rows r::2 of the same 8 x 5 input.
        torch.manual_seed(0)
        x, w = torch.randn(8, 5), torch.randn(8, 5)
        bn = d.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm1d(5)))[0]
        y = bn(x[d.rank()::2].requires_grad_())
        (y * w[d.rank()::2]).sum().backward()
        grads = [bn.weight.grad.clone(), bn.bias.grad.clone()]
        for g in grads:
            torch.distributed.all_reduce(g)  # summed like DDP's all-reduce (the reference loss is a sum)
        out["bn"] = {"y": y.tolist(), "wgrad": grads[0].tolist(), "bgrad": grads[1].tolist(),
                     "running_var": bn.running_var.tolist(), "type": type(bn).__name__}
        out["missing_modality_steps"] = ddp_with_a_modality_missing_on_one_rank()
        with open(os.path.join(out_dir, f"rank{d.rank()}.json"), "w") as fh:
            json.dump(out, fh)
        d.barrier()


    class EmotionSum(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, feats):
            return self.model.fuse(feats)["emotion"].sum()


    def ddp_with_a_modality_missing_on_one_rank():
        # Audio absent from a whole batch on rank 1 only: its audio projection gets no gradient
        # there. With the strategy's DDP settings this trains on; plain DDP fails on step 2.
        from torch.nn.parallel import DistributedDataParallel as DDP
        from mmva.model.multimodal import MultimodalSentimentAnalyzer

        torch.manual_seed(0)
        net = DDP(EmotionSum(MultimodalSentimentAnalyzer(load_config("tiny"))),
                  **d.SyncedDDPStrategy("cpu")._ddp_kwargs)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(3):
            feats = {"text": torch.randn(4, 32)}
            if d.rank() == 0:
                feats["audio"] = torch.randn(4, 128)
            opt.zero_grad()
            net(feats).backward()
            opt.step()
        return 3


    run_dir, data, result = sys.argv[1], sys.argv[2], sys.argv[3]
    if "RANK" in os.environ:
        check_helpers(os.path.dirname(result))
    r = fit(load_config("tiny", sys.argv[4:]), data, run_dir, progress=False)
    if d.is_main_process():
        with open(result, "w") as fh:
            json.dump({"metrics": r.metrics, "best": r.best_checkpoint, "world": d.world_size()}, fh)
""")

# Frozen text and video encoders -> cached features (extraction sharded across the processes);
# the audio CNN trains end to end. Dropout and modality dropout off: each process would draw its
# own random masks, which no process count can reproduce. Unweighted loss: class-weighted
# cross-entropy normalises by each process's own weight sum.
OVERRIDES = ["train.epochs=2", "data.num_frames=4", "data.frame_size=32", "model.dropout=0",
             "model.head_dropout=0", "model.modality_dropout=0", "train.class_weights=false",
             "model.freeze_text=true", "model.freeze_video=true", "train.precision=32"]
N_TRAIN, N_DEV = 28, 21


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(name, None)
    return env


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """Train on a generated corpus with 1 process (batch 8) and with 2 (batch 4 each), concurrently."""
    from mmva.data import make_corpus

    tmp = tmp_path_factory.mktemp("dist")
    corpus = make_corpus(tmp / "corpus", n_per_class={"train": 4, "dev": 3}, seed=0, size=32, fps=4.0)
    script = tmp / "run.py"
    script.write_text(SCRIPT)
    args = lambda name: [str(tmp / name), str(corpus), str(tmp / f"{name}.json"), *OVERRIDES]  # noqa: E731
    one = subprocess.Popen([sys.executable, str(script), *args("one"), "data.batch_size=8"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    try:
        two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                              "--nproc_per_node=2", str(script), *args("two"), "data.batch_size=4"],
                             capture_output=True, text=True, timeout=500, env=_env())
        out, _ = one.communicate(timeout=500)
    finally:
        one.kill()
    assert two.returncode == 0, f"torchrun failed:\n{two.stdout[-3000:]}\n{two.stderr[-6000:]}"
    assert one.returncode == 0, out[-5000:]
    return tmp


def test_samplers_and_gathering_across_two_processes(runs):
    r0, r1 = (json.loads((runs / f"rank{r}.json").read_text()) for r in (0, 1))
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

    # Lightning gets a world that matches torchrun's: 2 devices on 1 node, DDP over gloo.
    assert r0["kwargs"]["devices"] == "2" and r0["kwargs"]["num_nodes"] == "1"
    assert r0["kwargs"]["accelerator"] == "cpu" and "SyncedDDPStrategy" in r0["kwargs"]["strategy"]
    # a modality missing from a whole batch on one process does not stall DDP
    assert r0["missing_modality_steps"] == r1["missing_modality_steps"] == 3


def test_synchronised_batch_norm_on_cpu_matches_one_process(runs):
    r0, r1 = (json.loads((runs / f"rank{r}.json").read_text()) for r in (0, 1))
    torch.manual_seed(0)
    x, w = torch.randn(8, 5), torch.randn(8, 5)
    ref = torch.nn.BatchNorm1d(5)
    y = ref(x)
    (y * w).sum().backward()
    assert r0["bn"]["type"] == "GlooSyncBatchNorm"
    for r, res in ((0, r0), (1, r1)):
        close = lambda got, want: torch.testing.assert_close(torch.tensor(got), want, atol=1e-5, rtol=1e-5)  # noqa: E731
        close(res["bn"]["y"], y[r::2].detach())
        close(res["bn"]["wgrad"], ref.weight.grad)
        close(res["bn"]["bgrad"], ref.bias.grad)
        close(res["bn"]["running_var"], ref.running_var)


def test_two_processes_train_the_same_model_as_one(runs):
    """Same data, seed and global batch (1 x 8 vs 2 x 4): the same dev metrics, every epoch.

    Tolerance: each metric within one dev prediction (1/21). Measured: identical metrics, because
    gradients are all-reduced over the same global batches and batch norm is synchronised. Weights
    are not compared: parameters whose true gradient is zero (biases just before a batch norm) get
    float noise that Adam scales up to learning-rate-sized steps, differently in each run.
    """
    a, b = (json.loads((runs / f"{n}.json").read_text()) for n in ("one", "two"))
    assert (a["world"], b["world"]) == (1, 2)
    tol = 1 / N_DEV + 1e-9
    for task in ("emotion", "sentiment"):
        ma, mb = a["metrics"][task], b["metrics"][task]
        # gathered over the whole dev set: every utterance once, no padding duplicates
        assert ma["support"] == mb["support"] == N_DEV
        assert sum(map(sum, mb["confusion_matrix"])) == N_DEV
        for key in ("accuracy", "weighted_f1", "macro_f1", "weighted_precision"):
            assert abs(ma[key] - mb[key]) <= tol, (task, key, ma[key], mb[key])
    assert len(a["metrics"]["history"]) == len(b["metrics"]["history"]) == 2
    for ha, hb in zip(a["metrics"]["history"], b["metrics"]["history"]):
        for key in ("val/emotion_accuracy", "val/sentiment_accuracy", "val/emotion_weighted_f1"):
            assert abs(ha[key] - hb[key]) <= tol, (key, ha[key], hb[key])


def test_rank_zero_writes_and_extraction_is_sharded(runs):
    # Rank 0 alone writes the run: the same checkpoint files, one TensorBoard event file.
    ckpts = lambda run: sorted(p.name for p in (runs / run / "checkpoints").iterdir())  # noqa: E731
    assert ckpts("one") == ckpts("two") and "last.safetensors" in ckpts("two")
    assert len(list((runs / "two" / "tensorboard").glob("events.out.tfevents.*"))) == 1
    # Feature extraction was split across the two processes and still cached every utterance.
    cached = lambda run: sorted(p.name for p in (runs / run / "features").rglob("*.safetensors"))  # noqa: E731
    assert cached("one") == cached("two") and len(cached("two")) > N_TRAIN + N_DEV  # text + video


def test_single_process_helpers_need_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.init_process_group()
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
    assert distributed.gather_predictions(["b", "a"], [1, 0], [0, 0]) == {
        "uid": ["a", "b"], "y_true": [0, 1], "y_pred": [0, 0]}
    from mmva.config import TrainConfig

    assert distributed.trainer_kwargs(TrainConfig(accelerator="gpu")) == {
        "accelerator": "gpu", "devices": 1, "strategy": "auto"}
    with pytest.raises(ValueError, match="torchrun --standalone --nproc_per_node"):
        distributed.trainer_kwargs(TrainConfig(devices=4, strategy="ddp", accelerator="gpu"))
