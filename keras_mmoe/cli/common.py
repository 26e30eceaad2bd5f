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
