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
#: A data directory holding census-income/ with the first 1,000 rows of each UCI file (gzip), for
#: quick runs of the loader, the encoder, the census study and the census notebook.
CENSUS_SAMPLE_DIR = os.path.join(REPO_ROOT, "tests", "data")
CENSUS_SAMPLE_ROWS = 1000


def _full_census_dir():
    """A data directory with the complete UCI census-income files, or None.

    Looked up in order: ``$KERAS_MMOE_DATA_DIR``, ``../shared/data`` beside the repository (where
    CI keeps it), the loader's own cache (``~/.keras_mmoe/data``); if none holds both files, one
    download into that cache is tried (checksums verified)."""
    from keras_mmoe.data import census

    names = ("census-income.data.gz", "census-income.test.gz")
    candidates = [
        os.environ.get("KERAS_MMOE_DATA_DIR"),
        os.path.join(os.path.dirname(REPO_ROOT), "shared", "data"),
        census.census_data_dir(),
    ]
    for directory in filter(None, candidates):
        if all(os.path.isfile(os.path.join(directory, "census-income", n)) for n in names):
            return directory, None
    try:
        census.read_census_columns(census.census_data_dir(), max_rows=2, download=True)
    except OSError as error:
        return None, f"{type(error).__name__}: {error}"
    return census.census_data_dir(), None


@pytest.fixture(scope="session")
def full_census_dir():
    """The directory of the full census-income data; the test is skipped, with the reason, when
    neither a copy nor a download is possible (a fresh clone without network)."""
    directory, reason = _full_census_dir()
    if directory is None:
        pytest.skip(f"needs the full census-income files: set KERAS_MMOE_DATA_DIR (download failed: {reason})")
    return directory


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
