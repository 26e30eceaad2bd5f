"""Census-income with every method tuned: ``keras-mmoe reproduce census --protocol tuned``.

Protocol (MMoE paper section 6.3: methods tuned on the main task's validation AUC, many runs):

* data: :func:`keras_mmoe.data.load_census_income`, task groups 1 (income, marital) and 2
  (education, marital), one split for every run (``data_seed``); the raw features are encoded
  once per group by :func:`keras_mmoe.features.census_feature_encoder` (adapted on the train
  split; 517 columns) and the models take the encoded matrix (the same math as encoding inside
  the model, done once instead of every epoch);
* configurations: learning rate x width. Width ``w`` is a parameter budget: MMoE's with 8
  experts of ``16 w`` units (towers of 8); MMoE, OMoE, CGC and PLE get ``16 w``-unit experts,
  every other method the hidden or bottom layer of that budget
  (:func:`keras_mmoe.models.matched_budget_kwargs` with ``expert_units=16 w``), so each method's
  configurations span the same budgets (w = 1: about 75k parameters, w = 2: about 145k);
* search: per group and method, ``search_runs`` runs of every configuration (seeds
  ``seed + 1000 + s``, apart from the final runs' seeds); the configuration with the highest
  mean validation AUC of the main task is chosen (ties: smaller width, then smaller rate);
* final: ``runs`` runs of each method's chosen configuration; run ``r`` of every method uses
  seed ``seed + r`` (weights and batch order), so runs pair across methods;
* training: Adam, batch 1024, binary cross-entropy per task with equal weights, at most
  ``max_epochs`` epochs, early stopping on the exact validation AUC of the main task
  (``patience`` epochs without a higher one), the best epoch's weights kept;
* reported per group: per method the chosen configuration and the test AUC per task of its final
  runs (mean, std, median, quartiles; exact AUC, :func:`keras_mmoe.metrics.roc_auc`) beside the
  MMoE paper's numbers; the paired differences of MMoE and every other method (by default
  Shared-Bottom, OMoE and PLE with 2 levels) per task with bootstrap 95% intervals
  (:mod:`keras_mmoe.reproduce.stats`) beside the papers' differences; the search's validation
  AUC of every configuration.

Every run is a unit of :class:`keras_mmoe.reproduce.store.StudyStore`: added to the study's JSON
when it ends, so a stopped study continues where it stopped (:func:`work` gives the order: group
by group, every method's search, then the final runs run by run). :func:`load`, :func:`summarize`
and :func:`write_outputs` work on a study in progress too.

Example::

    from keras_mmoe.reproduce import census_tuned as ct
    record = ct.study("results/census_tuned.json", models=["mmoe", "shared_bottom"], progress=print)
    ct.write_outputs(record, "results")
"""

from __future__ import annotations

import json
import math
import os
import resource
import time
from typing import Sequence

import numpy as np

from keras_mmoe import _validation
from keras_mmoe.reproduce import paper, report, stats
from keras_mmoe.reproduce.store import StudyStore

#: The method every other one is compared with, run by run (paired by seed).
REFERENCE = "mmoe"
#: The methods of the study by default: MMoE and the three it is compared with.
DEFAULT_MODELS = (REFERENCE, "omoe", "shared_bottom", "ple")
#: Every method the study can tune.
MODELS = DEFAULT_MODELS + ("single_task", "l2_constrained", "cross_stitch", "tensor_factorization", "cgc")
NUM_EXPERTS, EXPERT_UNITS, TOWER_UNITS, BATCH_SIZE = 8, 16, (8,), 1024
#: The name of the models' one input: the encoded feature matrix.
INPUT = "features"
#: Search run ``s`` uses seed ``seed + SEARCH_SEED_OFFSET + s``; final run ``r`` seed ``seed + r``.
SEARCH_SEED_OFFSET = 1000
#: Settings of a quick smoke run (``--quick``).
QUICK = {"runs": 2, "search_runs": 1, "learning_rates": [1e-3, 1e-2], "widths": [1], "max_epochs": 2,
         "patience": 1, "max_rows": 3000}
#: The file name (without extension) of the study's outputs.
NAME = "census_tuned"


def _group_tasks(group: int) -> tuple:
    from keras_mmoe.data.census import TASK_GROUPS

    return TASK_GROUPS[group]


def model_sizes(name: str, input_dim: int, width: float, num_tasks: int = 2) -> dict:
    """The size arguments of ``BUILDERS[name]`` at width ``width`` (the budget of MMoE with 8 experts
    of ``16 width`` units)."""
    return matched_sizes(input_dim, width, num_tasks)[name]


def matched_sizes(input_dim: int, width: float, num_tasks: int = 2) -> dict:
    from keras_mmoe.models import matched_budget_kwargs

    return matched_budget_kwargs(input_dim, num_tasks, num_experts=NUM_EXPERTS,
                                 expert_units=int(round(EXPERT_UNITS * width)), tower_units=TOWER_UNITS)


# --- keys and the order of the work ------------------------------------------------------------


def search_key(group: int, model: str, learning_rate: float, width: float, seed: int) -> str:
    return f"group={group}/{model}/search/lr={learning_rate:g}/width={width:g}/seed={seed}"


def final_key(group: int, model: str, learning_rate: float, width: float, seed: int) -> str:
    return f"group={group}/{model}/final/lr={learning_rate:g}/width={width:g}/seed={seed}"


def search_units(settings: dict, group: int, model: str) -> list:
    """``(learning rate, width, run index, seed)`` of every search run of ``model`` in ``group``."""
    base = settings["seed"] + SEARCH_SEED_OFFSET
    return [(lr, w, s, base + s) for lr in settings["learning_rates"] for w in settings["widths"]
            for s in range(settings["search_runs"])]


def work(settings: dict) -> list:
    """Every run of the study in the order it is trained, as ``(group, phase, model, index)``
    (phase ``"search"``: ``index`` into :func:`search_units`; ``"final"``: the run number): group
    by group, every method's search, then the final runs run by run (run r of every method, then
    run r + 1), so a study stopped early holds paired final runs of every method."""
    order = []
    for group in settings["groups"]:
        for model in settings["models"]:
            order += [(group, "search", model, i) for i in range(len(search_units(settings, group, model)))]
        order += [(group, "final", model, r) for r in range(settings["runs"]) for model in settings["models"]]
    return order


def count_units(settings: dict) -> int:
    """The number of runs of the study."""
    return len(work(settings))


# --- the data ---------------------------------------------------------------------------------


class EncodedCensus:
    """One census task group with its raw features encoded once: ``x[split]`` float32 ``(rows, d)``,
    ``y[split]`` ``{task: float32 (rows, 1)}``, ``task_names`` (main first), ``num_rows``."""

    def __init__(self, group: int, data_seed: int, max_rows: int | None, data_dir: str | None):
        from keras_mmoe._keras import keras
        from keras_mmoe.data import load_census_income
        from keras_mmoe.features import census_feature_encoder

        data = load_census_income(data_dir, group=group, seed=data_seed, max_rows=max_rows, batch_size=BATCH_SIZE)
        inputs, encoded = census_feature_encoder(data)
        encoder = keras.Model(inputs, encoded)
        self.x = {}
        for split in ("train", "validation", "test"):
            batches = data.dataset(split, batch_size=8192, shuffle=False).map(lambda features, labels: features)
            self.x[split] = np.concatenate([np.asarray(encoder(b), dtype=np.float32) for b in batches])
        self.y = data.labels
        self.group = group
        self.task_names = tuple(data.task_names)
        self.num_rows = dict(data.num_rows)
        self.label_correlation = float(data.label_correlation)
        self.input_dim = int(self.x["train"].shape[1])
        self._train = None
        keras.backend.clear_session()

    @property
    def main_task(self) -> str:
        return self.task_names[0]

    def train_dataset(self, seed: int):
        """The train rows in batches of 1024, shuffled with ``seed`` (a new order every epoch)."""
        import tensorflow as tf

        if self._train is None:  # eager tensors: they outlive keras.backend.clear_session()
            self._train = (tf.constant(self.x["train"]), {k: tf.constant(v) for k, v in self.y["train"].items()})
        x, y = self._train
        rows = self.num_rows["train"]
        ds = tf.data.Dataset.range(rows).shuffle(rows, seed=seed, reshuffle_each_iteration=True).batch(BATCH_SIZE)
        return ds.map(lambda r: ({INPUT: tf.gather(x, r)}, {k: tf.gather(v, r) for k, v in y.items()})).prefetch(2)


def predict(model, x, batch_size: int = 8192) -> dict:
    """``{task: float64 (rows,)}`` predicted probabilities of ``x``, in batches."""
    parts = [model({INPUT: x[i:i + batch_size]}, training=False) for i in range(0, len(x), batch_size)]
    return {task: np.concatenate([np.asarray(p[task], dtype=np.float64).ravel() for p in parts]) for task in parts[0]}


def exact_aucs(scores: dict, labels: dict) -> dict:
    """Exact AUC per task of predicted ``scores`` (NaN for non-finite predictions)."""
    from keras_mmoe.metrics import roc_auc

    return {t: roc_auc(labels[t], scores[t]) if np.all(np.isfinite(scores[t])) else float("nan") for t in labels}


def _best_main_auc_callback(x, labels, main: str, patience: int):
    """A Keras callback: the exact validation AUC of every task after each epoch; stops after
    ``patience`` epochs without a higher main-task AUC (or at once on non-finite predictions) and
    leaves the model with the best epoch's weights."""
    from keras_mmoe._keras import keras

    class BestMainAUC(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.curve, self.best, self.best_epoch, self.best_weights, self.wait = [], {}, 0, None, 0

        def on_epoch_end(self, epoch, logs=None):
            aucs = exact_aucs(predict(self.model, x), labels)
            self.curve.append(aucs)
            if not math.isfinite(aucs[main]):
                self.model.stop_training = True
                return
            if not self.best or aucs[main] > self.best[main]:
                self.best, self.best_epoch, self.wait = aucs, epoch + 1, 0
                self.best_weights = self.model.get_weights()
            else:
                self.wait += 1
                if self.wait >= patience:
                    self.model.stop_training = True

        def on_train_end(self, logs=None):
            if self.best_weights is not None:
                self.model.set_weights(self.best_weights)

    return BestMainAUC()


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_run(data: EncodedCensus, model: str, learning_rate: float, width: float, seed: int, *,
              max_epochs: int, patience: int) -> dict:
    """Trains one run; returns its record: exact validation AUC per epoch, the best epoch, test AUC
    and loss per task with the best epoch's weights, parameters, seconds."""
    from keras_mmoe._keras import keras
    from keras_mmoe.metrics import binary_crossentropy
    from keras_mmoe.models import BUILDERS, compile_kwargs

    start, cpu = time.perf_counter(), _cpu_seconds()
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    sizes = model_sizes(model, data.input_dim, width, len(data.task_names))
    net = BUILDERS[model](data.input_dim, list(data.task_names), name=model, **sizes)
    net.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=compile_kwargs(data.task_names)["loss"],
                jit_compile=False)
    watch = _best_main_auc_callback(data.x["validation"], data.y["validation"], data.main_task, patience)
    net.fit(data.train_dataset(seed), epochs=max_epochs, callbacks=[watch], verbose=0, shuffle=False)
    scores = predict(net, data.x["test"])
    test_auc = exact_aucs(scores, data.y["test"])
    best = watch.best or {t: float("nan") for t in data.task_names}
    epochs = len(watch.curve)
    return {
        "group": data.group, "model": model, "learning_rate": learning_rate, "width": width, "seed": seed,
        "params": int(net.count_params()), "sizes": json.loads(json.dumps(sizes)),
        "epochs": epochs, "best_epoch": watch.best_epoch, "stopped": epochs < max_epochs,
        "validation_auc": {t: float(best[t]) for t in data.task_names},
        "validation_curve": [float(f"{c[data.main_task]:.6g}") for c in watch.curve],
        "test_auc": {t: float(test_auc[t]) for t in data.task_names},
        "test_loss": {t: binary_crossentropy(data.y["test"][t], scores[t]) if np.all(np.isfinite(scores[t]))
                      else float("nan") for t in data.task_names},
        "seconds": round(time.perf_counter() - start, 1), "cpu_seconds": round(_cpu_seconds() - cpu, 1),
    }


# --- settings and the study -----------------------------------------------------------------


def check_settings(settings: dict) -> dict:
    """The study's settings, checked (ValueError naming the setting) and normalized to JSON types."""
    models = list(settings["models"])
    if not models or any(m not in MODELS for m in models) or len(set(models)) != len(models):
        raise ValueError(f"`models` must name some of {list(MODELS)} once each, received: models={models!r}")
    groups = list(settings["groups"])
    if not groups or any(isinstance(g, bool) or g not in (1, 2) for g in groups) or len(set(groups)) != len(groups):
        raise ValueError(f"`groups` must name task groups 1 (income, marital) and/or 2 (education, marital) once "
                         f"each, received: groups={groups!r}")
    for name in ("learning_rates", "widths"):
        if not len(settings[name]) or len(set(settings[name])) != len(settings[name]):
            raise ValueError(f"`{name}` must hold at least one value, each once, received: {name}={list(settings[name])!r}")
    rates = [_validation.check_positive_float("learning_rates", lr) for lr in settings["learning_rates"]]
    widths = []
    for w in settings["widths"]:
        units = EXPERT_UNITS * w if not isinstance(w, bool) and isinstance(w, (int, float)) else float("nan")
        if not (units >= 1 and float(units).is_integer()):
            raise ValueError(f"`widths` must be budget multiples w > 0 with {EXPERT_UNITS} w a whole number of "
                             f"expert units, received: widths={list(settings['widths'])!r}")
        widths.append(float(w))
    for name in ("runs", "search_runs", "max_epochs", "patience"):
        _validation.check_positive_int(name, settings[name])
    if settings["runs"] > SEARCH_SEED_OFFSET or settings["search_runs"] > SEARCH_SEED_OFFSET:
        raise ValueError(f"`runs` and `search_runs` must be at most {SEARCH_SEED_OFFSET} (their seeds would meet), "
                         f"received: runs={settings['runs']!r}, search_runs={settings['search_runs']!r}")
    _validation.check_seed("seed", settings["seed"])
    _validation.check_seed("data_seed", settings["data_seed"])
    if settings["seed"] is None or settings["data_seed"] is None:
        raise ValueError(f"`seed` and `data_seed` must be non-negative integers (they fix the runs), received: "
                         f"seed={settings['seed']!r}, data_seed={settings['data_seed']!r}")
    if settings["max_rows"] is not None:
        _validation.check_positive_int("max_rows", settings["max_rows"])
        if settings["max_rows"] < 10:
            raise ValueError(f"`max_rows` must be at least 10, received: max_rows={settings['max_rows']!r}")
    return dict(settings, models=models, groups=groups, learning_rates=rates, widths=widths,
                tower_units=list(settings["tower_units"]))


def make_settings(**settings) -> dict:
    """The study's recorded settings: ``settings`` (the arguments of :func:`study` that change the
    results) checked, with the fixed sizes added. Raises ValueError naming a bad one."""
    return check_settings(dict(settings, batch_size=BATCH_SIZE, num_experts=NUM_EXPERTS, expert_units=EXPERT_UNITS,
                               tower_units=TOWER_UNITS))


def study(
    path: str | os.PathLike,
    *,
    groups: Sequence[int] = (1, 2),
    models: Sequence[str] = DEFAULT_MODELS,
    runs: int = 10,
    search_runs: int = 2,
    learning_rates: Sequence[float] = (3e-4, 1e-3, 3e-3),
    widths: Sequence[float] = (1, 2),
    max_epochs: int = 50,
    patience: int = 4,
    seed: int = 0,
    data_seed: int = 0,
    max_rows: int | None = None,
    data_dir: str | os.PathLike | None = None,
    command: str | None = None,
    progress: report.Progress | None = None,
) -> dict:
    """Runs (or continues) the tuned census study whose JSON file is ``path``; returns its record
    (settings, every run, summary, the sessions that contributed). ``data_dir`` only says where the
    data is (it is not recorded). Raises ValueError naming a bad argument, or a file written with
    other settings, before any work."""
    settings = make_settings(groups=groups, models=models, runs=runs, search_runs=search_runs,
                             learning_rates=learning_rates, widths=widths, max_epochs=max_epochs, patience=patience,
                             seed=seed, data_seed=data_seed, max_rows=max_rows)
    progress = progress or report.silent
    start = time.perf_counter()
    store = StudyStore(path, settings, session={"command": command, "environment": report.environment()})
    total = count_units(settings)
    done = len(store.record["units_done"])
    progress(f"tuned census study: {total} runs"
             + (f", {done} done before (continuing {os.fspath(path)})" if done else ""))
    data, counter, chosen = None, done, {}
    units = {(g, m): search_units(settings, g, m) for g in settings["groups"] for m in settings["models"]}
    for group, phase, model, index in work(settings):
        if phase == "search":
            lr, width, _, seed_ = units[group, model][index]
            key = search_key(group, model, lr, width, seed_)
        else:
            if (group, model) not in chosen:
                chosen[group, model] = choose_configuration(store.runs, group, model, settings)
                c = chosen[group, model]
                progress(f"group {group}, {model}: chosen learning rate {c['learning_rate']:g}, width {c['width']:g} "
                         f"(mean validation AUC {c['validation_auc']:.4f})")
            lr, width, seed_ = chosen[group, model]["learning_rate"], chosen[group, model]["width"], settings["seed"] + index
            key = final_key(group, model, lr, width, seed_)
        if store.is_done(key):
            continue
        if data is None or data.group != group:
            data = None  # one group's matrices in memory at a time
            progress(f"loading and encoding census-income group {group}"
                     + (f" (first {settings['max_rows']} rows)" if settings["max_rows"] else ""))
            data = EncodedCensus(group, settings["data_seed"], settings["max_rows"], data_dir)
            progress(f"tasks {list(data.task_names)}; rows {data.num_rows}; {data.input_dim} encoded columns")
        counter += 1
        progress(f"[{counter}/{total}] {key}")
        record = train_run(data, model, lr, width, seed_, max_epochs=settings["max_epochs"],
                           patience=settings["patience"])
        store.add(key, [dict(record, phase=phase, run=index)])
        progress(f"  validation AUC {record['validation_auc'][data.main_task]:.4f} (epoch {record['best_epoch']} of "
                 f"{record['epochs']}), test AUC " + ", ".join(f"{t} {v:.4f}" for t, v in record["test_auc"].items())
                 + f"; {record['seconds']:.0f} s, {record['cpu_seconds']:.0f} s CPU")
    store.update(summary=summarize(store.record))
    return dict(store.record, seconds=round(time.perf_counter() - start, 1), path=os.fspath(path))


def load(path: str | os.PathLike) -> dict:
    """A study's record read from its JSON file as it stands (a study running elsewhere included),
    with its summary computed afresh; the file is not written."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable study file ({error})") from None
    if not isinstance(record, dict) or not {"settings", "runs"} <= set(record) or "widths" not in record["settings"]:
        raise ValueError(f"{path}: not a tuned census study file")
    return dict(record, summary=summarize(record), path=path)


# --- selection and summary --------------------------------------------------------------------


def choose_configuration(runs: list, group: int, model: str, settings: dict) -> dict | None:
    """The configuration with the highest mean validation AUC of the main task over its search runs
    (a non-finite run counts as -inf; ties: smaller width, then smaller learning rate), as
    ``{"learning_rate", "width", "validation_auc"}``; None until every search run of ``model`` in
    ``group`` is recorded."""
    main = _group_tasks(group)[0]
    search = [r for r in runs if r["phase"] == "search" and r["group"] == group and r["model"] == model]
    if len(search) < len(search_units(settings, group, model)):
        return None
    by_config = {}
    for r in search:
        value = r["validation_auc"][main]
        by_config.setdefault((r["learning_rate"], r["width"]), []).append(value if math.isfinite(value) else -math.inf)
    (lr, width), values = max(by_config.items(), key=lambda item: (np.mean(item[1]), -item[0][1], -item[0][0]))
    return {"learning_rate": lr, "width": width, "validation_auc": float(np.mean(values))}


def _paper_entry(group: int, model: str, tasks: Sequence[str]) -> dict:
    published = paper.CENSUS_AUC.get(group, {}).get(model)
    entry = {}
    if published:
        entry["mmoe_paper"] = {tasks[0]: {"best": published[0], "mean": published[1]}, tasks[1]: {"mean": published[2]}}
    ple = paper.PLE_CENSUS_AUC.get(group, {}).get(model)
    if ple:
        entry["ple_paper"] = dict(zip(tasks, ple))
    return entry


def _paper_difference(group: int, other: str, tasks: Sequence[str]) -> dict:
    """The papers' MMoE-minus-``other`` AUC per task: the MMoE paper's means, the PLE paper's numbers."""
    result = {}
    mmoe, theirs = paper.CENSUS_AUC.get(group, {}).get(REFERENCE), paper.CENSUS_AUC.get(group, {}).get(other)
    if mmoe and theirs:
        result["mmoe_paper"] = {tasks[0]: mmoe[1] - theirs[1], tasks[1]: mmoe[2] - theirs[2]}
    mmoe, theirs = paper.PLE_CENSUS_AUC.get(group, {}).get(REFERENCE), paper.PLE_CENSUS_AUC.get(group, {}).get(other)
    if mmoe and theirs:
        result["ple_paper"] = {t: a - b for t, a, b in zip(tasks, mmoe, theirs)}
    return result


def summarize(record: dict, n_resamples: int = 10_000, seed: int = 0) -> dict:
    """Per group: each method's search (validation AUC per configuration) and chosen configuration,
    the test AUC statistics per task of its final runs, and the paired differences of MMoE and each
    compared method per task (over the seeds both have) with bootstrap 95% intervals, beside the
    papers' numbers. Works on a study in progress (what is there)."""
    settings, runs = record["settings"], record["runs"]
    summary = {}
    for group in settings["groups"]:
        tasks = _group_tasks(group)
        models, finals = {}, {}
        for model in settings["models"]:
            search = [r for r in runs if r["phase"] == "search" and r["group"] == group and r["model"] == model]
            final = [r for r in runs if r["phase"] == "final" and r["group"] == group and r["model"] == model]
            if not search:
                continue
            configs = []
            for lr in settings["learning_rates"]:
                for w in settings["widths"]:
                    mine = [r for r in search if r["learning_rate"] == lr and r["width"] == w]
                    if mine:
                        configs.append({"learning_rate": lr, "width": w, "params": mine[0]["params"],
                                        "validation_auc": stats.describe(r["validation_auc"][tasks[0]] for r in mine),
                                        "epochs": stats.describe(r["epochs"] for r in mine),
                                        "stopped": sum(r["stopped"] for r in mine)})
            entry = {"method": paper.DISPLAY_NAMES.get(model, model),
                     "search": {"done": len(search), "total": len(search_units(settings, group, model)),
                                "configs": configs},
                     "chosen": choose_configuration(runs, group, model, settings),
                     **_paper_entry(group, model, tasks)}
            if final:
                finals[model] = {r["seed"]: r for r in final}
                entry["final"] = {
                    "runs": len(final), "params": final[0]["params"],
                    "test_auc": {t: stats.describe(r["test_auc"][t] for r in final) for t in tasks},
                    "epochs": stats.describe(r["epochs"] for r in final),
                    "stopped": sum(r["stopped"] for r in final),
                    "seconds": stats.describe(r["seconds"] for r in final),
                    "cpu_seconds": stats.describe(r.get("cpu_seconds", float("nan")) for r in final),
                }
            models[model] = entry
        paired = {}
        for other in settings["models"]:
            if other == REFERENCE or REFERENCE not in finals or other not in finals:
                continue
            seeds = sorted(set(finals[REFERENCE]) & set(finals[other]))
            if not seeds:
                continue
            pair = {}
            for t in tasks:
                mine = {s: finals[REFERENCE][s]["test_auc"][t] for s in seeds}
                theirs = {s: finals[other][s]["test_auc"][t] for s in seeds}
                d = stats.paired_difference(mine, theirs, n_resamples=n_resamples, seed=seed)
                d["mmoe_higher"] = int(sum(mine[s] > theirs[s] for s in seeds))
                pair[t] = d
            paired[f"{REFERENCE}-{other}"] = dict(pair, paper=_paper_difference(group, other, tasks))
        summary[f"group={group}"] = {"tasks": list(tasks), "models": models, "paired": paired}
    return summary


# --- tables and figures ------------------------------------------------------------------------


def _stat(d: dict) -> str:
    return f"{d['mean']:.4f} ± {d['std']:.4f}, {d['median']:.4f} [{d['q1']:.4f}, {d['q3']:.4f}]"


def _paper_cells(entry: dict, tasks: Sequence[str]) -> list:
    mp, pp = entry.get("mmoe_paper"), entry.get("ple_paper")
    main = f"{mp[tasks[0]]['mean']:.4f} ({mp[tasks[0]]['best']:.4f})" if mp else "-"
    aux = f"{mp[tasks[1]]['mean']:.4f}" if mp else "-"
    ple = " / ".join(f"{pp[t]:.4f}" for t in tasks) if pp else "-"
    return [main, aux, ple]


def to_markdown(record: dict) -> str:
    """The study's tables per group: the chosen configurations and the final runs' test AUC, the
    paired differences, and the search."""
    summary = record.get("summary") or summarize(record)
    settings = record["settings"]
    lines = ["Census-income, every method tuned: test AUC of each method's chosen configuration "
             "(learning rate x width, chosen on the main task's validation AUC) over its final runs"]
    for group_key, entry in summary.items():
        tasks = entry["tasks"]
        main, aux = tasks
        lines.append(f"\n### Group {group_key.split('=')[1]}: {main} (main) and {aux}\n")
        if not entry["models"]:
            lines.append("No run recorded yet.\n")
            continue
        header = ["method", "chosen: learning rate, width (params)", "validation AUC (search)", "runs",
                  "epochs (median)", f"{main} AUC mean ± std, median [q1, q3]", f"{aux} AUC mean ± std, median [q1, q3]",
                  f"MMoE paper {main} mean (best)", f"MMoE paper {aux}", f"PLE paper {main} / {aux}"]
        rows = []
        for model, m in entry["models"].items():
            chosen, final = m["chosen"], m.get("final")
            if chosen is None:
                rows.append([m["method"], f"search {m['search']['done']}/{m['search']['total']} runs", "-", 0, "-", "-",
                             "-"] + _paper_cells(m, tasks))
                continue
            config = f"{chosen['learning_rate']:g}, {chosen['width']:g}" + (f" ({final['params']:,})" if final else "")
            if final is None:
                rows.append([m["method"], config, f"{chosen['validation_auc']:.4f}", 0, "-", "-", "-"]
                            + _paper_cells(m, tasks))
                continue
            rows.append([m["method"], config, f"{chosen['validation_auc']:.4f}", final["runs"],
                         f"{final['epochs']['median']:.0f}", _stat(final["test_auc"][main]),
                         _stat(final["test_auc"][aux])] + _paper_cells(m, tasks))
        lines.append(report.markdown_table(header, rows))
        if entry["paired"]:
            lines.append("Paired differences of the test AUC, MMoE minus the method (run r of both shares seed r "
                         "and the data split): mean [bootstrap BCa 95% CI], runs where MMoE is higher; the papers' "
                         "differences (MMoE paper: means over runs; PLE paper: its one setup):\n")
            header = ["comparison", f"{main}", "MMoE higher", f"MMoE paper {main}", f"PLE paper {main}",
                      f"{aux}", "MMoE higher", f"MMoE paper {aux}", f"PLE paper {aux}"]
            rows = []
            for pair, d in entry["paired"].items():
                cells = [f"MMoE − {paper.DISPLAY_NAMES.get(pair.split('-')[1], pair)}"]
                for t in tasks:
                    x = d[t]
                    ci = (f"[{x['ci_low']:+.4f}, {x['ci_high']:+.4f}]" if math.isfinite(x["ci_low"])
                          else "[no interval]")
                    cells += [f"{x['mean']:+.4f} {ci}", f"{x['mmoe_higher']}/{x['n']}"]
                    for source in ("mmoe_paper", "ple_paper"):
                        value = d["paper"].get(source, {}).get(t)
                        cells.append("-" if value is None else f"{value:+.4f}")
                rows.append(cells)
            lines.append(report.markdown_table(header, rows))
        configs = [(lr, w) for lr in settings["learning_rates"] for w in settings["widths"]]
        lines.append(f"Search: mean validation AUC of {main} per configuration (learning rate, width) over its "
                     f"{settings['search_runs']} search run(s), median epochs; * = chosen:\n")
        header = ["method"] + [f"{lr:g}, {w:g}" for lr, w in configs]
        rows = []
        for model, m in entry["models"].items():
            by = {(c["learning_rate"], c["width"]): c for c in m["search"]["configs"]}
            chosen = m["chosen"]
            cells = [m["method"]]
            for config in configs:
                c = by.get(config)
                star = "*" if chosen and (chosen["learning_rate"], chosen["width"]) == config else ""
                cells.append("-" if c is None else
                             f"{c['validation_auc']['mean']:.4f}{star} ({c['epochs']['median']:.0f})")
            rows.append(cells)
        lines.append(report.markdown_table(header, rows))
    done, total = len(record["runs"]), count_units(settings)
    cpu = [r["cpu_seconds"] for r in record["runs"] if math.isfinite(r.get("cpu_seconds", float("nan")))]
    epochs = sum(r["epochs"] for r in record["runs"])
    cost = (f" CPU time of the recorded runs: {sum(cpu) / 3600:.2f} h, {np.mean(cpu):.0f} s per run, "
            f"{sum(cpu) / max(epochs, 1):.2f} s per epoch ({epochs} epochs)." if cpu else "")
    lines.append(f"Runs recorded: {done} of {total}" + (" (the study is not finished)" if done < total else "")
                 + f".{cost} Setup: {settings}. Sessions: {len(record.get('sessions', []))}.")
    commands = [s.get("command") for s in record.get("sessions", []) if s.get("command")]
    if commands:
        lines.append(f"Command: `{commands[-1]}`")
    return "\n".join(lines) + "\n"


def plot_group(record: dict, group: int):
    """One group's final runs: the test AUC of every run per method and task (box and points), and the
    paired differences MMoE - method with their 95% intervals."""
    from matplotlib.figure import Figure

    summary = (record.get("summary") or summarize(record))[f"group={group}"]
    tasks = summary["tasks"]
    models = [m for m, e in summary["models"].items() if e.get("final")]
    fig = Figure(figsize=(5.2 * 3, 4.0))
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, 3, i + 1)
        values = [[r["test_auc"][task] for r in record["runs"] if r["phase"] == "final" and r["group"] == group
                   and r["model"] == m and math.isfinite(r["test_auc"][task])] for m in models]
        if models:
            ax.boxplot(values, showmeans=True)
            for j, v in enumerate(values):
                ax.plot(np.full(len(v), j + 1) + np.linspace(-0.15, 0.15, len(v)), v, ".", alpha=0.5, color="grey")
        ax.set_xticks(range(1, len(models) + 1))
        ax.set_xticklabels([paper.DISPLAY_NAMES.get(m, m).split(" (")[0] for m in models], rotation=45, ha="right",
                           fontsize=8)
        ax.set_title(f"{task}: test AUC per final run")
    ax = fig.add_subplot(1, 3, 3)
    pairs = list(summary["paired"].items())
    for k, task in enumerate(tasks):
        x = np.arange(len(pairs)) + (k - 0.5) * 0.2
        means = [d[task]["mean"] for _, d in pairs]
        low = [d[task]["mean"] - d[task]["ci_low"] for _, d in pairs]
        high = [d[task]["ci_high"] - d[task]["mean"] for _, d in pairs]
        ax.errorbar(x, means, yerr=[low, high], fmt="o", capsize=3, label=task)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xlim(-0.5, max(len(pairs), 1) - 0.5)
    ax.set_xticks(range(len(pairs)))
    ax.set_xticklabels([f"MMoE − {paper.DISPLAY_NAMES.get(p.split('-')[1], p).split(' (')[0]}" for p, _ in pairs],
                       fontsize=8)
    ax.set_title("paired test AUC difference, 95% CI")
    if pairs:
        ax.legend(fontsize=8)
    fig.suptitle(f"census-income group {group}, tuned", fontsize=10)
    fig.tight_layout()
    return fig


def write_outputs(record: dict, out_dir: str) -> dict:
    """Writes ``census_tuned.md`` and one figure per group with final runs
    (``census_tuned_group<G>.png``) into ``out_dir``; the JSON is the study's own file
    (``record["path"]``). Returns the paths."""
    base = os.path.join(out_dir, NAME)
    record = dict(record, summary=record.get("summary") or summarize(record))
    paths = {"markdown": report.write_text(base + ".md", to_markdown(record))}
    if record.get("path"):
        paths["json"] = record["path"]
    for group in record["settings"]["groups"]:
        if not any(m.get("final") for m in record["summary"][f"group={group}"]["models"].values()):
            continue
        path = f"{base}_group{group}.png"
        fig = plot_group(record, group)
        fig.savefig(path + ".tmp.png", dpi=110)
        os.replace(path + ".tmp.png", path)
        paths[f"group{group}"] = path
    return paths
