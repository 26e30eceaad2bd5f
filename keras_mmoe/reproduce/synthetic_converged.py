"""The task-correlation study under a converged protocol: ``keras-mmoe reproduce synthetic --protocol converged``.

Protocol (MMoE paper sections 3.2 and 5, with what the paper leaves open fixed here):

* data: run ``r`` (seed ``seed + r``) draws :func:`keras_mmoe.data.make_synthetic` (d = 100,
  ``samples`` rows) per correlation and noise level, split at random (seeded) into train,
  validation and test (80/10/10); the models of a run share the draw (paired), and the draws of
  one seed at different correlations share their inputs and directions;
* noise: the paper's N(0, 0.01) read both ways, standard deviation 0.1 (variance 0.01) and 0.01;
* models: MMoE and OMoE with 8 experts of 16 units, towers of 8; Shared-Bottom sized to the same
  parameter count by :func:`keras_mmoe.models.matched_budget_kwargs`;
* training: Adam at every learning rate of the grid (default the paper's {1e-4, 1e-3, 1e-2}),
  batch 256, early stopping on the validation loss (``patience`` epochs, at most ``max_epochs``),
  best weights kept; run ``r`` starts from the same initial weights at every learning rate;
* reported, per noise level, model and correlation: the learning rate with the lowest mean best
  validation loss, and the test loss (sum of the two tasks' MSE) of its runs: mean, std, median,
  quartiles; the paired differences MMoE - OMoE and MMoE - Shared-Bottom and each model's
  increase from correlation 1.0 to 0.5 (paired by run), with bootstrap 95% intervals
  (:mod:`keras_mmoe.reproduce.stats`).

Runs train as vectorized replicas (:mod:`keras_mmoe.reproduce.replicas`), one unit of work per
(noise, correlation, model, learning rate); each unit's runs are added to the study's JSON file
when it ends (:class:`keras_mmoe.reproduce.store.StudyStore`), so a study stopped half way
continues where it stopped when started again with the same settings.

Example::

    from keras_mmoe.reproduce import synthetic_converged as sc
    record = sc.study("results/synthetic_converged.json", runs=4, progress=print)
    sc.write_outputs(record, "results")
"""

from __future__ import annotations

import math
import os
import time
from typing import Sequence

import numpy as np

from keras_mmoe import _validation
from keras_mmoe.reproduce import report, stats
from keras_mmoe.reproduce.store import StudyStore

MODELS = ("mmoe", "omoe", "shared_bottom")
NAMES = {"mmoe": "MMoE", "omoe": "OMoE", "shared_bottom": "Shared-Bottom"}
TASKS = {"y1": "regression", "y2": "regression"}
DIM, NUM_EXPERTS, EXPERT_UNITS, TOWER_UNITS, BATCH_SIZE, SPLIT = 100, 8, 16, (8,), 256, (0.8, 0.1, 0.1)
#: Settings of a quick smoke run (``--quick``).
QUICK = {"runs": 2, "samples": 1000, "max_epochs": 2, "patience": 1, "learning_rates": [1e-3, 1e-2],
         "noise_stddevs": [0.1]}
#: The file name (without extension) of the study's outputs.
NAME = "synthetic_converged"


def unit_key(noise: float, correlation: float, model: str, learning_rate: float) -> str:
    return f"noise={noise:g}/p={correlation:g}/{model}/lr={learning_rate:g}"


def units(settings: dict) -> list:
    """Every unit of the study, in the order they run: ``(noise, correlation, model, learning rate)``."""
    return [(n, c, m, lr) for n in settings["noise_stddevs"] for c in settings["correlations"]
            for m in settings["models"] for lr in settings["learning_rates"]]


def draw(settings: dict, correlation: float, noise: float, seed: int):
    """One run's data: ``[(x, y) train, validation, test]`` and the labels' correlation."""
    from keras_mmoe.data import make_synthetic
    from keras_mmoe.reproduce.replicas import stack_labels

    data = make_synthetic(settings["samples"], settings["dim"], correlation, noise_stddev=noise, seed=seed)
    order = np.random.default_rng(seed).permutation(settings["samples"])
    train_end = int(round(settings["split"][0] * settings["samples"]))
    val_end = train_end + int(round(settings["split"][1] * settings["samples"]))
    y = stack_labels(data.y, TASKS)
    parts = [order[:train_end], order[train_end:val_end], order[val_end:]]
    return [(data.x[p], y[p]) for p in parts], float(data.label_correlation)


def build_model(settings: dict, name: str, seed: int):
    """The Keras model of run ``seed`` (its initial weights are the run's)."""
    from keras_mmoe._keras import keras
    from keras_mmoe.models import BUILDERS, matched_budget_kwargs

    keras.utils.set_random_seed(seed)
    sizes = matched_budget_kwargs(settings["dim"], len(TASKS), num_experts=settings["num_experts"],
                                  expert_units=settings["expert_units"], tower_units=tuple(settings["tower_units"]))
    extra = {} if name == "shared_bottom" else {"seed": seed}
    return BUILDERS[name](settings["dim"], TASKS, name=name, **sizes[name], **extra)


def _rounded(curve):
    return [float(f"{v:.6g}") for v in curve]


def train_unit(settings: dict, noise: float, correlation: float, model: str, learning_rate: float,
               progress: report.Progress | None = None) -> list:
    """Trains one unit's runs as replicas; returns one record per run."""
    from keras_mmoe._keras import keras
    from keras_mmoe.reproduce import replicas as R

    start = time.perf_counter()
    keras.backend.clear_session()
    seeds = [settings["seed"] + r for r in range(settings["runs"])]
    splits, label_corr = zip(*(draw(settings, correlation, noise, s) for s in seeds))
    (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = (
        (np.stack([s[i][0] for s in splits]), np.stack([s[i][1] for s in splits])) for i in range(3))
    models = [build_model(settings, model, s) for s in seeds]
    params = int(models[0].count_params())
    stack = R.ReplicaStack(models, TASKS)
    del models
    trainer = R.ReplicaTrainer(stack, [learning_rate] * len(seeds), settings["batch_size"])
    key = unit_key(noise, correlation, model, learning_rate)

    def report_epoch(epoch, info):
        if progress and (epoch == 0 or (epoch + 1) % 10 == 0):
            progress(f"  {key}: epoch {epoch + 1}: {info['active']} of {len(seeds)} runs still training")

    records = trainer.fit(R.ReplicaData(x_tr, y_tr, x_va, y_va), range(len(seeds)), seeds, settings["max_epochs"],
                          settings["patience"], progress=report_epoch)
    test = trainer.evaluate(x_te, y_te, range(len(seeds)))
    seconds = round(time.perf_counter() - start, 1)
    steps_per_epoch = math.ceil(x_tr.shape[1] / settings["batch_size"])
    return [{
        "model": model, "correlation": correlation, "noise_stddev": noise, "learning_rate": learning_rate,
        "run": r, "seed": seeds[r], "params": params, "label_correlation": label_corr[r],
        "test_loss": float(test[r].sum()), "test_task_loss": [float(v) for v in test[r]],
        "best_val_loss": rec["best_val_loss"], "best_epoch": rec["best_epoch"], "epochs": rec["epochs"],
        "stopped": rec["stopped"], "steps_per_epoch": steps_per_epoch,
        "val_loss": _rounded(rec["val_loss"]), "train_loss": _rounded(rec["train_loss"]),
        "unit_seconds": seconds,
    } for r, rec in enumerate(records)]


def check_settings(settings: dict) -> dict:
    """The study's settings, checked (ValueError naming the setting) and normalized to JSON types."""
    models = list(settings["models"])
    if not models or any(m not in MODELS for m in models) or len(set(models)) != len(models):
        raise ValueError(f"`models` must name some of {list(MODELS)} once each (the models the converged protocol "
                         f"trains as replicas), received: models={models!r}")
    for name in ("correlations", "learning_rates", "noise_stddevs"):
        if not len(settings[name]):
            raise ValueError(f"`{name}` must hold at least one value, received none")
    correlations = [_validation.check_correlation("correlations", c) for c in settings["correlations"]]
    rates = [_validation.check_positive_float("learning_rates", lr) for lr in settings["learning_rates"]]
    noises = [float(n) for n in settings["noise_stddevs"]]
    if any(not (n >= 0 and math.isfinite(n)) for n in noises):
        raise ValueError(f"`noise_stddevs` must be floats >= 0, received: noise_stddevs={noises!r}")
    for name in ("runs", "samples", "max_epochs", "patience", "batch_size"):
        _validation.check_positive_int(name, settings[name])
    _validation.check_seed("seed", settings["seed"])
    split = [float(f) for f in settings["split"]]
    if len(split) != 3 or min(split) <= 0 or not math.isclose(sum(split), 1.0):
        raise ValueError(f"`split` must be three positive fractions summing to 1, received: split={split!r}")
    if int(round(split[2] * settings["samples"])) < 2 or int(round(split[1] * settings["samples"])) < 2:
        raise ValueError(f"`samples` is too small for validation and test rows, received: samples={settings['samples']!r}")
    return dict(settings, models=models, correlations=correlations, learning_rates=rates, noise_stddevs=noises,
                split=split, tower_units=list(settings["tower_units"]))


def study(
    path: str | os.PathLike,
    *,
    models: Sequence[str] = MODELS,
    correlations: Sequence[float] = (0.5, 0.9, 1.0),
    runs: int = 20,
    learning_rates: Sequence[float] = (1e-4, 1e-3, 1e-2),
    noise_stddevs: Sequence[float] = (0.1, 0.01),
    samples: int = 20_000,
    max_epochs: int = 400,
    patience: int = 10,
    seed: int = 0,
    command: str | None = None,
    progress: report.Progress | None = None,
) -> dict:
    """Runs (or continues) the converged study whose JSON file is ``path``; returns its record
    (settings, every run, summary, the sessions that contributed). Raises ValueError naming a bad
    argument, or a file written with other settings, before any work."""
    settings = check_settings(dict(
        models=models, correlations=correlations, runs=runs, learning_rates=learning_rates,
        noise_stddevs=noise_stddevs, samples=samples, max_epochs=max_epochs, patience=patience, seed=seed,
        dim=DIM, num_experts=NUM_EXPERTS, expert_units=EXPERT_UNITS, tower_units=TOWER_UNITS,
        batch_size=BATCH_SIZE, split=SPLIT,
    ))
    progress = progress or report.silent
    start = time.perf_counter()
    store = StudyStore(path, settings, session={"command": command, "environment": report.environment()})
    todo = store.pending([unit_key(*u) for u in units(settings)])
    done = len(units(settings)) - len(todo)
    progress(f"converged synthetic study: {len(units(settings))} units of {runs} runs"
             + (f", {done} done before (continuing {os.fspath(path)})" if done else ""))
    by_key = {unit_key(*u): u for u in units(settings)}
    for i, key in enumerate(todo):
        progress(f"[{i + 1}/{len(todo)}] {key}: {runs} runs")
        runs_done = train_unit(settings, *by_key[key], progress=progress)
        store.add(key, runs_done)
        progress(f"  done in {runs_done[0]['unit_seconds']:.0f} s: best validation loss mean "
                 f"{np.mean([r['best_val_loss'] for r in runs_done]):.4f}, test loss mean "
                 f"{np.mean([r['test_loss'] for r in runs_done]):.4f}, epochs mean "
                 f"{np.mean([r['epochs'] for r in runs_done]):.0f}")
    store.update(summary=summarize(store.runs))
    return dict(store.record, seconds=round(time.perf_counter() - start, 1), path=os.fspath(path))


def choose_learning_rate(runs: list) -> float:
    """The learning rate with the lowest mean best validation loss (a non-finite run counts as inf)."""
    by_lr = {}
    for r in runs:
        value = r["best_val_loss"] if np.isfinite(r["best_val_loss"]) else np.inf
        by_lr.setdefault(r["learning_rate"], []).append(value)
    return min(by_lr, key=lambda lr: (np.mean(by_lr[lr]), lr))


def summarize(runs: list, n_resamples: int = 10_000, seed: int = 0) -> dict:
    """Per noise level and correlation: each model's chosen learning rate and test-loss statistics,
    the paired differences MMoE - OMoE and MMoE - Shared-Bottom, and each model's increase from
    correlation 1.0 to 0.5 (paired by run seed), with bootstrap 95% intervals."""
    summary = {}
    boot = dict(n_resamples=n_resamples, seed=seed)
    for noise in sorted({r["noise_stddev"] for r in runs}, reverse=True):
        chosen_tests, entry = {}, {}
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


# --- tables and figures ------------------------------------------------------------------------


def _interval(d: dict) -> str:
    return f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]"


def to_markdown(record: dict) -> str:
    """The study's tables: per noise level, test loss by model and correlation, the paired
    comparisons, and the learning-rate choice."""
    lines = ["Synthetic task-correlation study, converged protocol: test loss (sum of the two tasks' MSE) "
             "at each model's chosen learning rate"]
    total, done = len(units(record["settings"])), len(record.get("units_done", []))
    if done < total:
        lines.append(f"\n**In progress: {done} of {total} units of work done** (a unit: one noise level, correlation, "
                     "model and learning rate, all runs). A cell is final once its model has every learning rate; "
                     "the same command continues the study.")
    for noise_key, entry in record["summary"].items():
        noise = float(noise_key.split("=")[1])
        lines.append(f"\n### Label noise: standard deviation {noise:g} (variance {noise ** 2:g})\n")
        corrs = [k for k in entry if k.startswith("p=")]
        models = list(dict.fromkeys(m for c in corrs for m in entry[c]["models"]))
        header = ["model", "params"] + [f"p = {c[2:]}: mean ± std, median [q1, q3] (n), learning rate" for c in corrs]
        header.append("increase 1.0 → 0.5 [95% CI]")
        rows = []
        for model in models:
            params = next(entry[c]["models"][model]["params"] for c in corrs if model in entry[c]["models"])
            cells = [NAMES[model], params]
            for c in corrs:
                m = entry[c]["models"].get(model)
                if m is None:
                    cells.append("-")
                    continue
                t = m["test_loss"]
                bad = f", {t['non_finite']} diverged" if t["non_finite"] else ""
                cells.append(f"{t['mean']:.4f} ± {t['std']:.4f}, {t['median']:.4f} [{t['q1']:.4f}, {t['q3']:.4f}] "
                             f"(n={t['n']}{bad}), lr {m['learning_rate']:g}")
            inc = entry["increase_1_to_0.5"].get(model)
            cells.append(_interval(inc) if inc else "-")
            rows.append(cells)
        lines.append(report.markdown_table(header, rows))
        pairs = [p for p in ("mmoe-omoe", "mmoe-shared_bottom") if any(p in entry[c]["paired"] for c in corrs)]
        if pairs:
            lines.append("Paired differences of the test loss (run r of both models on the same draw), mean "
                         "[bootstrap BCa 95% CI], and the runs where MMoE is lower:\n")
            header = ["comparison"] + [f"p = {c[2:]}" for c in corrs] + ["difference of the increases 1.0 → 0.5"]
            rows = []
            for pair in pairs:
                cells = [f"MMoE − {NAMES[pair.split('-')[1]]}"]
                for c in corrs:
                    d = entry[c]["paired"].get(pair)
                    cells.append(f"{_interval(d)}, MMoE lower in {round(d['first_lower'] * d['n'])}/{d['n']}" if d else "-")
                inc = entry["increase_1_to_0.5"].get(pair)
                cells.append(_interval(inc) if inc else "-")
                rows.append(cells)
            lines.append(report.markdown_table(header, rows))
        lines.append("Learning rate choice: mean best validation loss per rate (the lowest is chosen); "
                     "epochs trained at the chosen rate (median), runs stopped early:\n")
        rates = sorted({lr for c in corrs for m in entry[c]["models"].values() for lr in m["validation_by_learning_rate"]},
                       key=float)
        header = ["model", "p"] + [f"lr {lr}" for lr in rates] + ["chosen", "epochs (median)", "stopped early"]
        rows = []
        for model in models:
            for c in corrs:
                m = entry[c]["models"].get(model)
                if m is None:
                    continue
                by = m["validation_by_learning_rate"]
                rows.append([NAMES[model], c[2:]] + [f"{by[lr]['mean']:.4f}" if lr in by else "-" for lr in rates]
                            + [f"{m['learning_rate']:g}", f"{m['epochs']['median']:.0f}",
                               f"{m['stopped']}/{m['test_loss']['n'] + m['test_loss']['non_finite']}"])
        lines.append(report.markdown_table(header, rows))
    lines.append(f"Setup: {record['settings']}. Sessions: {len(record.get('sessions', []))}; "
                 f"this one {record.get('seconds', 0):.0f} s.")
    commands = [s.get("command") for s in record.get("sessions", []) if s.get("command")]
    if commands:
        lines.append(f"Command: `{commands[-1]}`")
    return "\n".join(lines) + "\n"


def _chosen_runs(record: dict, noise: float) -> list:
    runs = []
    for entry_key, entry in record["summary"].items():
        if float(entry_key.split("=")[1]) != noise:
            continue
        for c, cell in entry.items():
            if not c.startswith("p="):
                continue
            for model, m in cell["models"].items():
                runs += [r for r in record["runs"] if r["noise_stddev"] == noise and r["model"] == model
                         and f"p={r['correlation']:g}" == c and r["learning_rate"] == m["learning_rate"]]
    return runs


def plot_loss_curves(record: dict, noise: float):
    """Figure 4: mean validation loss versus training steps at each model's chosen learning rate, one
    panel per correlation; a run that stopped early counts with its best loss (its kept weights)."""
    from matplotlib.figure import Figure

    runs = _chosen_runs(record, noise)
    corrs = sorted({r["correlation"] for r in runs}, reverse=True)
    fig = Figure(figsize=(4.3 * len(corrs), 3.6))
    for i, corr in enumerate(corrs):
        ax = fig.add_subplot(1, len(corrs), i + 1, sharey=fig.axes[0] if fig.axes else None)
        for model in [m for m in MODELS if any(r["model"] == m for r in runs)]:
            mine = [r for r in runs if r["model"] == model and r["correlation"] == corr]
            if not mine:
                continue  # a study in progress: this cell has not started
            length = max(len(r["val_loss"]) for r in mine)
            curves = np.array([np.minimum.accumulate(r["val_loss"] + [r["best_val_loss"]] * (length - len(r["val_loss"])))
                               for r in mine])
            steps = mine[0]["steps_per_epoch"] * np.arange(1, length + 1)
            ax.plot(steps, curves.mean(axis=0), label=f"{NAMES[model]} (lr {mine[0]['learning_rate']:g}, n={len(mine)})")
        ax.set_title(f"correlation {corr:g}")
        ax.set_xlabel("training steps")
        ax.set_yscale("log")
        if i == 0:
            ax.set_ylabel("best validation loss so far (mean over runs)")
            ax.legend(fontsize=8)
    fig.suptitle(f"label noise std {noise:g}", fontsize=10)
    fig.tight_layout()
    return fig


def plot_test_loss(record: dict, noise: float):
    """Figure 5: the test loss of every run at each model's chosen learning rate, per correlation."""
    from matplotlib.figure import Figure

    runs = _chosen_runs(record, noise)
    corrs = sorted({r["correlation"] for r in runs}, reverse=True)
    names = [m for m in MODELS if any(r["model"] == m for r in runs)]
    fig = Figure(figsize=(4.3 * len(corrs), 3.6))
    for i, corr in enumerate(corrs):
        ax = fig.add_subplot(1, len(corrs), i + 1, sharey=fig.axes[0] if fig.axes else None)
        values = [[r["test_loss"] for r in runs if r["model"] == n and r["correlation"] == corr
                   and np.isfinite(r["test_loss"])] for n in names]
        ax.boxplot(values, showmeans=True)
        for j, v in enumerate(values):
            ax.plot(np.full(len(v), j + 1) + np.linspace(-0.15, 0.15, len(v)), v, ".", alpha=0.5, color="grey")
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels([NAMES[n] for n in names])
        ax.set_title(f"correlation {corr:g}")
        ax.set_yscale("log")
        if i == 0:
            ax.set_ylabel("test loss per run")
    fig.suptitle(f"label noise std {noise:g}", fontsize=10)
    fig.tight_layout()
    return fig


def write_outputs(record: dict, out_dir: str) -> dict:
    """Writes ``synthetic_converged.md`` and, per noise level, the two figures into ``out_dir``; the
    JSON is the study's own file (``record["path"]``). Returns the paths.

    A study in progress (its JSON file as written so far, without a summary) gets the tables of
    its finished units, marked as in progress, and the figures of the noise levels it has reached.
    """
    if "summary" not in record:
        record = dict(record, summary=summarize(record["runs"]))
    base = os.path.join(out_dir, NAME)
    paths = {"markdown": report.write_text(base + ".md", to_markdown(record))}
    if record.get("path"):
        paths["json"] = record["path"]
    for noise in record["settings"]["noise_stddevs"]:
        if not _chosen_runs(record, noise):
            continue  # a study in progress: no run at this noise level yet
        for kind, plot in (("loss_curves", plot_loss_curves), ("test_loss", plot_test_loss)):
            path = f"{base}_noise{noise:g}_{kind}.png"
            plot(record, noise).savefig(path, dpi=110)
            paths[f"{kind}_noise{noise:g}"] = path
    return paths
