"""The census-income benchmark of the MMoE paper (section 6.3): ``keras-mmoe reproduce census``.

Recipe (the paper gives the data, the split, the metric and the model family; the rest is ours):

* data: :func:`keras_mmoe.data.load_census_income` (199,523 train rows; the test file split 1:1
  at random into validation and test, seeded), task group 1 (income, marital) or 2 (education,
  marital); raw features encoded inside the model by
  :func:`keras_mmoe.features.census_feature_encoder` (one-hot, 517 columns);
* models: the MMoE paper's seven methods (the default) at about MMoE's parameter count
  (:func:`keras_mmoe.models.matched_budget_kwargs`: MMoE and OMoE 8 experts x 16 units,
  towers of 8, every other model one hidden layer sized to the same budget); on request
  (``models=[..., "cgc", "ple"]``) CGC and PLE with 2 levels, MMoE's 8 experts split into 4
  shared + 2 per task at every level, compared with MMoE run by run and with the PLE paper's
  group-1 numbers (:mod:`keras_mmoe.reproduce.versus_mmoe`);
* training: Adam (learning rate 1e-3), batch 1024, binary cross-entropy per task with equal
  weights, up to ``epochs`` epochs with early stopping on the main task's validation AUC
  (patience 2, best weights restored), as the paper tunes on the main task's validation AUC;
* result: test AUC per task of every run; per model the mean, sample std and best over runs.

This is ``--protocol fixed`` (one recipe for every model); ``--protocol tuned``
(:mod:`keras_mmoe.reproduce.census_tuned`) tunes each model's learning rate and width first.

Each run ``r`` uses seed ``seed + r`` for the weights and the shuffling; the data split is the
same for all runs (``data_seed``). :func:`study` runs it all (settings in, a record out, progress
through a callback) and :func:`write_outputs` writes ``census_group<G>.md`` and ``.json``.

Example::

    from keras_mmoe.reproduce import census
    record = census.study(group=1, runs=3, progress=print)
    census.write_outputs(record, "results")
"""

from __future__ import annotations

import os
import time
from typing import Sequence

from keras_mmoe import _validation
from keras_mmoe.reproduce import paper, report, versus_mmoe

#: The MMoE paper's methods (the default), then CGC and PLE (2 levels).
DEFAULT_MODELS = ("single_task", "shared_bottom", "l2_constrained", "cross_stitch", "tensor_factorization", "omoe",
                  "mmoe")
MODELS = DEFAULT_MODELS + ("cgc", "ple")


#: Settings of a quick smoke run (``keras-mmoe reproduce census --quick``).
QUICK = {"runs": 1, "epochs": 1, "max_rows": 3000}


def build_model(name: str, data, seed: int):
    """Builds and compiles census model ``name`` on ``data``'s raw features (seeded)."""
    from keras_mmoe._keras import keras
    from keras_mmoe.features import census_feature_encoder
    from keras_mmoe.models import BUILDERS, matched_budget_kwargs

    keras.utils.set_random_seed(seed)
    inputs, encoded = census_feature_encoder(data)
    sizes = matched_budget_kwargs(int(encoded.shape[-1]), num_tasks=len(data.task_names))[name]
    return BUILDERS[name](inputs, list(data.task_names), features=encoded, name=name, **sizes)


def _compile(model, tasks, learning_rate: float) -> None:
    from keras_mmoe._keras import keras
    from keras_mmoe.models import compile_kwargs

    model.compile(optimizer=keras.optimizers.Adam(learning_rate), jit_compile=False, **compile_kwargs(tasks))


def train_run(data, name: str, seed: int, *, epochs: int = 10, patience: int = 2, learning_rate: float = 1e-3,
              verbose: int = 2):
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
        shuffle=False,  # the dataset shuffles itself
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
        "test_loss": {task: float(results[f"{task}_loss"]) for task in data.task_names},
        "test_rows": int(data.num_rows["test"]),
        "seconds": round(time.perf_counter() - start, 1),
    }
    return model, record


def summarize(runs: list, task_names: Sequence[str], group: int) -> dict:
    """Per model: test AUC statistics per task over runs, with the paper's numbers beside them."""
    summary = {}
    for name in dict.fromkeys(r["model"] for r in runs):
        mine = [r for r in runs if r["model"] == name]
        entry = {
            "method": paper.DISPLAY_NAMES.get(name, name),
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


def to_markdown(summary: dict, task_names: Sequence[str], group: int, setup_text: str = "",
                versus: dict | None = None) -> str:
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
    table = report.markdown_table(header, rows)
    if versus:  # CGC/PLE against MMoE (versus_mmoe.census)
        table += versus_mmoe.census_markdown(versus, summary, task_names)
    return title + table + ("\n" + setup_text + "\n" if setup_text else "")


def run_study(data, models: Sequence[str], runs: int, *, seed: int = 0, epochs: int = 10, patience: int = 2,
              learning_rate: float = 1e-3, progress: report.Progress | None = None, export_dir: str | None = None,
              verbose: int = 2) -> dict:
    """Trains ``runs`` runs of every model on loaded ``data``; returns ``{"runs", "summary", "export"}``.

    With ``export_dir``, the MMoE run with the best validation AUC so far is exported there for TF
    Serving, with its training record (data settings included) in the version's metadata, so
    ``keras-mmoe evaluate`` scores it on the test rows of the same split."""
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

                metadata = {
                    "written_by": "keras-mmoe reproduce census",
                    "model": name,
                    "tasks": {t: "binary" for t in data.task_names},
                    "data": {"source": "census", "group": data.group, "data_seed": data.seed,
                             "max_rows": data.max_rows},
                    "run": record,
                }
                best = (export_for_serving(model, export_dir, version=None, metadata=metadata), main_val)
                if progress:
                    progress(f"exported the MMoE run with the best validation AUC so far: {best[0]}")
    return {
        "runs": records,
        "summary": summarize(records, list(data.task_names), data.group),
        "export": best[0],
    }




def study(
    *,
    group: int = 1,
    models: Sequence[str] = DEFAULT_MODELS,
    runs: int = 3,
    epochs: int = 10,
    patience: int = 2,
    learning_rate: float = 1e-3,
    seed: int = 0,
    data_seed: int = 0,
    max_rows: int | None = None,
    data_dir: str | None = None,
    export_dir: str | None = None,
    progress: report.Progress | None = None,
    verbose: int = 2,
) -> dict:
    """The census study: loads task group ``group`` (split seeded by ``data_seed``), trains ``runs``
    runs of each of ``models`` and returns the record: every run, the summary beside the paper's
    numbers, the settings, the environment, the targets and the export (None without
    ``export_dir``). Raises ValueError naming a bad argument before any work."""
    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        raise ValueError(f"`models` must name some of {list(MODELS)}, received: models={list(models)!r}")
    for name, value in (("runs", runs), ("epochs", epochs), ("patience", patience)):
        _validation.check_positive_int(name, value)
    _validation.check_positive_float("learning_rate", learning_rate)
    _validation.check_seed("seed", seed)
    _validation.check_seed("data_seed", data_seed)
    if group not in paper.CENSUS_AUC:
        raise ValueError(f"`group` must be 1 (income, marital) or 2 (education, marital), received: group={group!r}")
    progress = progress or report.silent
    start = time.perf_counter()
    from keras_mmoe.data import load_census_income

    progress(f"loading census-income group {group}" + (f" (first {max_rows} rows)" if max_rows else ""))
    data = load_census_income(data_dir, group=group, seed=data_seed, max_rows=max_rows)
    progress(f"tasks {list(data.task_names)}; rows {data.num_rows}; label correlation {data.label_correlation:.4f}")
    progress(f"{len(models)} models x {runs} runs, up to {epochs} epochs each")
    result = run_study(data, list(models), runs, seed=seed, epochs=epochs, patience=patience,
                       learning_rate=learning_rate, progress=progress, export_dir=export_dir, verbose=verbose)
    settings = dict(group=group, models=list(models), runs=runs, epochs=epochs, patience=patience,
                    learning_rate=learning_rate, seed=seed, data_seed=data_seed, max_rows=max_rows,
                    batch_size=data.batch_size, rows=data.num_rows)
    return dict(result, task_names=list(data.task_names), settings=settings,
                seconds=round(time.perf_counter() - start, 1), environment=report.environment(),
                targets=paper.CENSUS_TARGETS.get(group),
                versus_mmoe=versus_mmoe.census(result["runs"], list(data.task_names), group))


def write_outputs(record: dict, out_dir: str) -> dict:
    """Writes ``census_group<G>.md`` (the table) and ``.json`` (the record; the export as its version
    number, not a path of this machine) into ``out_dir``; returns ``{"markdown": path, "json": path}``."""
    group = record["settings"]["group"]
    base = os.path.join(out_dir, f"census_group{group}")
    text = to_markdown(record["summary"], record["task_names"], group, report.setup_text(record),
                       versus=record.get("versus_mmoe"))
    portable = {k: v for k, v in record.items() if k != "export"}
    if record.get("export"):
        portable["export_version"] = int(os.path.basename(record["export"]))
    return {"markdown": report.write_text(base + ".md", text), "json": report.write_json(base + ".json", portable)}
