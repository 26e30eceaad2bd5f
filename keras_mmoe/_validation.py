"""Argument checks shared by every layer of the package (layers, data, serving, command line).

Pure Python, no TensorFlow: each check returns the value (normalized) or raises ``ValueError``
naming the argument and the value received, e.g. ``ValueError: `num_experts` must be a
positive integer, received: num_experts=0``. The command line wraps the same checks as
``argparse`` types (:mod:`keras_mmoe.cli.common`).
"""

import re
from typing import Any, List, Optional, Sequence, Tuple


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, received: {name}={value!r}")
    return value


def check_non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"`{name}` must be a non-negative integer, received: {name}={value!r}")
    return value


def check_units(name: str, value: Any) -> Tuple[int, ...]:
    """An int or a non-empty sequence of positive ints, returned as a tuple."""
    units = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        units = tuple(units)
    except TypeError:
        raise ValueError(
            f"`{name}` must be a positive integer or a sequence of them, received: {name}={value!r}"
        ) from None
    if not units or any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units):
        raise ValueError(
            f"`{name}` must be a positive integer or a non-empty sequence of positive integers, "
            f"received: {name}={value!r}"
        )
    return units


def check_hidden_units(name: str, value: Any) -> Tuple[int, ...]:
    """A possibly empty sequence of positive ints, returned as a tuple."""
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        value = (value,)
    try:
        units = tuple(value)
    except TypeError:
        raise ValueError(f"`{name}` must be a sequence of positive integers, received: {name}={value!r}") from None
    if any(isinstance(u, bool) or not isinstance(u, int) or u < 1 for u in units):
        raise ValueError(f"`{name}` must be a sequence of positive integers, received: {name}={value!r}")
    return units


def check_rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be a float in [0, 1), received: {name}={value!r}")
    return float(value)


def check_temperature(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"`{name}` must be a float > 0, received: {name}={value!r}")
    return float(value)


def check_seed(name: str, value: Any) -> Optional[int]:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
        raise ValueError(f"`{name}` must be None or a non-negative integer, received: {name}={value!r}")
    return value


def check_positive_float(name: str, value: Any) -> float:
    """A finite float > 0 (learning rates, scales)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ValueError(f"`{name}` must be a float > 0, received: {name}={value!r}")
    return float(value)


def check_correlation(name: str, value: Any) -> float:
    """A float in [-1, 1] (task correlations)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1.0 <= value <= 1.0:
        raise ValueError(f"`{name}` must be a float in [-1, 1], received: {name}={value!r}")
    return float(value)


_TASK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def resolve_task_names(num_tasks: Optional[int], task_names: Optional[Sequence[str]]) -> List[str]:
    """Task names from ``num_tasks`` and/or ``task_names`` (``task_0``, ``task_1``... by default)."""
    if task_names is None:
        if num_tasks is None:
            raise ValueError("Give `num_tasks` or `task_names`, received neither")
        return [f"task_{i}" for i in range(check_positive_int("num_tasks", num_tasks))]
    if isinstance(task_names, str):
        raise ValueError(f"`task_names` must be a list of strings, received a string: task_names={task_names!r}")
    task_names = list(task_names)
    if not task_names:
        raise ValueError("`task_names` must name at least one task, received: task_names=[]")
    for name in task_names:
        if not isinstance(name, str) or not _TASK_NAME.match(name):
            raise ValueError(
                "Each task name must be a string of letters, digits and underscores starting with a letter "
                f"(it names outputs, losses and serving signature keys), received: {name!r}"
            )
    duplicates = sorted({n for n in task_names if task_names.count(n) > 1})
    if duplicates:
        raise ValueError(f"`task_names` must be unique, received duplicates {duplicates} in {task_names}")
    if num_tasks is not None and num_tasks != len(task_names):
        raise ValueError(
            f"`num_tasks` ({num_tasks!r}) disagrees with `task_names` ({len(task_names)} names: {task_names})"
        )
    return task_names
