"""The task-correlation study under a converged protocol, trained as vectorized replicas.

Protocol (MMoE paper sections 3.2 and 5, with what the paper leaves open fixed here):

* data: run ``r`` (seed ``seed + r``) draws :func:`keras_mmoe.data.make_synthetic` (d = 100,
  ``samples`` rows) once per correlation and noise level, split at random (seeded) into train,
  validation and test (``split``, default 80/10/10); the three models of a run share the draw
  (paired), and the draws at different correlations share seed, inputs and directions;
* models: MMoE and OMoE with 8 experts of 16 units, towers of 8; Shared-Bottom sized to the
  same parameter count by :func:`keras_mmoe.models.matched_budget_kwargs`;
* training: Adam at every learning rate of the grid, batch 256, early stopping on the validation
  loss (``patience`` epochs) up to ``max_epochs``, best weights kept; run ``r`` starts from the
  same initial weights at every learning rate;
* reported: per model and correlation, the learning rate with the lowest mean best validation
  loss, and the test loss (sum of the two tasks' MSE) of its runs.

A unit of work is one (noise, correlation, model, learning rate): its runs train together as
replicas of one :class:`keras_mmoe.reproduce.replicas.ReplicaTrainer`, and they are written to the
study's JSON (:class:`keras_mmoe.reproduce.store.StudyStore`) when it ends, so a killed study
resumes at the first unfinished unit. (One unit per learning rate, because a unit lasts as long as
its slowest run, and the runs of one learning rate stop at similar epochs.)
"""

import math
import time

import numpy as np

from keras_mmoe.reproduce import stats
from keras_mmoe.reproduce.store import StudyStore

MODELS = ("mmoe", "omoe", "shared_bottom")
TASKS = {"y1": "regression", "y2": "regression"}

#: The protocol's settings; ``noise_stddevs`` holds both readings of the paper's N(0, 0.01):
#: variance 0.01 (std 0.1) and std 0.01.
DEFAULTS = dict(
    correlations=[0.5, 0.9, 1.0],
    models=list(MODELS),
    runs=20,
    seed=0,
    learning_rates=[1e-4, 1e-3, 1e-2],
    noise_stddevs=[0.1, 0.01],
    samples=20_000,
    split=[0.8, 0.1, 0.1],
    dim=100,
    num_experts=8,
    expert_units=16,
    tower_units=[8],
    batch_size=256,
    max_epochs=200,
    patience=10,
)


def settings_with(**overrides):
    """:data:`DEFAULTS` updated with ``overrides`` (unknown names are refused)."""
    unknown = sorted(set(overrides) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"unknown synthetic protocol settings {unknown}; known: {sorted(DEFAULTS)}")
    settings = dict(DEFAULTS, **overrides)
    bad = [m for m in settings["models"] if m not in MODELS]
    if bad:
        raise ValueError(f"unknown model(s) {bad} in `models`; choose from {list(MODELS)}")
    if len(settings["split"]) != 3 or not math.isclose(sum(settings["split"]), 1.0) or min(settings["split"]) <= 0:
        raise ValueError(f"`split` must be three positive fractions summing to 1, received {settings['split']}")
    return settings


def unit_key(noise, correlation, model, learning_rate):
    return f"noise={noise:g}/p={correlation:g}/{model}/lr={learning_rate:g}"


def units(settings):
    """Every unit of the study, in the order they run: ``(noise, correlation, model, learning rate)``."""
    return [(n, c, m, lr) for n in settings["noise_stddevs"] for c in settings["correlations"]
            for m in settings["models"] for lr in settings["learning_rates"]]


def draw(settings, correlation, noise, seed):
    """One run's data: ``(train, validation, test)`` arrays ``(x, y)`` and the label correlation."""
    from keras_mmoe.data import make_synthetic
    from keras_mmoe.reproduce.replicas import stack_labels

    data = make_synthetic(settings["samples"], settings["dim"], correlation, noise_stddev=noise, seed=seed)
    order = np.random.default_rng(seed).permutation(settings["samples"])
    train_end = int(round(settings["split"][0] * settings["samples"]))
    val_end = train_end + int(round(settings["split"][1] * settings["samples"]))
    y = stack_labels(data.y, TASKS)
    parts = [order[:train_end], order[train_end:val_end], order[val_end:]]
    return [(data.x[p], y[p]) for p in parts], float(data.label_correlation)


def build_model(settings, name, seed):
    from keras_mmoe._keras import keras
    from keras_mmoe.models import BUILDERS, matched_budget_kwargs

    keras.utils.set_random_seed(seed)
    sizes = matched_budget_kwargs(settings["dim"], len(TASKS), num_experts=settings["num_experts"],
                                  expert_units=settings["expert_units"], tower_units=tuple(settings["tower_units"]))
    extra = {} if name == "shared_bottom" else {"seed": seed}
    return BUILDERS[name](settings["dim"], TASKS, name=name, **sizes[name], **extra)


def _rounded(curve):
    return [float(f"{v:.6g}") for v in curve]


def train_unit(settings, noise, correlation, model, learning_rate, progress=None):
    """Trains one unit's runs as replicas; returns one record per run."""
    from keras_mmoe._keras import keras
    from keras_mmoe.reproduce import replicas as R

    start = time.perf_counter()
    keras.backend.clear_session()
    seeds = [settings["seed"] + r for r in range(settings["runs"])]
    splits, label_corr = zip(*(draw(settings, correlation, noise, s) for s in seeds))
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (
        (np.stack([s[i][0] for s in splits]), np.stack([s[i][1] for s in splits])) for i in range(3))
    data = R.ReplicaData(x_tr, y_tr, x_va, y_va)
    # Run r starts from the same initial weights (seed r) at every learning rate.
    models = [build_model(settings, model, s) for s in seeds]
    params = int(models[0].count_params())
    stack = R.ReplicaStack(models, TASKS)
    del models
    trainer = R.ReplicaTrainer(stack, [learning_rate] * len(seeds), settings["batch_size"])
    draws = list(range(len(seeds)))
    key = unit_key(noise, correlation, model, learning_rate)

    def report(epoch, info):
        if progress and (epoch == 0 or (epoch + 1) % 10 == 0):
            progress(f"  {key}: epoch {epoch + 1}: {info['active']} of {len(seeds)} runs still training")

    records = trainer.fit(data, draws, seeds, settings["max_epochs"], settings["patience"], progress=report)
    test = trainer.evaluate(x_te, y_te, draws)
    seconds = round(time.perf_counter() - start, 1)
    steps_per_epoch = math.ceil(x_tr.shape[1] / settings["batch_size"])
    out = []
    for r, rec in enumerate(records):
        out.append({
            "model": model, "correlation": correlation, "noise_stddev": noise, "run": r, "seed": seeds[r],
            "learning_rate": learning_rate, "params": params, "label_correlation": label_corr[r],
            "test_loss": float(test[r].sum()), "test_task_loss": [float(v) for v in test[r]],
            "best_val_loss": rec["best_val_loss"], "best_epoch": rec["best_epoch"], "epochs": rec["epochs"],
            "stopped": rec["stopped"], "steps_per_epoch": steps_per_epoch,
            "val_loss": _rounded(rec["val_loss"]), "train_loss": _rounded(rec["train_loss"]),
            "unit_seconds": seconds,
        })
    return out


def run(settings, path, progress=None, session=None):
    """Runs (or continues) the study whose JSON file is ``path``; returns the file's record."""
    store = StudyStore(path, settings, session=session)
    todo = store.pending([unit_key(*u) for u in units(settings)])
    for i, key in enumerate(todo):
        unit = next(u for u in units(settings) if unit_key(*u) == key)
        if progress:
            progress(f"[{i + 1}/{len(todo)}] {key}: {settings['runs']} runs")
        runs = train_unit(settings, *unit, progress=progress)
        store.add(key, runs)
        if progress:
            progress(f"  done in {runs[0]['unit_seconds']:.0f} s: best validation loss mean "
                     f"{np.mean([r['best_val_loss'] for r in runs]):.4f}, test loss mean "
                     f"{np.mean([r['test_loss'] for r in runs]):.4f}, epochs mean {np.mean([r['epochs'] for r in runs]):.0f}")
    store.update(summary=summarize(store.runs))
    return store.record


def choose_learning_rate(runs):
    """The learning rate with the lowest mean best validation loss (non-finite runs count as inf)."""
    by_lr = {}
    for r in runs:
        value = r["best_val_loss"] if np.isfinite(r["best_val_loss"]) else np.inf
        by_lr.setdefault(r["learning_rate"], []).append(value)
    return min(by_lr, key=lambda lr: (np.mean(by_lr[lr]), lr))


def summarize(runs, n_resamples=10_000, seed=0):
    """Per noise and correlation: each model's chosen learning rate and test-loss statistics, the
    paired differences MMoE - OMoE and MMoE - Shared-Bottom, and each model's increase from
    correlation 1.0 to 0.5 (paired by run seed), with bootstrap 95% intervals."""
    summary = {}
    boot = dict(n_resamples=n_resamples, seed=seed)
    for noise in sorted({r["noise_stddev"] for r in runs}, reverse=True):
        chosen_tests = {}
        entry = {}
        for corr in sorted({r["correlation"] for r in runs if r["noise_stddev"] == noise}, reverse=True):
            cell = {}
            for model in [m for m in MODELS if any(r["model"] == m for r in runs)]:
                mine = [r for r in runs if r["noise_stddev"] == noise and r["correlation"] == corr and r["model"] == model]
                if not mine:
                    continue
                lr = choose_learning_rate(mine)
                picked = [r for r in mine if r["learning_rate"] == lr]
                chosen_tests[(corr, model)] = {r["seed"]: r["test_loss"] for r in picked}
                cell[model] = {
                    "learning_rate": lr,
                    "params": picked[0]["params"],
                    "test_loss": stats.describe(r["test_loss"] for r in picked),
                    "epochs": stats.describe(r["epochs"] for r in picked),
                    "stopped": sum(r["stopped"] for r in picked),
                    "validation_by_learning_rate": {
                        f"{rate:g}": stats.describe(r["best_val_loss"] for r in mine if r["learning_rate"] == rate)
                        for rate in sorted({r["learning_rate"] for r in mine})
                    },
                }
            paired = {}
            for other in ("omoe", "shared_bottom"):
                if "mmoe" in cell and other in cell:
                    paired[f"mmoe-{other}"] = stats.paired_difference(
                        chosen_tests[(corr, "mmoe")], chosen_tests[(corr, other)], **boot)
            entry[f"p={corr:g}"] = {"models": cell, "paired": paired}
        increases = {}
        for model in MODELS:
            if (0.5, model) in chosen_tests and (1.0, model) in chosen_tests:
                increases[model] = stats.paired_difference(chosen_tests[(0.5, model)], chosen_tests[(1.0, model)], **boot)
        for other in ("omoe", "shared_bottom"):
            if {"mmoe", other} <= set(increases):
                def delta(model):
                    return {s: chosen_tests[(0.5, model)][s] - chosen_tests[(1.0, model)].get(s, np.nan)
                            for s in chosen_tests[(0.5, model)]}
                increases[f"mmoe-{other}"] = stats.paired_difference(delta("mmoe"), delta(other), **boot)
        entry["increase_1_to_0.5"] = increases
        summary[f"noise_stddev={noise:g}"] = entry
    return summary
