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
    """(matrix (gates, experts), row names, column names) from a report or a matrix."""
    if isinstance(stats, GateReport):
        return stats.utilization, list(task_names or stats.gate_names), list(stats.experts)
    matrix = np.asarray(stats, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(
            f"Expected a GateReport or a utilization matrix (gates, experts), received shape {matrix.shape}"
        )
    names = list(task_names) if task_names is not None else [f"task_{k}" for k in range(matrix.shape[0])]
    if len(names) != matrix.shape[0]:
        raise ValueError(f"{len(names)} task names for a utilization matrix of {matrix.shape[0]} gates")
    return matrix, names, [str(i) for i in range(matrix.shape[1])]


def _named_experts(expert_names):
    """True when experts have names (CGC/PLE: ``click_0``), not only numbers (MMoE)."""
    return any(not name.isdigit() for name in expert_names)


def plot_gate_heatmap(
    stats: Any,
    ax: Any = None,
    task_names: Optional[Sequence[str]] = None,
    annotate: bool = True,
    cmap: str = "viridis",
    title: Optional[str] = None,
) -> Any:
    """Heatmap of expert utilization, gates (rows) x experts (columns), values annotated.

    For an MMoE report the rows are the tasks and the columns the shared experts. For a CGC or
    PLE report the rows are every gate (task gates, shared gates; PLE: every level's) and the
    columns every expert, labelled by name (``click_0``, ``shared_1``; PLE: ``level_0/...``);
    a cell is blank (grey) where the gate does not weigh the expert, e.g. task ``click``'s gate
    and task ``buy``'s own experts.

    Args:
        stats: a :class:`GateReport` or a utilization matrix (gates, experts), NaN for blanks.
        ax: matplotlib Axes to draw on (default: a new Figure).
        task_names: row labels (default: the report's gate names).
        annotate: write each value in its cell.
        cmap: colormap name; the color scale runs from 0 to the largest utilization.
        title: axes title (default "Expert utilization per task" or, CGC/PLE, "... per gate").

    Returns:
        The matplotlib Figure.
    """
    matrix, names, experts = _utilization_and_names(stats, task_names)
    named = _named_experts(experts)
    if ax is None:
        width = (0.55 if named else 0.7) * matrix.shape[1]
        fig = _figure_class()(figsize=(1.8 + width, 1.2 + 0.5 * matrix.shape[0] + (0.8 if named else 0.0)))
        ax = fig.add_subplot(1, 1, 1)
    else:
        fig = ax.figure
    finite = np.isfinite(matrix)
    top = float(matrix[finite].max()) if finite.any() else 0.0
    vmax = top if top > 0 else 1.0
    colors = _colormap(cmap)
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap=colors, vmin=0.0, vmax=vmax, aspect="auto")
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_xticklabels(experts, rotation=90 if named else 0, fontsize=7 if named else None)
    ax.set_yticks(range(matrix.shape[0]))
    ax.set_yticklabels(names)
    ax.set_xlabel("expert")
    ax.set_ylabel("gate" if named else "task")
    ax.set_title(title or ("Expert utilization per gate" if named else "Expert utilization per task"))
    if annotate:
        for k in range(matrix.shape[0]):
            for i in range(matrix.shape[1]):
                value = matrix[k, i]
                if not np.isfinite(value):
                    continue
                color = "black" if value > 0.6 * vmax else "white"
                ax.text(i, k, f"{value:.2f}", ha="center", va="center", color=color, fontsize=8)
    fig.colorbar(image, ax=ax, label="mean gate weight")
    return fig


def _colormap(name):
    """``name``'s colormap with blank (NaN) cells in light grey."""
    from matplotlib import colormaps

    return colormaps[name].with_extremes(bad="#e6e6e6")


def _epochs_and_utilization(source):
    """(epochs (n,), utilization (n, gates, experts), gate names or None, expert names or None)."""
    history = getattr(source, "history", source)  # a GateDiagnostics callback
    gate_names = getattr(source, "gate_names", None)
    expert_names = getattr(source, "expert_names", None)
    if isinstance(history, dict):
        utilization = np.stack([np.asarray(u, dtype=np.float64) for u in history["utilization"]])
        epochs = np.asarray(history.get("epoch", range(len(utilization))))
        return epochs, utilization, gate_names, expert_names
    history = list(history)
    if history and all(isinstance(r, GateReport) for r in history):
        return (np.arange(len(history)), np.stack([r.utilization for r in history]), history[0].gate_names,
                list(history[0].experts))
    utilization = np.asarray(history, dtype=np.float64)
    return np.arange(len(utilization)), utilization, None, None


def plot_utilization_over_epochs(
    source: Any,
    task_names: Optional[Sequence[str]] = None,
    tasks: Optional[Sequence[str]] = None,
    title: Optional[str] = None,
) -> Any:
    """Expert utilization over epochs: one subplot per gate, one line per expert it weighs.

    Args:
        source: a :class:`GateDiagnostics` callback, its ``history`` dict, a list of
            :class:`GateReport` (one per epoch) or an array (epochs, gates, experts) (NaN
            where a gate does not weigh an expert).
        task_names: subplot titles (default: the callback's or reports' gate names).
        tasks: subset of gate names to plot (default: all).
        title: figure title.

    Returns:
        The matplotlib Figure; in the subplot of gate ``k``, one line per expert ``i`` the
        gate weighs, holding ``utilization[:, k, i]`` against the epochs and labelled by the
        expert's name (``expert 0``...; CGC/PLE: ``click_0``, ``shared_1``...).
    """
    Figure = _figure_class()
    epochs, utilization, names, experts = _epochs_and_utilization(source)
    if utilization.ndim != 3 or utilization.shape[0] == 0:
        raise ValueError(
            f"Expected utilization over epochs of shape (epochs, gates, experts), received {utilization.shape}"
        )
    names = list(task_names or names or [f"task_{k}" for k in range(utilization.shape[1])])
    if len(names) != utilization.shape[1]:
        raise ValueError(f"{len(names)} task names for {utilization.shape[1]} gates")
    if experts is None or len(experts) != utilization.shape[2]:
        experts = [str(i) for i in range(utilization.shape[2])]
    labels = list(experts) if _named_experts(experts) else [f"expert {e}" for e in experts]
    unknown = [t for t in tasks or () if t not in names]
    if unknown:
        raise ValueError(f"No gate {unknown[0]!r} to plot; gates are {names}")
    selected = list(range(len(names))) if tasks is None else [names.index(t) for t in tasks]
    fig = Figure(figsize=(5.0, 2.6 * len(selected)))
    axes = fig.subplots(len(selected), 1, squeeze=False)[:, 0]
    for ax, k in zip(axes, selected):
        for i in range(utilization.shape[2]):
            if not np.isfinite(utilization[:, k, i]).any():
                continue  # an expert this gate does not weigh
            ax.plot(epochs, utilization[:, k, i], marker="o", markersize=3, label=labels[i])
        ax.set_title(names[k])
        ax.set_ylabel("utilization")
        ax.set_ylim(0.0, 1.0)
        ax.legend(fontsize=7, ncol=2, loc="upper right")
    axes[-1].set_xlabel("epoch")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
