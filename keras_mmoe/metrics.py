"""Metrics of multi-task predictions in NumPy, independent of Keras (usable on SavedModel outputs).

``roc_auc`` (rank formula, ties averaged), ``binary_crossentropy`` and ``task_metrics`` (the
per-task metrics that ``keras-mmoe evaluate`` and the studies report). The tests check them
against pairwise references and against Keras's own metrics.
"""

import numpy as np


def roc_auc(labels, scores):
    """Area under the ROC curve by the rank (Mann-Whitney) formula, ties given average ranks."""
    labels = np.asarray(labels, dtype=np.float64).ravel() > 0.5
    scores = np.asarray(scores, dtype=np.float64).ravel()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # average ranks over ties
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [len(scores)]])
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2.0
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def binary_crossentropy(labels, probs, eps=1e-7):
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64).ravel()
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def task_metrics(kind, labels, predictions):
    if kind == "binary":
        return {"loss": binary_crossentropy(labels, predictions), "auc": roc_auc(labels, predictions)}
    mse = float(np.mean((np.asarray(labels, np.float64).ravel() - np.asarray(predictions, np.float64).ravel()) ** 2))
    return {"loss": mse, "mse": mse}
