"""``keras-mmoe spec``: data specs for ``train --spec``.

``keras-mmoe spec infer FILES --label COLUMN:TYPE ...`` writes a starting spec from the CSV header
(or the tf.Example keys) and a sample of rows (``keras_mmoe.data.infer_spec``): every column that
is not a label becomes a feature, typed from the sample (numbers, categories, ``a|b`` cells), with
a comment line of what the sample showed (missing rate, distinct values); each label becomes a
task (``binary`` or ``regression``). Read it and edit it before training. It goes to stdout, or
to ``--out FILE`` (never over an existing file without ``--overwrite``). The file patterns in its
``[data] train`` are relative to the spec file's directory: on stdout they are written as given
(relative to the current directory, so save the spec there), with ``--out`` rewritten relative to
that file's directory.

``keras-mmoe spec check SPEC`` reads the spec and runs the statistics pass over its train files
(every row checked), then prints the plan ``train --spec`` would print (files, rows, features with
their vocabulary sizes, tasks) without training.

Example::

    keras-mmoe spec infer "data/train-*.csv.gz" --label clicked:binary --label watch_seconds:regression > spec.toml
    keras-mmoe spec infer data/train.csv --label clicked:binary --out specs/ranker.toml
    keras-mmoe spec check spec.toml
"""

from __future__ import annotations

import argparse
import os
import sys

from keras_mmoe.cli.common import CLIError, add_command, import_tensorflow, non_negative_int, positive_int, say

#: ``--delimiter`` spellings of a tab.
_TABS = ("\\t", "tab", "TAB")


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "spec", help="data specs for train --spec: infer a starting spec, check a spec",
                    description=__doc__)
    commands = p.add_subparsers(dest="spec_command", metavar="COMMAND")
    infer = add_command(commands, "infer", help="a starting spec from a CSV or TFRecord header and a sample of rows",
                        description=__doc__)
    infer.add_argument("files", nargs="+", metavar="FILES",
                       help="CSV (plain or .gz, with a header line) or TFRecord files or patterns (quote globs)")
    infer.add_argument("--label", action="append", required=True, metavar="COLUMN:TYPE",
                       help="a label column and its task type (binary or regression); repeat for each task")
    infer.add_argument("--out", default=None, metavar="FILE",
                       help="write the spec to this .toml file instead of stdout")
    infer.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    infer.add_argument("--sample-rows", type=positive_int, default=10_000, help="rows read from the first files")
    infer.add_argument("--delimiter", default=None,
                       help="CSV delimiter, one character or \\t (default: guessed from the header line)")
    infer.set_defaults(func=run_infer)
    check = add_command(commands, "check", help="read a spec and its train files and print the training plan",
                        description=__doc__)
    check.add_argument("spec", metavar="SPEC", help="a spec file (.toml or .json)")
    check.add_argument("--max-bad-rows", type=non_negative_int, default=None, metavar="N",
                       help="skip up to N malformed rows (counted) and fail beyond (default: the spec's)")
    check.set_defaults(func=run_check)
    p.set_defaults(func=lambda args: _no_command(p))
    return p


def _no_command(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_infer(args: argparse.Namespace) -> int:
    out = args.out
    if out is not None:
        if not out.endswith(".toml"):
            raise CLIError(f"--out must name a .toml file (the spec is written as TOML), received {out}")
        if os.path.exists(out) and not args.overwrite:
            raise CLIError(f"{out} already exists; pass --overwrite to replace it")
        if os.path.isdir(out):
            raise CLIError(f"--out {out} is a directory")
    delimiter = "\t" if args.delimiter in _TABS else args.delimiter
    if delimiter is not None and len(delimiter) != 1:
        raise CLIError(f"--delimiter must be one character (or \\t), received {args.delimiter!r}")
    import_tensorflow(announce=False)  # keras_mmoe.data imports TensorFlow; its start-up lines are filtered
    from keras_mmoe import saving
    from keras_mmoe.data import infer_spec

    if out is None:
        base_dir, patterns = ".", list(args.files)
    else:
        base_dir = os.path.dirname(os.path.abspath(out))
        patterns = [p if os.path.isabs(p) else os.path.relpath(os.path.abspath(p), base_dir) for p in args.files]
    text = infer_spec(patterns, args.label, sample_rows=args.sample_rows, delimiter=delimiter, base_dir=base_dir)
    if out is None:
        sys.stdout.write(text)
        say("paths in [data] train are relative to the spec file's directory: save the spec in the current "
            "directory (or use --out FILE); check every entry before training")
    else:
        saving.write_text(out, text)
        say(f"wrote {out}; check every entry before training (keras-mmoe spec check {out})")
    return 0


def run_check(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.spec):
        raise CLIError(f"spec file not found: {args.spec}")
    import_tensorflow()
    from keras_mmoe import workflow
    from keras_mmoe.data import compute_statistics, load_spec
    from keras_mmoe.data.statistics import describe

    spec = load_spec(args.spec)
    if args.max_bad_rows is not None:
        spec = spec.replace_data(max_bad_rows=args.max_bad_rows)
    workflow.check_model_section(spec)
    workflow.check_train_options(spec)
    statistics = compute_statistics(spec)
    for line in describe(spec, statistics):
        print(line)
    arguments = ", ".join(f"{k}={v}" for k, v in workflow.model_arguments(spec).items())
    print(f"model: {spec.architecture} ({arguments})")
    print(f"train: {spec.train.epochs} epoch(s), batch size {spec.train.batch_size}, learning rate "
          f"{spec.train.learning_rate:g}, {spec.train.mixed_precision}" + (", XLA" if spec.train.jit_compile else ""))
    return 0
