"""Shared pieces of the command line: user errors, progress lines, the parser and its argument
types, TensorFlow's import, and config files.

Command modules import nothing heavy at module level: TensorFlow comes in through
:func:`import_tensorflow`, after a command's cheap checks, so that ``keras-mmoe --help`` and most
user mistakes answer without TensorFlow's start-up.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Callable

from keras_mmoe import _validation


class CLIError(Exception):
    """A user mistake, printed as one line ``keras-mmoe <command>: error: <message>`` with exit code 2."""


def say(message: str) -> None:
    """A progress line on stderr (stdout stays for results)."""
    print(f"[keras-mmoe] {message}", file=sys.stderr, flush=True)


# --- the parser ------------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose mistakes are one line: ``<prog>: error: <message>`` (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's layout and appends ``(default: X)`` to every option that has one."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or default in (None, False, argparse.SUPPRESS)
                or "default:" in text or "%(default)" in text):
            return text
        if isinstance(default, (list, tuple)):
            default = " ".join(str(v) for v in default)
        return f"{text} (default: {default})".replace("%", "%%")


def add_command(subparsers, name: str, *, help: str, description: str | None) -> argparse.ArgumentParser:
    """A sub-command parser with the package's formatter (defaults shown) and one-line errors."""
    return subparsers.add_parser(name, help=help, description=description, formatter_class=HelpFormatter)


# --- argument types (argparse ``type=``), built on keras_mmoe._validation ----------------------


def _argument_type(check: Callable, parse: Callable, expected: str, name: str) -> Callable[[str], object]:
    def convert(text):
        try:
            value = parse(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {expected}, received {text!r}") from None
        try:
            return check("value", value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, received {text}") from None

    convert.__name__ = name
    return convert


#: ``>= 1`` integers: epochs, runs, batch sizes, units.
positive_int = _argument_type(_validation.check_positive_int, int, "a positive integer", "positive_int")
#: ``>= 0`` integers: seeds.
seed = _argument_type(_validation.check_seed, int, "a non-negative integer", "seed")
#: ``>= 0`` integers: expert counts of CGC/PLE, --max-bad-rows.
non_negative_int = _argument_type(_validation.check_non_negative_int, int, "a non-negative integer", "non_negative_int")
#: floats in ``[0, 1)``: dropout rates.
rate = _argument_type(_validation.check_rate, float, "a float in [0, 1)", "rate")
#: floats ``> 0``: learning rates.
positive_float = _argument_type(_validation.check_positive_float, float, "a float > 0", "positive_float")
#: floats in ``[-1, 1]``: task correlations.
correlation = _argument_type(_validation.check_correlation, float, "a float in [-1, 1]", "correlation")


# --- TensorFlow ------------------------------------------------------------------------------


def import_tensorflow(announce: bool = True) -> str:
    """Imports TensorFlow (its known start-up lines filtered), Keras and every keras_mmoe layer;
    returns the Keras flavour (``"keras3"`` or ``"tf_keras"``). With ``announce``, says which
    TensorFlow, Keras and devices the command runs on."""
    import keras_mmoe

    if announce and "tensorflow" not in sys.modules:
        say("importing TensorFlow")
    keras_mmoe._load()
    flavor = keras_mmoe.KERAS_FLAVOR
    if announce:
        import tensorflow as tf

        devices = sorted({d.device_type for d in tf.config.list_physical_devices()})
        say(f"TensorFlow {tf.__version__}, Keras flavour {flavor}, devices: {', '.join(devices)}")
    return flavor


def check_version_free(base_dir: str, version: int | None, overwrite: bool = False) -> None:
    """CLIError when ``base_dir/<version>`` already exists and ``overwrite`` is off (os only: checked
    before TensorFlow is imported and before any slow work)."""
    if version is None or overwrite or not os.path.isdir(base_dir):
        return
    for name in os.listdir(base_dir):
        path = os.path.join(base_dir, name)
        if name.isascii() and name.isdigit() and int(name) == version and os.path.isdir(path):
            raise CLIError(f"version {version} already exists: {path} (use --overwrite to replace it)")


# --- config files ----------------------------------------------------------------------------


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """Adds ``--config FILE`` to a command parser (once; calling it again does nothing).

    :func:`keras_mmoe.cli.main.main` adds it to every command that has no sub-commands; the
    values are applied by :func:`apply_config_file` before the command line is parsed."""
    if "--config" in parser._option_string_actions:
        return
    parser.add_argument(
        "--config", metavar="FILE", default=None,
        help="read settings from a JSON or TOML file whose keys are this command's long flag names "
        "(dashes or underscores, e.g. {\"epochs\": 3, \"learning-rate\": 0.01}); flags given on the "
        "command line win",
    )


def load_config_file(path: str) -> dict:
    """``{key: value}`` from a JSON or (``.toml``, Python >= 3.11) TOML file, or a one-line CLIError."""
    if not os.path.isfile(path):
        raise CLIError(f"config file not found: {path}")
    try:
        if path.lower().endswith(".toml"):
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                raise CLIError(f"TOML config files need Python >= 3.11; use JSON instead: {path}") from None
            with open(path, "rb") as f:
                data = tomllib.load(f)
        else:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
    except (ValueError, OSError) as error:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        message = " ".join(str(error).split())
        raise CLIError(f"cannot parse config file {path}: {message}") from None
    if not isinstance(data, dict):
        raise CLIError(f"config file {path} must hold a table of settings, received {type(data).__name__}")
    return data


def find_config_path(parser: argparse.ArgumentParser, argv: list[str]) -> str | None:
    """The ``--config`` value in ``argv`` (the tokens after the command name), or None.

    Accepts ``--config FILE``, ``--config=FILE`` and the unambiguous prefixes argparse accepts
    (``--conf FILE``). A missing value is left to the parser to report."""
    long_options = [o for o in parser._option_string_actions if o.startswith("--")]
    for i, token in enumerate(argv):
        if token == "--":
            break
        if not token.startswith("--"):
            continue
        name, has_value, value = token.partition("=")
        matches = [name] if name in long_options else [o for o in long_options if o.startswith(name)]
        if matches == ["--config"]:
            if has_value:
                return value
            return argv[i + 1] if i + 1 < len(argv) else None
    return None


def _settable_actions(parser):
    """``{normalized name: (action, is_flag_name)}`` for the config keys a parser accepts: each
    long flag name and each destination, with underscores as dashes."""
    names = {}
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "config") or isinstance(
            action, (argparse._HelpAction, argparse._VersionAction)
        ):
            continue
        for option in action.option_strings:
            if option.startswith("--"):
                names[option[2:]] = (action, True)
        names.setdefault(action.dest.replace("_", "-"), (action, False))
    return names


def apply_config_file(parser: argparse.ArgumentParser, path: str) -> dict:
    """Makes the settings of the config file at ``path`` the defaults of ``parser``.

    Keys are the parser's long flag names (``learning-rate`` or ``learning_rate``; also the
    destination, e.g. ``examples_signature`` for ``--no-examples-signature``); values are checked
    with the command line's own types and choices (``true``/``false`` for switches, a list for
    flags that take several values, ``null`` for the built-in default). Flags given on the command
    line then win, because they replace defaults. A required flag set by the file is no longer
    required. Errors are one-line CLIErrors naming the key (and, for unknown keys, the valid ones).
    Returns the ``{dest: value}`` applied."""
    settings = load_config_file(path)
    accepted = _settable_actions(parser)
    applied = {}
    for key, value in settings.items():
        name = str(key).lstrip("-").replace("_", "-")
        if name not in accepted:
            valid = sorted({a.option_strings[-1].lstrip("-") for a, _ in accepted.values()})
            raise CLIError(f"unknown setting {key!r} in {path}; valid settings: {', '.join(valid)}")
        if value is None:
            continue
        action, is_flag_name = accepted[name]
        applied[action.dest] = _convert(action, value, key, path, is_flag_name)
        action.required = False
    parser.set_defaults(**applied)
    return applied


def _convert(action, value, key, path, is_flag_name=True):
    """A config value checked and converted as the command line would convert ``--key value``."""

    def one(v):
        if isinstance(v, (bool, dict, list)):
            raise CLIError(f"setting {key!r} in {path}: invalid value {v!r}")
        if action.type is None:
            v = v if isinstance(v, str) else str(v)  # as argparse would pass it
        else:
            try:
                v = action.type(v if isinstance(v, str) else str(v))
            except argparse.ArgumentTypeError as error:
                raise CLIError(f"setting {key!r} in {path}: {error}") from None
            except (TypeError, ValueError):
                kind = getattr(action.type, "__name__", "")
                raise CLIError(f"setting {key!r} in {path}: invalid {kind} value {v!r}".replace("  ", " ")) from None
        if action.choices is not None and v not in action.choices:
            raise CLIError(f"setting {key!r} in {path}: {v!r} is not one of {list(action.choices)}")
        return v

    switch = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction,
                                 argparse.BooleanOptionalAction))
    if switch:
        if not isinstance(value, bool):
            raise CLIError(f"setting {key!r} in {path} must be true or false, received {value!r}")
        if is_flag_name and isinstance(action, argparse._StoreFalseAction):
            return not value  # "no-examples-signature": true  ->  examples_signature = False
        return value
    if action.nargs in ("+", "*") or isinstance(action, argparse._AppendAction):
        values = value if isinstance(value, list) else [value]
        if action.nargs == "+" and not values:
            raise CLIError(f"setting {key!r} in {path} needs at least one value")
        return [one(v) for v in values]
    if isinstance(value, list):
        raise CLIError(f"setting {key!r} in {path} takes one value, received a list {value!r}")
    return one(value)
