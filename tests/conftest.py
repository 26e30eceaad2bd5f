"""Test configuration shared by every test module.

The suite runs once per Keras: ``pytest`` (Keras 3) and ``TF_USE_LEGACY_KERAS=1 pytest``
(tf-keras). Tests take Keras from :mod:`keras_mmoe._keras`, the same place the package does.
"""

import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA_DIR = os.environ.get(
    "KERAS_MMOE_DATA_DIR", os.path.join(os.path.dirname(REPO_ROOT), "shared", "data")
)


@pytest.fixture(autouse=True)
def _reset_keras_state():
    """Each test starts from a clean Keras session and the float32 policy."""
    from keras_mmoe._keras import keras

    keras.backend.clear_session()
    keras.mixed_precision.set_global_policy("float32")
    yield
    keras.mixed_precision.set_global_policy("float32")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def run_python(code, *, env=None, timeout=300):
    """Runs ``code`` in a fresh Python process (no keras_mmoe import unless the code does it).

    Returns the completed process; raises with its output when it exits non-zero.
    """
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(
            f"subprocess failed ({proc.returncode}):\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr[-6000:]}"
        )
    return proc
