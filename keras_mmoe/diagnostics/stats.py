"""Gate statistics from gate weights: utilization, entropy, effective experts, polarization.

Pure NumPy: the input is an array of gate weights ``w`` of shape (examples, tasks, experts)
whose rows ``w[n, k, :]`` sum to 1 (the softmax output of task ``k``'s gate for example ``n``),
for example the output of :func:`keras_mmoe.diagnostics.gate_weights_from_model`.
"""

import dataclasses
import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

#: Tolerance on the rows of the gate weights summing to 1 (loose enough for float16 gates).
ROW_SUM_TOLERANCE = 1e-2


def _entropy(p, axis=-1):
    """Shannon entropy in nats along ``axis``, with 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -np.sum(p * logs, axis=axis)


@dataclasses.dataclass(frozen=True)
class TaskGateStats:
    """Statistics of one task's gate over a set of examples (see :func:`gate_statistics`)."""

    task: str
    utilization: np.ndarray
    entropy: float
    utilization_entropy: float
    effective_experts: float
    effective_experts_per_example: float
    max_weight_fraction: float
    top_expert: int
    unused_experts: Tuple[int, ...]
    polarized: bool

    @property
    def num_experts(self) -> int:
        return int(self.utilization.shape[0])

    @property
    def verdict(self) -> str:
        """``"polarized"``, ``"unused experts"`` or ``"ok"`` (polarization takes precedence)."""
        if self.polarized:
            return "polarized"
        if self.unused_experts:
            return "unused experts"
        return "ok"

    def to_dict(self):
        """JSON-friendly dict of the statistics."""
        d = dataclasses.asdict(self)
        d["utilization"] = [float(u) for u in self.utilization]
        d["unused_experts"] = list(self.unused_experts)
        d["verdict"] = self.verdict
        return d


@dataclasses.dataclass(frozen=True)
class GateReport:
    """Gate statistics of every task, with the thresholds that produced them.

    Index it by task name (``report["click"]``) or iterate ``report.tasks``; ``str(report)``
    and :meth:`to_markdown` give a readable table.
    """

    tasks: Tuple[TaskGateStats, ...]
    num_examples: int
    polarization_threshold: float
    polarized_fraction: float
    unused_threshold: float
    layer_name: Optional[str] = None

    @property
    def task_names(self) -> List[str]:
        return [t.task for t in self.tasks]

    @property
    def num_experts(self) -> int:
        return self.tasks[0].num_experts

    @property
    def utilization(self) -> np.ndarray:
        """Utilization matrix, shape (tasks, experts)."""
        return np.stack([t.utilization for t in self.tasks])

    @property
    def polarized_tasks(self) -> List[str]:
        return [t.task for t in self.tasks if t.polarized]

    @property
    def any_polarized(self) -> bool:
        return any(t.polarized for t in self.tasks)

    @property
    def dead_experts(self) -> List[int]:
        """Experts unused by every task (utilization below ``unused_threshold`` for all tasks)."""
        return sorted(set.intersection(*(set(t.unused_experts) for t in self.tasks)))

    def __getitem__(self, task) -> TaskGateStats:
        for t in self.tasks:
            if t.task == task:
                return t
        raise KeyError(f"No task {task!r} in the gate report; tasks are {self.task_names}")

    def __iter__(self):
        return iter(self.tasks)

    def __len__(self):
        return len(self.tasks)

    def to_dict(self) -> Dict:
        """JSON-friendly dict of the report."""
        return {
            "layer_name": self.layer_name,
            "num_examples": self.num_examples,
            "num_experts": self.num_experts,
            "polarization_threshold": self.polarization_threshold,
            "polarized_fraction": self.polarized_fraction,
            "unused_threshold": self.unused_threshold,
            "dead_experts": self.dead_experts,
            "tasks": {t.task: t.to_dict() for t in self.tasks},
        }

    def to_logs(self, prefix="gate") -> Dict[str, float]:
        """Flat ``{name: float}`` of the statistics, as the :class:`GateDiagnostics` callback logs them.

        Keys are ``<prefix>/<task>/<statistic>`` for ``entropy``, ``utilization_entropy``,
        ``effective_experts``, ``effective_experts_per_example``, ``max_weight_fraction``,
        ``num_unused_experts``, ``polarized`` (0.0 or 1.0) and ``utilization_<i>`` per expert.
        """
        logs = {}
        for t in self.tasks:
            p = f"{prefix}/{t.task}/"
            logs[p + "entropy"] = float(t.entropy)
            logs[p + "utilization_entropy"] = float(t.utilization_entropy)
            logs[p + "effective_experts"] = float(t.effective_experts)
            logs[p + "effective_experts_per_example"] = float(t.effective_experts_per_example)
            logs[p + "max_weight_fraction"] = float(t.max_weight_fraction)
            logs[p + "num_unused_experts"] = float(len(t.unused_experts))
            logs[p + "polarized"] = float(t.polarized)
            for i, u in enumerate(t.utilization):
                logs[p + f"utilization_{i}"] = float(u)
        return logs

    def to_markdown(self) -> str:
        """A Markdown table, one row per task, followed by the rule and thresholds used."""
        head = "| task | utilization | entropy (nats) | effective experts | per-example eff. | max-weight frac. | unused | verdict |"
        rows = [head, "|" + "---|" * 8]
        for t in self.tasks:
            util = " ".join(f"{u:.2f}" for u in t.utilization)
            unused = ",".join(str(i) for i in t.unused_experts) or "-"
            rows.append(
                f"| {t.task} | {util} | {t.entropy:.3f} | {t.effective_experts:.2f} / {t.num_experts} "
                f"| {t.effective_experts_per_example:.2f} | {t.max_weight_fraction:.2f} | {unused} | {t.verdict} |"
            )
        where = f" of layer `{self.layer_name}`" if self.layer_name else ""
        rows.append("")
        rows.append(
            f"Gates{where} over {self.num_examples} examples. A task is *polarized* when more than "
            f"{self.polarized_fraction:g} of examples put more than {self.polarization_threshold:g} of their gate "
            f"weight on a single expert; an expert is *unused* by a task when its utilization is below "
            f"{self.unused_threshold:.4g}. Dead experts (unused by every task): "
            f"{', '.join(map(str, self.dead_experts)) or 'none'}."
        )
        return "\n".join(rows)

    def __str__(self):
        return self.to_markdown()


def _check_fraction(name, value, low_open=False):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number in [0, 1], received: {value!r}") from None
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"`{name}` must be in [0, 1], received: {value!r}")
    return value


def gate_statistics(
    gate_weights: Any,
    task_names: Optional[Sequence[str]] = None,
    polarization_threshold: float = 0.9,
    polarized_fraction: float = 0.5,
    unused_threshold: Optional[float] = None,
    layer_name: Optional[str] = None,
) -> GateReport:
    """Per-task statistics of gate weights.

    For task ``k`` with gate weights ``w[n, k, i]`` over ``N`` examples and ``E`` experts
    (rows summing to 1), entropies in nats with ``0 log 0 = 0``:

        utilization u_i               = (1/N) sum_n w[n, k, i]            mean gate weight of expert i
        entropy                       = (1/N) sum_n H(w[n, k, :])         mean per-example entropy
        utilization_entropy           = H(u)                              entropy of the mean weights
        effective_experts             = exp(H(u))                         in [1, E]
        effective_experts_per_example = exp((1/N) sum_n H(w[n, k, :]))   in [1, E]
        max_weight_fraction           = (1/N) #{n : max_i w[n, k, i] > polarization_threshold}
        unused_experts                = {i : u_i < unused_threshold}      default threshold 1 / (10 E)
        polarized                     = max_weight_fraction > polarized_fraction

    where ``H(p) = -sum_i p_i log p_i``. ``effective_experts`` (the perplexity of the mean gate
    distribution) counts how many experts the task uses across examples: ``E`` when all are
    used equally, 1 when one expert takes everything. ``effective_experts_per_example``
    counts how many experts a typical example mixes; it is never larger than
    ``effective_experts`` (entropy is concave), and a gate that routes each example to one
    expert but spreads examples evenly has ``effective_experts = E`` and
    ``effective_experts_per_example = 1``.

    **Polarization rule.** A task is polarized when more than ``polarized_fraction`` (default
    half) of the examples put more than ``polarization_threshold`` (default 0.9) of their
    gate weight on a single expert, the gate collapse Zhao et al. (RecSys 2019) report and
    fix with expert dropout. Unused experts alone do not make a task polarized (a task may
    legitimately use a few of many experts); they are reported per task in
    ``unused_experts`` and, when unused by every task, in ``GateReport.dead_experts``.

    Args:
        gate_weights: array (examples, tasks, experts) of gate weights, rows summing to 1.
        task_names: names of the tasks (default ``task_0, task_1, ...``).
        polarization_threshold: weight in [0, 1] above which one expert dominates an example.
        polarized_fraction: share in [0, 1] of dominated examples above which a task is polarized.
        unused_threshold: utilization below which an expert is unused (default ``1 / (10 E)``).
        layer_name: optional name of the MMoE layer, shown in the report.

    Returns:
        A :class:`GateReport` with one :class:`TaskGateStats` per task.

    Example:

    >>> w = np.array([[[0.5, 0.5]], [[1.0, 0.0]]])    # 2 examples, 1 task, 2 experts
    >>> s = gate_statistics(w, ["click"])["click"]
    >>> s.utilization                                 # [0.75, 0.25]
    >>> s.entropy                                     # (log 2 + 0) / 2 = 0.3466
    >>> s.max_weight_fraction, s.polarized            # (0.5, False): not MORE than half
    """
    w = np.asarray(gate_weights, dtype=np.float64)
    if w.ndim != 3:
        raise ValueError(
            f"`gate_weights` must have shape (examples, tasks, experts), received shape {w.shape}; "
            "for a single gate of shape (examples, experts) pass `w[:, None, :]`"
        )
    num_examples, num_tasks, num_experts = w.shape
    if num_examples == 0 or num_tasks == 0 or num_experts == 0:
        raise ValueError(f"`gate_weights` must not be empty, received shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError("`gate_weights` contains NaN or infinite values")
    if np.any(w < 0):
        raise ValueError(f"`gate_weights` must be non-negative, received a minimum of {w.min()!r}")
    row_sums = w.sum(axis=-1)
    worst = float(np.max(np.abs(row_sums - 1.0)))
    if worst > ROW_SUM_TOLERANCE:
        raise ValueError(
            "Each row `gate_weights[n, k, :]` must sum to 1 (softmax gate weights); "
            f"found a row sum off by {worst:.3g}"
        )
    if task_names is None:
        task_names = [f"task_{k}" for k in range(num_tasks)]
    task_names = list(task_names)
    if len(task_names) != num_tasks:
        raise ValueError(
            f"`task_names` has {len(task_names)} names ({task_names}) but `gate_weights` has {num_tasks} tasks"
        )
    polarization_threshold = _check_fraction("polarization_threshold", polarization_threshold)
    polarized_fraction = _check_fraction("polarized_fraction", polarized_fraction)
    if unused_threshold is None:
        unused_threshold = 1.0 / (10.0 * num_experts)
    unused_threshold = _check_fraction("unused_threshold", unused_threshold)

    utilization = w.mean(axis=0)  # (T, E)
    example_entropy = _entropy(w, axis=-1)  # (N, T)
    mean_entropy = example_entropy.mean(axis=0)  # (T,)
    util_entropy = _entropy(utilization, axis=-1)  # (T,)
    max_fraction = (w.max(axis=-1) > polarization_threshold).mean(axis=0)  # (T,)

    tasks = []
    for k, name in enumerate(task_names):
        u = utilization[k]
        tasks.append(
            TaskGateStats(
                task=str(name),
                utilization=u,
                entropy=float(mean_entropy[k]),
                utilization_entropy=float(util_entropy[k]),
                effective_experts=float(np.exp(util_entropy[k])),
                effective_experts_per_example=float(np.exp(mean_entropy[k])),
                max_weight_fraction=float(max_fraction[k]),
                top_expert=int(np.argmax(u)),
                unused_experts=tuple(int(i) for i in np.flatnonzero(u < unused_threshold)),
                polarized=bool(max_fraction[k] > polarized_fraction),
            )
        )
    return GateReport(
        tasks=tuple(tasks),
        num_examples=int(num_examples),
        polarization_threshold=polarization_threshold,
        polarized_fraction=polarized_fraction,
        unused_threshold=unused_threshold,
        layer_name=layer_name,
    )
