"""Shared pieces of the command line: user errors, progress messages, the TensorFlow import,
config files, and loading saved Keras models.

Subcommand modules import TensorFlow lazily (through :func:`import_tensorflow`, inside their
``run`` function, after their cheap checks) so that ``keras-mmoe --help`` and most user mistakes
answer at once, without TensorFlow's 5-8 s start-up.
"""

import argparse
import os
import sys


class CLIError(Exception):
    """A user mistake (missing file, bad flag value, unknown task): one line, exit code 2."""


def say(message):
    """Prints one progress line of what the command is doing (stderr, flushed)."""
    print(f"[keras-mmoe] {message}", file=sys.stderr, flush=True)


def import_tensorflow(announce=True):
    """Imports TensorFlow, Keras and every keras_mmoe layer (registered for ``load_model``).

    In the ``keras-mmoe`` console script the package defers these imports (so that ``--help`` is
    instant) and they run here, with TensorFlow's C++ start-up lines hidden. Returns the Keras
    flavour (``"keras3"`` or ``"tf_keras"``, see :mod:`keras_mmoe._keras`)."""
    import keras_mmoe

    first = "tensorflow" not in sys.modules
    if announce and first:
        say("importing TensorFlow")
    keras_mmoe._load()
    flavor = keras_mmoe.KERAS_FLAVOR
    if announce:
        import tensorflow as tf

        say(f"TensorFlow {tf.__version__}, Keras flavour: {flavor}")
    return flavor


def is_keras_saved_model_dir(path):
    """True for a directory written by tf-keras ``model.save(dir)`` (``keras_metadata.pb``)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "keras_metadata.pb"))


def load_keras_model(path):
    """Loads a saved Keras model with every keras_mmoe layer registered (no custom_objects needed).

    ``path``: a ``.keras`` file; under tf-keras also an ``.h5`` file or a ``model.save(dir)``
    SavedModel directory. A missing or unreadable model is a :class:`CLIError`."""
    if not (os.path.isfile(path) or is_keras_saved_model_dir(path)):
        raise CLIError(f"model file not found: {path}")
    import_tensorflow(announce=False)
    from keras_mmoe._keras import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # the loader raises many types; report it as one line
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise CLIError(f"cannot load {path} as a Keras model: {first_line}") from error


def check_positive(args, *names):
    """CLIError unless each ``args.<name>`` (when not None) is >= 1; names the flag and the value."""
    for name in names:
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, received {value}")


def check_version_free(base_dir, version, overwrite=False):
    """CLIError when ``base_dir/<version>`` already exists and ``overwrite`` is off (os only: checked
    before TensorFlow is imported and before any slow work)."""
    if version is None or overwrite or not os.path.isdir(base_dir):
        return
    for name in os.listdir(base_dir):
        path = os.path.join(base_dir, name)
        if name.isascii() and name.isdigit() and int(name) == version and os.path.isdir(path):
            raise CLIError(f"version {version} already exists: {path} (use --overwrite to replace it)")


# --- config files ----------------------------------------------------------------------------


def add_config_argument(parser):
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


def load_config_file(path):
    """``{key: value}`` from a JSON or (``.toml``, Python >= 3.11) TOML file, or a one-line CLIError."""
    import json

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
    except CLIError:
        raise
    except Exception as error:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError, OSError
        message = " ".join(str(error).split())
        raise CLIError(f"cannot parse config file {path}: {message}") from None
    if not isinstance(data, dict):
        raise CLIError(f"config file {path} must hold a table of settings, received {type(data).__name__}")
    return data


def find_config_path(parser, argv):
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


def apply_config_file(parser, path):
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
