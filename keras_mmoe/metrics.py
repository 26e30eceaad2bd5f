"""Metrics of multi-task predictions in NumPy, independent of Keras (usable on SavedModel outputs).

``roc_auc`` (rank formula, ties averaged), ``binary_crossentropy`` and ``task_metrics`` (the
per-task metrics that ``keras-mmoe train``, ``evaluate`` and the studies report, optionally beside
the constant prediction learned from the training labels). The tests check them against pairwise
references and against Keras's own metrics.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
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


def binary_crossentropy(labels: ArrayLike, probs: ArrayLike, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64).ravel(), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64).ravel()
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def mean_squared_error(labels: ArrayLike, predictions: ArrayLike) -> float:
    return float(np.mean((np.asarray(labels, np.float64).ravel() - np.asarray(predictions, np.float64).ravel()) ** 2))


def task_metrics(kind: str, labels: ArrayLike, predictions: ArrayLike, train_labels: ArrayLike | None = None) -> dict:
    """Metrics of one task: ``{"loss", "auc"}`` (``kind="binary"``) or ``{"loss", "mse"}`` (regression).

    With ``train_labels``, also the reference a model must beat, the constant prediction learned
    from them: for regression ``baseline_mse`` (predicting the training mean) and
    ``variance_explained`` (``1 - mse / baseline_mse``, the R^2 against that mean); for binary tasks
    ``baseline_loss`` (predicting the training base rate, whose AUC is 0.5).
    """
    if kind == "binary":
        metrics = {"loss": binary_crossentropy(labels, predictions), "auc": roc_auc(labels, predictions)}
        if train_labels is not None:
            rate = float(np.mean(np.asarray(train_labels, np.float64)))
            metrics["baseline_loss"] = binary_crossentropy(labels, np.full(np.shape(labels), rate))
        return metrics
    mse = mean_squared_error(labels, predictions)
    metrics = {"loss": mse, "mse": mse}
    if train_labels is not None:
        baseline = mean_squared_error(labels, np.full(np.shape(labels), np.mean(np.asarray(train_labels, np.float64))))
        metrics["baseline_mse"] = baseline
        metrics["variance_explained"] = 1.0 - mse / baseline if baseline > 0 else float("nan")
    return metrics


def describe(kind: str, metrics: dict) -> str:
    """One line of a task's metrics with its reference, e.g. ``mse 0.0512 (training mean: mse
    1.2757; variance explained 96.0%)``."""
    if kind == "binary":
        text = f"auc {metrics['auc']:.4f}, loss {metrics['loss']:.4f}"
        if "baseline_loss" in metrics:
            text += f" (training base rate: loss {metrics['baseline_loss']:.4f}, auc 0.5)"
        return text
    text = f"mse {metrics['mse']:.4f}"
    if "baseline_mse" in metrics:
        text += (f" (predicting the training mean: mse {metrics['baseline_mse']:.4f}; "
                 f"variance explained {100 * metrics['variance_explained']:.1f}%)")
    return text
