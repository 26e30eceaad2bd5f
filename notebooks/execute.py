"""Executes the notebooks: in place at full size (outputs saved), or in quick mode into a copy.

    python notebooks/execute.py                     # every notebook, full size, outputs saved in place
    python notebooks/execute.py 03_census_income.ipynb
    python notebooks/execute.py --quick             # quick mode (KERAS_MMOE_QUICK=1), nothing written

Each notebook runs in a fresh ``python3`` kernel, in a temporary working directory. The census
notebook reads ``KERAS_MMOE_DATA_DIR`` (else the loader's cache, downloading the UCI files once);
the test suite (tests/test_notebooks.py) points it at the sample committed under tests/data.
"""

import argparse
import glob
import os
import re
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def notebook_paths():
    return sorted(glob.glob(os.path.join(HERE, "*.ipynb")))


# TensorFlow's C++ start-up lines, which reach the kernel's stderr whatever TF_CPP_MIN_LOG_LEVEL says.
NOISE = re.compile(r"^(\s*[IEW]\d{4} [\d:. ]+\d+ \S+\.cc:\d+\]|WARNING: All log messages before absl|"
                   r"To enable the following instructions|This TensorFlow binary is optimized)")


def clean_outputs(nb):
    """Drops TensorFlow's C++ start-up log lines from the notebook's stream outputs (in place)."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.outputs:
            if output.output_type == "stream":
                lines = [l for l in output.text.splitlines(keepends=True) if not NOISE.match(l)]
                if not "".join(lines).strip():
                    continue
                output.text = "".join(lines)
            kept.append(output)
        cell.outputs = kept
    return nb


def execute(path, quick, timeout=900, write=False):
    """Runs notebook ``path``; returns the executed ``nbformat`` notebook (written back if ``write``)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env_before = dict(os.environ)
    os.environ["KERAS_MMOE_QUICK"] = "1" if quick else "0"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.pop("TF_USE_LEGACY_KERAS", None)  # each notebook chooses its Keras itself
    try:
        with tempfile.TemporaryDirectory() as cwd:
            NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_before)
    if write:
        nbformat.write(clean_outputs(nb), path)
    return nb


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="notebook files (default: all in notebooks/)")
    parser.add_argument("--quick", action="store_true", help="quick mode; outputs are not saved")
    args = parser.parse_args()
    paths = [os.path.join(HERE, p) if not os.path.exists(p) else p for p in args.notebooks] or notebook_paths()
    for path in paths:
        start = time.perf_counter()
        print(f"executing {os.path.basename(path)} ({'quick' if args.quick else 'full'}) ...", flush=True)
        execute(path, args.quick, write=not args.quick)
        print(f"  done in {time.perf_counter() - start:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
