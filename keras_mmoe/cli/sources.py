"""Where ``train`` and ``evaluate`` get their data: one small source per data set.

A source is an entry of :data:`SOURCES` with

* ``settings(args, recorded)``: the data settings of a run, from the record of the model being
  scored (``recorded``, may be None) with the flags the user gave on top;
* ``held_out(settings, args)``: the held-out rows those settings describe, as :class:`HeldOut`;

and, for sources ``train`` can read, ``training_data(settings)`` returning :class:`TrainingData`.
Train writes the settings into the model's training record; evaluate reads them back, so it
scores exactly the rows the model held out. A new source (a user's files described by a spec)
is a new entry, with its flags added by the commands.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Callable

from keras_mmoe.cli.common import CLIError, say

#: Share of the synthetic rows used for training; the rest is the held-out split.
TRAIN_FRACTION = 0.8


@dataclass
class HeldOut:
    """Held-out rows: model inputs, labels, each task's kind and training labels (for references)."""

    features: dict
    labels: dict
    kinds: dict
    train_labels: dict
    description: str


@dataclass
class TrainingData:
    """What ``train`` fits on: datasets, input shape, task kinds and the settings to record."""

    input_dim: int
    tasks: dict
    train: Callable[[int, int], Any]  # (batch_size, seed) -> tf.data.Dataset of (features, labels)
    held_out: HeldOut
    settings: dict
    notes: list = field(default_factory=list)


# --- synthetic (the MMoE paper's section 3.2 data) -------------------------------------------

SYNTHETIC_FLAGS = ("samples", "dim", "correlation", "seed")


def synthetic_split(settings: dict):
    """``(train, held_out)`` :class:`~keras_mmoe.data.SyntheticData` halves of the draw ``settings`` describes."""
    from keras_mmoe.data import make_synthetic

    data = make_synthetic(
        settings["samples"], dim=settings["dim"], correlation=settings["correlation"],
        scale=settings.get("scale", 1.0), num_sine_terms=settings.get("num_sine_terms", 10),
        noise_stddev=settings.get("noise_stddev", 0.1), task_names=settings.get("task_names", ("y1", "y2")),
        seed=settings["seed"],
    )
    train, held_out = data.split(settings.get("train_fraction", TRAIN_FRACTION), seed=settings.get("split_seed", settings["seed"]))
    return data, train, held_out


def synthetic_settings(args: argparse.Namespace, recorded: dict | None) -> dict:
    settings = dict(recorded) if recorded else {"source": "synthetic"}
    missing = [f"--{flag}" for flag in SYNTHETIC_FLAGS if getattr(args, flag, None) is None and flag not in settings]
    if missing:
        raise CLIError(
            "no training record gives the synthetic data settings; give --settings FILE (a training record) "
            f"or {', '.join(missing)}"
        )
    _override(settings, args, SYNTHETIC_FLAGS, recorded)
    if recorded and getattr(args, "seed", None) is not None:
        settings["split_seed"] = args.seed
    return settings


def synthetic_training_data(settings: dict) -> TrainingData:
    data, train, held_out = synthetic_split(settings)
    settings = dict(settings, source="synthetic", scale=data.params["scale"],
                    num_sine_terms=data.params["num_sine_terms"], noise_stddev=data.params["noise_stddev"],
                    task_names=list(data.task_names), train_fraction=settings.get("train_fraction", TRAIN_FRACTION),
                    split_seed=settings.get("split_seed", settings["seed"]))
    tasks = {t: "regression" for t in data.task_names}
    notes = [
        f"{settings['samples']} synthetic rows (d={settings['dim']}, p={settings['correlation']:g}): "
        f"{len(train.x)} to train on, {len(held_out.x)} held out",
        f"label correlation measured: {data.label_correlation:.2f} (Pearson r of the two labels; "
        f"p={settings['correlation']:g} is the cosine of the tasks' weight vectors, which the sine terms blur)",
    ]
    return TrainingData(
        input_dim=settings["dim"],
        tasks=tasks,
        train=lambda batch_size, seed: train.dataset(batch_size, seed=seed),
        held_out=_synthetic_held_out(train, held_out, tasks, settings),
        settings=settings,
        notes=notes,
    )


def _synthetic_held_out(train, held_out, tasks, settings) -> HeldOut:
    return HeldOut(
        features=held_out.features(), labels=held_out.y, kinds=tasks, train_labels=train.y,
        description=(f"{len(held_out.x)} held-out synthetic rows (d={settings['dim']}, "
                     f"p={settings['correlation']:g}, seed {settings['seed']})"),
    )


def synthetic_held_out(settings: dict, args: argparse.Namespace) -> HeldOut:
    _, train, held_out = synthetic_split(settings)
    return _synthetic_held_out(train, held_out, {t: "regression" for t in held_out.task_names}, settings)


# --- census-income (the MMoE paper's section 6.3 benchmark) ----------------------------------

CENSUS_FLAGS = ("group", "data_seed", "max_rows")
CENSUS_DEFAULTS = {"group": 1, "data_seed": 0, "max_rows": None}


def census_settings(args: argparse.Namespace, recorded: dict | None) -> dict:
    settings = dict(CENSUS_DEFAULTS, source="census")
    settings.update(recorded or {})
    _override(settings, args, CENSUS_FLAGS, recorded)
    return settings


def census_held_out(settings: dict, args: argparse.Namespace) -> HeldOut:
    from keras_mmoe.data import load_census_income

    data = load_census_income(getattr(args, "data_dir", None), group=settings["group"], seed=settings["data_seed"],
                              max_rows=settings["max_rows"])
    return HeldOut(
        features=data.features["test"], labels=data.labels["test"], kinds={t: "binary" for t in data.task_names},
        train_labels=data.labels["train"],
        description=(f"{data.num_rows['test']} census-income test rows (group {settings['group']}, "
                     f"data seed {settings['data_seed']}" + (f", first {settings['max_rows']} rows" if settings["max_rows"] else "")
                     + ")"),
    )


def _override(settings: dict, args: argparse.Namespace, flags, recorded: dict | None) -> None:
    """Flags the user gave replace the settings; replacing a recorded one is said aloud."""
    for flag in flags:
        value = getattr(args, flag, None)
        if value is None:
            continue
        if recorded and flag in recorded and recorded[flag] != value:
            say(f"--{flag.replace('_', '-')} {value} replaces the recorded {recorded[flag]}: these are not the rows "
                "the model held out")
        settings[flag] = value


@dataclass(frozen=True)
class Source:
    settings: Callable[[argparse.Namespace, "dict | None"], dict]
    held_out: Callable[[dict, argparse.Namespace], HeldOut]
    training_data: Callable[[dict], TrainingData] | None = None


#: Data sources by the name ``--data`` and the training records use.
SOURCES = {
    "synthetic": Source(synthetic_settings, synthetic_held_out, synthetic_training_data),
    "census": Source(census_settings, census_held_out),
}
