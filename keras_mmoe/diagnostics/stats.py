"""Gate statistics from gate weights: utilization, entropy, effective experts, polarization.

Pure NumPy. The input is either an array of gate weights ``w`` of shape (examples, tasks,
experts), every task's gate weighing the same experts (MMoE, OMoE), or the dict of gate weights
of a :class:`~keras_mmoe.layers.CGCLayer` / :class:`~keras_mmoe.layers.PLELayer`, whose task
gates weigh their task's own experts then the shared ones and whose shared gates weigh every
expert of their level (for example the output of
:func:`keras_mmoe.diagnostics.gate_weights_from_model`).
"""

import dataclasses
import math
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

#: Tolerance on the rows of the gate weights summing to 1 (loose enough for float16 gates).
ROW_SUM_TOLERANCE = 1e-2
#: Name of the shared experts' group and of a level's shared gate (``shared_`` if a task has this name).
SHARED = "shared"
#: Keys of a CGCLayer's gate-weight dict, with an optional ``level_<l>_`` prefix (PLELayer).
_GATE_KEY = re.compile(r"^(?:level_(\d+)_)?(tasks|shared)$")


def _entropy(p, axis=-1):
    """Shannon entropy in nats along ``axis``, with 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -np.sum(p * logs, axis=axis)


@dataclasses.dataclass(frozen=True)
class GateStats:
    """Statistics of one gate over a set of examples (see :func:`gate_statistics`).

    ``utilization``, ``top_expert`` and ``unused_experts`` index the gate's own experts, in
    its order; ``experts`` names them and ``expert_ids`` places them in the layer's list of
    experts (:attr:`GateReport.experts`).
    """

    name: str
    task: Optional[str]
    level: Optional[int]
    experts: Tuple[str, ...]
    expert_ids: Tuple[int, ...]
    utilization: np.ndarray
    group_weights: Dict[str, float]
    entropy: float
    utilization_entropy: float
    effective_experts: float
    effective_experts_per_example: float
    max_weight_fraction: float
    top_expert: int
    unused_experts: Tuple[int, ...]
    unused_threshold: float
    polarized: bool

    @property
    def num_experts(self) -> int:
        return int(self.utilization.shape[0])

    @property
    def is_shared(self) -> bool:
        """True for a shared gate (CGC/PLE), which mixes experts for the next level, not for a task."""
        return self.task is None

    @property
    def unused_expert_names(self) -> List[str]:
        return [self.experts[i] for i in self.unused_experts]

    @property
    def verdict(self) -> str:
        """``"polarized"``, ``"unused experts"`` or ``"ok"`` (polarization takes precedence)."""
        if self.polarized:
            return "polarized"
        if self.unused_experts:
            return "unused experts"
        return "ok"

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly dict of the statistics."""
        d = dataclasses.asdict(self)
        d["utilization"] = [float(u) for u in self.utilization]
        d["experts"] = list(self.experts)
        d["expert_ids"] = list(self.expert_ids)
        d["unused_experts"] = list(self.unused_experts)
        d["unused_expert_names"] = self.unused_expert_names
        d["verdict"] = self.verdict
        return d


#: The name of :class:`GateStats` when every gate was a task's (MMoE).
TaskGateStats = GateStats


@dataclasses.dataclass(frozen=True)
class GateReport:
    """Statistics of every gate of a layer, with the thresholds that produced them.

    Index it by gate name (``report["click"]``; PLE: ``report["level_1/click"]``) or iterate
    ``report.gates``; ``str(report)`` and :meth:`to_markdown` give a readable table. For an
    MMoE layer there is one gate per task, named after it, over experts named ``"0"``,
    ``"1"``, ...; ``tasks``, ``task_names`` and ``polarized_tasks`` are then the gates.
    """

    gates: Tuple[GateStats, ...]
    experts: Tuple[str, ...]
    num_examples: int
    polarization_threshold: float
    polarized_fraction: float
    unused_threshold: Optional[float]
    layer_name: Optional[str] = None

    @property
    def gate_names(self) -> List[str]:
        return [g.name for g in self.gates]

    @property
    def tasks(self) -> Tuple[GateStats, ...]:
        """The gates (the name from MMoE reports, where each gate is a task's)."""
        return self.gates

    @property
    def task_names(self) -> List[str]:
        """The gates' names (the name from MMoE reports, where each gate is a task's)."""
        return self.gate_names

    @property
    def grouped(self) -> bool:
        """True when gates weigh different experts (CGC/PLE): expert names then carry their group."""
        return any(g.group_weights for g in self.gates)

    @property
    def num_experts(self) -> int:
        """Number of experts of the layer (every level's for PLE)."""
        return len(self.experts)

    @property
    def utilization(self) -> np.ndarray:
        """Utilization matrix, shape (gates, layer experts); NaN where a gate does not weigh an expert."""
        matrix = np.full((len(self.gates), self.num_experts), np.nan)
        for row, gate in enumerate(self.gates):
            matrix[row, list(gate.expert_ids)] = gate.utilization
        return matrix

    @property
    def polarized_gates(self) -> List[str]:
        return [g.name for g in self.gates if g.polarized]

    @property
    def polarized_tasks(self) -> List[str]:
        """Names of the polarized gates (the name from MMoE reports)."""
        return self.polarized_gates

    @property
    def any_polarized(self) -> bool:
        return any(g.polarized for g in self.gates)

    @property
    def dead_experts(self) -> List[int]:
        """Experts (indices into :attr:`experts`) unused by every gate that weighs them."""
        dead = []
        for expert in range(self.num_experts):
            readers = [g for g in self.gates if expert in g.expert_ids]
            if readers and all(g.expert_ids.index(expert) in g.unused_experts for g in readers):
                dead.append(expert)
        return dead

    @property
    def dead_expert_names(self) -> List[str]:
        return [self.experts[i] for i in self.dead_experts]

    def __getitem__(self, name) -> GateStats:
        for g in self.gates:
            if g.name == name:
                return g
        raise KeyError(f"No gate {name!r} in the gate report; gates are {self.gate_names}")

    def __iter__(self):
        return iter(self.gates)

    def __len__(self):
        return len(self.gates)

    def to_dict(self) -> Dict[str, Any]:
        """JSON-friendly dict of the report (``"tasks"``: every gate by name)."""
        return {
            "layer_name": self.layer_name,
            "num_examples": self.num_examples,
            "num_experts": self.num_experts,
            "experts": list(self.experts),
            "polarization_threshold": self.polarization_threshold,
            "polarized_fraction": self.polarized_fraction,
            "unused_threshold": self.unused_threshold,
            "dead_experts": self.dead_experts,
            "dead_expert_names": self.dead_expert_names,
            "tasks": {g.name: g.to_dict() for g in self.gates},
        }

    def to_logs(self, prefix: str = "gate") -> Dict[str, float]:
        """Flat ``{name: float}`` of the statistics, as the :class:`GateDiagnostics` callback logs them.

        Keys are ``<prefix>/<gate>/<statistic>`` for ``entropy``, ``utilization_entropy``,
        ``effective_experts``, ``effective_experts_per_example``, ``max_weight_fraction``,
        ``num_unused_experts``, ``polarized`` (0.0 or 1.0), ``utilization_<expert>`` per expert
        (MMoE: ``utilization_0``, ``utilization_1``, ...; CGC/PLE: ``utilization_click_0``,
        ``utilization_shared_0``, ... without the level) and, for CGC/PLE,
        ``weight_on_<group>`` per group of experts (``weight_on_click``, ``weight_on_shared``).
        """
        logs = {}
        for g in self.gates:
            p = f"{prefix}/{g.name}/"
            logs[p + "entropy"] = float(g.entropy)
            logs[p + "utilization_entropy"] = float(g.utilization_entropy)
            logs[p + "effective_experts"] = float(g.effective_experts)
            logs[p + "effective_experts_per_example"] = float(g.effective_experts_per_example)
            logs[p + "max_weight_fraction"] = float(g.max_weight_fraction)
            logs[p + "num_unused_experts"] = float(len(g.unused_experts))
            logs[p + "polarized"] = float(g.polarized)
            for expert, u in zip(g.experts, g.utilization):
                logs[p + f"utilization_{expert.rsplit('/', 1)[-1]}"] = float(u)
            for group, weight in g.group_weights.items():
                logs[p + f"weight_on_{group}"] = float(weight)
        return logs

    def to_markdown(self) -> str:
        """A Markdown table, one row per gate, followed by the rule and thresholds used."""
        grouped = self.grouped
        word = "gate" if grouped else "task"
        columns = [word, "utilization"] + (["weight by group"] if grouped else []) + [
            "entropy (nats)", "effective experts", "per-example eff.", "max-weight frac.", "unused", "verdict"]
        rows = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for g in self.gates:
            if grouped:
                util = "; ".join(
                    f"{group}: " + " ".join(f"{u:.2f}" for e, u in zip(g.experts, g.utilization) if _group(e) == group)
                    for group in g.group_weights
                )
                by_group = ", ".join(f"{group} {w:.2f}" for group, w in g.group_weights.items())
                unused = ", ".join(g.unused_expert_names) or "-"
            else:
                util = " ".join(f"{u:.2f}" for u in g.utilization)
                unused = ",".join(str(i) for i in g.unused_experts) or "-"
            cells = [g.name, util] + ([by_group] if grouped else []) + [
                f"{g.entropy:.3f}", f"{g.effective_experts:.2f} / {g.num_experts}",
                f"{g.effective_experts_per_example:.2f}", f"{g.max_weight_fraction:.2f}", unused, g.verdict]
            rows.append("| " + " | ".join(cells) + " |")
        where = f" of layer `{self.layer_name}`" if self.layer_name else ""
        if self.unused_threshold is not None:
            threshold = f"{self.unused_threshold:.4g}"
        else:
            threshold = "1/(10 E) for a gate over E experts"
        rows.append("")
        if grouped:
            rows.append(
                "Each task gate weighs its task's own experts, then the shared experts; a shared gate weighs every "
                "task's experts, then the shared ones (it feeds the next level). "
            )
            dead = ", ".join(self.dead_expert_names) or "none"
            dead_rule = "unused by every gate that weighs them"
        else:
            dead = ", ".join(map(str, self.dead_experts)) or "none"
            dead_rule = "unused by every task"
        rows[-1] += (
            f"Gates{where} over {self.num_examples} examples. A {word} is *polarized* when more than "
            f"{self.polarized_fraction:g} of examples put more than {self.polarization_threshold:g} of their gate "
            f"weight on a single expert; an expert is *unused* by a {word} when its utilization is below "
            f"{threshold}. Dead experts ({dead_rule}): {dead}."
        )
        return "\n".join(rows)

    def __str__(self):
        return self.to_markdown()


def _group(expert_name: str) -> str:
    """The group of a CGC/PLE expert name (``"level_0/click_1"`` -> ``"click"``)."""
    return expert_name.rsplit("/", 1)[-1].rsplit("_", 1)[0]


def _check_fraction(name, value):
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number in [0, 1], received: {value!r}") from None
    if not (0.0 <= value <= 1.0) or math.isnan(value):
        raise ValueError(f"`{name}` must be in [0, 1], received: {value!r}")
    return value


def _check_weights(label, w, ndim, shape_text):
    """``w`` as float64, checked: rank, non-empty, finite, non-negative, rows summing to 1."""
    w = np.asarray(w, dtype=np.float64)
    if w.ndim != ndim:
        hint = "; for a single gate of shape (examples, experts) pass `w[:, None, :]`" if ndim == 3 else ""
        raise ValueError(f"`{label}` must have shape {shape_text}, received shape {w.shape}{hint}")
    if w.size == 0:
        raise ValueError(f"`{label}` must not be empty, received shape {w.shape}")
    if not np.all(np.isfinite(w)):
        raise ValueError(f"`{label}` contains NaN or infinite values")
    if np.any(w < 0):
        raise ValueError(f"`{label}` must be non-negative, received a minimum of {w.min()!r}")
    worst = float(np.max(np.abs(w.sum(axis=-1) - 1.0)))
    if worst > ROW_SUM_TOLERANCE:
        raise ValueError(f"Each row of `{label}` must sum to 1 (softmax gate weights); found a row sum off by {worst:.3g}")
    return w


@dataclasses.dataclass
class _Gate:
    """One gate before its statistics: weights (examples, experts) and who its experts are."""

    name: str
    task: Optional[str]
    level: Optional[int]
    weights: np.ndarray
    expert_ids: Tuple[int, ...]


def _mixture_gates(w, task_names):
    """MMoE/OMoE: one gate per task, every gate over the same experts ``"0"``, ``"1"``, ..."""
    w = _check_weights("gate_weights", w, 3, "(examples, tasks, experts)")
    num_tasks, num_experts = w.shape[1:]
    if task_names is None:
        task_names = [f"task_{k}" for k in range(num_tasks)]
    task_names = [str(t) for t in task_names]
    if len(task_names) != num_tasks:
        raise ValueError(
            f"`task_names` has {len(task_names)} names ({task_names}) but `gate_weights` has {num_tasks} tasks"
        )
    experts = tuple(str(i) for i in range(num_experts))
    ids = tuple(range(num_experts))
    return [_Gate(t, t, None, w[:, k], ids) for k, t in enumerate(task_names)], experts


def _progressive_gates(weights, task_names, num_task_experts):
    """CGC/PLE: per level, the task gates (own experts, then shared) and the shared gate (every expert)."""
    levels = {}
    for key, value in weights.items():
        match = _GATE_KEY.match(str(key))
        if match is None:
            raise ValueError(
                f"`gate_weights` keys must be those of a CGCLayer ('tasks', 'shared') or a PLELayer "
                f"('level_<l>_tasks', 'level_<l>_shared'), received {sorted(map(str, weights))}"
            )
        level = None if match.group(1) is None else int(match.group(1))
        levels.setdefault(level, {})[match.group(2)] = (str(key), value)
    if None in levels and len(levels) > 1:
        raise ValueError(f"`gate_weights` mixes CGC keys and PLE level keys: {sorted(map(str, weights))}")
    if num_task_experts is None:
        raise ValueError(
            "`num_task_experts` is needed for CGC/PLE gate weights (it tells each task's own experts from the "
            "shared ones): give the layer's num_task_experts"
        )
    m = int(num_task_experts)
    if m < 0:
        raise ValueError(f"`num_task_experts` must be a non-negative integer, received: {num_task_experts!r}")
    order = sorted(levels, key=lambda l: -1 if l is None else l)
    if order != [None] and order != list(range(len(order))):
        raise ValueError(f"`gate_weights` must hold levels 0, 1, ... without gaps, received {sorted(map(str, weights))}")
    gates, experts, num_examples = [], [], None
    for level in order:
        entries = levels[level]
        if "tasks" not in entries:
            where = "" if level is None else f"level_{level}_"
            raise ValueError(f"`gate_weights` has a shared gate but no task gates {where + 'tasks'!r}")
        key, value = entries["tasks"]
        w = _check_weights(f"gate_weights[{key!r}]", value, 3, "(examples, tasks, own + shared experts)")
        n, num_tasks, width = w.shape
        names = [f"task_{k}" for k in range(num_tasks)] if task_names is None else [str(t) for t in task_names]
        if len(names) != num_tasks:
            raise ValueError(f"`task_names` has {len(names)} names ({names}) but `gate_weights[{key!r}]` has {num_tasks} tasks")
        if width < m:
            raise ValueError(
                f"`gate_weights[{key!r}]` weighs {width} experts per task, fewer than num_task_experts={m}"
            )
        if num_examples is not None and n != num_examples:
            raise ValueError(f"`gate_weights` entries disagree on the number of examples: {num_examples} and {n} ({key!r})")
        num_examples = n
        s = width - m
        shared = SHARED
        while shared in names:
            shared += "_"
        prefix = "" if level is None else f"level_{level}/"
        offset = len(experts)
        experts += [f"{prefix}{t}_{i}" for t in names for i in range(m)] + [f"{prefix}{shared}_{j}" for j in range(s)]
        shared_ids = tuple(offset + num_tasks * m + j for j in range(s))
        for k, t in enumerate(names):
            own = tuple(offset + k * m + i for i in range(m))
            gates.append(_Gate(f"{prefix}{t}", t, level, w[:, k], own + shared_ids))
        if "shared" in entries:
            key, value = entries["shared"]
            ws = _check_weights(f"gate_weights[{key!r}]", value, 2, "(examples, tasks * own + shared experts)")
            if ws.shape != (n, num_tasks * m + s):
                raise ValueError(
                    f"`gate_weights[{key!r}]` has shape {ws.shape}; with {num_tasks} tasks of {m} own experts and "
                    f"{s} shared experts the shared gate weighs {num_tasks * m + s} experts over {n} examples"
                )
            gates.append(_Gate(f"{prefix}{shared}", None, level, ws, tuple(range(offset, offset + num_tasks * m + s))))
    return gates, tuple(experts)


def gate_statistics(
    gate_weights: Any,
    task_names: Optional[Sequence[str]] = None,
    polarization_threshold: float = 0.9,
    polarized_fraction: float = 0.5,
    unused_threshold: Optional[float] = None,
    layer_name: Optional[str] = None,
    num_task_experts: Optional[int] = None,
) -> GateReport:
    """Per-gate statistics of gate weights.

    For a gate with weights ``w[n, i]`` over ``N`` examples and its ``E`` experts (rows
    summing to 1), entropies in nats with ``0 log 0 = 0``:

        utilization u_i               = (1/N) sum_n w[n, i]            mean gate weight of expert i
        entropy                       = (1/N) sum_n H(w[n, :])         mean per-example entropy
        utilization_entropy           = H(u)                           entropy of the mean weights
        effective_experts             = exp(H(u))                      in [1, E]
        effective_experts_per_example = exp((1/N) sum_n H(w[n, :]))   in [1, E]
        max_weight_fraction           = (1/N) #{n : max_i w[n, i] > polarization_threshold}
        unused_experts                = {i : u_i < unused_threshold}   default threshold 1 / (10 E)
        polarized                     = max_weight_fraction > polarized_fraction

    where ``H(p) = -sum_i p_i log p_i``. ``effective_experts`` (the perplexity of the mean gate
    distribution) counts how many experts the gate uses across examples: ``E`` when all are
    used equally, 1 when one expert takes everything. ``effective_experts_per_example``
    counts how many experts a typical example mixes; it is never larger than
    ``effective_experts`` (entropy is concave), and a gate that routes each example to one
    expert but spreads examples evenly has ``effective_experts = E`` and
    ``effective_experts_per_example = 1``.

    **Which gates, over which experts.** An array (examples, tasks, experts) holds one gate
    per task, all over the same experts (MMoE; OMoE's shared gate repeated per task), named
    ``"0"``, ``"1"``, ...; gates are named after their tasks. The dict of a CGCLayer's or
    PLELayer's ``gate_weights`` (with ``num_task_experts`` = m) holds, per level, task ``k``'s
    gate over its ``m`` own experts then the ``s`` shared ones, and (levels that feed another)
    a shared gate over every expert of the level; experts are named ``<task>_<i>`` and
    ``shared_<j>`` (PLE: prefixed ``level_<l>/``), gates ``<task>`` and ``shared`` (PLE:
    ``level_<l>/<task>``, ``level_<l>/shared``). Each gate's statistics are over its own
    experts only, so ``E`` above is ``m + s`` for a task gate and ``T m + s`` for a shared
    gate, and ``group_weights`` adds the gate's mean total weight on each group of experts
    (a task gate: its task's own experts and the shared ones; a shared gate: each task's and
    the shared ones), e.g. ``{"click": 0.3, "shared": 0.7}``. An expert is *dead* when every
    gate that weighs it leaves it unused (MMoE: every task's gate; a CGC task expert: its
    task's gate and the level's shared gate; a shared expert: every gate of its level).

    **Polarization rule**, per gate. A gate is polarized when more than ``polarized_fraction``
    (default half) of the examples put more than ``polarization_threshold`` (default 0.9) of
    their gate weight on a single expert, the gate collapse Zhao et al. (RecSys 2019) report
    and fix with expert dropout. Unused experts alone do not make a gate polarized (a gate may
    legitimately use a few of many experts); they are reported per gate in ``unused_experts``
    and, when unused by every gate that weighs them, in ``GateReport.dead_experts``.

    Args:
        gate_weights: array (examples, tasks, experts) of gate weights, rows summing to 1; or
            the dict a CGCLayer / PLELayer ``gate_weights`` returns (NumPy arrays or tensors):
            ``"tasks"`` (examples, tasks, m + s) and optionally ``"shared"`` (examples, T m + s),
            PLE keys prefixed ``level_<l>_``. With ``num_task_experts``, an array (examples,
            tasks, m + s) is read as CGC/PLE task gates (``{"tasks": array}``), e.g. the
            ``gate_weights`` output of :func:`keras_mmoe.models.build_ple`.
        task_names: names of the tasks (default ``task_0, task_1, ...``).
        polarization_threshold: weight in [0, 1] above which one expert dominates an example.
        polarized_fraction: share in [0, 1] of dominated examples above which a gate is polarized.
        unused_threshold: utilization below which an expert is unused (default ``1 / (10 E)``
            for a gate over ``E`` experts).
        layer_name: optional name of the layer, shown in the report.
        num_task_experts: CGC/PLE only: the number ``m`` of each task's own experts.

    Returns:
        A :class:`GateReport` with one :class:`GateStats` per gate.

    Example:

    >>> w = np.array([[[0.5, 0.5]], [[1.0, 0.0]]])    # 2 examples, 1 task, 2 experts
    >>> s = gate_statistics(w, ["click"])["click"]
    >>> s.utilization                                 # [0.75, 0.25]
    >>> s.entropy                                     # (log 2 + 0) / 2 = 0.3466
    >>> s.max_weight_fraction, s.polarized            # (0.5, False): not MORE than half
    >>> cgc = gate_statistics(layer.gate_weights(x), ["click", "buy"], num_task_experts=2)
    >>> cgc["click"].group_weights                    # {"click": 0.35, "shared": 0.65}
    """
    if isinstance(gate_weights, Mapping):
        gates, experts = _progressive_gates(gate_weights, task_names, num_task_experts)
    elif num_task_experts is not None:
        gates, experts = _progressive_gates({"tasks": gate_weights}, task_names, num_task_experts)
    else:
        gates, experts = _mixture_gates(gate_weights, task_names)
    polarization_threshold = _check_fraction("polarization_threshold", polarization_threshold)
    polarized_fraction = _check_fraction("polarized_fraction", polarized_fraction)
    if unused_threshold is not None:
        unused_threshold = _check_fraction("unused_threshold", unused_threshold)
    grouped = isinstance(gate_weights, Mapping) or num_task_experts is not None

    stats = []
    for gate in gates:
        w = gate.weights  # (N, E)
        num_experts = w.shape[1]
        threshold = unused_threshold if unused_threshold is not None else 1.0 / (10.0 * num_experts)
        u = w.mean(axis=0)
        mean_entropy = float(_entropy(w, axis=-1).mean())
        util_entropy = float(_entropy(u))
        max_fraction = float((w.max(axis=-1) > polarization_threshold).mean())
        names = tuple(experts[i] for i in gate.expert_ids)
        group_weights = {}
        if grouped:
            for name, value in zip(names, u):
                group_weights[_group(name)] = group_weights.get(_group(name), 0.0) + float(value)
        stats.append(
            GateStats(
                name=gate.name,
                task=gate.task,
                level=gate.level,
                experts=names,
                expert_ids=gate.expert_ids,
                utilization=u,
                group_weights=group_weights,
                entropy=mean_entropy,
                utilization_entropy=util_entropy,
                effective_experts=float(np.exp(util_entropy)),
                effective_experts_per_example=float(np.exp(mean_entropy)),
                max_weight_fraction=max_fraction,
                top_expert=int(np.argmax(u)),
                unused_experts=tuple(int(i) for i in np.flatnonzero(u < threshold)),
                unused_threshold=float(threshold),
                polarized=bool(max_fraction > polarized_fraction),
            )
        )
    thresholds = {g.unused_threshold for g in stats}
    return GateReport(
        gates=tuple(stats),
        experts=experts,
        num_examples=int(gates[0].weights.shape[0]),
        polarization_threshold=polarization_threshold,
        polarized_fraction=polarized_fraction,
        unused_threshold=thresholds.pop() if len(thresholds) == 1 else None,
        layer_name=layer_name,
    )
