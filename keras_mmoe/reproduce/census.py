"""The census-income benchmark of the MMoE paper (section 6.3): ``keras-mmoe reproduce census``.

Recipe (the paper gives the data, the split, the metric and the model family; the rest is ours):

* data: :func:`keras_mmoe.data.load_census_income` (199,523 train rows; the test file split 1:1
  at random into validation and test, seeded), task group 1 (income, marital) or 2 (education,
  marital); raw features encoded inside the model by
  :func:`keras_mmoe.features.census_feature_encoder` (one-hot, 517 columns);
* models: the seven builders of :data:`keras_mmoe.models.BUILDERS` at about MMoE's parameter
  count (:func:`keras_mmoe.models.matched_budget_kwargs`: MMoE and OMoE 8 experts x 16 units,
  towers of 8, every other model one hidden layer sized to the same budget);
* training: Adam (learning rate 1e-3), batch 1024, binary cross-entropy per task with equal
  weights, up to ``epochs`` epochs with early stopping on the main task's validation AUC
  (patience 2, best weights restored), as the paper tunes on the main task's validation AUC;
* result: test AUC per task of every run; per model the mean, sample std and best over runs.

Each run ``r`` uses seed ``seed + r`` for the weights and the shuffling; the data split is the
same for all runs (``--data-seed``).
"""

import time

from keras_mmoe.reproduce import paper, report

MODELS = ("single_task", "shared_bottom", "l2_constrained", "cross_stitch", "tensor_factorization", "omoe", "mmoe")


def build_model(name, data, seed):
    """Builds and compiles census model ``name`` on ``data``'s raw features (seeded)."""
    from keras_mmoe._keras import keras
    from keras_mmoe.features import census_feature_encoder
    from keras_mmoe.models import BUILDERS, matched_budget_kwargs

    keras.utils.set_random_seed(seed)
    inputs, encoded = census_feature_encoder(data)
    sizes = matched_budget_kwargs(int(encoded.shape[-1]), num_tasks=len(data.task_names))[name]
    return BUILDERS[name](inputs, list(data.task_names), features=encoded, name=name, **sizes)


def _compile(model, tasks, learning_rate):
    from keras_mmoe._keras import keras
    from keras_mmoe.models import compile_kwargs

    kwargs = compile_kwargs(tasks)
    try:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=False, **kwargs)
    except TypeError:  # tf-keras < 2.8 has no jit_compile argument
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), **kwargs)


def train_run(data, name, seed, *, epochs=10, patience=2, learning_rate=1e-3, verbose=2):
    """Trains one model and returns ``(model, record)``: test AUC per task, epochs, seconds."""
    from keras_mmoe._keras import keras

    keras.backend.clear_session()
    start = time.perf_counter()
    model = build_model(name, data, seed)
    _compile(model, data.task_names, learning_rate)
    monitor = f"val_{data.main_task}_auc"
    stop = keras.callbacks.EarlyStopping(monitor=monitor, mode="max", patience=patience, restore_best_weights=True)
    history = model.fit(
        data.dataset("train", seed=seed),
        validation_data=data.validation,
        epochs=epochs,
        callbacks=[stop],
        verbose=verbose,
    )
    results = model.evaluate(data.test, verbose=0, return_dict=True)
    val = history.history[monitor]
    record = {
        "model": name,
        "seed": seed,
        "params": int(model.count_params()),
        "epochs_trained": len(val),
        "best_epoch": int(max(range(len(val)), key=val.__getitem__)) + 1,
        "validation_auc": {data.main_task: float(max(val))},
        "test_auc": {task: float(results[f"{task}_auc"]) for task in data.task_names},
        "seconds": round(time.perf_counter() - start, 1),
    }
    return model, record


def summarize(runs, task_names, group):
    """Per model: test AUC statistics per task over runs, with the paper's numbers beside them."""
    summary = {}
    for name in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == name]
        entry = {
            "method": paper.METHOD_NAMES.get(name, name),
            "runs": len(mine),
            "params": mine[0]["params"],
            "mean_epochs": float(sum(r["epochs_trained"] for r in mine) / len(mine)),
            "mean_seconds": float(sum(r["seconds"] for r in mine) / len(mine)),
            "test_auc": {t: report.aggregate(r["test_auc"][t] for r in mine) for t in task_names},
        }
        published = paper.CENSUS_AUC.get(group, {}).get(name)
        if published:
            entry["paper"] = {
                task_names[0]: {"best": published[0], "mean": published[1]},
                task_names[1]: {"mean": published[2]},
            }
        summary[name] = entry
    return summary


def to_markdown(summary, task_names, group, setup_text=""):
    main, aux = task_names
    header = [
        "method", "params", "runs", "epochs (mean)",
        f"{main} AUC mean ± std", f"{main} AUC best", f"paper {main} mean", f"paper {main} best",
        f"{aux} AUC mean ± std", f"{aux} AUC best", f"paper {aux}",
    ]
    rows = []
    for entry in summary.values():
        m, a = entry["test_auc"][main], entry["test_auc"][aux]
        p = entry.get("paper", {})
        rows.append([
            entry["method"], entry["params"], entry["runs"], f"{entry['mean_epochs']:.1f}",
            f"{m['mean']:.4f} ± {m['std']:.4f}", f"{m['best']:.4f}",
            f"{p[main]['mean']:.4f}" if p else "-", f"{p[main]['best']:.4f}" if p else "-",
            f"{a['mean']:.4f} ± {a['std']:.4f}", f"{a['best']:.4f}",
            f"{p[aux]['mean']:.4f}" if p else "-",
        ])
    title = f"Census-income group {group}: test AUC over runs (mean ± sample std, best = max)\n\n"
    return title + report.markdown_table(header, rows) + ("\n" + setup_text + "\n" if setup_text else "")


def run_study(data, models, runs, *, seed=0, epochs=10, patience=2, learning_rate=1e-3, progress=None,
              export_dir=None, verbose=2):
    """Trains ``runs`` runs of every model; returns the record (runs, summary, export path)."""
    records, best = [], (None, -1.0)
    total = len(models) * runs
    for name in models:
        for r in range(runs):
            if progress:
                progress(f"[{len(records) + 1}/{total}] {name}, run {r + 1}/{runs} (seed {seed + r})")
            model, record = train_run(
                data, name, seed + r, epochs=epochs, patience=patience, learning_rate=learning_rate, verbose=verbose
            )
            records.append(record)
            if progress:
                progress(
                    f"{name} run {r + 1}: test AUC "
                    + ", ".join(f"{t} {v:.4f}" for t, v in record["test_auc"].items())
                    + f" after {record['epochs_trained']} epochs ({record['seconds']:.0f} s)"
                )
            main_val = record["validation_auc"][data.main_task]
            if export_dir and name == "mmoe" and main_val > best[1]:
                from keras_mmoe.serving import export_for_serving

                best = (export_for_serving(model, export_dir, version=None), main_val)
                if progress:
                    progress(f"exported the MMoE run with the best validation AUC so far: {best[0]}")
    return {
        "runs": records,
        "summary": summarize(records, list(data.task_names), data.group),
        "export": best[0],
    }


# --- command line: `keras-mmoe reproduce census` -----------------------------------------------


def add_arguments(parser):
    parser.add_argument("--group", type=int, default=1, help="task group: 1 (income, marital) or 2 (education, marital)")
    parser.add_argument("--runs", type=int, default=3, help="runs per model (default: 3)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), metavar="MODEL",
                        help=f"models to train (default: all seven: {' '.join(MODELS)})")
    parser.add_argument("--epochs", type=int, default=10, help="maximum epochs per run (default: 10)")
    parser.add_argument("--patience", type=int, default=2, help="early-stopping patience in epochs (default: 2)")
    parser.add_argument("--learning-rate", type=float, default=1e-3, help="Adam learning rate (default: 1e-3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of run 1; run r uses seed + r - 1")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the validation/test split (default: 0)")
    parser.add_argument("--data-dir", default=None,
                        help="census data directory (default: $KERAS_MMOE_DATA_DIR or ~/.keras_mmoe/data; "
                        "downloaded when absent)")
    parser.add_argument("--max-rows", type=int, default=None, help="use only the first rows of each file")
    parser.add_argument("--out-dir", default="results", help="where census_group<G>.md/.json go (default: results)")
    parser.add_argument("--export-dir", default=None,
                        help="also export the MMoE run with the best validation AUC for TF Serving here")
    parser.add_argument("--quick", action="store_true", help="3000 rows, 1 epoch, 1 run: a smoke run")


def run(args):
    import os

    from keras_mmoe.cli.common import CLIError, say

    if args.group not in (1, 2):
        raise CLIError(f"--group must be 1 or 2, received {args.group}")
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise CLIError(f"unknown model(s) {unknown} for --models; choose from {list(MODELS)}")
    for flag in ("runs", "epochs", "patience"):
        if getattr(args, flag) < 1:
            raise CLIError(f"--{flag} must be >= 1, received {getattr(args, flag)}")
    if args.max_rows is not None and args.max_rows < 10:
        raise CLIError(f"--max-rows must be >= 10, received {args.max_rows}")
    if not args.learning_rate > 0:
        raise CLIError(f"--learning-rate must be > 0, received {args.learning_rate}")
    runs, epochs, max_rows = (1, 1, 3000) if args.quick else (args.runs, args.epochs, args.max_rows)

    say("importing TensorFlow")
    from keras_mmoe.data import load_census_income

    say(f"loading census-income group {args.group}" + (f" (first {max_rows} rows)" if max_rows else ""))
    data = load_census_income(args.data_dir, group=args.group, seed=args.data_seed, max_rows=max_rows)
    say(f"tasks {list(data.task_names)}; rows {data.num_rows}; label correlation {data.label_correlation:.4f}")
    say(f"{len(args.models)} models x {runs} runs, up to {epochs} epochs each")
    start = time.perf_counter()
    study = run_study(
        data, list(args.models), runs, seed=args.seed, epochs=epochs, patience=args.patience,
        learning_rate=args.learning_rate, progress=say, export_dir=args.export_dir,
    )
    default_command = (
        f"keras-mmoe reproduce census --group {args.group} --runs {args.runs} --epochs {args.epochs} "
        f"--models {' '.join(args.models)} --out-dir {args.out_dir}" + (" --quick" if args.quick else "")
    )
    command = report.command_line(default_command)
    settings = dict(group=args.group, runs=runs, epochs=epochs, patience=args.patience,
                    learning_rate=args.learning_rate, seed=args.seed, data_seed=args.data_seed,
                    max_rows=max_rows, batch_size=data.batch_size, rows=data.num_rows)
    setup = (f"Setup: {settings}. Total time {time.perf_counter() - start:.0f} s.\n"
             f"Command: `{command}`")
    text = to_markdown(study["summary"], list(data.task_names), args.group, setup)
    base = os.path.join(args.out_dir, f"census_group{args.group}")
    record = dict(study, task_names=list(data.task_names), settings=settings, command=command,
                  environment=report.environment(), targets=paper.CENSUS_TARGETS.get(args.group))
    report.write_json(base + ".json", record)
    report.write_text(base + ".md", text)
    print(text)
    say(f"wrote {base}.md and {base}.json")
    return 0
