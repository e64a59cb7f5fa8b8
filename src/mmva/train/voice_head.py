"""Train and judge the voice head on many corpora whose label sets differ.

The head is small (a linear layer or one hidden layer over a pooled utterance feature, e.g. the
Whisper encoder states of :mod:`mmva.encoders.whisper_states`), so every fold trains in about a
second from the cached feature table (:mod:`mmva.train.voice_features`).

Corpora that lack a class (Amharic ASED has no disgust or surprise; Urdu has four classes) are
handled in the loss, not by inventing labels: a clip's softmax runs over the classes *its corpus
has*, so an ASED clip never teaches the head that it is "not disgust". Samples are weighted so each
(corpus, class) cell counts alike within a corpus, and corpora count by the square root of their
size (many small corpora beat one large one for unseen speakers).

Evaluation, as a user meets the head (one clip, an unknown speaker, an unseen recording setup):
leave-one-corpus-out (LOCO: train on five corpora, test on the sixth; headline = the mean over
corpora of accuracy and unweighted average recall on that corpus's classes, predictions over all 7)
and leave-one-speaker-out within the union (LOSO, grouped folds). Out-of-corpus logits give the
temperature (each prediction from a head that never saw that corpus).

>>> # res = cross_validate(x, rows, group="corpus", spec=HeadSpec())
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmva.labels import EMOTIONS

N = len(EMOTIONS)


@dataclass(frozen=True)
class HeadSpec:
    """Head and training settings (all folds and the final head use the same)."""

    hidden: int = 0  # 0: linear (multinomial logistic regression); else one hidden layer
    dropout: float = 0.2
    weight_decay: float = 1e-3
    lr: float = 3e-3
    epochs: int = 60
    batch_size: int = 256
    normalization: str = "speaker"  # "speaker": z-score each speaker; "global": training statistics
    seed: int = 0


# -- label sets and weights ------------------------------------------------------------------------
def corpus_label_masks(labels: np.ndarray, corpora: Sequence[str]) -> tuple[np.ndarray, dict[str, list[int]]]:
    """Per-sample boolean mask ``(n, 7)`` of the classes its corpus has, and each corpus's classes."""
    corpora = np.asarray(corpora)
    classes = {c: sorted(set(labels[corpora == c].tolist())) for c in sorted(set(corpora.tolist()))}
    mask = np.zeros((len(labels), N), bool)
    for c, cls in classes.items():
        mask[np.ix_(corpora == c, cls)] = True
    return mask, classes


def sample_weights(labels: np.ndarray, corpora: Sequence[str]) -> np.ndarray:
    """Each (corpus, class) cell equal within its corpus; corpus totals ∝ sqrt(size); mean 1."""
    corpora = np.asarray(corpora)
    w = np.zeros(len(labels), np.float64)
    for c in set(corpora.tolist()):
        m = corpora == c
        cls = sorted(set(labels[m].tolist()))
        for k in cls:
            cell = m & (labels == k)
            w[cell] = math.sqrt(m.sum()) / len(cls) / cell.sum()
    return (w / w.mean()).astype(np.float32)


# -- normalisation ---------------------------------------------------------------------------------
def zscore_groups(x: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Standardise the rows of each group (speaker) with that group's own statistics."""
    out = np.empty_like(x, dtype=np.float32)
    groups = np.asarray(groups)
    for g in set(groups.tolist()):
        m = groups == g
        mu, sd = x[m].mean(0), x[m].std(0)
        out[m] = (x[m] - mu) / np.maximum(sd, 1e-3 * (np.abs(mu) + 1e-3))
    return out


def normalise(x: np.ndarray, speakers: Sequence[str], how: str) -> np.ndarray:
    if how == "speaker":
        return zscore_groups(x, speakers)
    if how == "global":
        return x.astype(np.float32)  # standardised inside the head with training statistics
    raise ValueError(f"unknown normalization {how!r}")


# -- the head --------------------------------------------------------------------------------------
class Head(nn.Module):
    """Standardise -> (hidden layer) -> 7 logits. Mean/std are buffers (fitted on training data)."""

    def __init__(self, dim: int, hidden: int = 0, dropout: float = 0.2) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.net: nn.Module = (nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, N)) if hidden == 0 else
                               nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, hidden), nn.GELU(),
                                             nn.Dropout(dropout), nn.Linear(hidden, N)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def fit_head(x: np.ndarray, labels: np.ndarray, corpora: Sequence[str], spec: HeadSpec) -> Head:
    """Train one head on (normalised) features with the masked, weighted loss."""
    torch.manual_seed(spec.seed)
    mask, _ = corpus_label_masks(labels, corpora)
    w = torch.from_numpy(sample_weights(labels, corpora))
    xt = torch.from_numpy(np.asarray(x, np.float32))
    yt = torch.from_numpy(labels.astype(np.int64))
    mt = torch.from_numpy(mask)
    head = Head(xt.shape[1], spec.hidden, spec.dropout)
    head.mean.copy_(xt.mean(0))
    head.std.copy_(xt.std(0).clamp_min(1e-4))
    opt = torch.optim.AdamW(head.parameters(), lr=spec.lr, weight_decay=spec.weight_decay)
    steps = spec.epochs * math.ceil(len(xt) / spec.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(spec.seed)
    head.train()
    for _ in range(spec.epochs):
        perm = torch.randperm(len(xt), generator=gen)
        for s in range(0, len(perm), spec.batch_size):
            i = perm[s: s + spec.batch_size]
            logits = head(xt[i]).masked_fill(~mt[i], float("-inf"))
            loss = (F.cross_entropy(logits, yt[i], reduction="none") * w[i]).sum() / w[i].sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return head.eval()


@torch.no_grad()
def head_logits(head: Head, x: np.ndarray) -> np.ndarray:
    return head(torch.from_numpy(np.asarray(x, np.float32))).numpy()


# -- metrics ---------------------------------------------------------------------------------------
def scores(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> dict[str, Any]:
    """Accuracy and UAR on the classes present (predictions over all 7 and restricted to those),
    per-class recall, predicted shares, confusion and calibration error."""
    from sklearn.metrics import confusion_matrix

    from mmva.train.face_train import ece

    present = sorted(set(labels.tolist()))
    probs = torch.softmax(torch.from_numpy(logits) / temperature, -1).numpy()
    pred = probs.argmax(1)
    sub = logits[:, present]
    pred_r = np.array(present)[sub.argmax(1)]
    cm = confusion_matrix(labels, pred, labels=list(range(N)))
    recall = {EMOTIONS[c]: float(cm[c, c] / max(cm[c].sum(), 1)) for c in present}
    recall_r = {c: float(((pred_r == c) & (labels == c)).sum() / max((labels == c).sum(), 1)) for c in present}
    return {"n": int(len(labels)), "classes": [EMOTIONS[c] for c in present],
            "accuracy": float((pred == labels).mean()), "uar": float(np.mean(list(recall.values()))),
            "accuracy_restricted": float((pred_r == labels).mean()),
            "uar_restricted": float(np.mean(list(recall_r.values()))),
            "recall": recall, "predicted_share": {EMOTIONS[c]: float((pred == c).mean()) for c in range(N)},
            "max_predicted_share": float(max((pred == c).mean() for c in range(N))),
            "ece": ece(probs, labels), "confusion": cm.tolist(),
            "nll": float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()),
            # share of the label uncertainty (log of the classes present) the head removes
            "information_gain": float(1 - (-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
                                      / np.log(max(len(present), 2)))}


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    t = torch.zeros(1, requires_grad=True)
    lt, yt = torch.from_numpy(logits), torch.from_numpy(labels.astype(np.int64))
    opt = torch.optim.LBFGS([t], lr=0.1, max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lt / t.exp(), yt)
        loss.backward()
        return loss

    opt.step(closure)
    return float(t.exp().detach())


# -- cross-validation ------------------------------------------------------------------------------
@dataclass
class CVResult:
    group: str
    spec: dict[str, Any]
    per_group: dict[str, dict[str, Any]] = field(default_factory=dict)
    logits: np.ndarray | None = None

    def summary(self) -> dict[str, Any]:
        keys = ("accuracy", "uar", "accuracy_restricted", "uar_restricted", "max_predicted_share")
        return {f"{k}_mean": float(np.mean([g[k] for g in self.per_group.values()])) for k in keys}


def cross_validate(x: np.ndarray, labels: np.ndarray, speakers: Sequence[str], corpora: Sequence[str],
                   spec: HeadSpec, group: str = "corpus", n_splits: int = 0) -> CVResult:
    """Out-of-group logits for every clip. ``group="corpus"``: leave one corpus out; ``"speaker"``:
    leave one speaker out (or ``n_splits`` grouped folds by speaker when given)."""
    speakers, corpora = np.asarray(speakers), np.asarray(corpora)
    xn = normalise(x, speakers, spec.normalization)
    keys = corpora if group == "corpus" else speakers
    values = sorted(set(keys.tolist()))
    if group == "speaker" and n_splits:
        rng = np.random.default_rng(spec.seed)
        order = rng.permutation(values)
        fold_of = {v: i % n_splits for i, v in enumerate(order)}
        fold = np.array([fold_of[k] for k in keys])
        folds = [(f"fold{i}", fold == i) for i in range(n_splits)]
    else:
        folds = [(v, keys == v) for v in values]
    logits = np.zeros((len(labels), N), np.float32)
    for _, test in folds:
        head = fit_head(xn[~test], labels[~test], corpora[~test], spec)
        logits[test] = head_logits(head, xn[test])
    res = CVResult(group=group, spec=asdict(spec), logits=logits)
    for v in values:
        m = keys == v
        res.per_group[v] = scores(logits[m], labels[m])
    return res


# -- the recipe: cross-validate, calibrate, fit the shipped heads ----------------------------------
def speaker_population(x: np.ndarray, speakers: Sequence[str]) -> dict[str, list[float]]:
    """Average per-speaker mean and standard deviation: the prior a new speaker is shrunk towards."""
    speakers = np.asarray(speakers)
    groups = sorted(set(speakers.tolist()))
    means = np.stack([x[speakers == g].mean(0) for g in groups])
    stds = np.stack([x[speakers == g].std(0) for g in groups])
    return {"mean": means.mean(0).tolist(), "std": stds.mean(0).tolist()}


def train_recipe(x: np.ndarray, labels: np.ndarray, speakers: Sequence[str], corpora: Sequence[str],
                 out: str, *, utterance_spec: HeadSpec | None = None, speaker_spec: HeadSpec | None = None,
                 feature: dict[str, Any] | None = None, loso_splits: int = 0,
                 extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """LOCO (+ optional grouped LOSO) for both heads, temperatures from out-of-corpus logits, final
    heads on everything, written as ``voice.json`` + two safetensors into ``out``."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    utterance_spec = utterance_spec or HeadSpec(normalization="global")
    speaker_spec = speaker_spec or HeadSpec(normalization="speaker")
    speakers, corpora = np.asarray(speakers), np.asarray(corpora)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    # format 3: the feature names Whisper blocks (a reader of format 2 would take the last layer instead)
    version = 3 if (feature or {}).get("blocks") else 2
    config: dict[str, Any] = {"format": f"mmva-voice-head-{version}", "version": version, "labels": list(EMOTIONS),
                              "sample_rate": 16000, "feature": feature or {"kind": "whisper"},
                              "min_speaker_utterances": 5, "speaker_prior_weight": 5.0, "heads": {},
                              "scores": {}}
    for name, spec in (("utterance", utterance_spec), ("speaker", speaker_spec)):
        loco = cross_validate(x, labels, speakers, corpora, spec, group="corpus")
        temperature = fit_temperature(loco.logits, labels)
        calibrated = {c: scores(loco.logits[corpora == c], labels[corpora == c], temperature) for c in loco.per_group}
        entry: dict[str, Any] = {"loco": loco.summary(), "loco_per_corpus": calibrated,
                                 "ece_before": scores(loco.logits, labels)["ece"],
                                 "ece_after": scores(loco.logits, labels, temperature)["ece"]}
        if loso_splits:
            loso = cross_validate(x, labels, speakers, corpora, spec, group="speaker", n_splits=loso_splits)
            pooled = scores(loso.logits, labels, temperature)
            entry["loso"] = {"folds": loso_splits, "accuracy": pooled["accuracy"], "uar": pooled["uar"],
                             "per_corpus": {c: {k: scores(loso.logits[corpora == c], labels[corpora == c])[k]
                                                for k in ("accuracy", "uar")} for c in sorted(set(corpora.tolist()))}}
        xn = normalise(x, speakers, spec.normalization)
        head = fit_head(xn, labels, corpora, spec)
        file = f"voice_{name}.safetensors"
        save_file({k: v.detach().contiguous() for k, v in head.state_dict().items()}, str(folder / file),
                  metadata={"format": config["format"], "head": name})
        config["heads"][name] = {"file": file, "hidden": spec.hidden, "normalization": spec.normalization,
                                 "temperature": round(temperature, 4), "spec": asdict(spec)}
        config["scores"][name] = entry
    config["speaker_population"] = speaker_population(x, speakers)
    config["training_data"] = {c: {"clips": int((corpora == c).sum()), "speakers": len(set(speakers[corpora == c])),
                                   "classes": sorted({EMOTIONS[k] for k in labels[corpora == c]})}
                               for c in sorted(set(corpora.tolist()))}
    config.update(extra or {})
    (folder / "voice.json").write_text(json.dumps(config, indent=1))
    return config
