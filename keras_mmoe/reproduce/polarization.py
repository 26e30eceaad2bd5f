"""Gate polarization and expert dropout: a measured study (``keras-mmoe reproduce polarization``).

The YouTube ranking paper (Zhao et al., RecSys 2019) reports that softmax gates of MMoE
*polarize* in about 20% of its runs (a gate puts ~1 on one expert and ~0 on the rest) and fixes
it with expert dropout on the gate's output: in training, each expert's gate weight is zeroed
with probability 10% and the rest re-normalized (``MMoELayer(expert_dropout_rate=0.1)``).
The paper gives no numbers for the fix. This study measures them on the paper's synthetic data.

For each setting (learning rate, number of experts) and each arm (``expert_dropout_rate`` 0 and
0.1, more with ``--rates``) it trains MMoE from the same seeds (same data, same initial weights)
and records, on the held-out split, per task:

* ``max_weight_fraction``: share of examples whose largest gate weight exceeds 0.9;
* ``polarized``: the verdict of :func:`keras_mmoe.diagnostics.gate_statistics` (more than half
  of the examples put more than 0.9 on a single expert);
* ``effective_experts`` (exp of the entropy of the mean gate weights) and the per-example
  ``effective_experts_per_example``; ``unused_experts`` (mean weight below 1 / (10 E));
* the task's test MSE (what the fix costs or buys).

A run counts as polarized when any task's gate is. :func:`study` runs it (settings in, a record
out, progress through a callback); :func:`write_outputs` writes ``polarization.md`` and
``polarization.json`` (every run and the summary), ``polarization_rates.png`` (share of polarized
runs, per-example effective experts and test loss per setting and arm) and
``polarization_max_weight.png`` (distribution of the per-example largest gate weight, pooled over
seeds and tasks, per setting and arm).

Example::

    keras-mmoe reproduce polarization --seeds 8 --out-dir results

    from keras_mmoe.reproduce import polarization
    record = polarization.study(settings=["0.05:8"], seeds=4, progress=print)
    polarization.write_outputs(record, "results")
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from keras_mmoe import _validation
from keras_mmoe.reproduce import report

#: LEARNING_RATE:NUM_EXPERTS[:SHARED_BOTTOM_UNITS] settings of the full study.
DEFAULT_SETTINGS = ("0.01:8", "0.05:8", "0.05:16", "0.1:8", "0.05:8:64")
DEFAULT_RATES = (0.0, 0.1)
TASKS = {"y1": "regression", "y2": "regression"}
HIST_BINS = np.linspace(0.0, 1.0, 21)
#: Settings of a quick smoke run (``keras-mmoe reproduce polarization --quick``).
QUICK = {"seeds": 2, "samples": 2000, "epochs": 1}


def parse_setting(text: str) -> tuple:
    """``"0.05:8"`` -> ``(0.05, 8, 0)`` and ``"0.05:8:64"`` -> ``(0.05, 8, 64)``: learning rate,
    number of experts and the width of a shared ReLU layer under the MMoE layer (0: none; the
    YouTube placement has one), with a clear error."""
    try:
        parts = str(text).split(":")
        if len(parts) not in (2, 3):
            raise ValueError
        learning_rate, num_experts = float(parts[0]), int(parts[1])
        bottom_units = int(parts[2]) if len(parts) == 3 else 0
    except ValueError:
        raise ValueError(
            "`--settings` entries must look like LEARNING_RATE:NUM_EXPERTS[:SHARED_BOTTOM_UNITS] "
            f"(e.g. 0.05:8 or 0.05:8:64), received {text!r}"
        ) from None
    if not learning_rate > 0:
        raise ValueError(f"learning rate must be > 0 in `--settings`, received {text!r}")
    if num_experts < 2:
        raise ValueError(f"number of experts must be >= 2 in `--settings`, received {text!r}")
    if bottom_units < 0:
        raise ValueError(f"shared bottom units must be >= 0 in `--settings`, received {text!r}")
    return learning_rate, num_experts, bottom_units


def train_run(
    learning_rate: float,
    num_experts: int,
    expert_dropout_rate: float,
    seed: int,
    *,
    bottom_units: int = 0,
    samples: int = 20_000,
    dim: int = 100,
    correlation: float = 0.5,
    expert_units: int = 16,
    epochs: int = 10,
    batch_size: int = 256,
    verbose: int = 0,
) -> dict:
    """Trains one MMoE on synthetic data and returns its gate statistics and test losses (a dict).

    The data (``make_synthetic(..., seed=seed)``, 80/20 split) and the initial weights
    (``seed``) depend on ``seed`` only, so the arms of one seed differ only in expert dropout.
    ``bottom_units > 0`` puts a shared ``Dense(bottom_units, "relu")`` under the MMoE layer
    (experts and gates read it, as in the YouTube model).
    """
    from keras_mmoe._keras import keras
    from keras_mmoe.data import make_synthetic
    from keras_mmoe.diagnostics import gate_statistics, gate_weights_from_model
    from keras_mmoe.models import build_mmoe, compile_kwargs

    keras.backend.clear_session()
    start = time.perf_counter()
    train, test = make_synthetic(samples, dim, correlation, seed=seed).split(0.8, seed=seed)
    inputs = keras.Input((dim,), name="features")
    features = None
    if bottom_units:
        bottom = keras.layers.Dense(bottom_units, activation="relu", name="shared_bottom",
                                    kernel_initializer=keras.initializers.GlorotUniform(seed=seed))
        features = bottom(inputs)
    model = build_mmoe(
        inputs,
        TASKS,
        features=features,
        num_experts=num_experts,
        expert_units=expert_units,
        expert_dropout_rate=expert_dropout_rate,
        seed=seed,
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), **compile_kwargs(TASKS))
    model.fit(train.dataset(batch_size, seed=seed), epochs=epochs, shuffle=False, verbose=verbose)
    test_ds = test.dataset(1024, shuffle=False)
    metrics = model.evaluate(test_ds, verbose=0, return_dict=True)
    weights = gate_weights_from_model(model, test_ds)
    report = gate_statistics(weights, task_names=list(TASKS))
    tasks = {}
    for k, stats in enumerate(report.tasks):
        entry = stats.to_dict()
        entry["test_mse"] = float(metrics[f"{stats.task}_mse"])
        entry["max_weight_histogram"] = np.histogram(weights[:, k, :].max(axis=-1), bins=HIST_BINS)[0].tolist()
        tasks[stats.task] = entry
    return {
        "learning_rate": learning_rate,
        "num_experts": num_experts,
        "bottom_units": bottom_units,
        "expert_dropout_rate": expert_dropout_rate,
        "seed": seed,
        "polarized": report.any_polarized,
        "test_loss": float(sum(t["test_mse"] for t in tasks.values())),
        "tasks": tasks,
        "seconds": round(time.perf_counter() - start, 2),
    }


def summarize(runs: list) -> list:
    """One row per (learning rate, experts, shared bottom, rate): counts and means over seeds.

    ``polarized_runs`` counts runs with any task polarized; task-level figures are means over
    runs and tasks; ``test_loss`` is the sum of the two tasks' test MSE (mean and sample std).
    """
    groups = {}
    for run in runs:
        key = (run["learning_rate"], run["num_experts"], run.get("bottom_units", 0), run["expert_dropout_rate"])
        groups.setdefault(key, []).append(run)
    rows = []
    for (lr, experts, bottom, rate), group in sorted(groups.items()):
        per_task = [t for run in group for t in run["tasks"].values()]
        loss = report.aggregate(run["test_loss"] for run in group)
        rows.append(
            {
                "learning_rate": lr,
                "num_experts": experts,
                "bottom_units": bottom,
                "expert_dropout_rate": rate,
                "runs": len(group),
                "polarized_runs": int(sum(run["polarized"] for run in group)),
                "polarized_share": float(np.mean([run["polarized"] for run in group])),
                "max_weight_fraction": float(np.mean([t["max_weight_fraction"] for t in per_task])),
                "effective_experts": float(np.mean([t["effective_experts"] for t in per_task])),
                "effective_experts_per_example": float(
                    np.mean([t["effective_experts_per_example"] for t in per_task])
                ),
                "unused_experts": float(np.mean([len(t["unused_experts"]) for t in per_task])),
                "test_loss_mean": loss["mean"],
                "test_loss_std": loss["std"],
                "test_loss_median": loss["median"],
            }
        )
    return rows


def to_markdown(summary: list, settings_text: str = "") -> str:
    head = (
        "| learning rate | experts | shared bottom | expert dropout | runs | polarized runs | examples > 0.9 on one expert "
        "| effective experts (mean gate) | effective experts per example | unused experts per task "
        "| test loss mean ± std | test loss median |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in summary:
        lines.append(
            f"| {r['learning_rate']:g} | {r['num_experts']} | {r.get('bottom_units', 0) or '-'} "
            f"| {r['expert_dropout_rate']:g} | {r['runs']} "
            f"| {r['polarized_runs']} / {r['runs']} | {r['max_weight_fraction']:.2f} | {r['effective_experts']:.2f} "
            f"| {r['effective_experts_per_example']:.2f} | {r['unused_experts']:.2f} "
            f"| {r['test_loss_mean']:.3f} ± {r['test_loss_std']:.3f} | {r['test_loss_median']:.3f} |"
        )
    return "\n".join(lines) + ("\n\n" + settings_text if settings_text else "") + "\n"


def _setting(r):
    return (r["learning_rate"], r["num_experts"], r.get("bottom_units", 0))


def _setting_label(setting, sep="\n"):
    lr, experts, bottom = setting
    return f"lr {lr:g}{sep}{experts} experts" + (f"{sep}shared bottom {bottom}" if bottom else "")


def plot_rates(summary: list):
    """Figure: polarized share, per-example effective experts and test loss per setting and arm."""
    from matplotlib.figure import Figure

    settings = sorted({_setting(r) for r in summary})
    rates = sorted({r["expert_dropout_rate"] for r in summary})
    index = {(_setting(r), r["expert_dropout_rate"]): r for r in summary}
    fig = Figure(figsize=(max(13, 4.4 * len(settings)), 4.0))
    panels = [
        ("polarized_share", "share of runs polarized", None),
        ("effective_experts_per_example", "effective experts per example", None),
        ("test_loss_median", "test loss (sum of MSE), median over seeds", None),
    ]
    width = 0.8 / len(rates)
    x = np.arange(len(settings))
    for p, (key, label, _) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), p + 1)
        for j, rate in enumerate(rates):
            values = [index[(st, rate)][key] if (st, rate) in index else np.nan for st in settings]
            ax.bar(x + (j - (len(rates) - 1) / 2) * width, values, width, label=f"expert dropout {rate:g}")
        ax.set_xticks(x)
        ax.set_xticklabels([_setting_label(st) for st in settings], fontsize=8)
        ax.set_title(label, fontsize=10)
        if key == "polarized_share":
            ax.set_ylim(0, 1)
        if p == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_max_weight(runs: list):
    """Figure: distribution of the per-example largest gate weight, per setting, arms overlaid."""
    from matplotlib.figure import Figure

    settings = sorted({_setting(r) for r in runs})
    rates = sorted({r["expert_dropout_rate"] for r in runs})
    fig = Figure(figsize=(4.2 * len(settings), 3.4))
    centers = (HIST_BINS[:-1] + HIST_BINS[1:]) / 2
    for s, setting in enumerate(settings):
        ax = fig.add_subplot(1, len(settings), s + 1)
        for rate in rates:
            counts = np.zeros(len(centers))
            for run in runs:
                if _setting(run) == setting and run["expert_dropout_rate"] == rate:
                    for task in run["tasks"].values():
                        counts += np.asarray(task["max_weight_histogram"], dtype=np.float64)
            if counts.sum():
                ax.step(centers, counts / counts.sum(), where="mid", label=f"expert dropout {rate:g}")
        ax.axvline(0.9, color="grey", linestyle=":", linewidth=1)
        ax.set_title(_setting_label(setting, ", "), fontsize=10)
        ax.set_xlabel("largest gate weight of an example")
        if s == 0:
            ax.set_ylabel("share of examples")
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def run_study(settings: Sequence[tuple], rates: Sequence[float], seeds: Sequence[int],
              progress: report.Progress | None = None, **train_kwargs) -> dict:
    """Trains every (setting, rate, seed) and returns ``{"runs": [...], "summary": [...]}``."""
    runs = []
    total = len(settings) * len(rates) * len(seeds)
    for learning_rate, num_experts, bottom_units in settings:
        for seed in seeds:
            for rate in rates:
                run = train_run(learning_rate, num_experts, rate, seed, bottom_units=bottom_units, **train_kwargs)
                runs.append(run)
                if progress:
                    progress(
                        f"[{len(runs)}/{total}] {_setting_label((learning_rate, num_experts, bottom_units), ', ')}, "
                        f"seed {seed}, "
                        f"expert dropout {rate:g}: test loss {run['test_loss']:.3f}, "
                        f"polarized {run['polarized']}, "
                        f"examples > 0.9 on one expert "
                        + ", ".join(f"{t}: {v['max_weight_fraction']:.2f}" for t, v in run["tasks"].items())
                        + f" ({run['seconds']:.1f} s)"
                    )
    return {"runs": runs, "summary": summarize(runs)}


def study(
    *,
    settings: Sequence = DEFAULT_SETTINGS,
    rates: Sequence[float] = DEFAULT_RATES,
    seeds: int = 12,
    samples: int = 20_000,
    epochs: int = 10,
    correlation: float = 0.5,
    progress: report.Progress | None = None,
) -> dict:
    """The polarization study: every (setting, rate, seed 0..seeds-1); returns the record (every run,
    the summary, the settings, the environment). ``settings`` holds ``"LR:EXPERTS[:BOTTOM]"`` strings
    or ``(lr, experts, bottom)`` tuples. Raises ValueError naming a bad argument before any work."""
    parsed = [parse_setting(s) if isinstance(s, str) else parse_setting(":".join(str(v) for v in s)) for s in settings]
    if not parsed:
        raise ValueError("`settings` must hold at least one setting, received none")
    if not rates:
        raise ValueError("`rates` must hold at least one expert dropout rate, received none")
    for rate in rates:
        _validation.check_rate("rates", rate)
    for name, value in (("seeds", seeds), ("samples", samples), ("epochs", epochs)):
        _validation.check_positive_int(name, value)
    _validation.check_correlation("correlation", correlation)
    progress = progress or report.silent
    kwargs = dict(samples=samples, epochs=epochs, correlation=correlation)
    progress(f"polarization study: {len(parsed)} settings x {len(rates)} rates x {seeds} seeds, {kwargs}")
    start = time.perf_counter()
    result = run_study(parsed, list(rates), list(range(seeds)), progress=progress, **kwargs)
    record_settings = dict(kwargs, seeds=seeds, settings=[_setting_text(s) for s in parsed], rates=list(rates))
    return dict(result, settings=record_settings, seconds=round(time.perf_counter() - start, 1),
                environment=report.environment())


def _setting_text(setting: tuple) -> str:
    lr, experts, bottom = setting
    return f"{lr:g}:{experts}" + (f":{bottom}" if bottom else "")


def write_outputs(record: dict, out_dir: str) -> dict:
    """Writes polarization.md / .json and the two PNGs into ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: os.path.join(out_dir, f"polarization{suffix}") for name, suffix in [
        ("markdown", ".md"), ("json", ".json"), ("rates", "_rates.png"), ("max_weight", "_max_weight.png")]}
    report.write_text(paths["markdown"], to_markdown(record["summary"], report.setup_text(record)))
    report.write_json(paths["json"], record)
    plot_rates(record["summary"]).savefig(paths["rates"], dpi=110)
    plot_max_weight(record["runs"]).savefig(paths["max_weight"], dpi=110)
    return paths
