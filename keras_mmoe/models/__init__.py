"""Whole multi-task models: named inputs taken by name from any mapping, one tower per task, dict outputs by task."""

from keras_mmoe.models.builders import (
    build_cgc,
    build_mmoe,
    build_omoe,
    build_ple,
    build_shared_bottom,
    build_single_task,
    functional_model,
    make_inputs,
    build_towers,
)
from keras_mmoe.models.tasks import compile_kwargs, normalize_tasks
from keras_mmoe.models.baselines import (
    budget_table,
    build_cross_stitch,
    build_l2_constrained,
    build_tensor_factorization,
    matched_budget_kwargs,
    split_experts,
)

BUILDERS = {
    "mmoe": build_mmoe,
    "omoe": build_omoe,
    "shared_bottom": build_shared_bottom,
    "single_task": build_single_task,
    "l2_constrained": build_l2_constrained,
    "cross_stitch": build_cross_stitch,
    "tensor_factorization": build_tensor_factorization,
    "cgc": build_cgc,
    "ple": build_ple,
}

__all__ = [
    "BUILDERS",
    "build_cgc",
    "build_mmoe",
    "build_omoe",
    "build_ple",
    "build_shared_bottom",
    "build_single_task",
    "compile_kwargs",
    "functional_model",
    "make_inputs",
    "normalize_tasks",
    "build_towers",
]
__all__ += [
    "budget_table",
    "build_cross_stitch",
    "build_l2_constrained",
    "build_tensor_factorization",
    "matched_budget_kwargs",
    "split_experts",
]
