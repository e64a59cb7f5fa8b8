"""The recipe that produces mmva's default text model (``mmva train-text``).

all-MiniLM-L6-v2 + LoRA, both heads trained jointly on MELD train with the previous utterance of the
dialogue as context; the epoch is selected on dev emotion weighted-F1; then per-task temperature
scaling (calibration) and a per-class emotion logit bias are fitted on dev.

This is a plain PyTorch loop rather than the project's Lightning trainer on purpose: it fine-tunes an
encoder over raw text (no feature cache, no media), and on 2 CPU cores the dominating costs are
padding and thread contention, which the length-bucketed batching below controls directly.

>>> result = train_text("meld", "runs/text")        # doctest: +SKIP
>>> result.metrics["emotion"]["weighted_f1"]                           # doctest: +SKIP
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from mmva.io import storage
from mmva.labels import EMOTIONS, SENTIMENTS, emotion_id, sentiment_id
from mmva.model.textclf import TextClassifier, TextClassifierConfig

log = logging.getLogger("mmva")


@dataclass(frozen=True)
class TextTrainConfig:
    """Hyper-parameters of the recipe (saved beside the run and inside the model file)."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3  # LoRA + heads tolerate a ~10-20x higher rate than full fine-tuning
    head_lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    class_weight_power: float = 0.5  # weights = (1/freq)^power: 0.5 = sqrt inverse frequency
    # Drop the context of this fraction of examples (each dialogue's first utterance has none anyway).
    context_dropout: float = 0.0
    # Drop the following utterances of this fraction of examples (models with ``context_after``), so
    # one model serves recorded videos (both sides known) and live streams (past only).
    after_dropout: float = 0.5
    bf16: bool = False  # autocast the encoder to bfloat16 (CPUs with AMX / AVX512-BF16: ~2x faster)
    # Distillation: an .npz of a teacher's calibrated logits on the training split (arrays uid, emotion,
    # sentiment); the loss becomes (1 - kd_weight) * CE + kd_weight * T^2 * KL(teacher_T || student_T).
    teacher: str | None = None
    kd_weight: float = 0.5
    kd_temperature: float = 2.0
    sentiment_loss_weight: float = 1.0
    seed: int = 13
    threads: int = 1  # measured here: 2 threads on an oversubscribed 2-core machine ran ~10x slower
    max_train: int | None = None  # subsample (tests, smoke runs)
    max_dev: int | None = None
    # Which epoch becomes the model: "best" dev emotion wF1, or "last" (the learning rate decayed to 0;
    # the accurate recipe's seeds ensemble better from their last epochs, docs/default-model.md).
    select: str = "best"
    model: TextClassifierConfig = field(default_factory=TextClassifierConfig)


SELECT = ("best", "last")


@dataclass
class TextExample:
    text: str
    context: list[str]
    emotion: int
    sentiment: int
    uid: str = ""
    following: list[str] = field(default_factory=list)


@dataclass
class TextTrainResult:
    model_path: str
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    run_dir: str


def read_meld_text(csv_path: str | Path, context_turns: int = 1, context_after: int = 0
                   ) -> tuple[list[TextExample], list[str]]:
    """Rows of a MELD ``*_sent_emo.csv`` with the previous utterances of the same dialogue as context.

    Returns (examples, problems); a malformed row is reported and skipped.

    >>> ex, problems = read_meld_text("meld/dev_sent_emo.csv")   # doctest: +SKIP
    """
    rows, problems = [], []
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        for n, row in enumerate(csv.DictReader(fh), start=2):
            try:
                rows.append((int(row["Dialogue_ID"]), int(row["Utterance_ID"]), row["Utterance"],
                             emotion_id(row["Emotion"]), sentiment_id(row["Sentiment"])))
            except (KeyError, ValueError, TypeError) as exc:
                problems.append(f"{csv_path}:{n}: skipped malformed row ({exc})")
    rows.sort()
    out: list[TextExample] = []
    history: list[str] = []
    last_dia = None
    for dia, utt, text, emo, sent in rows:
        if dia != last_dia:
            history, last_dia = [], dia
        ctx = history[-context_turns:] if context_turns > 0 else []
        out.append(TextExample(text, list(ctx), emo, sent, f"dia{dia}_utt{utt}"))
        history.append(text)
    if context_after > 0:
        for i, (dia, *_rest) in enumerate(rows):
            nxt = [r[2] for r in rows[i + 1: i + 1 + context_after] if r[0] == dia]
            out[i].following = nxt
    return out, problems


def class_weights(labels: Sequence[int], n: int, power: float) -> torch.Tensor:
    """(1/frequency)^power, normalised so the average weight per training example is 1."""
    counts = np.bincount(np.asarray(labels), minlength=n).astype(np.float64) + 1.0
    w = (counts.sum() / counts) ** power
    w = w / (w * counts).sum() * counts.sum()
    return torch.tensor(w, dtype=torch.float32)


def length_batches(examples: Sequence[TextExample], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length (dynamic padding stays small, batch order stays random)."""
    idx = list(range(len(examples)))
    rng.shuffle(idx)
    pool = batch_size * 50
    batches = []
    for s in range(0, len(idx), pool):
        chunk = sorted(idx[s: s + pool], key=lambda i: len(examples[i].text) + len(" ".join(examples[i].context)))
        batches += [chunk[b: b + batch_size] for b in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return batches


def evaluate_logits(model: TextClassifier, examples: Sequence[TextExample], calibrated: bool = False,
                    following: bool = True) -> dict[str, torch.Tensor]:
    """Logits over examples; ``following=False`` hides the utterances after each one (live use)."""
    return model.predict_logits([e.text for e in examples], [e.context for e in examples],
                                calibrated=calibrated,
                                following=[e.following for e in examples] if following else None)


def text_metrics(y_true: Sequence[int], y_pred: Sequence[int], labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, weighted/macro F1 and per-class F1 (x100), plus the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    ids = list(range(len(labels)))
    per = f1_score(y_true, y_pred, labels=ids, average=None, zero_division=0)
    return {
        "accuracy": round(100 * accuracy_score(y_true, y_pred), 2),
        "weighted_f1": round(100 * f1_score(y_true, y_pred, labels=ids, average="weighted", zero_division=0), 2),
        "macro_f1": round(100 * f1_score(y_true, y_pred, labels=ids, average="macro", zero_division=0), 2),
        "per_class_f1": {lab: round(100 * float(f), 2) for lab, f in zip(labels, per)},
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=ids).tolist(),
    }


def _score(logits: dict[str, torch.Tensor], examples: Sequence[TextExample]) -> dict[str, Any]:
    return {
        "emotion": text_metrics([e.emotion for e in examples], logits["emotion"].argmax(-1).tolist(), EMOTIONS),
        "sentiment": text_metrics([e.sentiment for e in examples], logits["sentiment"].argmax(-1).tolist(),
                                  SENTIMENTS),
    }


def _optimizer(model: TextClassifier, cfg: TextTrainConfig, total_steps: int):
    enc = [p for p in model.encoder.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": enc, "lr": cfg.lr},
                             {"params": list(model.heads.parameters()), "lr": cfg.head_lr}],
                            weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_ratio * total_steps))

    def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (total_steps - step) / max(1, total_steps - warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


@torch.inference_mode()
def precompute_bottom(model: TextClassifier, examples: Sequence[TextExample], with_context: bool = True,
                      batch_size: int = 64, with_following: bool = False) -> list[torch.Tensor]:
    """Output of the frozen bottom layers per example, ``(t_i, d)`` float16, unpadded."""
    model.eval()
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].text) + len(" ".join(examples[i].context)))
    out: list[torch.Tensor] = [torch.empty(0)] * len(examples)
    for s in range(0, len(order), batch_size):
        idx = order[s: s + batch_size]
        batch = model.encode([examples[i].text for i in idx],
                             [examples[i].context if with_context else [] for i in idx],
                             [examples[i].following for i in idx] if with_following else None)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=model.bf16):
            hidden = model.bottom(**batch)  # (b, t, d)
        lengths = batch["attention_mask"].sum(1).tolist()
        for j, i in enumerate(idx):
            out[i] = hidden[j, : lengths[j]].to(torch.float16).clone()
    return out


def utterance_lengths(model: TextClassifier, examples: Sequence[TextExample]) -> list[int]:
    """Tokens of each example's ``[CLS] utterance [SEP]`` span: what a ``pool="utterance"`` model
    averages (the utterance is never cut for the context's sake, so it is the same with context)."""
    lengths: list[int] = []
    for s in range(0, len(examples), 256):
        batch = model.encode([e.text for e in examples[s: s + 256]])
        lengths += batch["attention_mask"].sum(1).tolist()
    return lengths


def _pad(hidden: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(h.shape[0] for h in hidden)
    x = torch.zeros(len(hidden), width, hidden[0].shape[1])
    mask = torch.zeros(len(hidden), width, dtype=torch.long)
    for i, h in enumerate(hidden):
        x[i, : h.shape[0]] = h.float()
        mask[i, : h.shape[0]] = 1
    return x, mask  # (b, t, d), (b, t)


def _train_epoch(model: TextClassifier, train: Sequence[TextExample], cache: dict[tuple, list[torch.Tensor]],
                 cfg: TextTrainConfig, opt, sched, losses: dict[str, nn.Module], rng: random.Random,
                 epoch: int, teacher: dict[str, torch.Tensor] | None = None,
                 utt_len: list[int] | None = None) -> float:
    model.train()
    batches = length_batches(train, cfg.batch_size, rng)
    total, t0 = 0.0, time.time()
    for step, b in enumerate(batches):
        exs = [train[i] for i in b]
        use_ctx = [not (cfg.context_dropout and rng.random() < cfg.context_dropout) for _ in b]
        after = model.config.context_after > 0
        use_next = [after and not (cfg.after_dropout and rng.random() < cfg.after_dropout) for _ in b]
        x, mask = _pad([cache[(c, n)][i] for i, c, n in zip(b, use_ctx, use_next)])
        pool = None
        if utt_len is not None:  # pool="utterance": average only each example's utterance span
            pool = (torch.arange(mask.shape[1]) < torch.tensor([utt_len[i] for i in b])[:, None]).long()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cfg.bf16):
            out = model.top(x, mask, pool)
        out = {k: v.float() for k, v in out.items()}
        loss = losses["emotion"](out["emotion"], torch.tensor([e.emotion for e in exs])) + \
            cfg.sentiment_loss_weight * losses["sentiment"](out["sentiment"], torch.tensor([e.sentiment for e in exs]))
        if teacher is not None:
            t = cfg.kd_temperature
            kd = sum(w * nn.functional.kl_div((out[task] / t).log_softmax(-1),
                                              (teacher[task][b] / t).log_softmax(-1), log_target=True,
                                              reduction="batchmean") * t * t
                     for task, w in (("emotion", 1.0), ("sentiment", cfg.sentiment_loss_weight)))
            loss = (1 - cfg.kd_weight) * loss + cfg.kd_weight * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        total += loss.item()
        if step % 50 == 0:
            log.info("epoch %d step %d/%d loss %.4f (%.0f s)", epoch, step, len(batches), loss.item(),
                     time.time() - t0)
    return total / max(1, len(batches))


def train_text(data: str, out_dir: str, cfg: TextTrainConfig = TextTrainConfig(), *, resume: bool = True,
               train_split: str = "train", dev_split: str = "dev") -> TextTrainResult:
    """Fine-tune, select on dev, calibrate on dev; writes ``{out_dir}/text_model.safetensors``.

    Every epoch writes ``epoch{n}.safetensors`` and ``state.pt`` (optimizer), so a killed run resumes;
    a finished run given again (same folder and options, ``resume``) only redoes the selection and
    calibration, e.g. with another ``cfg.select``.
    """
    if cfg.select not in SELECT:
        raise ValueError(f"select={cfg.select!r}: expected one of {', '.join(SELECT)}")
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed), np.random.seed(cfg.seed), torch.manual_seed(cfg.seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mcfg = cfg.model
    train, p1 = read_meld_text(Path(data) / f"{train_split}_sent_emo.csv", mcfg.context_turns, mcfg.context_after)
    dev, p2 = read_meld_text(Path(data) / f"{dev_split}_sent_emo.csv", mcfg.context_turns, mcfg.context_after)
    for p in p1 + p2:
        log.warning(p)
    rng = random.Random(cfg.seed)
    if cfg.max_train:
        train = rng.sample(train, min(cfg.max_train, len(train)))
    if cfg.max_dev:
        dev = dev[: cfg.max_dev]
    state_path = out / "state.pt"
    if resume and state_path.exists():
        _check_same_recipe(out / "train_config.json", cfg)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    log.info("train %d, dev %d utterances", len(train), len(dev))

    model = TextClassifier.from_base(mcfg)
    model.bf16 = cfg.bf16
    losses = {
        "emotion": nn.CrossEntropyLoss(weight=class_weights([e.emotion for e in train], 7, cfg.class_weight_power)),
        "sentiment": nn.CrossEntropyLoss(weight=class_weights([e.sentiment for e in train], 3, cfg.class_weight_power)),
    }
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    opt, sched = _optimizer(model, cfg, steps_per_epoch * cfg.epochs)
    history: list[dict[str, Any]] = []
    start = 0
    if resume and state_path.exists():
        state = torch.load(state_path, weights_only=True)
        model.load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        start = int(state["epoch"])
        # state.pt is written last: history may hold an epoch that state.pt does not, never fewer
        history = json.loads((out / "history.json").read_text())[:start]
        rng.setstate(_rng_state(state["rng"]))
        log.info("resumed after epoch %d", start)
    cache: dict[tuple, list[torch.Tensor]] = {}
    after = mcfg.context_after > 0
    teacher = _teacher_logits(cfg.teacher, train) if cfg.teacher else None
    utt_len = utterance_lengths(model, train) if mcfg.pool == "utterance" else None
    for epoch in range(start + 1, cfg.epochs + 1):
        if not cache:
            t0 = time.time()
            for ctx in (True, False) if cfg.context_dropout else (True,):
                for nxt in ((True, False) if cfg.after_dropout else (True,)) if after else (False,):
                    cache[(ctx, nxt)] = precompute_bottom(model, train, ctx, with_following=nxt)
            log.info("frozen bottom layers cached in %.0f s", time.time() - t0)
            (out / "cache_seconds.txt").write_text(f"{time.time() - t0:.1f}\n")
        t0 = time.time()
        loss = _train_epoch(model, train, cache, cfg, opt, sched, losses, rng, epoch, teacher, utt_len)
        train_s = time.time() - t0
        scores = _score(evaluate_logits(model, dev), dev)
        rec = {"epoch": epoch, "train_loss": round(loss, 4), "train_seconds": round(train_s, 1),
               "eval_seconds": round(time.time() - t0 - train_s, 1), "dev": scores}
        if after:  # the same model with the past only, as a live stream uses it
            rec["dev_past_only"] = _score(evaluate_logits(model, dev, following=False), dev)
            log.info("epoch %d past-only: dev emotion wF1 %.2f, sentiment wF1 %.2f", epoch,
                     rec["dev_past_only"]["emotion"]["weighted_f1"], rec["dev_past_only"]["sentiment"]["weighted_f1"])
        history.append(rec)
        log.info("epoch %d: loss %.4f, %.0f s; dev emotion wF1 %.2f, sentiment wF1 %.2f", epoch, loss, train_s,
                 scores["emotion"]["weighted_f1"], scores["sentiment"]["weighted_f1"])
        model.save(out / f"epoch{epoch}.safetensors", extra={"epoch": epoch})
        storage.write_text_atomic(out / "history.json", json.dumps(history, indent=2))
        state = {"model": {k: v for k, v in model.state_dict().items() if "lora_" in k or k.startswith("heads.")},
                 "optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "epoch": epoch,
                 "rng": _rng_tensor(rng)}
        # atomic, and last: a kill mid-save leaves the previous epoch's resume state intact
        storage.write_atomic(state_path, lambda tmp: torch.save(state, tmp))
    return finalize(out, dev, history, cfg)


# options a resumed (or re-finalized) run may change: they do not alter the epochs already trained
RESUME_MAY_CHANGE = ("epochs", "threads", "select")


def _recipe_diffs(recorded: dict[str, Any], given: dict[str, Any], may_differ: set[str] | tuple[str, ...]
                  ) -> list[tuple[str, Any, Any]]:
    """The training options (train_config.json form) on which two recipes differ: ``(key, recorded,
    given)``, model options as ``model.<name>``; keys in ``may_differ`` (or under a ``model`` there)
    and keys only one side records are not compared. The resume check and the soup's share it."""
    def flat(d: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in d.items() if k != "model"}
        if d.get("teacher"):  # the same file, however its path was written
            out["teacher"] = str(Path(d["teacher"]).resolve())
        # a model option added since the run was recorded has its default there (TextClassifierConfig.from_dict)
        model = asdict(TextClassifierConfig.from_dict(d["model"])) if "model" in d else {}
        out.update({f"model.{k}": v for k, v in json.loads(json.dumps(model)).items()})
        return out

    a, b = flat(recorded), flat(json.loads(json.dumps(given)))
    return [(k, a[k], v) for k, v in sorted(b.items())
            if k not in may_differ and k.split(".")[0] not in may_differ and k in a and a[k] != v]


def _check_same_recipe(path: Path, cfg: TextTrainConfig) -> None:
    """Refuse to resume a run with other training options than it was started with (named, with both values)."""
    if not path.exists():
        return
    diffs = _recipe_diffs(json.loads(path.read_text()), asdict(cfg), RESUME_MAY_CHANGE)
    if diffs:
        raise ValueError(f"{path}: the run was started with other options "
                         f"({'; '.join(f'{k}: {a!r} in the run, {b!r} given' for k, a, b in diffs)}); repeat them, "
                         "or give another --out for a new run")


def _teacher_logits(path: str, train: Sequence[TextExample]) -> dict[str, torch.Tensor]:
    """A teacher's logits aligned to ``train`` by utterance id; every training example must have one."""
    with np.load(path) as z:
        index = {str(u): i for i, u in enumerate(z["uid"])}
        missing = [e.uid for e in train if e.uid not in index]
        if missing:
            raise ValueError(f"{path}: no teacher logits for {len(missing)} training utterances (e.g. {missing[0]})")
        rows = [index[e.uid] for e in train]
        return {task: torch.tensor(z[task][rows], dtype=torch.float32) for task in ("emotion", "sentiment")}


def _rng_tensor(rng: random.Random) -> torch.Tensor:
    version, internal, gauss = rng.getstate()
    return torch.tensor(list(internal), dtype=torch.int64)


def _rng_state(t: torch.Tensor) -> tuple:
    return (3, tuple(int(x) for x in t.tolist()), None)


def finalize(out: Path, dev: Sequence[TextExample], history: list[dict[str, Any]], cfg: TextTrainConfig
             ) -> TextTrainResult:
    """Pick the epoch (``cfg.select``: best dev emotion wF1, or the last), fit calibration on dev, write
    the final model + metrics."""
    if not history:
        raise ValueError(f"{out}: no trained epoch to select from")
    best = history[-1] if cfg.select == "last" else max(history, key=lambda r: r["dev"]["emotion"]["weighted_f1"])
    model = TextClassifier.load(out / f"epoch{best['epoch']}.safetensors", merge=False)
    logits = evaluate_logits(model, dev)
    labels = {"emotion": torch.tensor([e.emotion for e in dev]), "sentiment": torch.tensor([e.sentiment for e in dev])}
    folds = torch.tensor([int(e.uid.split("_")[0][3:]) % 2 if e.uid.startswith("dia") else i % 2
                          for i, e in enumerate(dev)])
    calib = calibrate_on_dev(logits, labels, folds)
    for task, c in calib["fitted"].items():
        getattr(model, f"temperature_{task}").fill_(c["temperature"])
        getattr(model, f"bias_{task}").copy_(torch.tensor(c["bias"]))
    final_logits = model.calibrate(logits)
    metrics = {"split": "dev", "n": len(dev), "best_epoch": best["epoch"],
               "uncalibrated": _score(logits, dev),
               # Honest estimate of the shipped decision rule: bias fitted on one half of dev's
               # dialogues, scored on the other half, and vice versa.
               "calibrated_crossfit": _score(calib["crossfit_logits"], dev),
               # Optimistic (bias fitted and scored on the same dev rows): for reference only.
               "calibrated_in_sample": _score(final_logits, dev),
               "calibration": calib["report"],
               "majority_baseline": _score({t: _majority(z) for t, z in logits.items()}, dev),
               "seconds_per_epoch": [r["train_seconds"] for r in history],
               "train_config": asdict(cfg)}
    model_path = out / "text_model.safetensors"
    model.save(model_path, extra={"dev_metrics": {t: {k: v for k, v in m.items() if k != "confusion_matrix"}
                                                  for t, m in metrics["calibrated_crossfit"].items()},
                                  "best_epoch": best["epoch"]})
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return TextTrainResult(str(model_path), metrics, history, str(out))


def _majority(z: torch.Tensor) -> torch.Tensor:
    # "neutral" is the majority class of both tasks on MELD train; one-hot logits predict it everywhere.
    out = torch.zeros_like(z)
    out[:, EMOTIONS.index("neutral") if z.shape[1] == len(EMOTIONS) else SENTIMENTS.index("neutral")] = 1.0
    return out


# -- calibration on dev --------------------------------------------------------------------------
# Temperature scaling (Guo et al. 2017) and a per-class logit bias are a few lines over scipy and
# torchmetrics; no well-kept library fits a bias for weighted-F1, hence the small search below.

def fit_temperature(z: torch.Tensor, y: torch.Tensor) -> float:
    """The temperature T minimising the NLL of ``softmax(z / T)`` on (z, y)."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        return float(nn.functional.cross_entropy(z / math.exp(log_t), y))

    return float(math.exp(minimize_scalar(nll, bounds=(-3.0, 3.0), method="bounded").x))


def fit_bias(z: torch.Tensor, y: torch.Tensor, grid: Sequence[float] = tuple(np.arange(-1.5, 1.51, 0.1)),
             rounds: int = 2, average: str = "weighted") -> torch.Tensor:
    """Per-class additive logit bias maximising F1 (``average``: "weighted" or "macro", the latter
    favouring rare classes), by coordinate ascent over a grid."""
    from sklearn.metrics import f1_score

    b = torch.zeros(z.shape[1])
    yt = y.numpy()

    def score(bias: torch.Tensor) -> float:
        return f1_score(yt, (z + bias).argmax(-1).numpy(), average=average, zero_division=0)

    best = score(b)
    for _ in range(rounds):
        for c in range(z.shape[1]):
            for v in grid:
                cand = b.clone()
                cand[c] = float(v)
                s = score(cand)
                if s > best + 1e-6:
                    best, b = s, cand
    return b - b.mean()


def ece(z: torch.Tensor, y: torch.Tensor) -> float:
    """Expected calibration error (15 bins, x100) of ``softmax(z)``."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    return round(100 * float(multiclass_calibration_error(z.softmax(-1), y, num_classes=z.shape[1], n_bins=15)), 2)


def calibrate_on_dev(logits: dict[str, torch.Tensor], labels: dict[str, torch.Tensor], folds: torch.Tensor
                     ) -> dict[str, Any]:
    """Fit T (NLL) then a bias (weighted-F1) per task; the bias is kept only if it helps out of fold.

    Returns ``{"fitted": {task: {"temperature", "bias"}}, "report": {...}, "crossfit_logits": {...}}``.
    """
    from sklearn.metrics import f1_score

    fitted, report, crossfit = {}, {}, {}
    for task, z in logits.items():
        y = labels[task]
        t = fit_temperature(z, y)
        zs = z / t
        oof = zs.clone()
        for f in (0, 1):  # bias fitted on one half of the dialogues, applied to the other
            train_rows, test_rows = folds != f, folds == f
            oof[test_rows] = zs[test_rows] + fit_bias(zs[train_rows], y[train_rows])
        wf1 = {name: f1_score(y.numpy(), v.argmax(-1).numpy(), average="weighted") for name, v in
               (("none", zs), ("crossfit", oof))}
        use_bias = wf1["crossfit"] > wf1["none"] + 0.002  # a bias must win >0.2 wF1 out of fold
        bias = fit_bias(zs, y) if use_bias else torch.zeros(z.shape[1])
        t2 = fit_temperature(zs + bias, y) * t if use_bias else t  # re-fit T so confidences stay calibrated
        fitted[task] = {"temperature": t2, "bias": [round(float(v), 4) for v in bias * t / t2]}
        crossfit[task] = (oof if use_bias else zs)
        final = z / t2 + bias * t / t2
        report[task] = {"temperature": round(t2, 4), "bias_used": bool(use_bias),
                        "bias": fitted[task]["bias"],
                        "weighted_f1_no_bias": round(100 * wf1["none"], 2),
                        "weighted_f1_bias_crossfit": round(100 * wf1["crossfit"], 2),
                        "ece_before": ece(z, y), "ece_after": ece(final, y),
                        "nll_before": round(float(nn.functional.cross_entropy(z, y)), 4),
                        "nll_after": round(float(nn.functional.cross_entropy(final, y)), 4)}
    return {"fitted": fitted, "report": report, "crossfit_logits": crossfit}


# -- model soup ----------------------------------------------------------------------------------
def _run_recipe(folder: Path) -> dict[str, Any]:
    """The training settings recorded beside a model file: a run's train_config.json, or the
    train_config inside an installed folder's dev_metrics.json (a run's metrics.json); {} if none."""
    if (folder / "train_config.json").is_file():
        return json.loads((folder / "train_config.json").read_text())
    for name in ("dev_metrics.json", "metrics.json"):
        if (folder / name).is_file():
            return json.loads((folder / name).read_text()).get("train_config", {})
    return {}


def soup_text_models(files: Sequence[str | Path], data: str, out_dir: str, *, dev_split: str = "dev",
                     threads: int = 1, bf16: bool = False) -> TextTrainResult:
    """One model from several runs of one recipe (other seeds): their weights averaged, a "model soup"
    (Wortsman et al., 2022), then scored, calibrated and written like a training run, so
    :func:`mmva.model.default.install_text_model` installs it.

    The averaged LoRA update of n rank-r adapters is stored exactly as one adapter of rank n*r:
    (1/n) sum_i B_i A_i = [B_1 ... B_n] / n x [A_1; ...; A_n], with alpha scaled by n so the LoRA scale
    alpha/r stays; the linear heads are averaged. peft has no such merge for adapters of separate runs
    (its ``add_weighted_adapter`` works on adapters loaded into one model and re-factorises by SVD),
    hence these few lines. Each file is a ``text_model.safetensors`` or ``epoch{n}.safetensors``.
    """
    from dataclasses import replace

    from peft import set_peft_model_state_dict
    from safetensors import safe_open

    from mmva.model.textclf import ARCHITECTURE

    if len(files) < 2:
        raise ValueError("a soup needs at least two model files")
    out = Path(out_dir)
    torch.set_num_threads(threads)
    states, configs, members, recipes = [], [], [], []
    for f in files:
        f = Path(f)
        if not f.is_file():
            raise ValueError(f"{f}: no such model file")
        if out.resolve() == f.parent.resolve():
            raise ValueError(f"{out}: is the folder of {f}; give the soup its own --out")
        try:
            with safe_open(str(f), framework="pt") as fh:
                meta = fh.metadata() or {}
                states.append({k: fh.get_tensor(k).float() for k in fh.keys()})
            if meta.get("architecture") != ARCHITECTURE:
                raise ValueError(f"not a {ARCHITECTURE} file (architecture={meta.get('architecture')!r})")
            configs.append(TextClassifierConfig.from_dict(json.loads(meta["config"])))
        except (OSError, KeyError, ValueError, TypeError) as exc:  # safetensors raises its own errors too
            raise ValueError(f"{f}: not a text model file ({exc})") from None
        except Exception as exc:  # e.g. safetensors_rust.SafetensorError on a corrupt file
            raise ValueError(f"{f}: unreadable ({exc})") from None
        extra = json.loads(meta.get("extra", "{}"))
        recipe = _run_recipe(f.parent)
        recipes.append(recipe)
        members.append({"file": f.name, "run": f.parent.name, "epoch": extra.get("epoch", extra.get("best_epoch")),
                        "seed": recipe.get("seed")})
    first = configs[0]
    for f, c in zip(files[1:], configs[1:]):
        if c != first:
            raise ValueError(f"{f}: its model config differs from {files[0]}'s (a soup averages runs of one recipe)")
    for f, r in zip(files[1:], recipes[1:]):  # the model configs were compared above, from the files
        diff = [k for k, _, _ in _recipe_diffs(recipes[0], r, {"seed", "threads", "model", "max_dev", "select"})]
        if diff:
            raise ValueError(f"{f}: trained with other settings than {files[0]} ({', '.join(diff)}); "
                             "a soup averages runs of one recipe (seeds)")
    n = len(states)
    mcfg = replace(first, lora_r=n * first.lora_r, lora_alpha=n * first.lora_alpha)
    model = TextClassifier.from_base(mcfg)
    adapter = {}
    for k in states[0]:
        if not k.startswith("adapter."):
            continue
        if "lora_A" in k:
            adapter[k[len("adapter."):]] = torch.cat([s[k] for s in states], dim=0)
        elif "lora_B" in k:
            adapter[k[len("adapter."):]] = torch.cat([s[k] for s in states], dim=1) / n
        else:
            raise ValueError(f"{files[0]}: unexpected adapter tensor {k}")
    result = set_peft_model_state_dict(model.encoder, adapter)
    if getattr(result, "unexpected_keys", None):
        raise ValueError(f"soup adapter keys do not match the base: {result.unexpected_keys[:3]}")
    model.heads.load_state_dict({k[len("heads."):]: sum(s[k] for s in states) / n
                                 for k in states[0] if k.startswith("heads.")})
    model.bf16 = bf16
    out.mkdir(parents=True, exist_ok=True)
    dev, problems = read_meld_text(Path(data) / f"{dev_split}_sent_emo.csv", mcfg.context_turns, mcfg.context_after)
    for p in problems:
        log.warning(p)
    t0 = time.time()
    rec: dict[str, Any] = {"epoch": 1, "train_loss": None, "train_seconds": 0.0, "soup_of": members,
                           "dev": _score(evaluate_logits(model, dev), dev)}
    if mcfg.context_after > 0:
        rec["dev_past_only"] = _score(evaluate_logits(model, dev, following=False), dev)
    rec["eval_seconds"] = round(time.time() - t0, 1)
    log.info("soup of %d: dev emotion wF1 %.2f, sentiment wF1 %.2f", n, rec["dev"]["emotion"]["weighted_f1"],
             rec["dev"]["sentiment"]["weighted_f1"])
    model.save(out / "epoch1.safetensors", extra={"epoch": 1, "soup_of": members})
    storage.write_text_atomic(out / "history.json", json.dumps([rec], indent=2))
    # The recipe is the first run's (as trained: its bf16 too), the model config the soup's.
    tc = dict(recipes[0])
    tc.pop("model", None)
    tc.update(select="last", threads=threads, max_dev=None, seed=None)  # no one seed: soup_of lists them
    cfg = TextTrainConfig(**{k: v for k, v in tc.items() if k in TextTrainConfig.__dataclass_fields__}, model=mcfg)
    (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2))
    result_ = finalize(out, dev, [rec], cfg)
    # What the card and the benchmark need beyond a training run's metrics: the members, and their
    # training cost (the soup itself trains nothing).
    member_secs = []
    for f in files:
        hist = Path(f).parent / "history.json"
        member_secs.append([r["train_seconds"] for r in json.loads(hist.read_text())] if hist.is_file() else [])
    result_.metrics.update(soup_of=members, seconds_per_epoch=member_secs[0], member_seconds_per_epoch=member_secs)
    cached = Path(files[0]).parent / "cache_seconds.txt"
    if cached.is_file():
        (out / "cache_seconds.txt").write_text(cached.read_text())
    (out / "metrics.json").write_text(json.dumps(result_.metrics, indent=2))
    return result_
