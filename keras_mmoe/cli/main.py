"""Entry point of the ``keras-mmoe`` console script.

Every command also takes ``--config FILE`` (JSON or TOML): its keys are the command's long flag
names; flags given on the command line win over the file.

Every subcommand lives in its own module of this package and exposes
``add_parser(subparsers)``, which registers an ``argparse`` parser whose
``func`` default is called with the parsed arguments.
"""

import argparse
import importlib
import os
import sys

from keras_mmoe.cli.common import CLIError, add_config_argument, apply_config

# Module names under keras_mmoe.cli, in the order `--help` lists them.
COMMAND_MODULES = ["train", "evaluate", "export", "inspect", "reproduce"]

# Library errors that come from what the user asked for, shown as one line.
# OSError covers missing files and failed downloads.
USER_ERRORS = (CLIError, ValueError, OSError, KeyError)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-mmoe",
        description="Multi-gate Mixture-of-Experts for multi-task ranking: train, evaluate, "
        "export for TensorFlow Serving, inspect exports, reproduce the paper.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"keras_mmoe.cli.{name}")
        except ModuleNotFoundError as error:
            if error.name == f"keras_mmoe.cli.{name}":
                continue  # a command not written yet is simply not offered
            raise
        command = module.add_parser(subparsers)
        if not any(isinstance(a, argparse._SubParsersAction) for a in command._actions):
            add_config_argument(command)  # commands with sub-commands add it to each of those
    return parser


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        apply_config(args, sys.argv[1:] if argv is None else argv)
        return args.func(args) or 0
    except USER_ERRORS as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        print(f"keras-mmoe {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
