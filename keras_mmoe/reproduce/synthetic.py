"""The task-correlation study of the MMoE paper (sections 3.2 and 5): ``keras-mmoe reproduce synthetic``.

Setup (paper section 5, with the choices the paper leaves open stated here):

* data: :func:`keras_mmoe.data.make_synthetic` with d = 100, c = 1, m = 10 sine terms, noise
  standard deviation 0.1, two regression tasks; a new draw per run (data seed = run seed);
  80% train, 20% held out;
* models: MMoE and OMoE with 8 experts of one 16-unit ReLU layer, towers of one 8-unit layer;
  Shared-Bottom with one bottom layer sized to the same parameter count (the paper: 113 units
  for its ~13k; here 126 units for MMoE's 14,834, solved by
  :func:`keras_mmoe.models.matched_budget_kwargs`); on request CGC (14,430) and PLE with 2
  levels (17,618), MMoE's 8 experts split into 4 shared + 2 per task at every level, compared
  with MMoE run by run against the PLE paper's finding that PLE's edge grows as the
  correlation falls (:mod:`keras_mmoe.reproduce.versus_mmoe`);
* training: Adam (learning rate ``--learning-rate``, default 1e-3 from the paper's grid), batch 256,
  MSE per task with equal weights, ``--epochs`` epochs;
* measured: the held-out loss (sum of the two tasks' MSE) after every epoch, plotted against
  training steps (the paper's Figure 4, mean over runs), and the final held-out loss of every run
  (Figure 5's distribution): mean, sample std, min, max per model and correlation, and each
  model's loss increase from correlation 1.0 to 0.5.

:func:`study` runs it (settings in, a record out, progress through a callback);
:func:`write_outputs` writes ``synthetic.md``, ``synthetic.json``, ``synthetic_loss_curves.png`` and
``synthetic_final_loss.png``.

Example::

    from keras_mmoe.reproduce import synthetic
    record = synthetic.study(runs=2, epochs=5, progress=print)
    synthetic.write_outputs(record, "results")
"""

from __future__ import annotations

import os
import time
from typing import Sequence

import numpy as np

from keras_mmoe import _validation
from keras_mmoe.reproduce import paper, report, versus_mmoe

#: The MMoE paper's models (the default), then CGC and PLE (2 levels).
DEFAULT_MODELS = ("mmoe", "omoe", "shared_bottom")
MODELS = DEFAULT_MODELS + ("cgc", "ple")
NAMES = {name: paper.DISPLAY_NAMES[name] for name in MODELS}
DIM = 100
TASKS = {"y1": "regression", "y2": "regression"}
BATCH_SIZE = 256
#: Settings of a quick smoke run (``keras-mmoe reproduce synthetic --quick``).
QUICK = {"runs": 2, "samples": 2000, "epochs": 2}


def build_model(name: str, seed: int, dim: int = DIM):
    """MMoE / OMoE (8 x 16 experts, towers 8), Shared-Bottom of the same size, or CGC / PLE with
    MMoE's experts split into 4 shared + 2 per task (:func:`~keras_mmoe.models.matched_budget_kwargs`), seeded."""
    from keras_mmoe._keras import keras
    from keras_mmoe.models import BUILDERS, matched_budget_kwargs

    keras.utils.set_random_seed(seed)
    sizes = matched_budget_kwargs(dim, num_tasks=len(TASKS), num_experts=8, expert_units=16, tower_units=(8,))
    return BUILDERS[name](dim, TASKS, name=name, **sizes[name])


def train_run(name: str, correlation: float, seed: int, *, samples: int = 20_000, epochs: int = 30,
              learning_rate: float = 1e-3, batch_size: int = BATCH_SIZE) -> dict:
    """Trains one model on a fresh draw; returns the held-out loss after every epoch and at the end."""
    from keras_mmoe._keras import keras
    from keras_mmoe.data import make_synthetic
    from keras_mmoe.models import compile_kwargs

    keras.backend.clear_session()
    start = time.perf_counter()
    data = make_synthetic(samples, DIM, correlation, seed=seed)
    train, test = data.split(0.8, seed=seed)
    model = build_model(name, seed)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), **compile_kwargs(TASKS))
    history = model.fit(
        train.dataset(batch_size, seed=seed),
        validation_data=test.dataset(1024, shuffle=False),
        epochs=epochs,
        shuffle=False,  # the dataset shuffles itself
        verbose=0,
    )
    steps_per_epoch = int(np.ceil(len(train.x) / batch_size))
    curve = [float(v) for v in history.history["val_loss"]]
    return {
        "model": name,
        "correlation": correlation,
        "seed": seed,
        "params": int(model.count_params()),
        "label_correlation": float(data.label_correlation),
        "steps": [steps_per_epoch * (e + 1) for e in range(len(curve))],
        "loss_curve": curve,
        "final_loss": curve[-1],
        "seconds": round(time.perf_counter() - start, 1),
    }


def summarize(runs: list) -> dict:
    """``{model: {correlation: statistics of the final loss}}`` plus the increase from 1.0 to 0.5."""
    summary = {}
    for name in dict.fromkeys(r["model"] for r in runs):
        by_corr = {}
        for corr in sorted({r["correlation"] for r in runs if r["model"] == name}):
            mine = [r for r in runs if r["model"] == name and r["correlation"] == corr]
            stats = report.aggregate(r["final_loss"] for r in mine)
            stats = {"mean": stats["mean"], "std": stats["std"], "min": stats["worst"], "max": stats["best"],
                     "median": stats["median"], "n": stats["n"]}
            by_corr[f"{corr:g}"] = stats
        entry = {"params": next(r["params"] for r in runs if r["model"] == name), "final_loss": by_corr}
        if "1" in by_corr and "0.5" in by_corr:
            entry["increase_1_to_0.5"] = by_corr["0.5"]["mean"] - by_corr["1"]["mean"]
        summary[name] = entry
    return summary


def to_markdown(summary: dict, setup_text: str = "", versus: dict | None = None) -> str:
    corrs = sorted({c for e in summary.values() for c in e["final_loss"]}, key=float, reverse=True)
    header = ["model", "params"] + [f"p = {c}: loss mean ± std [min, max]" for c in corrs] + [
        "increase 1.0 → 0.5"]
    rows = []
    for name, entry in summary.items():
        cells = [NAMES.get(name, name), entry["params"]]
        for c in corrs:
            s = entry["final_loss"].get(c)
            cells.append(f"{s['mean']:.4f} ± {s['std']:.4f} [{s['min']:.4f}, {s['max']:.4f}] (n={s['n']})" if s else "-")
        inc = entry.get("increase_1_to_0.5")
        cells.append(f"{inc:+.4f}" if inc is not None else "-")
        rows.append(cells)
    title = "Synthetic task-correlation study: final held-out loss (sum of the two tasks' MSE) over runs\n\n"
    table = report.markdown_table(header, rows)
    if versus:  # CGC/PLE against MMoE (versus_mmoe.synthetic)
        table += versus_mmoe.synthetic_markdown(versus)
    return title + table + ("\n" + setup_text + "\n" if setup_text else "")


def plot_loss_curves(runs: list):
    """Figure 4: mean held-out loss versus training steps, one panel per correlation."""
    from matplotlib.figure import Figure

    corrs = sorted({r["correlation"] for r in runs}, reverse=True)
    fig = Figure(figsize=(4.3 * len(corrs), 3.6))
    for i, corr in enumerate(corrs):
        ax = fig.add_subplot(1, len(corrs), i + 1, sharey=fig.axes[0] if fig.axes else None)
        for name in dict.fromkeys(r["model"] for r in runs):
            mine = [r for r in runs if r["model"] == name and r["correlation"] == corr]
            if not mine:
                continue
            length = min(len(r["loss_curve"]) for r in mine)
            curve = np.mean([r["loss_curve"][:length] for r in mine], axis=0)
            ax.plot(mine[0]["steps"][:length], curve, label=f"{NAMES.get(name, name)} (n={len(mine)})")
        ax.set_title(f"correlation {corr:g}")
        ax.set_xlabel("training steps")
        ax.set_yscale("log")
        if i == 0:
            ax.set_ylabel("held-out loss (mean over runs)")
            ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_final_loss(runs: list):
    """Figure 5: distribution of the final held-out loss over runs, per model and correlation."""
    from matplotlib.figure import Figure

    corrs = sorted({r["correlation"] for r in runs}, reverse=True)
    names = list(dict.fromkeys(r["model"] for r in runs))
    fig = Figure(figsize=(4.3 * len(corrs), 3.6))
    for i, corr in enumerate(corrs):
        ax = fig.add_subplot(1, len(corrs), i + 1, sharey=fig.axes[0] if fig.axes else None)
        values = [[r["final_loss"] for r in runs if r["model"] == n and r["correlation"] == corr] for n in names]
        ax.boxplot(values, showmeans=True)
        for j, v in enumerate(values):  # every run as a point
            ax.plot(np.full(len(v), j + 1) + np.linspace(-0.15, 0.15, len(v)), v, ".", alpha=0.5, color="grey")
        ax.set_xticks(range(1, len(names) + 1))
        ax.set_xticklabels([NAMES.get(n, n) for n in names])
        ax.set_title(f"correlation {corr:g}")
        ax.set_yscale("log")
        if i == 0:
            ax.set_ylabel("final held-out loss per run")
    fig.tight_layout()
    return fig


def run_study(models: Sequence[str], correlations: Sequence[float], runs: int, *, seed: int = 0,
              progress: report.Progress | None = None, **train_kwargs) -> dict:
    """Every (model, correlation, run); run r of every model uses seed ``seed + r`` (same data)."""
    records = []
    total = len(models) * len(correlations) * runs
    for corr in correlations:
        for r in range(runs):
            for name in models:
                record = train_run(name, corr, seed + r, **train_kwargs)
                records.append(record)
                if progress:
                    progress(f"[{len(records)}/{total}] {name}, correlation {corr:g}, run {r + 1}: "
                             f"final loss {record['final_loss']:.4f} ({record['seconds']:.0f} s)")
    return {"runs": records, "summary": summarize(records)}


def study(
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    correlations: Sequence[float] = (0.5, 0.9, 1.0),
    runs: int = 10,
    samples: int = 20_000,
    epochs: int = 30,
    learning_rate: float = 1e-3,
    seed: int = 0,
    progress: report.Progress | None = None,
) -> dict:
    """The synthetic study: every (model, correlation, run); returns the record (every run, the
    summary, the settings, the environment). Raises ValueError naming a bad argument before any work."""
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"`models` must name some of {list(MODELS)}, received: models={list(models)!r}")
    if not correlations:
        raise ValueError("`correlations` must hold at least one correlation, received none")
    for corr in correlations:
        _validation.check_correlation("correlations", corr)
    for name, value in (("runs", runs), ("samples", samples), ("epochs", epochs)):
        _validation.check_positive_int(name, value)
    _validation.check_positive_float("learning_rate", learning_rate)
    _validation.check_seed("seed", seed)
    progress = progress or report.silent
    settings = dict(dim=DIM, samples=samples, epochs=epochs, learning_rate=learning_rate, runs=runs,
                    batch_size=BATCH_SIZE, seed=seed, correlations=list(correlations), models=list(models))
    progress(f"synthetic study: {len(models)} models x {len(correlations)} correlations x {runs} runs")
    start = time.perf_counter()
    result = run_study(list(models), list(correlations), runs, seed=seed, progress=progress, samples=samples,
                       epochs=epochs, learning_rate=learning_rate)
    return dict(result, settings=settings, seconds=round(time.perf_counter() - start, 1),
                environment=report.environment(), versus_mmoe=versus_mmoe.synthetic(result["runs"]))


def write_outputs(record: dict, out_dir: str) -> dict:
    """Writes ``synthetic.md``, ``.json`` and the two figures into ``out_dir``; returns their paths."""
    base = os.path.join(out_dir, "synthetic")
    paths = {
        "markdown": report.write_text(base + ".md", to_markdown(record["summary"], report.setup_text(record),
                                                                versus=record.get("versus_mmoe"))),
        "json": report.write_json(base + ".json", record),
        "loss_curves": base + "_loss_curves.png",
        "final_loss": base + "_final_loss.png",
    }
    plot_loss_curves(record["runs"]).savefig(paths["loss_curves"], dpi=110)
    plot_final_loss(record["runs"]).savefig(paths["final_loss"], dpi=110)
    return paths
