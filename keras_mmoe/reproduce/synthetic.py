"""The task-correlation study of the MMoE paper (sections 3.2 and 5): ``keras-mmoe reproduce synthetic``.

Setup (paper section 5, with the choices the paper leaves open stated here):

* data: :func:`keras_mmoe.data.make_synthetic` with d = 100, c = 1, m = 10 sine terms, noise
  standard deviation 0.1, two regression tasks; a new draw per run (data seed = run seed);
  80% train, 20% held out;
* models: MMoE and OMoE with 8 experts of one 16-unit ReLU layer, towers of one 8-unit layer;
  Shared-Bottom with one bottom layer sized to the same parameter count (the paper: 113 units
  for its ~13k; here 126 units for MMoE's 14,834, solved by
  :func:`keras_mmoe.models.matched_budget_kwargs`);
* training: Adam (learning rate ``--learning-rate``, default 1e-3 from the paper's grid), batch 256,
  MSE per task with equal weights, ``--epochs`` epochs;
* measured: the held-out loss (sum of the two tasks' MSE) after every epoch, plotted against
  training steps (the paper's Figure 4, mean over runs), and the final held-out loss of every run
  (Figure 5's distribution): mean, sample std, min, max per model and correlation, and each
  model's loss increase from correlation 1.0 to 0.5.

Outputs in ``--out-dir``: ``synthetic.md``, ``synthetic.json``, ``synthetic_loss_curves.png``,
``synthetic_final_loss.png``.
"""

import time

import numpy as np

from keras_mmoe.reproduce import report

MODELS = ("mmoe", "omoe", "shared_bottom")
NAMES = {"mmoe": "MMoE", "omoe": "OMoE", "shared_bottom": "Shared-Bottom"}
DIM = 100
TASKS = {"y1": "regression", "y2": "regression"}


def build_model(name, seed, dim=DIM):
    """MMoE / OMoE (8 x 16 experts, towers 8) or Shared-Bottom of the same size, seeded."""
    from keras_mmoe._keras import keras
    from keras_mmoe.models import BUILDERS, matched_budget_kwargs

    keras.utils.set_random_seed(seed)
    sizes = matched_budget_kwargs(dim, num_tasks=len(TASKS), num_experts=8, expert_units=16, tower_units=(8,))
    return BUILDERS[name](dim, TASKS, name=name, **sizes[name])


def train_run(name, correlation, seed, *, samples=20_000, epochs=30, learning_rate=1e-3, batch_size=256):
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


def summarize(runs):
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


def to_markdown(summary, setup_text=""):
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
    return title + report.markdown_table(header, rows) + ("\n" + setup_text + "\n" if setup_text else "")


def plot_loss_curves(runs):
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


def plot_final_loss(runs):
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


def run_study(models, correlations, runs, *, seed=0, progress=None, **train_kwargs):
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


# --- command line: `keras-mmoe reproduce synthetic` --------------------------------------------


def add_arguments(parser):
    parser.add_argument("--correlations", type=float, nargs="+", default=[0.5, 0.9, 1.0],
                        help="task correlations p (default: 0.5 0.9 1.0)")
    parser.add_argument("--runs", type=int, default=10, help="runs per model and correlation (default: 10)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), metavar="MODEL",
                        help=f"models (default: {' '.join(MODELS)})")
    parser.add_argument("--samples", type=int, default=20_000, help="rows per run, 80%% train (default: 20000)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs per run (default: 30)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of run 1; run r uses seed + r - 1")
    parser.add_argument("--out-dir", default="results", help="where the tables and plots go (default: results)")
    parser.add_argument("--quick", action="store_true", help="2 runs, 2000 rows, 2 epochs: a smoke run")


def run(args):
    import os

    from keras_mmoe.cli.common import CLIError, say

    for corr in args.correlations:
        if not -1.0 <= corr <= 1.0:
            raise CLIError(f"--correlations must be in [-1, 1], received {corr}")
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise CLIError(f"unknown model(s) {unknown} for --models; choose from {list(MODELS)}")
    for flag in ("runs", "samples", "epochs"):
        if getattr(args, flag) < 1:
            raise CLIError(f"--{flag} must be >= 1, received {getattr(args, flag)}")
    if not args.learning_rate > 0:
        raise CLIError(f"--learning-rate must be > 0, received {args.learning_rate}")
    runs, samples, epochs = (2, 2000, 2) if args.quick else (args.runs, args.samples, args.epochs)
    settings = dict(dim=DIM, samples=samples, epochs=epochs, learning_rate=args.learning_rate, runs=runs,
                    batch_size=256, seed=args.seed, correlations=list(args.correlations))
    say(f"synthetic study: {len(args.models)} models x {len(args.correlations)} correlations x {runs} runs; {settings}")
    start = time.perf_counter()
    study = run_study(list(args.models), list(args.correlations), runs, seed=args.seed, progress=say,
                      samples=samples, epochs=epochs, learning_rate=args.learning_rate)
    default_command = (
        f"keras-mmoe reproduce synthetic --correlations {' '.join(f'{c:g}' for c in args.correlations)} "
        f"--runs {args.runs} --epochs {args.epochs} --samples {args.samples} --learning-rate {args.learning_rate:g} "
        f"--models {' '.join(args.models)} --out-dir {args.out_dir}" + (" --quick" if args.quick else "")
    )
    command = report.command_line(default_command)
    setup = f"Setup: {settings}. Total time {time.perf_counter() - start:.0f} s.\nCommand: `{command}`"
    text = to_markdown(study["summary"], setup)
    base = os.path.join(args.out_dir, "synthetic")
    report.write_json(base + ".json", dict(study, settings=settings, command=command,
                                           environment=report.environment()))
    report.write_text(base + ".md", text)
    plot_loss_curves(study["runs"]).savefig(base + "_loss_curves.png", dpi=110)
    plot_final_loss(study["runs"]).savefig(base + "_final_loss.png", dpi=110)
    print(text)
    for suffix in (".md", ".json", "_loss_curves.png", "_final_loss.png"):
        say(f"wrote {base}{suffix}")
    return 0
