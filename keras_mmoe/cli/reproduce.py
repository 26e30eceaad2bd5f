"""``keras-mmoe reproduce <study>``: the papers' experiments, tables and plots.

Studies (plain functions in :mod:`keras_mmoe.reproduce`; this module holds their flags and prints
their progress): ``census`` (MMoE paper section 6.3), ``synthetic`` (sections 3.2 and 5, task
correlation), ``polarization`` (gate polarization and expert dropout, YouTube RecSys 2019).
Each writes Markdown and JSON tables (and PNG plots) to ``--out-dir``; the JSON records the
settings and a portable command that reproduces them (paths left out: they do not change the
results). ``synthetic --protocol converged`` and ``census --protocol tuned`` write their JSON as
they go, and the same command continues a study that was stopped.
"""

from __future__ import annotations

import argparse
import importlib
import shlex

from keras_mmoe.cli.common import (
    CLIError,
    add_command,
    correlation,
    import_tensorflow,
    positive_float,
    positive_int,
    rate,
    say,
    seed,
)

def non_negative_float(text: str) -> float:
    """argparse type of a float >= 0 (noise standard deviations)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a float >= 0, received {text!r}") from None
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a float >= 0, received {text}")
    return value


#: Flags that name places on this machine: left out of the recorded command.
PATH_FLAGS = ("data_dir", "out_dir", "export_dir", "config")


# --- census ----------------------------------------------------------------------------------


#: ``--protocol`` of ``reproduce census``: flags that apply to one protocol only.
CENSUS_PROTOCOL_FLAGS = {
    "fixed": ("group", "epochs", "learning_rate", "export_dir"),
    "tuned": ("groups", "search_runs", "learning_rates", "widths", "max_epochs"),
}


def add_census_arguments(parser: argparse.ArgumentParser) -> None:
    from keras_mmoe.reproduce import census_tuned
    from keras_mmoe.reproduce.census import DEFAULT_MODELS, MODELS

    parser.add_argument("--protocol", choices=("fixed", "tuned"), default="fixed",
                        help="fixed: one learning rate and size for every model; tuned: per group and model "
                        "the learning rate and width chosen on the main task's validation AUC, then --runs "
                        "paired runs of the choice, bootstrap intervals of MMoE's differences, resumable")
    parser.add_argument("--group", type=int, choices=(1, 2), default=1,
                        help="task group: 1 (income, marital) or 2 (education, marital) (fixed)")
    parser.add_argument("--groups", type=int, choices=(1, 2), nargs="+", default=[1, 2], help="task groups (tuned)")
    parser.add_argument("--runs", type=positive_int, default=None,
                        help="runs per model (default: 3 fixed; 10 tuned, of each model's chosen configuration)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=None, metavar="MODEL",
                        help=f"models to train, of: {' '.join(MODELS)} (cgc, ple: PLE with 1 and 2 levels, "
                        f"compared with mmoe run by run and with the PLE paper) (default: {' '.join(DEFAULT_MODELS)} "
                        f"fixed; {' '.join(census_tuned.DEFAULT_MODELS)} tuned)")
    parser.add_argument("--epochs", type=positive_int, default=10, help="maximum epochs per run (fixed)")
    parser.add_argument("--patience", type=positive_int, default=None,
                        help="early stopping: epochs without a higher validation AUC of the main task "
                        "(default: 2 fixed, 4 tuned)")
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3, help="Adam learning rate (fixed)")
    parser.add_argument("--learning-rates", type=positive_float, nargs="+", default=[3e-4, 1e-3, 3e-3],
                        help="the learning-rate grid of the search (tuned)")
    parser.add_argument("--widths", type=positive_float, nargs="+", default=[1, 2],
                        help="the width grid of the search: w gives MMoE 8 experts of 16 w units and every "
                        "other model that parameter budget (tuned)")
    parser.add_argument("--search-runs", type=positive_int, default=2,
                        help="runs per configuration in the search (tuned)")
    parser.add_argument("--max-epochs", type=positive_int, default=50, help="most epochs per run (tuned)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of run 1; run r uses seed + r - 1")
    parser.add_argument("--data-seed", type=seed, default=0, help="seed of the validation/test split")
    parser.add_argument("--data-dir", default=None,
                        help="census data directory (default: $KERAS_MMOE_DATA_DIR or ~/.keras_mmoe/data; "
                        "downloaded when absent)")
    parser.add_argument("--max-rows", type=positive_int, default=None, help="use only the first rows of each file")
    parser.add_argument("--out-dir", default="results",
                        help="where census_group<G>.md/.json go (fixed); census_tuned.json/.md and plots (tuned: "
                        "its JSON is continued when it exists)")
    parser.add_argument("--export-dir", default=None,
                        help="also export the MMoE run with the best validation AUC for TF Serving here, with "
                        "its training record (keras-mmoe evaluate then scores it on the same split) (fixed)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 3000 rows, 1 epoch, 1 run (fixed); 3000 rows, at most 2 epochs, "
                        "learning rates 1e-3 1e-2, width 1, 1 search run, 2 runs (tuned)")


def run_census(args: argparse.Namespace) -> int:
    if args.max_rows is not None and args.max_rows < 10:
        raise CLIError(f"--max-rows must be at least 10, received {args.max_rows}")
    _refuse_other_protocol_flags(args, add_census_arguments, CENSUS_PROTOCOL_FLAGS)
    if args.protocol == "tuned":
        return run_census_tuned(args)
    from keras_mmoe.reproduce.census import DEFAULT_MODELS

    return _run_study(args, dict(runs=args.runs or 3, epochs=args.epochs, max_rows=args.max_rows),
                      group=args.group, models=args.models or list(DEFAULT_MODELS), patience=args.patience or 2,
                      learning_rate=args.learning_rate, seed=args.seed, data_seed=args.data_seed,
                      data_dir=args.data_dir, export_dir=args.export_dir)


def run_census_tuned(args: argparse.Namespace) -> int:
    """The tuned protocol: its JSON in ``--out-dir`` is written as runs finish and continued by the
    same command."""
    from keras_mmoe.reproduce import census_tuned as tuned

    settings = dict(groups=args.groups, models=args.models or list(tuned.DEFAULT_MODELS), runs=args.runs or 10,
                    search_runs=args.search_runs, learning_rates=args.learning_rates, widths=args.widths,
                    max_epochs=args.max_epochs, patience=args.patience or 4, seed=args.seed,
                    data_seed=args.data_seed, max_rows=args.max_rows)
    if args.quick:
        settings.update(tuned.QUICK)
    tuned.make_settings(**settings)  # a bad setting is one line, before TensorFlow starts
    return _run_resumable(args, tuned, settings, data_dir=args.data_dir)


# --- synthetic -------------------------------------------------------------------------------


#: ``--protocol`` of ``reproduce synthetic``: flags that apply to one protocol only.
SYNTHETIC_PROTOCOL_FLAGS = {
    "fixed": ("epochs", "learning_rate"),
    "converged": ("learning_rates", "noise_stddevs", "max_epochs", "patience"),
}


def add_synthetic_arguments(parser: argparse.ArgumentParser) -> None:
    from keras_mmoe.reproduce.synthetic import DEFAULT_MODELS, MODELS

    parser.add_argument("--protocol", choices=("fixed", "converged"), default="fixed",
                        help="fixed: every run trains --epochs epochs at --learning-rate; converged: the "
                        "learning rate chosen from --learning-rates on a validation split, early stopping, "
                        "both noise readings, paired statistics with bootstrap intervals, resumable")
    parser.add_argument("--correlations", type=correlation, nargs="+", default=[0.5, 0.9, 1.0],
                        help="task correlations p")
    parser.add_argument("--runs", type=positive_int, default=None,
                        help="runs per model and correlation (default: 10 fixed, 20 converged)")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(DEFAULT_MODELS), metavar="MODEL",
                        help=f"models, of: {' '.join(MODELS)} (cgc, ple: PLE with 1 and 2 levels, compared with "
                        "mmoe run by run; fixed protocol only)")
    parser.add_argument("--samples", type=positive_int, default=20_000,
                        help="rows per run: 80%% train, 20%% held out (fixed); 80/10/10%% train, validation, "
                        "test (converged)")
    parser.add_argument("--epochs", type=positive_int, default=30, help="epochs per run (fixed)")
    parser.add_argument("--learning-rate", type=positive_float, default=1e-3, help="Adam learning rate (fixed)")
    parser.add_argument("--learning-rates", type=positive_float, nargs="+", default=[1e-4, 1e-3, 1e-2],
                        help="the learning-rate grid (converged)")
    parser.add_argument("--noise-stddevs", type=non_negative_float, nargs="+", default=[0.1, 0.01],
                        help="label noise standard deviations: the paper's N(0, 0.01) as variance (0.1) and as "
                        "standard deviation (0.01) (converged)")
    parser.add_argument("--max-epochs", type=positive_int, default=400, help="most epochs per run (converged)")
    parser.add_argument("--patience", type=positive_int, default=10,
                        help="early stopping: epochs without a lower validation loss (converged)")
    parser.add_argument("--seed", type=seed, default=0, help="seed of run 1; run r uses seed + r - 1")
    parser.add_argument("--out-dir", default="results",
                        help="where the tables and plots go (converged: also its JSON, continued when it exists)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 runs, 2000 rows, 2 epochs (fixed); 2 runs, 1000 rows, at most 2 "
                        "epochs, learning rates 1e-3 1e-2, noise 0.1 (converged)")


def run_synthetic(args: argparse.Namespace) -> int:
    _refuse_other_protocol_flags(args, add_synthetic_arguments, SYNTHETIC_PROTOCOL_FLAGS)
    if args.protocol == "converged":
        return run_synthetic_converged(args)
    return _run_study(args, dict(runs=args.runs or 10, samples=args.samples, epochs=args.epochs),
                      models=args.models, correlations=args.correlations, learning_rate=args.learning_rate,
                      seed=args.seed)


def run_synthetic_converged(args: argparse.Namespace) -> int:
    """The converged protocol: its JSON in ``--out-dir`` is written as units finish and continued by
    the same command."""
    from keras_mmoe.reproduce import synthetic_converged as converged

    settings = dict(models=args.models, correlations=args.correlations, runs=args.runs or 20,
                    learning_rates=args.learning_rates, noise_stddevs=args.noise_stddevs, samples=args.samples,
                    max_epochs=args.max_epochs, patience=args.patience, seed=args.seed)
    if args.quick:
        settings.update(converged.QUICK)
    return _run_resumable(args, converged, settings)


# --- polarization ----------------------------------------------------------------------------


def polarization_setting(text: str) -> str:
    """argparse type of one ``--settings`` entry: checked, returned as given."""
    from keras_mmoe.reproduce.polarization import parse_setting

    try:
        parse_setting(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_polarization_arguments(parser: argparse.ArgumentParser) -> None:
    from keras_mmoe.reproduce.polarization import DEFAULT_RATES, DEFAULT_SETTINGS

    parser.add_argument("--settings", type=polarization_setting, nargs="+", default=list(DEFAULT_SETTINGS),
                        metavar="LR:EXPERTS[:BOTTOM]",
                        help="learning rate, number of experts and optional shared-bottom width per setting")
    parser.add_argument("--rates", type=rate, nargs="+", default=list(DEFAULT_RATES),
                        help="expert dropout rates compared")
    parser.add_argument("--seeds", type=positive_int, default=12, help="seeds per setting and rate")
    parser.add_argument("--samples", type=positive_int, default=20_000, help="synthetic rows, 80%% to train on")
    parser.add_argument("--epochs", type=positive_int, default=10, help="training epochs")
    parser.add_argument("--correlation", type=correlation, default=0.5, help="task correlation p")
    parser.add_argument("--out-dir", default="results", help="where the tables and plots go")
    parser.add_argument("--quick", action="store_true", help="2 seeds, 2000 rows, 1 epoch: a smoke run")


def run_polarization(args: argparse.Namespace) -> int:
    return _run_study(args, dict(seeds=args.seeds, samples=args.samples, epochs=args.epochs),
                      settings=args.settings, rates=args.rates, correlation=args.correlation)


# --- the command -----------------------------------------------------------------------------

#: study name -> (flags, run)
STUDY_COMMANDS = {
    "census": (add_census_arguments, run_census),
    "synthetic": (add_synthetic_arguments, run_synthetic),
    "polarization": (add_polarization_arguments, run_polarization),
}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "reproduce",
                    help="reproduce the papers' experiments (census, synthetic, polarization) as tables and plots",
                    description=__doc__)
    studies = p.add_subparsers(dest="study", metavar="STUDY")
    for name, (add_arguments, run) in STUDY_COMMANDS.items():
        doc = importlib.import_module(f"keras_mmoe.reproduce.{name}").__doc__ or name
        sp = add_command(studies, name, help=doc.strip().splitlines()[0], description=doc)
        add_arguments(sp)
        sp.set_defaults(func=run)
    p.set_defaults(func=lambda args: _no_study(p))
    return p


def portable_command(args: argparse.Namespace) -> str:
    """``keras-mmoe reproduce <study>`` with every result-changing flag whose value differs from
    its built-in default (config files included), and no path: the same command reproduces the
    results on any machine."""
    fresh = argparse.ArgumentParser()
    STUDY_COMMANDS[args.study][0](fresh)
    words = ["keras-mmoe", "reproduce", args.study]
    for action in fresh._actions:
        if not action.option_strings or action.dest in PATH_FLAGS or action.dest == "help":
            continue
        value = getattr(args, action.dest, action.default)
        if value == action.default:
            continue
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if value is True:
            words.append(flag)
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        words += [flag] + [f"{v:g}" if isinstance(v, float) else str(v) for v in values]
    return " ".join(shlex.quote(w) for w in words)


def _run_study(args: argparse.Namespace, sized: dict, **settings) -> int:
    """Runs study ``args.study`` with ``settings`` and the ``sized`` ones (replaced by the study's
    ``QUICK`` sizes under ``--quick``), records the portable command, writes the outputs and prints
    the table."""
    module = importlib.import_module(f"keras_mmoe.reproduce.{args.study}")
    import_tensorflow()
    if args.quick:
        sized = dict(sized, **module.QUICK)
    record = module.study(progress=say, **settings, **sized)
    record["command"] = portable_command(args)
    paths = module.write_outputs(record, args.out_dir)
    with open(paths["markdown"], encoding="utf-8") as f:
        print(f.read())
    for path in paths.values():
        say(f"wrote {path}")
    return 0


def _refuse_other_protocol_flags(args: argparse.Namespace, add_arguments, protocol_flags: dict) -> None:
    """Raises CLIError naming a flag set away from its default that belongs to another ``--protocol``."""
    defaults = argparse.ArgumentParser()
    add_arguments(defaults)
    for other, flags in protocol_flags.items():
        for flag in flags if other != args.protocol else ():
            if getattr(args, flag) != defaults.get_default(flag):
                raise CLIError(f"--{flag.replace('_', '-')} applies to --protocol {other}, not {args.protocol}")


def _run_resumable(args: argparse.Namespace, module, settings: dict, **where) -> int:
    """Runs (or continues) resumable study ``module`` (``study(path, ...)``) with its JSON
    ``<--out-dir>/<module.NAME>.json``, writes its outputs and prints its table."""
    import os

    path = os.path.join(args.out_dir, module.NAME + ".json")
    import_tensorflow()
    record = module.study(path, command=portable_command(args), progress=say, **settings, **where)
    paths = module.write_outputs(record, args.out_dir)
    with open(paths["markdown"], encoding="utf-8") as f:
        print(f.read())
    for name in paths.values():
        say(f"wrote {name}")
    return 0


def _no_study(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2
