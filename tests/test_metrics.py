"""keras_mmoe.metrics against pairwise references and Keras's own metrics."""

import numpy as np
import pytest

from keras_mmoe import metrics


def test_auc_matches_a_pairwise_reference_and_keras():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500).astype("float32")
    scores = np.round(labels * 0.3 + rng.random(500), 2)  # rounded: many ties
    pos, neg = scores[labels == 1], scores[labels == 0]
    pairwise = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (len(pos) * len(neg))
    assert metrics.roc_auc(labels, scores) == pytest.approx(pairwise, abs=1e-12)
    from keras_mmoe._keras import keras

    metric = keras.metrics.AUC(num_thresholds=10000)
    metric.update_state(labels, scores)
    assert metrics.roc_auc(labels, scores) == pytest.approx(float(metric.result()), abs=2e-3)
    assert np.isnan(metrics.roc_auc(np.ones(4), np.arange(4)))


def test_binary_crossentropy_matches_keras():
    from keras_mmoe._keras import keras

    labels = np.array([0, 1, 1, 0], "float32")
    probs = np.array([0.1, 0.8, 0.6, 0.3], "float32")
    expected = float(keras.losses.BinaryCrossentropy()(labels[:, None], probs[:, None]))
    assert metrics.binary_crossentropy(labels, probs) == pytest.approx(expected, rel=1e-5)


def _gauc_reference(labels, scores, groups):
    """Per-group pairwise AUC, weighted by group size; one-class groups skipped."""
    total, weight, used, skipped = 0.0, 0, 0, 0
    for g in sorted(set(groups.tolist())):
        m = groups == g
        y, s = labels[m], scores[m]
        pos, neg = s[y == 1], s[y == 0]
        if len(pos) == 0 or len(neg) == 0:
            skipped += 1
            continue
        auc = (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (len(pos) * len(neg))
        total += m.sum() * auc
        weight += m.sum()
        used += 1
    return total / weight, used, skipped


def test_group_auc_matches_a_pairwise_reference():
    rng = np.random.default_rng(1)
    n = 2000
    groups = np.array([f"user{k}" for k in rng.integers(0, 150, n)])
    labels = (rng.random(n) < 0.3).astype(float)
    scores = np.round(0.2 * labels + rng.random(n), 1)  # coarse: many ties within groups
    gauc, used, skipped = metrics.group_auc(labels, scores, groups)
    ref, ref_used, ref_skipped = _gauc_reference(labels, scores, groups)
    assert gauc == pytest.approx(ref, abs=1e-12)
    assert (used, skipped) == (ref_used, ref_skipped) and skipped > 0 and used + skipped == len(set(groups.tolist()))
    # One group: GAUC is the AUC; integer group ids work too.
    assert metrics.group_auc(labels, scores, np.zeros(n, int))[0] == pytest.approx(metrics.roc_auc(labels, scores))
    assert np.isnan(metrics.group_auc([1, 1, 0], [0.1, 0.2, 0.3], [1, 1, 2])[0])
    assert metrics.group_auc([1, 1, 0], [0.1, 0.2, 0.3], [1, 1, 2])[1:] == (0, 2)
    with pytest.raises(ValueError, match="same length"):
        metrics.group_auc([1, 0], [0.1, 0.2], [1])


def test_rmse_and_calibration():
    labels = np.array([0, 1, 1, 0], float)
    preds = np.array([0.1, 0.8, 0.6, 0.3])
    assert metrics.rmse(labels, preds) == pytest.approx(np.sqrt(np.mean([0.01, 0.04, 0.16, 0.09])))
    assert metrics.calibration(labels, preds) == pytest.approx(0.45 / 0.5)
    assert np.isnan(metrics.calibration([0, 0], [0.1, 0.2]))
    from keras_mmoe._keras import keras

    metric = keras.metrics.RootMeanSquaredError()
    metric.update_state(labels[:, None] * 300, preds[:, None] * 290)
    assert metrics.rmse(labels * 300, preds * 290) == pytest.approx(float(metric.result()), rel=1e-6)
