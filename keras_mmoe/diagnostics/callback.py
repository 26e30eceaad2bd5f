"""GateDiagnostics: a Keras callback recording gate statistics at the end of epochs."""

import os
from typing import Any, Optional, Union

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from keras_mmoe._keras import keras
from keras_mmoe.diagnostics.probe import build_gate_probe, num_task_experts, predict_gate_weights
from keras_mmoe.diagnostics.stats import GateReport, gate_statistics

#: Per-gate statistics recorded in ``GateDiagnostics.history``, each as an array (gates,) per epoch.
_SCALARS = ("entropy", "utilization_entropy", "effective_experts", "effective_experts_per_example",
            "max_weight_fraction", "polarized")


def _plugin_metadata(plugin_name, data_class):
    """The summary metadata TensorBoard's scalar and text plugins write, built with core TF only:
    ``tf.summary.scalar``/``text`` raise when the tensorboard package is absent, while
    ``tf.summary.write`` with this metadata produces the same event records."""
    metadata = summary_pb2.SummaryMetadata(data_class=data_class)
    metadata.plugin_data.plugin_name = plugin_name
    return metadata


_SCALAR_METADATA = _plugin_metadata("scalars", summary_pb2.DATA_CLASS_SCALAR)
_TEXT_METADATA = _plugin_metadata("text", summary_pb2.DATA_CLASS_TENSOR)


class GateDiagnostics(keras.callbacks.Callback):
    """Computes gate statistics on ``data`` at the end of epochs, into History and TensorBoard.

    At the end of every ``every``-th epoch (epochs 0, every, 2*every, ...) the callback runs
    the gates of the model's gated layer (MMoELayer, CGCLayer, PLELayer) in inference mode on
    ``data`` (keep it small: a few hundred held-out examples), computes :func:`gate_statistics` and

    - adds to the epoch's ``logs``, hence to ``History.history``, for each gate ``g`` (a task
      name for MMoE and CGC task gates, ``shared`` for a CGC shared gate, ``level_<l>/<task>``
      and ``level_<l>/shared`` for PLE): ``gate/g/entropy``, ``gate/g/utilization_entropy``,
      ``gate/g/effective_experts``, ``gate/g/effective_experts_per_example``,
      ``gate/g/max_weight_fraction``, ``gate/g/num_unused_experts``, ``gate/g/polarized``
      (0.0 or 1.0), ``gate/g/utilization_<expert>`` for each expert the gate weighs (MMoE:
      ``utilization_0``...; CGC/PLE: ``utilization_click_0``, ``utilization_shared_0``...) and,
      for CGC/PLE, ``gate/g/weight_on_<group>`` (``weight_on_click``, ``weight_on_shared``)
      (``gate`` is ``prefix``; see :meth:`GateReport.to_logs`). On epochs it skips
      (``every > 1``) no key is added, so these History lists are shorter than the loss's;
      ``history["epoch"]`` says which epochs they belong to;
    - keeps them in :attr:`history` (``epoch``, ``utilization`` as (gates, experts) arrays
      with NaN where a gate does not weigh an expert, and the scalars above as (gates,)
      arrays) and the reports in :attr:`reports`, with the names in :attr:`gate_names` and
      :attr:`expert_names`, ready for :func:`plot_utilization_over_epochs`;
    - with ``log_dir``, writes the same scalars (step = epoch) and the Markdown report as
      text to a TensorBoard event file in ``log_dir`` (use a directory of its own, e.g.
      ``<tensorboard dir>/gates``, so it shows as a separate run).

    Place it before callbacks that read these keys (EarlyStopping, CSVLogger, TensorBoard).

    Args:
        data: held-out examples, anything ``model.predict`` takes (a ``tf.data.Dataset`` of
            features or (features, labels), a dict of arrays).
        log_dir: optional TensorBoard directory.
        every: compute every this many epochs (>= 1).
        steps: number of batches of ``data`` to use (None: all).
        layer: which gated layer (name, path or instance) when the model holds several.
        prefix: first component of the logged keys.
        polarization_threshold, polarized_fraction, unused_threshold: see :func:`gate_statistics`.
        verbose: print the report after each computation when true.

    Example:

    >>> callback = GateDiagnostics(val_ds.take(4), log_dir="logs/gates")
    >>> history = model.fit(train_ds, epochs=10, callbacks=[callback])
    >>> history.history["gate/click/effective_experts"]
    """

    def __init__(
        self,
        data: Any,
        log_dir: Union[None, str, "os.PathLike[str]"] = None,
        every: int = 1,
        steps: Optional[int] = None,
        layer: Any = None,
        prefix: str = "gate",
        polarization_threshold: float = 0.9,
        polarized_fraction: float = 0.5,
        unused_threshold: Optional[float] = None,
        verbose: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
            raise ValueError(f"`every` must be an integer >= 1, received: every={every!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"`prefix` must be a non-empty string, received: prefix={prefix!r}")
        self.data = data
        self.log_dir = None if log_dir is None else str(log_dir)
        self.every = int(every)
        self.steps = steps
        self.layer = layer
        self.prefix = prefix
        self.thresholds = dict(
            polarization_threshold=polarization_threshold,
            polarized_fraction=polarized_fraction,
            unused_threshold=unused_threshold,
        )
        self.verbose = bool(verbose)
        self.reports = []
        self.history = {"epoch": [], "utilization": [], **{name: [] for name in _SCALARS}}
        self.gate_names = None
        self.expert_names = None
        self._probe = None
        self._writer = None

    @property
    def task_names(self) -> Optional[list]:
        """The gates' names (the name from MMoE, where each gate is a task's); None before a computation."""
        return self.gate_names

    def _ensure_probe(self):
        if self._probe is None or self._probe[0] is not self.model:
            probe, target, path = build_gate_probe(self.model, self.layer)
            self._probe = (self.model, probe, target, path)
        return self._probe[1:]

    def compute(self) -> GateReport:
        """Runs the gates on ``data`` now and returns the :class:`GateReport` (records nothing)."""
        probe, target, path = self._ensure_probe()
        weights = predict_gate_weights(probe, target, self.data, steps=self.steps)
        return gate_statistics(weights, task_names=target.task_names, num_task_experts=num_task_experts(target),
                               layer_name=path, **self.thresholds)

    def on_train_begin(self, logs: Optional[dict] = None) -> None:
        self._ensure_probe()

    def on_epoch_end(self, epoch: int, logs: Optional[dict] = None) -> None:
        if epoch % self.every != 0:
            return
        report = self.compute()
        self.gate_names = report.gate_names
        self.expert_names = list(report.experts)
        self.reports.append(report)
        self.history["epoch"].append(int(epoch))
        self.history["utilization"].append(report.utilization)
        for name in _SCALARS:
            self.history[name].append(np.array([float(getattr(g, name)) for g in report.gates]))
        values = report.to_logs(self.prefix)
        if logs is not None:
            logs.update(values)
        if self.log_dir is not None:
            self._write_summaries(epoch, values, report)
        if self.verbose:
            print(f"\nGate diagnostics, epoch {epoch}:\n{report}")

    def _write_summaries(self, epoch, values, report):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            for name, value in values.items():
                tf.summary.write(name, tf.constant(value, tf.float32), step=epoch, metadata=_SCALAR_METADATA)
            tf.summary.write(f"{self.prefix}/report", tf.constant(report.to_markdown()), step=epoch,
                             metadata=_TEXT_METADATA)
        self._writer.flush()

    def on_train_end(self, logs: Optional[dict] = None) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
