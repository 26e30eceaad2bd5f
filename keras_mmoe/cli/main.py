"""Entry point of the ``keras-mmoe`` console script.

Every subcommand lives in its own module of this package (listed in :data:`COMMAND_MODULES`)
and exposes ``add_parser(subparsers)``, which registers a parser whose ``func`` default is called
with the parsed arguments (a command may have sub-commands of its own, as ``reproduce`` does).
This module adds, once for all of them:

* ``--config FILE`` on every command without sub-commands: a JSON or TOML file whose keys are
  the command's long flag names. Its settings become the parser's defaults before the command
  line is parsed, so flags given on the command line win
  (:func:`keras_mmoe.cli.common.apply_config_file`);
* one-line errors: a user mistake (:data:`USER_ERRORS`) prints
  ``keras-mmoe <command>: error: <message>`` on stderr and exits with code 2, as argparse's own
  errors do; ``KERAS_MMOE_TRACEBACK=1`` shows the traceback instead;
* ``keras-mmoe`` with no command prints the help and exits 2;
* TensorFlow's C++ INFO and WARNING lines off (``TF_CPP_MIN_LOG_LEVEL=2`` unless set; errors still
  show), on top of the start-up filter of :mod:`keras_mmoe._startup`.

``main(argv)`` returns the exit code, so tests call it in-process. Nothing here imports
TensorFlow: commands do, after their cheap checks.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from keras_mmoe.cli.common import CLIError, HelpFormatter, Parser, add_config_argument, apply_config_file, find_config_path

#: Module names under keras_mmoe.cli, in the order `--help` lists them.
COMMAND_MODULES = ("train", "evaluate", "export", "inspect", "spec", "reproduce")

#: Errors that come from what the user asked for, shown as one line: CLIError (the commands'
#: own checks), ValueError (the library's argument and input checks, which name the argument or
#: file) and OSError (missing or unreadable files, failed downloads).
USER_ERRORS = (CLIError, ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="keras-mmoe",
        description="Multi-gate Mixture-of-Experts for multi-task ranking: train, evaluate, "
        "export for TensorFlow Serving, inspect exports, reproduce the papers' experiments.",
        epilog="Each command has --help and takes --config FILE (JSON or TOML). "
        "Set KERAS_MMOE_TRACEBACK=1 to see tracebacks instead of one-line errors.",
        formatter_class=HelpFormatter,
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"keras_mmoe.cli.{name}")
        _add_config_to_leaves(module.add_parser(subparsers))
    return parser


def _subcommands(parser: argparse.ArgumentParser):
    """The parser's sub-command action, or None."""
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _add_config_to_leaves(parser: argparse.ArgumentParser) -> None:
    sub = _subcommands(parser)
    if sub is None:
        add_config_argument(parser)
    else:
        for child in set(sub.choices.values()):
            _add_config_to_leaves(child)


def find_command(parser: argparse.ArgumentParser, argv: list[str]):
    """``(names, parser, rest)``: the command path named in ``argv`` (e.g. ``["reproduce",
    "census"]``), the parser of its last name (None when no command is named) and the tokens
    after it. The top-level parser and commands with sub-commands take no options with values,
    so the first non-option token at each level is the (sub-)command name."""
    names, current, position = [], parser, 0
    while True:
        sub = _subcommands(current)
        if sub is None:
            return names, current, argv[position:]
        index = next((i for i in range(position, len(argv)) if not argv[i].startswith("-")), None)
        if index is None or argv[index] not in sub.choices:
            return names, (current if names else None), argv[position:]
        names.append(argv[index])
        current, position = sub.choices[argv[index]], index + 1


def main(argv: list[str] | None = None) -> int:
    """Runs ``keras-mmoe`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    names, command_parser, rest = find_command(parser, argv)
    label = " ".join(["keras-mmoe", *names])
    try:
        options = rest[: rest.index("--")] if "--" in rest else rest
        asks_help = "-h" in options or "--help" in options
        config = find_config_path(command_parser, rest) if command_parser is not None else None
        if config and not asks_help:
            apply_config_file(command_parser, config)
        args = parser.parse_args(argv)  # exits 0 on --help, 2 on a bad flag
        if not getattr(args, "func", None):
            parser.print_help()
            return 2
        return args.func(args) or 0
    except USER_ERRORS as error:
        if os.environ.get("KERAS_MMOE_TRACEBACK"):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{label}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{label}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
