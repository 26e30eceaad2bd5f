"""The MMoE paper's other census-income baselines (section 6.3), and comparable parameter budgets.

Same conventions as :mod:`keras_mmoe.models.builders`: a Functional model with dict inputs
and dict outputs keyed by task name; ``inputs`` an int d, a ``keras.Input`` or a dict of
them; ``features`` the dense (batch, d) tensor the model reads (default: the inputs).

    L2-Constrained        y_k = f(x; theta_k),  loss += alpha sum_{j<k} ||theta_j - theta_k||^2
    Cross-Stitch          per-task hidden layers, mixed after each by x~_t = sum_s alpha_ts x_s
    Tensor-Factorization  per-task hidden layers whose stacked kernels (d, u, T) are Tucker-factorized

:func:`matched_budget_kwargs` gives, for every builder, the size arguments that put its
trainable parameter count within 20% of MMoE's at a given input width (the census setting:
about 499 encoded inputs, 8 experts of 16 units, towers of 8 units, two binary tasks).
:func:`budget_table` builds the models and counts their parameters. At input width 499 and
two tasks (numbers asserted in tests/test_baselines.py):

    model                 size arguments                              params   vs MMoE
    mmoe                  8 experts x 16 units, towers (8,)           72,290    1.000
    omoe                  8 experts x 16 units, towers (8,)           68,290    0.945
    shared_bottom         bottom_units=(140,)                         72,274    1.000
    single_task           hidden_units=(71,)                          72,170    0.998
    l2_constrained        hidden_units=(71,)                          72,170    0.998
    cross_stitch          hidden_units=(71,)                          72,174    0.998
    tensor_factorization  hidden_units=(91,), ranks=(91, 91, 2)       71,928    0.995
    cgc                   4 shared + 2 per task experts x 16 units    70,290    0.972
    ple                   as cgc, 2 levels                            76,670    1.061
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from keras_mmoe._keras import keras
from keras_mmoe import _validation
from keras_mmoe.layers import _utils
from keras_mmoe.layers.cross_stitch import CrossStitch
from keras_mmoe.layers.l2_tied_dense import L2TiedDense
from keras_mmoe.layers.tensor_factorization import TensorFactorizedDense
from keras_mmoe.models.builders import (
    InputsLike,
    OutputScaling,
    TasksLike,
    _resolve,
    build_towers,
    check_output_scaling,
    functional_model,
)
from keras_mmoe.models.tasks import output_activation


def build_l2_constrained(
    inputs: InputsLike,
    tasks: TasksLike,
    *,
    features: Any = None,
    hidden_units: Union[int, Sequence[int]] = (64,),
    tower_units: Sequence[int] = (8,),
    l2_tie: float = 1e-3,
    penalty: str = "pairwise",
    tie_bias: bool = True,
    activation: Any = "relu",
    kernel_regularizer: Any = None,
    seed: Optional[int] = None,
    output_scaling: Optional[OutputScaling] = None,
    name: str = "l2_constrained",
) -> "keras.Model":
    """L2-Constrained baseline (Duong et al. 2015, as adapted in the MMoE paper).

    Every task has its own network ``f(x; theta_k)`` of the same shape as the Single-Task
    baseline's (hidden layers, tower layers, one output unit), and ALL its parameters
    (kernels and, with ``tie_bias``, biases of every layer, output layer included) are
    softly tied to the other tasks' by the penalty

        l2_tie * sum_layers sum_{j < k} ||W_j - W_k||^2          (``penalty="pairwise"``)

    or ``l2_tie * sum_layers sum_k ||W_k - mean_j W_j||^2`` (``penalty="mean"``; pairwise is
    T times that), added to the model's losses by its :class:`L2TiedDense` layers from their
    current weights. ``l2_tie=0`` gives the Single-Task baseline.

    Layers: ``l2_hidden_{i}``, ``l2_tower_{i}``, ``l2_output`` (float32), then one
    ``Activation`` per task named after it (sigmoid for binary tasks, linear for regression).
    """
    inputs, tasks, features = _resolve(inputs, tasks, features)
    hidden = _utils.check_units("hidden_units", hidden_units)
    tower = _utils.check_hidden_units("tower_units", tower_units)
    names = list(tasks)
    common = dict(num_tasks=len(names), l2_tie=l2_tie, penalty=penalty, tie_bias=tie_bias,
                  kernel_regularizer=kernel_regularizer)
    x = features
    layers = [(f"l2_hidden_{i}", u) for i, u in enumerate(hidden)] + [(f"l2_tower_{i}", u) for i, u in enumerate(tower)]
    for i, (layer_name, units) in enumerate(layers):
        x = L2TiedDense(units, activation=activation, seed=None if seed is None else seed + 100 * i,
                        name=layer_name, **common)(x)
    logits = L2TiedDense(1, seed=None if seed is None else seed + 100 * len(layers), dtype="float32",
                         name="l2_output", **common)(x)
    scaling = check_output_scaling(output_scaling, tasks)
    outputs = {}
    for (t, kind), logit in zip(tasks.items(), logits):
        if t in scaling:
            z = keras.layers.Activation("linear", dtype="float32", name=f"{t}_standardized")(logit)
            outputs[t] = keras.layers.Rescaling(scale=scaling[t][0], offset=scaling[t][1], dtype="float32", name=t)(z)
        else:
            outputs[t] = keras.layers.Activation(output_activation(kind) or "linear", dtype="float32", name=t)(logit)
    return functional_model(inputs, outputs, name=name)


def build_cross_stitch(
    inputs: InputsLike,
    tasks: TasksLike,
    *,
    features: Any = None,
    hidden_units: Union[int, Sequence[int]] = (64,),
    tower_units: Sequence[int] = (8,),
    self_weight: float = 0.9,
    activation: Any = "relu",
    tower_dropout: float = 0.0,
    kernel_regularizer: Any = None,
    output_scaling: Optional[OutputScaling] = None,
    name: str = "cross_stitch",
) -> "keras.Model":
    """Cross-Stitch baseline (Misra et al. 2016): per-task hidden layers stitched after each layer.

    Each task ``t`` has its own Dense hidden layers ``{t}_hidden_{i}``; after hidden layer
    ``i`` a :class:`CrossStitch` unit ``cross_stitch_{i}`` (a learned T x T matrix ``alpha``,
    started at ``self_weight`` on the diagonal and ``(1 - self_weight) / (T - 1)`` off it)
    replaces every task's activation by ``sum_s alpha[t, s] x_s``; then one tower per task
    (unstitched, as in :func:`build_towers`). Needs at least two tasks.
    """
    inputs, tasks, features = _resolve(inputs, tasks, features)
    if len(tasks) < 2:
        raise ValueError(f"`tasks` must name at least 2 tasks for cross-stitch units, received: {list(tasks)}")
    hidden = _utils.check_units("hidden_units", hidden_units)
    xs = [features] * len(tasks)
    for i, units in enumerate(hidden):
        xs = [
            keras.layers.Dense(units, activation=activation, kernel_regularizer=kernel_regularizer,
                               name=f"{t}_hidden_{i}")(x)
            for t, x in zip(tasks, xs)
        ]
        xs = CrossStitch(self_weight=self_weight, name=f"cross_stitch_{i}")(xs)
    outputs = build_towers(dict(zip(tasks, xs)), tasks, tower_units, activation, kernel_regularizer, tower_dropout,
                           output_scaling=output_scaling)
    return functional_model(inputs, outputs, name=name)


def build_tensor_factorization(
    inputs: InputsLike,
    tasks: TasksLike,
    *,
    features: Any = None,
    hidden_units: Union[int, Sequence[int]] = (64,),
    tower_units: Sequence[int] = (8,),
    ranks: Optional[Sequence[int]] = None,
    activation: Any = "relu",
    tower_dropout: float = 0.0,
    kernel_regularizer: Any = None,
    seed: Optional[int] = None,
    output_scaling: Optional[OutputScaling] = None,
    name: str = "tensor_factorization",
) -> "keras.Model":
    """Tensor-Factorization baseline (Yang & Hospedales 2017, DMTRL-Tucker).

    Per-task hidden layers ``tf_hidden_{i}``, each a :class:`TensorFactorizedDense` whose
    (d, u, T) kernel tensor is Tucker-factorized with ``ranks`` (r_1, r_2, r_3) (the same
    triple for every hidden layer; None: the full ranks, i.e. no compression), then one
    unfactorized tower per task.
    """
    inputs, tasks, features = _resolve(inputs, tasks, features)
    hidden = _utils.check_units("hidden_units", hidden_units)
    x = features
    for i, units in enumerate(hidden):
        x = TensorFactorizedDense(
            units, num_tasks=len(tasks), ranks=ranks, activation=activation, kernel_regularizer=kernel_regularizer,
            seed=None if seed is None else seed + 100 * i, name=f"tf_hidden_{i}",
        )(x)
    outputs = build_towers(dict(zip(tasks, x)), tasks, tower_units, activation, kernel_regularizer, tower_dropout,
                           output_scaling=output_scaling)
    return functional_model(inputs, outputs, name=name)


# --------------------------------------------------------------------------- parameter budgets

def _tower_params(units_in, tower_units, num_tasks):
    total, u = 0, units_in
    for t in tower_units:
        total += u * t + t
        u = t
    return num_tasks * (total + u + 1)


def _mlp_params(input_dim, units):
    total = 0
    for u in units:
        total += input_dim * u + u
        input_dim = u
    return total


def _progressive_params(d, n, tower, num_levels, kwargs):
    """CGC / PLE with linear gates: per level the experts, the task gates and (but for the last) the shared gate."""
    s, m = kwargs.get("num_shared_experts", 4), kwargs.get("num_task_experts", 2)
    units = _utils.check_units("expert_units", kwargs.get("expert_units", 16))
    bias = 1 if kwargs.get("gate_use_bias", True) else 0
    total, width = 0, d
    for level in range(num_levels):
        total += (n * m + s) * _mlp_params(width, units) + n * (width + bias) * (m + s)
        if level < num_levels - 1:
            total += (width + bias) * (n * m + s)
        width = units[-1]
    return total + _tower_params(width, tower, n)


def count_params_formula(kind: str, input_dim: int, num_tasks: int, **kwargs: Any) -> int:
    """Trainable parameters of ``BUILDERS[kind]`` with one hidden/bottom layer, without building it.

    Used by :func:`matched_budget_kwargs` to size the baselines; tests check it against
    ``model.count_params()``. CGC and PLE: any ``expert_units``, linear gates.
    """
    d, n = input_dim, num_tasks
    tower = tuple(kwargs.get("tower_units", (8,)))
    if kind in ("cgc", "ple"):
        return _progressive_params(d, n, tower, 1 if kind == "cgc" else kwargs.get("num_levels", 2), kwargs)
    if kind in ("mmoe", "omoe"):
        e, u = kwargs.get("num_experts", 8), kwargs.get("expert_units", 16)
        gates = 1 if kind == "omoe" else n
        return e * (d * u + u) + gates * (d * e + e) + _tower_params(u, tower, n)
    if kind == "shared_bottom":
        (b,) = kwargs["bottom_units"]
        return d * b + b + _tower_params(b, tower, n)
    (h,) = kwargs["hidden_units"]
    per_task = n * (d * h + h) + _tower_params(h, tower, n)
    if kind in ("single_task", "l2_constrained"):
        return per_task
    if kind == "cross_stitch":
        return per_task + n * n
    if kind == "tensor_factorization":
        r1, r2, r3 = kwargs["ranks"]
        return d * r1 + h * r2 + n * r3 + r1 * r2 * r3 + n * h + _tower_params(h, tower, n)
    raise ValueError(f"`kind` has no parameter formula: kind={kind!r}")


def _closest(count, target, lo=1, hi=4096):
    """The integer size s in [lo, hi] whose count(s) (increasing) is closest to target."""
    while lo < hi:
        mid = (lo + hi) // 2
        if count(mid) < target:
            lo = mid + 1
        else:
            hi = mid
    candidates = [s for s in (lo - 1, lo) if s >= 1]
    return min(candidates, key=lambda s: abs(count(s) - target))


def split_experts(num_experts: int, num_tasks: int, num_shared_experts: int | None = None) -> tuple:
    """``(num_shared_experts, num_task_experts)``: CGC/PLE's split of MMoE's ``num_experts`` experts.

    Half of them shared (at least one; or ``num_shared_experts`` when given), the rest split
    evenly between the ``num_tasks`` tasks (at least one each): MMoE's 8 experts and two tasks
    give 4 shared + 2 per task, the defaults of :func:`~keras_mmoe.models.build_ple`.
    ``keras-mmoe train --model ple`` and a spec's ``architecture = "ple"`` use it for the expert
    counts they are not given.

    >>> split_experts(8, 2), split_experts(8, 3), split_experts(8, 2, num_shared_experts=2)
    ((4, 2), (4, 1), (2, 3))
    """
    _utils.check_positive_int("num_experts", num_experts)
    _utils.check_positive_int("num_tasks", num_tasks)
    if num_shared_experts is None:
        shared = max(1, num_experts // 2)
    else:
        shared = _validation.check_non_negative_int("num_shared_experts", num_shared_experts)
    return shared, max(1, (num_experts - shared) // num_tasks)


def matched_budget_kwargs(input_dim: int, num_tasks: int = 2, num_experts: int = 8, expert_units: int = 16,
                          tower_units: Sequence[int] = (8,)) -> dict:
    """Size arguments per builder name giving each about MMoE's trainable parameter count.

    MMoE and OMoE get ``num_experts`` x ``expert_units`` (the paper's 8 x 16); every other
    model gets one hidden (or bottom) layer whose width is solved for the count closest to
    MMoE's, towers ``tower_units`` for all. Tensor-Factorization uses ranks (h, h, T). CGC
    and PLE (2 levels) keep MMoE's experts, ``num_experts // 2`` of them shared and the rest
    split evenly between the tasks (at least one each); PLE's second level adds its own.

    Example:

    >>> kwargs = matched_budget_kwargs(499)
    >>> kwargs["shared_bottom"], kwargs["single_task"]
    ({'bottom_units': (140,), 'tower_units': (8,)}, {'hidden_units': (71,), 'tower_units': (8,)})
    >>> model = BUILDERS["cross_stitch"](499, ["income", "never_married"], **kwargs["cross_stitch"])
    """
    _utils.check_positive_int("input_dim", input_dim)
    _utils.check_positive_int("num_tasks", num_tasks)
    tower = tuple(_utils.check_hidden_units("tower_units", tower_units))
    d, n = input_dim, num_tasks
    moe = dict(num_experts=num_experts, expert_units=expert_units, tower_units=tower)
    target = count_params_formula("mmoe", d, n, **moe)
    result = {"mmoe": dict(moe), "omoe": dict(moe)}
    b = _closest(lambda s: count_params_formula("shared_bottom", d, n, bottom_units=(s,), tower_units=tower), target)
    result["shared_bottom"] = dict(bottom_units=(b,), tower_units=tower)
    for kind in ("single_task", "l2_constrained", "cross_stitch"):
        h = _closest(lambda s: count_params_formula(kind, d, n, hidden_units=(s,), tower_units=tower), target)
        result[kind] = dict(hidden_units=(h,), tower_units=tower)
    h = _closest(
        lambda s: count_params_formula(
            "tensor_factorization", d, n, hidden_units=(s,), ranks=(min(s, d), s, n), tower_units=tower
        ),
        target,
    )
    result["tensor_factorization"] = dict(hidden_units=(h,), ranks=(min(h, d), h, n), tower_units=tower)
    # CGC and PLE: MMoE's experts, half of them shared and the rest split between the tasks.
    shared, own = split_experts(num_experts, n)
    cgc = dict(num_shared_experts=shared, num_task_experts=own,
               expert_units=expert_units, tower_units=tower)
    result["cgc"] = cgc
    result["ple"] = dict(cgc, num_levels=2)
    return result


def budget_table(input_dim: int = 499, tasks: Sequence[str] = ("income", "never_married"),
                 builders: Mapping[str, Callable] | None = None, **kwargs: Any) -> dict:
    """``{name: (trainable_params, ratio_to_mmoe)}``, counted on built models sized by :func:`matched_budget_kwargs`."""
    from keras_mmoe.models import BUILDERS

    builders = BUILDERS if builders is None else builders
    sizes = matched_budget_kwargs(input_dim, num_tasks=len(tasks), **kwargs)
    counts = {}
    for name, size in sizes.items():
        if name not in builders:
            continue
        model = builders[name](input_dim, list(tasks), **size)
        counts[name] = int(sum(math.prod(w.shape) for w in model.trainable_weights))
    reference = counts.get("mmoe")
    return {name: (c, c / reference if reference else None) for name, c in counts.items()}
