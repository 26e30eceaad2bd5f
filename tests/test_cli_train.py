"""The main job, `keras-mmoe train` with its defaults, end to end in a fresh process, and the
command line's start-up: quiet, and without TensorFlow where none is needed."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT, run_python


def clean_env(**extra):
    """The environment of a new user: no TF_CPP_MIN_LOG_LEVEL (the suite sets it), no verbosity flags."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "KERAS_MMOE_VERBOSE_IMPORT")}
    env.update(extra)
    return env


def keras_mmoe_cli(*args, cwd=None, check=True, env=None):
    proc = subprocess.run(
        [sys.executable, "-m", "keras_mmoe.cli.main", *args],
        capture_output=True, text=True, cwd=cwd or REPO_ROOT, timeout=900, env=env or clean_env(),
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout}\nSTDERR:\n{proc.stderr[-5000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """`keras-mmoe train` with every default but the output directory."""
    out = tmp_path_factory.mktemp("train")
    proc = keras_mmoe_cli("train", "--out-dir", str(out))
    return out, proc


def test_default_train_learns_and_prints_the_reference(trained):
    """Before: the defaults ended at mse 1.23 / 1.37 against a label variance of about 1.4."""
    out, proc = trained
    assert "Epoch 10/10" in proc.stdout
    record = json.loads((out / "mmoe_synthetic.json").read_text())
    assert record["data"]["samples"] == 20_000 and record["training"]["epochs"] == 10
    for task in ("y1", "y2"):
        metrics = record["held_out_metrics"][task]
        assert metrics["variance_explained"] >= 0.5, metrics
        assert metrics["variance_explained"] == pytest.approx(1 - metrics["mse"] / metrics["baseline_mse"])
        line = next(line for line in proc.stderr.splitlines() if line.startswith(f"[keras-mmoe] held-out {task}: mse"))
        assert "(predicting the training mean: mse" in line and "variance explained" in line
    line = next(line for line in proc.stderr.splitlines() if "label correlation measured" in line)
    assert "(Pearson r of the two labels; p=0.5 is the cosine of the tasks' weight vectors" in line


def test_train_output_is_only_its_own_lines(trained):
    """Before: TensorFlow's C++ start-up lines (oneDNN, cuInit ...) and Keras's `shuffle=True ...
    ignored` UserWarning reached the terminal."""
    _, proc = trained
    foreign = [line for line in proc.stderr.splitlines() if not line.startswith("[keras-mmoe] ")]
    assert foreign == [], foreign


def test_train_saves_keras_model_and_exports_a_version_with_its_record(trained, rng):
    out, proc = trained
    keras_path = out / "mmoe_synthetic.keras"
    version_dir = out / "mmoe_synthetic" / "1"
    assert keras_path.is_file()
    assert (version_dir / "saved_model.pb").is_file() and (version_dir / "variables").is_dir()
    assert proc.stdout.strip().splitlines()[-1] == str(version_dir)
    stored = json.loads((version_dir / "assets.extra" / "keras_mmoe.json").read_text())
    assert stored["data"] == json.loads((out / "mmoe_synthetic.json").read_text())["data"]
    assert not [n for n in os.listdir(out) if n.startswith(".")]  # no temporary files left

    # The .keras file loads with the package (no custom_objects) ...
    from keras_mmoe._keras import keras
    model = keras.models.load_model(str(keras_path))
    x = rng.normal(size=(5, 100)).astype("float32")
    expected = model.predict({"features": x}, verbose=0)
    np.save(out / "x.npy", x)
    # ... and the export answers the same in a process that never imports keras_mmoe.
    run_python(f"""
        import sys, numpy as np, tensorflow as tf
        loaded = tf.saved_model.load({str(version_dir)!r})
        fn = loaded.signatures["serving_default"]
        out = fn(features=tf.constant(np.load({str(out / 'x.npy')!r})))
        np.savez({str(out / 'served.npz')!r}, **{{k: v.numpy() for k, v in out.items()}})
        assert "keras_mmoe" not in sys.modules
    """)
    served = np.load(out / "served.npz")
    for task in ("y1", "y2"):
        np.testing.assert_allclose(served[task], expected[task], rtol=1e-5, atol=1e-5)


def test_help_and_mistakes_answer_without_tensorflow():
    """`keras-mmoe --help`, a bad flag and a missing file never import TensorFlow."""
    result = run_python("""
        import sys
        sys.argv = ["keras-mmoe"]  # as the console script
        from keras_mmoe.cli.main import main
        codes = []
        for argv in (["--help"], ["train", "--help"], ["train", "--epochs", "many"], ["reproduce", "census", "--group", "3"]):
            try:
                codes.append(main(argv))
            except SystemExit as exit:
                codes.append(exit.code)
        codes.append(main(["evaluate", "missing.keras"]))
        codes.append(main(["train", "--samples", "3"]))
        print("RESULT", codes, "tensorflow" in sys.modules)
    """, env=clean_env())
    assert result.stdout.strip().splitlines()[-1] == "RESULT [0, 0, 2, 2, 2, 2] False"


def test_console_script_error_is_one_line():
    proc = keras_mmoe_cli("train", "--epochs", "0", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "keras-mmoe train: error: argument --epochs: must be a positive integer, received 0 "
        "(see keras-mmoe train --help)"]


def test_start_up_filter_drops_known_lines_and_lets_everything_else_through(tmp_path):
    """Before: the C++ start-up lines were hidden by sending fd 2 to /dev/null during the import,
    which also swallowed what a crashing import writes. The filter is a separate process, so a
    fatal line written just before an abort still reaches the terminal."""
    script = tmp_path / "crash.py"
    script.write_text(
        "import importlib.util, os, sys\n"
        f"spec = importlib.util.spec_from_file_location('s', {os.path.join(REPO_ROOT, 'keras_mmoe', '_startup.py')!r})\n"
        "startup = importlib.util.module_from_spec(spec); spec.loader.exec_module(startup)\n"
        "with startup.filtered_stderr():\n"
        "    os.write(2, b'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n')\n"
        "    os.write(2, b'I0000 00:00:1796035875.801546   14543 port.cc:153] oneDNN custom operations are on. You')\n"
        "    os.write(2, b' may see slightly different numerical results\\n')\n"
        "    os.write(2, b'E0000 00:00:1796035881.071092   14543 cuda_platform.cc:52] failed call to cuInit: X\\n')\n"
        "    os.write(2, b'I0000 00:00:1796035875.801954   14543 cudart_stub.cc:31] Could not find cuda drivers on'\n"
        "             b' your machine, GPU will not be used.\\n')\n"
        "    os.write(2, b'E0000 00:00:1796035881.071092   14543 cuda_platform.cc:52] failed call to cuInit: Y\\n')\n"
        "    print('a Python warning', file=sys.stderr, flush=True)\n"
        "    os.write(2, b'F0000 00:00:1796035881.071092   14543 op.cc:1] Check failed: boom\\n')\n"
        "    if sys.argv[1] == 'abort':\n"
        "        os.abort()\n"
        "print('after', file=sys.stderr)\n"
    )
    for mode in ("abort", "normal"):
        proc = subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, timeout=60)
        lines = proc.stderr.splitlines()
        # the cuInit line before "no driver" is a real fault and stays; the one after it is expected
        assert lines[0].endswith("failed call to cuInit: X"), lines
        assert lines[1:4] == ["a Python warning", "F0000 00:00:1796035881.071092   14543 op.cc:1] Check failed: boom"] + (
            ["after"] if mode == "normal" else []), lines
        assert proc.returncode == (0 if mode == "normal" else -6)


@pytest.mark.parametrize("flavor", ["keras3", "tf_keras"])
def test_importing_the_package_prints_no_start_up_lines(flavor):
    env = clean_env(TF_USE_LEGACY_KERAS="1" if flavor == "tf_keras" else "0")
    result = run_python("""
        import keras_mmoe, tensorflow as tf
        print(keras_mmoe.KERAS_FLAVOR, float(tf.reduce_sum(tf.ones(3))))
    """, env=env)
    assert result.stdout.split() == [flavor, "3.0"]
    assert result.stderr == ""
    verbose = run_python("import keras_mmoe", env=dict(env, KERAS_MMOE_VERBOSE_IMPORT="1"))
    assert "oneDNN custom operations" in verbose.stderr  # the filter's off switch


# --- CGC and PLE: --model cgc / ple with their sizes as flags -------------------------------


def test_cgc_and_ple_default_sizes_are_the_matched_budget_split_of_mmoes_experts():
    from keras_mmoe.cli.main import build_parser
    from keras_mmoe.cli.train import progressive_sizes
    from keras_mmoe.models import matched_budget_kwargs

    parser = build_parser()
    budget = matched_budget_kwargs(100)
    for model in ("cgc", "ple"):
        args = parser.parse_args(["train", "--model", model])
        expected = {k: v for k, v in budget[model].items() if k.startswith("num_")}
        assert progressive_sizes(args, 2) == expected == (
            {"num_shared_experts": 4, "num_task_experts": 2} | ({"num_levels": 2} if model == "ple" else {}))
    args = parser.parse_args(["train", "--model", "ple", "--num-experts", "6", "--num-task-experts", "3",
                              "--num-levels", "3"])
    assert progressive_sizes(args, 2) == {"num_shared_experts": 3, "num_task_experts": 3, "num_levels": 3}
    args = parser.parse_args(["train", "--model", "cgc", "--num-shared-experts", "0"])
    assert progressive_sizes(args, 2) == {"num_shared_experts": 0, "num_task_experts": 4}
    assert progressive_sizes(parser.parse_args(["train"]), 2) == {}


def test_train_ple_records_its_sizes_and_evaluate_gates_reads_every_gate(tmp_path, capsys):
    from keras_mmoe._keras import keras
    from keras_mmoe.cli.main import main
    from keras_mmoe.diagnostics import diagnose
    from keras_mmoe.models import build_ple

    out = tmp_path / "out"
    assert main(["train", "--model", "ple", "--num-shared-experts", "2", "--num-task-experts", "1",
                 "--num-levels", "2", "--expert-units", "4", "--epochs", "1", "--samples", "300", "--dim", "6",
                 "--expert-dropout-rate", "0.1", "--out-dir", str(out)]) == 0
    err = capsys.readouterr().err
    record = json.loads((out / "ple_synthetic.json").read_text())
    assert record["model"] == "ple" and record["export_version"] == 1
    training = record["training"]
    assert (training["num_shared_experts"], training["num_task_experts"], training["num_levels"]) == (2, 1, 2)
    model = keras.models.load_model(str(out / "ple_synthetic.keras"))
    layer = model.get_layer("ple")
    assert (layer.num_levels, layer.levels[0].num_shared_experts, layer.levels[0].num_task_experts) == (2, 2, 1)
    assert layer.levels[0].expert_dropout_rate == 0.1
    same = build_ple(6, {"y1": "regression", "y2": "regression"}, num_levels=2, num_shared_experts=2,
                     num_task_experts=1, expert_units=(4,), tower_units=(8,), expert_dropout_rate=0.1)
    assert f"training ple (2 shared + 1 per-task experts x 2 levels, {same.count_params()} parameters)" in err
    assert (out / "ple_synthetic" / "1" / "saved_model.pb").is_file()

    scored = tmp_path / "scored.json"
    assert main(["evaluate", str(out / "ple_synthetic.keras"), "--gates", "--json", str(scored)]) == 0
    printed = capsys.readouterr().out
    assert "| level_0/shared | y1: " in printed and "| level_1/y2 | y2: " in printed
    gates = json.loads(scored.read_text())["gates"]
    assert list(gates["tasks"]) == ["level_0/y1", "level_0/y2", "level_0/shared", "level_1/y1", "level_1/y2"]
    assert gates["experts"][:4] == ["level_0/y1_0", "level_0/y2_0", "level_0/shared_0", "level_0/shared_1"]
    # The same statistics as diagnosing the saved model on the held-out rows of its record.
    from keras_mmoe.cli import sources

    held_out = sources.synthetic_held_out(record["data"], None)
    report = diagnose(model, {"features": held_out.features["features"]}, batch_size=1024)
    for name, gate in gates["tasks"].items():
        np.testing.assert_allclose(gate["utilization"], report[name].utilization, atol=1e-6)
        assert gate["group_weights"] == pytest.approx(report[name].group_weights, abs=1e-6)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "mmoe", "--num-shared-experts", "2"], "--num-shared-experts applies to --model cgc or ple, not mmoe"),
        (["--model", "cgc", "--num-levels", "2"], "--num-levels applies to --model ple, not cgc (cgc is one level"),
        (["--model", "ple", "--num-shared-experts", "0", "--num-task-experts", "0"], "leave the task gates no expert"),
    ],
)
def test_cgc_ple_flag_mistakes_are_one_line_before_any_work(argv, message, tmp_path, capsys):
    from keras_mmoe.cli.main import main

    assert main(["train", *argv, "--out-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("keras-mmoe train: error: ") and message in err[0], err
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "ple", "--num-task-experts", "-1"])
    assert exit_info.value.code == 2
    assert "argument --num-task-experts: must be a non-negative integer, received -1" in capsys.readouterr().err
