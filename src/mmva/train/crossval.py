"""Group cross-validation through the project's trainer: leave-one-speaker-out and cross-corpus.

Each fold writes ``train/dev/test`` manifests (the generic CSV format of SPEC section 6) into its own
folder, trains with :func:`mmva.train.fit.fit` (the one training loop), and scores the held-out group
with the fold's best checkpoint. The fold's dev split is a stratified sample of the *training*
groups only, so the held-out speaker never influences early stopping or checkpoint selection.

Out-of-fold logits are kept: they give an honest temperature for calibration (each prediction comes
from a model that never saw that speaker) and pooled metrics.

>>> # res = crossval("speech.csv", load_config("voice"), "runs/voice-cv", group="speaker")
>>> # res.summary["accuracy_mean"]
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from mmva.config import Config
from mmva.io import storage
from mmva.labels import EMOTIONS, emotion_id, sentiment_of_emotion
from mmva.labels import softmax as label_softmax  # this module's softmax takes a temperature

log = logging.getLogger("mmva")

MANIFEST_COLUMNS = ("path", "text", "emotion", "sentiment", "speaker", "corpus")


# -- the speech-emotion recipe --------------------------------------------------------------------
def write_speech_manifest(root: str, out: str) -> dict[str, Any]:
    """Write a generic manifest (path, text, emotion, sentiment, speaker, corpus) for a folder of
    corpora that each hold ``labels.csv`` (file, emotion, speaker, ...), e.g. the speech-emotion set.

    Rows with a missing file or an unknown label are skipped and reported; paths are absolute.
    Returns ``{"rows", "per_corpus", "per_speaker", "problems"}``.

    >>> # write_speech_manifest("/data/speech-emotion", "speech.csv")["rows"]
    """
    base = Path(root)
    label_files = sorted(base.glob("*/labels.csv")) or sorted(base.glob("labels.csv"))
    if not label_files:
        raise FileNotFoundError(f"{root}: no labels.csv found (expected {root}/<corpus>/labels.csv)")
    rows: list[dict[str, str]] = []
    problems: list[str] = []
    for lf in label_files:
        corpus = lf.parent.name
        with open(lf, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = {"file", "emotion"} - set(reader.fieldnames or [])
            if missing:
                problems.append(f"{lf}: missing column(s) {', '.join(sorted(missing))}")
                continue
            for i, r in enumerate(reader, start=2):
                path = (lf.parent / r["file"]).resolve()
                try:
                    emotion = EMOTIONS[emotion_id(r["emotion"])]
                except ValueError as exc:
                    problems.append(f"{lf}:{i}: {exc}")
                    continue
                if not path.is_file():
                    problems.append(f"{lf}:{i}: {path}: file not found")
                    continue
                rows.append({"path": str(path), "text": "", "emotion": emotion,
                             "sentiment": sentiment_of_emotion(emotion),
                             "speaker": r.get("speaker") or f"{corpus}_unknown", "corpus": corpus})
    write_rows(out, rows)
    count = lambda key: {k: sum(r[key] == k for r in rows) for k in sorted({r[key] for r in rows})}  # noqa: E731
    return {"rows": len(rows), "per_corpus": count("corpus"), "per_speaker": count("speaker"), "problems": problems}


def write_rows(path: str, rows: list[dict[str, str]], columns: tuple[str, ...] = MANIFEST_COLUMNS) -> None:
    """Write manifest rows as CSV, atomically (local path or URI)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    storage.write_text_atomic(path, buf.getvalue())


def read_rows(path: str) -> list[dict[str, str]]:
    """Rows of a CSV or JSONL manifest as dicts of strings."""
    text = storage.read_text(path)
    if str(path).endswith(".jsonl"):
        return [{k: "" if v is None else str(v) for k, v in json.loads(line).items()}
                for line in text.splitlines() if line.strip()]
    return list(csv.DictReader(io.StringIO(text)))


# -- folds ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Fold:
    """One split: the held-out group value(s) and the rows of each part."""

    name: str
    test_groups: tuple[str, ...]
    train: tuple[int, ...]
    dev: tuple[int, ...]
    test: tuple[int, ...]


def make_folds(rows: list[dict[str, str]], group: str = "speaker", dev_fraction: float = 0.15,
               seed: int = 0, only: list[str] | None = None) -> list[Fold]:
    """Leave-one-group-out folds; dev = a per-(group, emotion) stratified sample of the training rows.

    >>> rows = [{"speaker": s, "emotion": e} for s in "ab" for e in ("joy", "anger") for _ in range(10)]
    >>> [f.test_groups for f in make_folds(rows)]
    [('a',), ('b',)]
    """
    if not rows:
        raise ValueError("no rows to split")
    if any(group not in r for r in rows):
        raise ValueError(f"manifest has no {group!r} column; columns: {', '.join(rows[0])}")
    groups = sorted({r[group] for r in rows})
    if len(groups) < 2:
        raise ValueError(f"need at least 2 distinct {group!r} values for cross-validation, got {groups}")
    folds = []
    for g in groups:
        if only and g not in only:
            continue
        rest = [i for i, r in enumerate(rows) if r[group] != g]
        train, dev = stratified_dev(rows, rest, group, dev_fraction, seed=f"{seed}-{g}")
        folds.append(Fold(name=f"{group}={g}", test_groups=(g,), train=train, dev=dev,
                          test=tuple(i for i, r in enumerate(rows) if r[group] == g)))
    return folds


def stratified_dev(rows: list[dict[str, str]], indices: list[int], group: str, dev_fraction: float,
                   seed: Any = 0) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(train, dev) indices: dev takes ``dev_fraction`` of every (group, emotion) cell."""
    rng = random.Random(str(seed))
    cells: dict[tuple[str, str], list[int]] = {}
    for i in indices:
        cells.setdefault((rows[i][group], rows[i].get("emotion", "")), []).append(i)
    dev: list[int] = []
    for key in sorted(cells):
        idx = cells[key][:]
        rng.shuffle(idx)
        dev += idx[: int(round(len(idx) * dev_fraction))]
    dev_set = set(dev)
    return tuple(sorted(i for i in indices if i not in dev_set)), tuple(sorted(dev))


# -- calibration ----------------------------------------------------------------------------------
def fit_temperature(logits: np.ndarray, labels: np.ndarray, max_iter: int = 200) -> float:
    """Temperature T minimising the NLL of ``softmax(logits / T)`` (Guo et al., 2017).

    Hand-written because it is one scalar optimisation; torchmetrics measures calibration but does
    not fit it, and scikit-learn's calibrators wrap its own estimators.

    >>> z = np.array([[4.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 0.0]]); y = np.array([0, 1, 1, 0])
    >>> fit_temperature(z, y) > 1.0  # over-confident logits get softened
    True
    """
    z = torch.as_tensor(logits, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) and t > 0 else 1.0


def calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """Expected calibration error (top-label, L1, equal-width bins) via torchmetrics."""
    from torchmetrics.functional.classification import multiclass_calibration_error

    return float(multiclass_calibration_error(torch.as_tensor(probs, dtype=torch.float32),
                                              torch.as_tensor(labels, dtype=torch.long),
                                              num_classes=probs.shape[1], n_bins=n_bins, norm="l1"))


def softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    """Rows of ``z / t`` as probabilities."""
    return label_softmax(np.asarray(z) / t, axis=1)


# -- results --------------------------------------------------------------------------------------
@dataclass
class FoldResult:
    """Scores of one fold on its held-out group."""

    name: str
    test_groups: tuple[str, ...]
    n_train: int
    n_test: int
    metrics: dict[str, Any]
    checkpoint: str
    seconds: float
    uids: list[str] = field(default_factory=list, repr=False)
    logits: np.ndarray | None = field(default=None, repr=False)  # (n_test, 7) out-of-fold
    labels: np.ndarray | None = field(default=None, repr=False)


@dataclass
class CrossValResult:
    """All folds, the mean/pooled summary and the held-out temperature."""

    group: str
    folds: list[FoldResult]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "summary": self.summary,
                "folds": [{"name": f.name, "test_groups": list(f.test_groups), "n_train": f.n_train,
                           "n_test": f.n_test, "checkpoint": f.checkpoint, "seconds": f.seconds,
                           "metrics": f.metrics} for f in self.folds]}


def _fold_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, Any]:
    from mmva.train.metrics import compute_metrics

    pred = logits.argmax(1)
    m = compute_metrics(labels.tolist(), pred.tolist(), list(EMOTIONS))
    return {k: m[k] for k in ("accuracy", "macro_f1", "weighted_f1", "confusion_matrix", "per_class") if k in m}


def summarize(folds: list[FoldResult]) -> dict[str, Any]:
    """Per-fold and mean accuracy/macro-F1, the pooled confusion matrix, and calibration.

    The temperature for each fold is fitted on the *other* folds' out-of-fold logits, so the
    reported ECE after scaling is measured on predictions the temperature never saw.
    """
    from mmva.train.metrics import compute_metrics

    accs = [f.metrics["accuracy"] for f in folds]
    f1s = [f.metrics["macro_f1"] for f in folds]
    out: dict[str, Any] = {
        "per_fold": {f.name: {"accuracy": round(f.metrics["accuracy"], 4), "macro_f1": round(f.metrics["macro_f1"], 4),
                              "n_test": f.n_test} for f in folds},
        "accuracy_mean": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
        "macro_f1_mean": float(np.mean(f1s)), "macro_f1_std": float(np.std(f1s)),
        "chance_accuracy": 1.0 / len(EMOTIONS), "labels": list(EMOTIONS),
    }
    have = [f for f in folds if f.logits is not None and len(f.logits)]
    if have:
        z = np.concatenate([f.logits for f in have])
        y = np.concatenate([f.labels for f in have])
        pooled = compute_metrics(y.tolist(), z.argmax(1).tolist(), list(EMOTIONS))
        out["pooled"] = {k: pooled[k] for k in ("accuracy", "macro_f1", "weighted_f1", "per_class") if k in pooled}
        out["confusion_matrix"] = pooled.get("confusion_matrix")
        out["temperature"] = fit_temperature(z, y)
        if len(have) > 1:
            cal = []
            for i, f in enumerate(have):
                rest = [g for j, g in enumerate(have) if j != i]
                t = fit_temperature(np.concatenate([g.logits for g in rest]), np.concatenate([g.labels for g in rest]))
                cal.append(softmax(f.logits, t))
            out["ece_before"] = calibration_error(softmax(z), y)
            out["ece_after_held_out_temperature"] = calibration_error(np.concatenate(cal), y)
    return out


# -- per-fold prosody normalisation ---------------------------------------------------------------
FoldConfig = Callable[[Fold, list[dict[str, str]], str, Config], Config]


def raw_prosody_features(rows: list[dict[str, str]], config: Config, cache_dir: str,
                         normalize: str = "utterance") -> dict[str, np.ndarray]:
    """Prosody vectors (before any speaker/global standardisation) of every row's file, by path,
    computed once through the feature cache (contract C). Files with no speech are left out."""
    from mmva.data.manifest import read_manifest
    from mmva.encoders.cache import MISSING, FeatureCache, extract_features
    from mmva.encoders.prosody import ProsodyEncoder

    tmp = storage.join(cache_dir, "_all_rows.csv")
    write_rows(tmp, rows, columns=tuple(rows[0].keys()))
    utts, _ = read_manifest(tmp, "all")
    enc = ProsodyEncoder(sample_rate=config.data.sample_rate, normalize=normalize)
    cache = FeatureCache(cache_dir)
    extract_features(utts, {"audio": enc}, cache, config.data, workers=2, progress=False)
    out = {}
    for u in utts:
        value = cache.get(cache.key(u, enc, config.data))
        if value is not MISSING and value is not None and u.path:
            out[u.path] = value.numpy()
            _seed_memo(u, config, normalize, out[u.path])
    return out


def _seed_memo(utt: Any, config: Config, normalize: str, feats: np.ndarray) -> None:
    """Decode the clip as the dataset does and tell the prosody memo its (cached) features: the
    per-fold normalised variants then cost a decode per clip, not a new analysis."""
    from mmva.encoders.prosody import remember
    from mmva.io.media import MediaError, decode_clip

    d = config.data
    try:
        clip = decode_clip(utt.path, start=utt.start_time, end=utt.end_time, num_frames=d.num_frames,
                           sample_rate=d.sample_rate, text=utt.text, want_video=False, want_audio=True)
    except MediaError:
        return
    if clip.has_audio:
        remember(clip.audio, clip.sample_rate, normalize, feats)


def prosody_normalization(mode: str, group: str = "speaker") -> FoldConfig:
    """A per-fold config hook: ``"speaker"`` z-scores each clip with its own speaker's statistics
    (held-out speaker included: no labels are used); ``"global"`` z-scores every clip with the
    average training speaker's statistics (what a single clip of an unknown speaker gets);
    ``"none"`` feeds the raw functionals."""
    if mode not in ("speaker", "global", "none"):
        raise ValueError(f"normalization must be speaker, global or none, not {mode!r}")
    memo: dict[str, dict[str, np.ndarray]] = {}

    def hook(fold: Fold, rows: list[dict[str, str]], fold_dir: str, config: Config) -> Config:
        import dataclasses

        from mmva.encoders.prosody import speaker_reference

        if mode == "none" or config.model.audio != "prosody":
            return config
        options = dict(config.model.encoder_options.get("prosody", {}))
        normalize = options.get("normalize", "utterance")
        if normalize not in memo:
            memo[normalize] = raw_prosody_features(rows, config, config.train.cache_dir, normalize)
        feats = memo[normalize]
        spk_of = {str(Path(r["path"]).resolve()) if not storage.is_remote(r["path"]) else r["path"]: r[group]
                  for r in rows}
        by_spk: dict[str, list[np.ndarray]] = {}
        for path, x in feats.items():
            if path in spk_of:
                by_spk.setdefault(spk_of[path], []).append(x)
        train_groups = sorted({rows[i][group] for i in fold.train})
        ref = speaker_reference({s: np.stack(v) for s, v in by_spk.items()},
                                files={p: s for p, s in spk_of.items()} if mode == "speaker" else {},
                                normalize=normalize, population=train_groups)
        ref_path = storage.join(fold_dir, "prosody_reference.json")
        storage.write_text_atomic(ref_path, json.dumps(ref))
        options["reference"] = ref_path
        model = dataclasses.replace(config.model, encoder_options={**config.model.encoder_options, "prosody": options})
        return dataclasses.replace(config, model=model)

    return hook


# -- the driver -----------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads. Small heads on a busy CPU train ~10x faster with
    one thread (measured here: 512 s vs 47 s for 3 epochs): idle intra-op threads spin and wait."""
    if not n:
        yield
        return
    saved = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def _fold_logits(checkpoint: str, data_dir: str, split: str, config: Config) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Emotion logits of the best checkpoint on a split, through the project's dataset and cache."""
    from functools import partial

    from torch.utils.data import DataLoader

    from mmva.data import UtteranceDataset, collate_batch, load_corpus
    from mmva.model.checkpoint import load_model
    from mmva.train.task import predict_batch

    model = load_model(checkpoint)
    corpus = load_corpus(data_dir, split)
    frozen = frozenset(model.frozen_modalities())
    cache = None
    if config.train.use_cache and config.train.cache_dir and frozen:
        from mmva.encoders.cache import FeatureCache

        cache = FeatureCache(config.train.cache_dir)
    encoders = dict(model.encoders)
    ds = UtteranceDataset(corpus.utterances, encoders, config.data, cache=cache, cached=frozen if cache else frozenset())
    loader = DataLoader(ds, batch_size=64, collate_fn=partial(collate_batch, encoders=encoders))
    uids: list[str] = []
    zs, ys = [], []
    with torch.no_grad():
        for batch in loader:
            out = predict_batch(model, batch)
            uids += list(batch["uid"])
            zs.append(out["emotion"].float().numpy())
            ys.append(batch["emotion"].numpy())
    return uids, np.concatenate(zs), np.concatenate(ys)


def crossval(data: str, config: Config, out_dir: str, *, group: str = "speaker", dev_fraction: float = 0.15,
             seed: int = 0, only: list[str] | None = None, progress: bool = False,
             fold_config: FoldConfig | None = None, threads: int | None = 1,
             on_fold: Callable[[FoldResult], None] | None = None) -> CrossValResult:
    """Leave-one-``group``-out cross-validation of ``config`` on a manifest, through ``fit()``.

    ``group="speaker"``: leave-one-speaker-out; ``group="corpus"``: cross-corpus (train on the other
    corpora, test on the held-out one). Writes ``out_dir/crossval.json``; fold runs under
    ``out_dir/<fold>/``. Frozen-encoder features are shared across folds through
    ``config.train.cache_dir`` (defaults to ``out_dir/features``). ``fold_config`` may adapt the
    config per fold, e.g. :func:`prosody_normalization` ("speaker", "global").

    >>> # crossval("speech.csv", load_config("voice"), "runs/cv").summary["accuracy_mean"]
    """
    with torch_threads(threads):
        return _crossval(data, config, out_dir, group=group, dev_fraction=dev_fraction, seed=seed, only=only,
                         progress=progress, fold_config=fold_config, on_fold=on_fold)


def _crossval(data: str, config: Config, out_dir: str, *, group: str, dev_fraction: float, seed: int,
              only: list[str] | None, progress: bool, fold_config: FoldConfig | None,
              on_fold: Callable[[FoldResult], None] | None) -> CrossValResult:
    import dataclasses
    import time

    from mmva.train.fit import fit

    if not config.train.cache_dir:
        config = dataclasses.replace(config, train=dataclasses.replace(
            config.train, cache_dir=storage.join(out_dir, "features")))
    rows = read_rows(data)
    rows = [r for r in rows if r.get("emotion")]
    folds = make_folds(rows, group=group, dev_fraction=dev_fraction, seed=seed, only=only)
    results: list[FoldResult] = []
    for fold in folds:
        fold_dir = storage.join(out_dir, fold.name.replace("=", "-"))
        for part in ("train", "dev", "test"):
            write_rows(storage.join(fold_dir, "data", f"{part}.csv"), [rows[i] for i in getattr(fold, part)],
                       columns=tuple(rows[0].keys()))
        started = time.perf_counter()
        cfg = fold_config(fold, rows, fold_dir, config) if fold_config else config
        res = fit(cfg, storage.join(fold_dir, "data"), storage.join(fold_dir, "run"), progress=progress)
        uids, z, y = _fold_logits(res.best_checkpoint, storage.join(fold_dir, "data"), "test", cfg)
        fr = FoldResult(name=fold.name, test_groups=fold.test_groups, n_train=len(fold.train), n_test=len(y),
                        metrics=_fold_metrics(y, z), checkpoint=res.best_checkpoint,
                        seconds=round(time.perf_counter() - started, 1), uids=uids, logits=z, labels=y)
        log.info("%s: accuracy %.3f, macro-F1 %.3f (%d test utterances)", fold.name, fr.metrics["accuracy"],
                 fr.metrics["macro_f1"], fr.n_test)
        results.append(fr)
        if on_fold:
            on_fold(fr)
    result = CrossValResult(group=group, folds=results, summary=summarize(results))
    storage.write_text_atomic(storage.join(out_dir, "crossval.json"), json.dumps(result.to_dict(), indent=2))
    np.savez(storage.join(out_dir, "oof_logits.npz") if not storage.is_remote(out_dir) else "/dev/null",
             **{f.name: f.logits for f in results if f.logits is not None})
    return result


# -- the shipped voice head ------------------------------------------------------------------------
VOICE_HEAD_FORMAT = "mmva-voice-head"
# The utterance head (one clip, unknown speaker) is trained with "none" (raw functionals, the best
# leave-one-speaker-out score without speaker statistics: 46.3 % vs 41.8 % for "global") or "global".
HEAD_FILES = {"none": "voice_head.safetensors", "global": "voice_head.safetensors",
              "speaker": "voice_head_speaker.safetensors"}
HEAD_ROLES = {"none": "utterance", "global": "utterance", "speaker": "speaker"}


def final_fit(data: str, config: Config, work_dir: str, mode: str, *, group: str = "speaker",
              dev_fraction: float = 0.15, seed: int = 0) -> tuple[str, dict[str, Any]]:
    """Train on every speaker (dev = a stratified sample for early stopping) with prosody
    normalisation ``mode``. Returns (best checkpoint, the prosody reference table used)."""
    from mmva.train.fit import fit

    rows = [r for r in read_rows(data) if r.get("emotion")]
    train, dev = stratified_dev(rows, list(range(len(rows))), group, dev_fraction, seed=f"{seed}-final")
    fold = Fold(name="all", test_groups=(), train=train, dev=dev, test=())
    fold_dir = storage.join(work_dir, f"final-{mode}")
    for part in ("train", "dev"):
        write_rows(storage.join(fold_dir, "data", f"{part}.csv"), [rows[i] for i in getattr(fold, part)],
                   columns=tuple(rows[0].keys()))
    cfg = prosody_normalization(mode, group)(fold, rows, fold_dir, config)
    res = fit(cfg, storage.join(fold_dir, "data"), storage.join(fold_dir, "run"), progress=False)
    ref_path = cfg.model.encoder_options.get("prosody", {}).get("reference")
    ref = json.loads(storage.read_text(ref_path)) if ref_path else {}
    return res.best_checkpoint, ref


def export_head(checkpoint: str, out_path: str, extra: dict[str, Any] | None = None) -> str:
    """Re-save a fold/final checkpoint for shipping: the config loses run-local paths (the prosody
    reference table; :class:`~mmva.model.voice.VoiceHead` standardises features itself)."""
    import dataclasses

    from mmva.model.checkpoint import load_model, save_checkpoint

    model = load_model(checkpoint)
    cfg = model.config
    options = {k: {o: v for o, v in opts.items() if o != "reference"} for k, opts in cfg.model.encoder_options.items()}
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder_options=options),
                              train=dataclasses.replace(cfg.train, cache_dir=None))
    return save_checkpoint(model, cfg, out_path, extra=extra)


def _brief(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("accuracy_mean", "accuracy_std", "macro_f1_mean", "macro_f1_std", "per_fold", "confusion_matrix",
            "temperature", "ece_before", "ece_after_held_out_temperature", "chance_accuracy")
    return {k: summary[k] for k in keys if k in summary}


def _run_or_reuse(data: str, config: Config, out_dir: str, group: str, mode: str, reuse: bool) -> dict[str, Any]:
    """The summary of a finished cross-validation in ``out_dir``, or of a new one."""
    done = storage.join(out_dir, "crossval.json")
    if reuse and storage.exists(done):
        log.info("reusing %s", done)
        return json.loads(storage.read_text(done))["summary"]
    return crossval(data, config, out_dir, group=group, fold_config=prosody_normalization(mode, "speaker")).summary


def train_voice_head(data: str, out: str, config: Config, *, work_dir: str | None = None,
                     modes: tuple[str, ...] = ("none", "speaker"), cross_validate: bool = True,
                     cross_corpus: bool = True, reuse: bool = True,
                     progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The recipe of the shipped voice head: for each normalisation mode, leave-one-speaker-out CV
    (scores + a held-out temperature) and cross-corpus CV, then a final fit on every speaker;
    writes ``voice.json`` and ``voice_head*.safetensors`` into ``out``. ``reuse``: a finished
    ``work_dir/cv-<mode>/crossval.json`` (e.g. from ``mmva crossval``) is read instead of rerun.

    >>> # train_voice_head("speech.csv", "src/mmva/assets/voice", load_config("voice"), work_dir="runs/voice")
    """
    import dataclasses

    work = work_dir or storage.join(out, "_work")
    if not config.train.cache_dir:
        config = dataclasses.replace(config, train=dataclasses.replace(
            config.train, cache_dir=storage.join(work, "features")))
    say = progress or (lambda msg: log.info("%s", msg))
    heads: dict[str, Any] = {}
    scores: dict[str, Any] = {}
    for mode in modes:
        temperature = 1.0
        if cross_validate:
            say(f"{mode}: leave-one-speaker-out cross-validation")
            cv = _run_or_reuse(data, config, storage.join(work, f"cv-{mode}"), "speaker", mode, reuse)
            temperature = float(cv.get("temperature", 1.0))
            scores[f"loso_{mode}"] = _brief(cv)
            if cross_corpus:
                say(f"{mode}: cross-corpus")
                xc = _run_or_reuse(data, config, storage.join(work, f"xcorpus-{mode}"), "corpus", mode, reuse)
                scores[f"cross_corpus_{mode}"] = _brief(xc)
        say(f"{mode}: final fit on every speaker")
        with torch_threads(1):
            ckpt, ref = final_fit(data, config, work, mode)
        name = HEAD_FILES[mode]
        export_head(ckpt, storage.join(out, name), extra={"voice": {"normalization": mode, "temperature": temperature}})
        heads[HEAD_ROLES[mode]] = {"file": name, "normalization": mode, "temperature": round(temperature, 4),
                                   "standardizer": ref.get("population")}
    voice_cfg = {
        "format": VOICE_HEAD_FORMAT, "version": 1, "encoder": config.model.audio,
        "encoder_options": {k: v for k, v in config.model.encoder_options.get(config.model.audio or "", {}).items()
                            if k != "reference"},
        "labels": list(EMOTIONS), "sample_rate": config.data.sample_rate,
        "min_speaker_utterances": 10, "speaker_prior_weight": 10.0,
        "heads": heads, "scores": scores, "config": config.name,
        "command": f"mmva voice-train --data {data} --out {out}",
    }
    storage.write_text_atomic(storage.join(out, "voice.json"), json.dumps(voice_cfg, indent=2))
    return {"crossval": {k: v for k, v in scores.items()}, "heads": heads}
