"""Shared pieces of the reproduce studies: statistics over runs, Markdown tables, JSON records."""

import json
import os
import platform
import shlex
import sys

import numpy as np


def aggregate(values):
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


def markdown_table(header, rows):
    """A Markdown table from a header list and rows of already formatted cells."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def command_line(default):
    """The command that is running, for the record (``default`` when not run as ``keras-mmoe``)."""
    if sys.argv and os.path.basename(sys.argv[0]) == "keras-mmoe":
        return "keras-mmoe " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return default


def environment():
    """Versions and machine facts stored with every result."""
    import tensorflow as tf

    from keras_mmoe import KERAS_FLAVOR

    return {
        "tensorflow": tf.__version__,
        "keras": KERAS_FLAVOR,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def write_json(path, record):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    return path


def write_text(path, text):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
