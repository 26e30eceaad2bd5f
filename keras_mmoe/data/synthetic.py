"""Synthetic multi-task regression data with controllable task correlation (MMoE paper, section 3.2).

Recipe (Ma et al., KDD 2018):

1. two orthogonal unit vectors u1, u2 in R^d;
2. scale c and correlation score p in [-1, 1]: w1 = c u1, w2 = c (p u1 + sqrt(1 - p^2) u2);
3. inputs x in R^d with i.i.d. N(0, 1) elements;
4. labels y_k = w_k^T x + sum_{i=1..m} sin(alpha_i w_k^T x + beta_i) + eps_k, eps_k ~ N(0, noise_stddev^2).

The cosine of w1 and w2 is exactly p; the labels' Pearson correlation is lower (the sine
terms are nonlinear) and is measured and reported. The paper leaves c, m, alpha, beta open;
following PLE (Tang et al., 2020): c = 1, m = 10, alpha_i, beta_i ~ N(0, 1), shared by both
tasks. The paper's N(0, 0.01) noise is read as variance 0.01, i.e. ``noise_stddev=0.1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from keras_mmoe._validation import check_correlation, check_positive_int

if TYPE_CHECKING:  # TensorFlow is imported when a dataset is made
    import tensorflow as tf


@dataclass
class SyntheticData:
    """Arrays of one draw of the synthetic data, with the facts that describe it."""

    x: np.ndarray  # (num_samples, dim) float32
    y: dict  # {task_name: (num_samples, 1) float32}
    correlation: float  # the requested p = cos(w1, w2)
    weights_cosine: float  # measured cos(w1, w2)
    label_correlation: float  # measured Pearson correlation of the two labels
    params: dict = field(default_factory=dict)

    @property
    def task_names(self) -> list:
        return list(self.y)

    def features(self) -> dict:
        """The model input dict ``{"features": x}``."""
        return {"features": self.x}

    def dataset(self, batch_size: int = 256, shuffle: bool = True, seed: int = 0, repeat: bool = False) -> tf.data.Dataset:
        """A ``tf.data.Dataset`` of ``({"features": x}, {task: y})`` batches."""
        import tensorflow as tf

        ds = tf.data.Dataset.from_tensor_slices((self.features(), self.y))
        if shuffle:
            ds = ds.shuffle(min(len(self.x), 100_000), seed=seed, reshuffle_each_iteration=True)
        if repeat:
            ds = ds.repeat()
        return ds.batch(batch_size).prefetch(2)

    def split(self, fraction: float, seed: int = 0) -> tuple:
        """Two ``SyntheticData`` with ``fraction`` and ``1 - fraction`` of the rows (random, seeded)."""
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"`fraction` must be in (0, 1), received: fraction={fraction!r}")
        order = np.random.default_rng(seed).permutation(len(self.x))
        cut = int(round(fraction * len(self.x)))
        parts = []
        for idx in (order[:cut], order[cut:]):
            parts.append(
                SyntheticData(
                    x=self.x[idx],
                    y={k: v[idx] for k, v in self.y.items()},
                    correlation=self.correlation,
                    weights_cosine=self.weights_cosine,
                    label_correlation=_pearson(*(v[idx] for v in self.y.values())),
                    params=self.params,
                )
            )
        return tuple(parts)


def _pearson(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


def make_synthetic(
    num_samples: int = 10_000,
    dim: int = 100,
    correlation: float = 0.5,
    scale: float = 1.0,
    num_sine_terms: int = 10,
    noise_stddev: float = 0.1,
    task_names: Sequence[str] = ("y1", "y2"),
    seed: int = 0,
) -> SyntheticData:
    """Draws the section 3.2 data set; returns :class:`SyntheticData`.

    Args:
        num_samples: number of rows.
        dim: input dimension d (the paper's section 5 uses 100).
        correlation: p in [-1, 1], the cosine of the two tasks' weight vectors.
        scale: c, the norm of the weight vectors.
        num_sine_terms: m, the number of sine terms.
        noise_stddev: standard deviation of the label noise (0.1: variance 0.01).
        task_names: names of the two tasks (label dict keys).
        seed: seed of every draw (vectors, alpha, beta, inputs, noise).

    Example:

    >>> data = make_synthetic(num_samples=1000, correlation=0.9, seed=0)
    >>> round(data.weights_cosine, 6), data.label_correlation < 0.9
    (0.9, True)
    """
    check_positive_int("num_samples", num_samples)
    if check_positive_int("dim", dim) < 2:
        raise ValueError(f"`dim` must be at least 2 (two orthogonal vectors), received: dim={dim!r}")
    check_correlation("correlation", correlation)
    if isinstance(num_sine_terms, bool) or not isinstance(num_sine_terms, int) or num_sine_terms < 0:
        raise ValueError(f"`num_sine_terms` must be a non-negative integer, received: {num_sine_terms!r}")
    if noise_stddev < 0:
        raise ValueError(f"`noise_stddev` must be >= 0, received: noise_stddev={noise_stddev!r}")
    task_names = list(task_names)
    if len(task_names) != 2 or len(set(task_names)) != 2:
        raise ValueError(f"`task_names` must be two distinct names, received: {task_names!r}")

    rng = np.random.default_rng(seed)
    # Two orthogonal unit vectors: QR of a Gaussian (d, 2) matrix.
    q, _ = np.linalg.qr(rng.standard_normal((dim, 2)))
    u1, u2 = q[:, 0], q[:, 1]
    w1 = scale * u1
    w2 = scale * (correlation * u1 + np.sqrt(max(0.0, 1.0 - correlation**2)) * u2)
    alpha = rng.standard_normal(num_sine_terms)
    beta = rng.standard_normal(num_sine_terms)
    x = rng.standard_normal((num_samples, dim))
    labels = []
    for w in (w1, w2):
        z = x @ w
        y = z + np.sin(np.outer(z, alpha) + beta).sum(axis=1) + noise_stddev * rng.standard_normal(num_samples)
        labels.append(y.astype(np.float32)[:, None])
    cosine = float(w1 @ w2 / (np.linalg.norm(w1) * np.linalg.norm(w2)))
    return SyntheticData(
        x=x.astype(np.float32),
        y=dict(zip(task_names, labels)),
        correlation=float(correlation),
        weights_cosine=cosine,
        label_correlation=_pearson(*labels),
        params=dict(
            num_samples=num_samples, dim=dim, scale=scale, num_sine_terms=num_sine_terms,
            noise_stddev=noise_stddev, seed=seed,
        ),
    )
