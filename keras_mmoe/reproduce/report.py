"""Shared pieces of the reproduce studies: statistics over runs, Markdown tables, JSON records."""

from __future__ import annotations

import os
import platform
from typing import Callable, Iterable

import numpy as np

from keras_mmoe.saving import write_json, write_text  # noqa: F401  (the studies' writers: atomic)

#: A study's progress callback: called with one line of text per step.
Progress = Callable[[str], None]


def silent(message: str) -> None:
    """The default progress callback: says nothing."""


def aggregate(values: Iterable[float]) -> dict:
    """``{"mean", "std", "best", "worst", "median", "n"}`` of a list of numbers (std: sample, ddof=1).

    ``best`` is the maximum (for AUC); ``worst`` the minimum.
    """
    values = np.asarray(list(values), dtype=np.float64)
    if values.size == 0:
        raise ValueError("aggregate() needs at least one value, received none")
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if values.size > 1 else 0.0,
        "best": float(values.max()),
        "worst": float(values.min()),
        "median": float(np.median(values)),
        "n": int(values.size),
    }


def markdown_table(header: list, rows: list) -> str:
    """A Markdown table from a header list and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def setup_text(record: dict) -> str:
    """The lines under a study's table: its settings, total time and, when recorded, the command."""
    text = f"Setup: {record['settings']}. Total time {record['seconds']:.0f} s."
    if record.get("command"):
        text += f"\nCommand: `{record['command']}`"
    return text


def environment() -> dict:
    """Versions and machine facts stored with every result."""
    import tensorflow as tf

    from keras_mmoe import KERAS_FLAVOR, __version__

    return {
        "keras_mmoe": __version__,
        "tensorflow": tf.__version__,
        "keras": KERAS_FLAVOR,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
