"""Metrics of multi-task predictions in NumPy, independent of Keras (usable on SavedModel outputs).

``roc_auc`` (rank formula, ties averaged), ``binary_crossentropy``, ``rmse``, ``calibration``
(mean prediction / mean label), ``group_auc`` (GAUC: per-group AUC weighted by group size) and
``task_metrics`` (the per-task metrics that ``keras-mmoe train``, ``evaluate`` and the studies
report, optionally beside the constant prediction learned from the training labels). The tests
check them against pairwise references and against Keras's own metrics.
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


def rmse(labels: ArrayLike, predictions: ArrayLike) -> float:
    """Root mean squared error, in the labels' units."""
    y = np.asarray(labels, np.float64).ravel()
    p = np.asarray(predictions, np.float64).ravel()
    return float(np.sqrt(np.mean((y - p) ** 2)))


def calibration(labels: ArrayLike, predictions: ArrayLike) -> float:
    """Mean prediction / mean label: 1.0 when the predicted rate matches the observed one (NaN if no positive)."""
    mean_label = float(np.mean(np.asarray(labels, np.float64)))
    mean_prediction = float(np.mean(np.asarray(predictions, np.float64)))
    return mean_prediction / mean_label if mean_label != 0 else float("nan")


def group_auc(labels: ArrayLike, scores: ArrayLike, groups: ArrayLike) -> tuple[float, int, int]:
    """GAUC: the AUC of each group (a user, a query), averaged with weights equal to the group sizes.

        GAUC = sum_g n_g AUC_g / sum_g n_g      over the groups g holding both classes

    Groups holding one class only have no AUC and are skipped (and counted). Ties within a group
    get average ranks, as in :func:`roc_auc`.

    Returns:
        ``(gauc, groups_used, groups_skipped)``; gauc is NaN when no group holds both classes.
    """
    labels = np.asarray(labels, np.float64).ravel() > 0.5
    scores = np.asarray(scores, np.float64).ravel()
    groups = np.asarray(groups).ravel()
    if not (len(labels) == len(scores) == len(groups)):
        raise ValueError(f"labels, scores and groups must have the same length, received "
                         f"{len(labels)}, {len(scores)} and {len(groups)}")
    if len(labels) == 0:
        return float("nan"), 0, 0
    _, group_ids = np.unique(groups, return_inverse=True)
    order = np.lexsort((scores, group_ids))  # by group, then by score
    g, s, y = group_ids[order], scores[order], labels[order]
    # Runs of equal (group, score) share their average rank within the group.
    new_run = np.ones(len(s), bool)
    new_run[1:] = (g[1:] != g[:-1]) | (s[1:] != s[:-1])
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_length = np.diff(np.append(run_start, len(s)))
    group_start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    group_start_of_row = group_start[np.cumsum(np.r_[True, g[1:] != g[:-1]]) - 1]
    # 1-based rank within the group, averaged over ties.
    rank = (run_start - group_start_of_row[run_start])[run_id] + (run_length[run_id] + 1) / 2.0
    num_groups = len(group_start)
    positives = np.bincount(g, weights=y, minlength=num_groups)
    sizes = np.bincount(g, minlength=num_groups).astype(np.float64)
    negatives = sizes - positives
    rank_sum = np.bincount(g, weights=np.where(y, rank, 0.0), minlength=num_groups)
    used = (positives > 0) & (negatives > 0)
    if not used.any():
        return float("nan"), 0, int(num_groups)
    auc = (rank_sum[used] - positives[used] * (positives[used] + 1) / 2.0) / (positives[used] * negatives[used])
    gauc = float(np.sum(sizes[used] * auc) / np.sum(sizes[used]))
    return gauc, int(used.sum()), int(num_groups - used.sum())
