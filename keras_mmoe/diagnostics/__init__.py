"""Gate diagnostics: utilization, entropy, effective experts and polarization of the gates of
MMoE, CGC and PLE layers (every task gate, and the shared gates of CGC/PLE levels).

    report = keras_mmoe.diagnostics.diagnose(model, validation_dataset)
    print(report)                                  # Markdown table, one row per gate
    callback = keras_mmoe.diagnostics.GateDiagnostics(small_dataset, log_dir="logs/gates")
    model.fit(..., callbacks=[callback])           # gate/<gate>/... in History and TensorBoard

See :func:`gate_statistics` for the formulas, the gates and experts of each layer, and the
polarization rule.
"""

from typing import Any, Optional

from keras_mmoe.diagnostics.callback import GateDiagnostics
from keras_mmoe.diagnostics.plots import plot_gate_heatmap, plot_utilization_over_epochs
from keras_mmoe.diagnostics.probe import (
    build_gate_probe,
    find_mmoe_layers,
    gate_weights_from_model,
    num_task_experts,
    predict_gate_weights,
)
from keras_mmoe.diagnostics.stats import GateReport, GateStats, TaskGateStats, gate_statistics


def diagnose(
    model: Any,
    data: Any,
    steps: Optional[int] = None,
    layer: Any = None,
    batch_size: Optional[int] = None,
    polarization_threshold: float = 0.9,
    polarized_fraction: float = 0.5,
    unused_threshold: Optional[float] = None,
) -> GateReport:
    """Gate statistics of a model's gated layer (MMoELayer, CGCLayer, PLELayer) on ``data``:
    :func:`gate_weights_from_model` followed by :func:`gate_statistics` with the layer's task
    names (and, for CGC/PLE, its number of task experts).

    Args:
        model, data, steps, layer, batch_size: see :func:`gate_weights_from_model`.
        polarization_threshold, polarized_fraction, unused_threshold: see :func:`gate_statistics`.

    Returns a :class:`GateReport`; ``print(report)`` shows a Markdown table.

    Example:

    >>> report = diagnose(model, validation_ds.take(10))
    >>> report.polarized_gates, report.dead_experts
    >>> report["click"].effective_experts
    >>> diagnose(ple_model, validation_ds.take(10))["level_1/click"].group_weights
    {'click': 0.41, 'shared': 0.59}
    """
    probe, target, path = build_gate_probe(model, layer)
    weights = predict_gate_weights(probe, target, data, steps=steps, batch_size=batch_size)
    return gate_statistics(
        weights,
        task_names=target.task_names,
        num_task_experts=num_task_experts(target),
        polarization_threshold=polarization_threshold,
        polarized_fraction=polarized_fraction,
        unused_threshold=unused_threshold,
        layer_name=path,
    )


__all__ = [
    "GateDiagnostics",
    "GateReport",
    "GateStats",
    "TaskGateStats",
    "build_gate_probe",
    "diagnose",
    "find_mmoe_layers",
    "gate_statistics",
    "gate_weights_from_model",
    "num_task_experts",
    "plot_gate_heatmap",
    "plot_utilization_over_epochs",
    "predict_gate_weights",
]
