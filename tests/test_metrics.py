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
