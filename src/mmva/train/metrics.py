"""Classification metrics for both tasks (scikit-learn underneath), as plain JSON-ready dicts.

One function, :func:`compute_metrics`, serves validation during training, ``mmva evaluate`` and the
benchmarks, so every report names the same numbers the same way.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def compute_metrics(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray,
                    labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, weighted precision/recall/F1, macro-F1, per-class scores and the confusion matrix.

    Targets below 0 (unknown label) are ignored. ``confusion_matrix[i][j]`` counts items of true
    class ``i`` predicted as ``j``; classes are ``labels`` in order, present or not.

    >>> m = compute_metrics([0, 1, 1, 2], [0, 1, 2, 2], ["negative", "neutral", "positive"])
    >>> round(m["accuracy"], 2), m["support"]
    (0.75, 4)
    """
    t = np.asarray(y_true, dtype=int).reshape(-1)
    p = np.asarray(y_pred, dtype=int).reshape(-1)
    if t.shape != p.shape:
        raise ValueError(f"y_true has {t.size} items but y_pred has {p.size}")
    keep = t >= 0
    t, p = t[keep], p[keep]
    ids = list(range(len(labels)))
    k = len(labels)
    if t.size == 0:
        return {"support": 0, "accuracy": float("nan"), "weighted_precision": float("nan"),
                "weighted_recall": float("nan"), "weighted_f1": float("nan"), "macro_f1": float("nan"),
                "per_class": {name: {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
                              for name in labels},
                "confusion_matrix": [[0] * k for _ in range(k)], "labels": list(labels)}
    prec, rec, f1, support = precision_recall_fscore_support(t, p, labels=ids, zero_division=0)
    wp, wr, wf, _ = precision_recall_fscore_support(t, p, labels=ids, average="weighted", zero_division=0)
    # Macro-F1 over the classes that occur in truth or prediction: a class absent from a small
    # split would otherwise count as a free zero and hide real progress.
    present = sorted(set(t.tolist()) | set(p.tolist()))
    return {
        "support": int(t.size),
        "accuracy": float(accuracy_score(t, p)),
        "weighted_precision": float(wp),
        "weighted_recall": float(wr),
        "weighted_f1": float(wf),
        "macro_f1": float(f1_score(t, p, labels=present, average="macro", zero_division=0)),
        "per_class": {
            name: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]),
                   "support": int(support[i])}
            for i, name in enumerate(labels)
        },
        "confusion_matrix": confusion_matrix(t, p, labels=ids).tolist(),
        "labels": list(labels),
    }


def confusion_markdown(metrics: dict[str, Any]) -> str:
    """The confusion matrix of a :func:`compute_metrics` result as a Markdown table (TensorBoard text).

    >>> print(confusion_markdown(compute_metrics([0, 1], [0, 0], ["a", "b"])).splitlines()[2])
    | **a** | 1 | 0 |
    """
    labels = metrics["labels"]
    rows = ["| true \\ pred | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, row in zip(labels, metrics["confusion_matrix"]):
        rows.append(f"| **{name}** | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(rows)


def confusion_image(metrics: dict[str, Any], cell: int = 24) -> np.ndarray:
    """The confusion matrix as an RGB image ``(h, w, 3)`` uint8, rows normalised (no matplotlib).

    Hand-drawn because TensorBoard's ``add_figure`` needs matplotlib, which mmva does not depend on;
    a heat map with one block per cell is enough to see which classes are confused.
    """
    cm = np.asarray(metrics["confusion_matrix"], dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1.0)  # recall per true class
    k = cm.shape[0]
    img = np.zeros((k * cell, k * cell, 3), dtype=np.uint8)
    for i in range(k):
        for j in range(k):
            v = norm[i, j]
            colour = (np.array([255, 255, 255]) * (1 - v) + np.array([31, 119, 180]) * v).astype(np.uint8)
            img[i * cell:(i + 1) * cell - 1, j * cell:(j + 1) * cell - 1] = colour
    return img


def flat_scalars(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The headline scalars of a metrics dict, e.g. ``{"val/emotion_weighted_f1": 0.41, ...}``."""
    keys = ("accuracy", "weighted_precision", "weighted_recall", "weighted_f1", "macro_f1")
    return {f"{prefix}_{k}": float(metrics[k]) for k in keys}


def json_safe(value: Any) -> Any:
    """``value`` with NaN/inf floats replaced by None, so ``json.dumps`` writes strict JSON.

    >>> json_safe({"a": [float("nan"), 1.0]})
    {'a': [None, 1.0]}
    """
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
