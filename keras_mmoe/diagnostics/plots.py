"""Matplotlib plots of gate statistics (optional dependency: ``pip install keras-mmoe[plots]``).

Figures are created as ``matplotlib.figure.Figure`` objects, without pyplot, so they need
no display and leave pyplot's global state alone; save them with ``fig.savefig(path)`` or
pass ``ax`` from your own ``plt.subplots()`` to draw into an existing figure.
"""

from typing import Any, Optional, Sequence

import numpy as np

from keras_mmoe.diagnostics.stats import GateReport


def _figure_class():
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "keras_mmoe.diagnostics plots need matplotlib: pip install keras-mmoe[plots]"
        ) from error
    return Figure


def _utilization_and_names(stats, task_names):
    if isinstance(stats, GateReport):
        return stats.utilization, list(task_names or stats.task_names)
    matrix = np.asarray(stats, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(
            f"Expected a GateReport or a utilization matrix (tasks, experts), received shape {matrix.shape}"
        )
    names = list(task_names) if task_names is not None else [f"task_{k}" for k in range(matrix.shape[0])]
    if len(names) != matrix.shape[0]:
        raise ValueError(f"{len(names)} task names for a utilization matrix of {matrix.shape[0]} tasks")
    return matrix, names


def plot_gate_heatmap(
    stats: Any,
    ax: Any = None,
    task_names: Optional[Sequence[str]] = None,
    annotate: bool = True,
    cmap: str = "viridis",
    title: Optional[str] = None,
) -> Any:
    """Heatmap of expert utilization, tasks (rows) x experts (columns), values annotated.

    Args:
        stats: a :class:`GateReport` or a utilization matrix (tasks, experts).
        ax: matplotlib Axes to draw on (default: a new Figure).
        task_names: row labels (default: the report's task names).
        annotate: write each value in its cell.
        cmap: colormap name; the color scale runs from 0 to the largest utilization.
        title: axes title (default "Expert utilization per task").

    Returns:
        The matplotlib Figure.
    """
    matrix, names = _utilization_and_names(stats, task_names)
    if ax is None:
        fig = _figure_class()(figsize=(1.2 + 0.7 * matrix.shape[1], 1.2 + 0.5 * matrix.shape[0]))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    vmax = float(matrix.max()) if matrix.max() > 0 else 1.0
    image = ax.imshow(matrix, cmap=cmap, vmin=0.0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_xticklabels([str(i) for i in range(matrix.shape[1])])
    ax.set_yticks(range(matrix.shape[0]))
    ax.set_yticklabels(names)
    ax.set_xlabel("expert")
    ax.set_ylabel("task")
    ax.set_title(title or "Expert utilization per task")
    if annotate:
        for k in range(matrix.shape[0]):
            for i in range(matrix.shape[1]):
                value = matrix[k, i]
                color = "black" if value > 0.6 * vmax else "white"
                ax.text(i, k, f"{value:.2f}", ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(image, ax=ax, label="mean gate weight")
    return fig


def _epochs_and_utilization(source):
    """(epochs (n,), utilization (n, tasks, experts), task names or None) from many sources."""
    history = getattr(source, "history", source)  # a GateDiagnostics callback
    task_names = getattr(source, "task_names", None)
    if isinstance(history, dict):
        utilization = np.stack([np.asarray(u, dtype=np.float64) for u in history["utilization"]])
        epochs = np.asarray(history.get("epoch", range(len(utilization))))
        return epochs, utilization, task_names
    history = list(history)
    if history and all(isinstance(r, GateReport) for r in history):
        return np.arange(len(history)), np.stack([r.utilization for r in history]), history[0].task_names
    utilization = np.asarray(history, dtype=np.float64)
    return np.arange(len(utilization)), utilization, None


def plot_utilization_over_epochs(
    source: Any,
    task_names: Optional[Sequence[str]] = None,
    tasks: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Any:
    """Expert utilization over epochs: one subplot per task, one line per expert.

    Args:
        source: a :class:`GateDiagnostics` callback, its ``history`` dict, a list of
            :class:`GateReport` (one per epoch) or an array (epochs, tasks, experts).
        task_names: subplot titles (default: the callback's or reports' task names).
        tasks: subset of task names to plot (default: all).
        title: figure title.

    Returns:
        The matplotlib Figure; line ``i`` of the subplot of task ``k`` holds
        ``utilization[:, k, i]`` against the epochs.
    """
    Figure = _figure_class()
    epochs, utilization, names = _epochs_and_utilization(source)
    if utilization.ndim != 3 or utilization.shape[0] == 0:
        raise ValueError(
            f"Expected utilization over epochs of shape (epochs, tasks, experts), received {utilization.shape}"
        )
    names = list(task_names or names or [f"task_{k}" for k in range(utilization.shape[1])])
    if len(names) != utilization.shape[1]:
        raise ValueError(f"{len(names)} task names for {utilization.shape[1]} tasks")
    selected = list(range(len(names))) if tasks is None else [names.index(t) for t in tasks]
    fig = Figure(figsize=(5.0, 2.6 * len(selected)))
    axes = fig.subplots(len(selected), 1, squeeze=False)[:, 0]
    for ax, k in zip(axes, selected):
        for i in range(utilization.shape[2]):
            ax.plot(epochs, utilization[:, k, i], marker="o", markersize=3, label=f"expert {i}")
        ax.set_title(names[k])
        ax.set_ylabel("utilization")
        ax.set_ylim(0.0, 1.0)
        ax.legend(fontsize=7, ncol=2, loc="upper right")
    axes[-1].set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
