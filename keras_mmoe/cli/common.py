"""Shared pieces of the command line: the user-error type and progress messages.

Subcommand modules import TensorFlow lazily (inside their ``run`` function) so that
``keras-mmoe --help`` answers at once.
"""

import sys


class CLIError(Exception):
    """A user mistake (missing file, bad flag value, unknown task): one line, exit code 2."""


def say(message):
    """Prints one progress line of what the command is doing (stderr, flushed)."""
    print(f"[keras-mmoe] {message}", file=sys.stderr, flush=True)


def add_config_argument(parser):
    """Adds ``--config FILE`` to a leaf command parser and remembers the parser for
    :func:`apply_config` (settings from a JSON or TOML file; command-line flags win)."""
    parser.add_argument(
        "--config", metavar="FILE", default=None,
        help="read settings from a JSON or TOML file whose keys are this command's long flag names "
        "(e.g. {\"epochs\": 3, \"learning-rate\": 0.01}); flags given on the command line win",
    )
    parser.set_defaults(_parser=parser)


def load_config_file(path):
    """``{key: value}`` from a JSON (``.json``) or TOML (``.toml``) file, or a one-line CLIError."""
    import json
    import os

    if not os.path.isfile(path):
        raise CLIError(f"config file not found: {path}")
    try:
        if path.endswith(".toml"):
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                raise CLIError(f"TOML config files need Python >= 3.11; use JSON instead: {path}") from None
            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
    except CLIError:
        raise
    except Exception as error:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        raise CLIError(f"cannot parse config file {path}: {error}") from None
    if not isinstance(data, dict):
        raise CLIError(f"config file {path} must hold a table of settings, received {type(data).__name__}")
    return data


def _explicit_dests(parser, argv):
    """Destinations of the optional flags that appear in ``argv``."""
    option_dest = {opt: a.dest for a in parser._actions for opt in a.option_strings}
    explicit = set()
    for token in argv:
        if token.startswith("-"):
            name = token.split("=", 1)[0]
            if name in option_dest:
                explicit.add(option_dest[name])
    return explicit


def apply_config(args, argv):
    """Fills ``args`` from ``args.config`` for every flag not given in ``argv``; validates keys,
    choices and types with the same rules as the command line. Returns ``args``."""
    parser = getattr(args, "_parser", None)
    if parser is None or not getattr(args, "config", None):
        return args
    settings = load_config_file(args.config)
    flags = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    explicit = _explicit_dests(parser, argv)
    for key, value in settings.items():
        dest = str(key).lstrip("-").replace("-", "_")
        action = flags.get(dest)
        if action is None:
            valid = ", ".join(sorted(a.option_strings[-1].lstrip("-") for a in flags.values()))
            raise CLIError(f"unknown setting {key!r} in {args.config}; valid settings: {valid}")
        if dest in explicit:
            continue
        setattr(args, dest, _convert(action, value, key, args.config))
    return args


def _convert(action, value, key, path):
    import argparse

    def one(v):
        if action.type is not None and not isinstance(v, bool):
            try:
                v = action.type(v)
            except (TypeError, ValueError):
                raise CLIError(f"setting {key!r} in {path}: invalid value {v!r}") from None
        if action.choices is not None and v not in action.choices:
            raise CLIError(f"setting {key!r} in {path}: {v!r} is not one of {list(action.choices)}")
        return v

    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        if not isinstance(value, bool):
            raise CLIError(f"setting {key!r} in {path} must be true or false, received {value!r}")
        return value if isinstance(action, argparse._StoreTrueAction) else not value
    if action.nargs in ("+", "*"):
        values = value if isinstance(value, list) else [value]
        if action.nargs == "+" and not values:
            raise CLIError(f"setting {key!r} in {path} needs at least one value")
        return [one(v) for v in values]
    if isinstance(value, list):
        raise CLIError(f"setting {key!r} in {path} takes one value, received a list {value!r}")
    return one(value)
