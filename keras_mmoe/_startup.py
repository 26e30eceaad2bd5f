"""TensorFlow's start-up, without its known C++ start-up lines (no TensorFlow import at module level).

Loading TensorFlow and building its device list make its C++ libraries write lines such as the
oneDNN notice, the CPU-instruction notice, "Could not find cuda drivers" and, on a machine
without a GPU driver, "failed call to cuInit". Several are written through absl before
TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL``, so that variable cannot hide them.
:func:`import_tensorflow` imports TensorFlow and lists the physical devices with file
descriptor 2 routed through a small filter process that drops exactly those lines and passes
every other byte on as it arrives. The filter is a separate process so that it outlives a crash
of this one: whatever a failing import writes reaches the terminal. The cuInit line is dropped
only after TensorFlow has said that no CUDA driver exists (a real driver fault still shows), and
no device is hidden (``CUDA_VISIBLE_DEVICES`` is left alone). ``KERAS_MMOE_VERBOSE_IMPORT=1``
turns the filter off.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator

#: Environment variable that turns the start-up filter off (any non-empty value but "0").
VERBOSE_ENV = "KERAS_MMOE_VERBOSE_IMPORT"

# The filter process's program: reads fd 0, writes every line that is not a known start-up line
# to fd 2. Bytes in, bytes out; a line is held back only until its newline arrives.
_FILTER_PROGRAM = r"""
import os, re
PREFIX = rb"[IWEF]\d{4} [\d:.]+ +\d+ "
KNOWN = re.compile(rb"|".join([
    rb"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR\r?$",
    PREFIX + rb"port\.cc:\d+\] oneDNN custom operations are on\. ",
    PREFIX + rb"cpu_feature_guard\.cc:\d+\] This TensorFlow binary is optimized to use available CPU instructions",
    rb"To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.\r?$",
]))
NO_DRIVER = re.compile(PREFIX + rb"cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine, GPU will not be used\.")
CUINIT = re.compile(PREFIX + rb"cuda_platform\.cc:\d+\] failed call to cuInit: ")
no_driver = False
pending = b""

def keep(line):
    global no_driver
    if NO_DRIVER.match(line):
        no_driver = True
        return False
    return not (KNOWN.match(line) or (no_driver and CUINIT.match(line)))

def emit(lines):
    data = b"".join(line + b"\n" for line in lines if keep(line))
    while data:
        data = data[os.write(2, data):]

while True:
    chunk = os.read(0, 65536)
    if not chunk:
        break
    *lines, pending = (pending + chunk).split(b"\n")
    try:
        emit(lines)
    except OSError:
        break
if pending and keep(pending):
    os.write(2, pending)
"""


def filter_enabled() -> bool:
    """False when ``KERAS_MMOE_VERBOSE_IMPORT`` asks for TensorFlow's unfiltered start-up output."""
    return os.environ.get(VERBOSE_ENV, "") in ("", "0")


def _python_executable() -> str | None:
    """The interpreter to run the filter with, or None where ``sys.executable`` is not a Python."""
    executable = sys.executable
    if not executable or not os.path.isfile(executable):
        return None
    if not os.path.basename(executable).lower().startswith(("python", "pypy")):
        return None  # an embedding program (uwsgi, a game engine...): leave fd 2 alone
    return executable


@contextlib.contextmanager
def filtered_stderr() -> Iterator[None]:
    """Routes file descriptor 2 through the start-up filter process for the ``with`` block.

    Does nothing (the block runs with fd 2 untouched) when the filter is turned off, when the
    process has no usable fd 2 or no Python interpreter to run the filter with."""
    executable = _python_executable()
    if not filter_enabled() or executable is None:
        yield
        return
    import subprocess

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        process = subprocess.Popen(
            [executable, "-I", "-S", "-c", _FILTER_PROGRAM],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, start_new_session=True,
        )
    except OSError:
        os.close(saved)
        yield
        return
    os.dup2(process.stdin.fileno(), 2)
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        process.stdin.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)  # its last lines reach the terminal before ours


def import_tensorflow() -> None:
    """Imports TensorFlow and builds its physical device list (where cuInit runs), filtered.

    Runs once; when TensorFlow is already imported it only makes sure the devices are listed."""
    if "tensorflow" in sys.modules:
        return
    with filtered_stderr():
        import tensorflow as tf

        tf.config.list_physical_devices()


def running_command_line() -> bool:
    """True in the ``keras-mmoe`` console script and in ``python -m keras_mmoe.cli.main``."""
    if sys.argv and os.path.splitext(os.path.basename(sys.argv[0]))[0] in ("keras-mmoe", "keras-mmoe-script"):
        return True
    argv = list(getattr(sys, "orig_argv", ()))
    return any(a == "-m" and b == "keras_mmoe.cli.main" for a, b in zip(argv, argv[1:]))
