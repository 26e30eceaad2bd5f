"""The command line as a whole: help, config files, evaluate, one-line errors and exit codes."""

import json
import os
import subprocess
import sys

import pytest

from conftest import CENSUS_SAMPLE_DIR, REPO_ROOT
from keras_mmoe.cli.main import COMMAND_MODULES, build_parser, main


def _one_line_error(capsys, command):
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) >= 1 and err[-1].startswith(f"keras-mmoe {command}: error: "), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    code = main(["train", "--epochs", "1", "--samples", "1500", "--out-dir", str(out), "--seed", "3"])
    assert code == 0
    return out


def test_help_lists_every_command_and_each_command_has_help(capsys):
    parser = build_parser()
    text = parser.format_help()
    for name in COMMAND_MODULES:
        assert name in text
    for name in COMMAND_MODULES:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "--config" in capsys.readouterr().out or name == "reproduce"
    for study in ("census", "synthetic", "polarization"):
        with pytest.raises(SystemExit):
            main(["reproduce", study, "--help"])
        assert "--config" in capsys.readouterr().out


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().out


def test_console_script_errors_are_one_clean_line():
    """A user mistake through the real entry point: exit 2, one stderr line, no TF start-up noise."""
    script = os.path.join(os.path.dirname(sys.executable), "keras-mmoe")
    proc = subprocess.run([script, "train", "--epochs", "0"], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["keras-mmoe train: error: --epochs must be >= 1, received 0"]
    bad_flag = subprocess.run([script, "train", "--epochs", "many"], capture_output=True, text=True, timeout=300)
    assert bad_flag.returncode == 2 and "invalid int value: 'many'" in bad_flag.stderr


def test_evaluate_keras_model_and_its_export_agree_with_training(trained, tmp_path, capsys):
    settings = json.loads((trained / "mmoe_synthetic.json").read_text())
    assert settings["samples"] == 1500 and settings["seed"] == 3
    keras_json, export_json = tmp_path / "keras.json", tmp_path / "export.json"
    assert main(["evaluate", str(trained / "mmoe_synthetic.keras"), "--gates", "--json", str(keras_json)]) == 0
    assert main(["evaluate", str(trained / "mmoe_synthetic" / "1"), "--json", str(export_json)]) == 0
    a, b = json.loads(keras_json.read_text()), json.loads(export_json.read_text())
    assert a["rows"] == b["rows"] == 300
    for task in ("y1", "y2"):
        assert a["tasks"][task]["mse"] == pytest.approx(b["tasks"][task]["mse"], rel=1e-4)
        # the same held-out rows as train's own evaluation
        assert a["tasks"][task]["mse"] == pytest.approx(settings["test_metrics"][f"{task}_mse"], rel=1e-3)
    assert set(a["gates"]) >= {"num_experts", "tasks"} and "gates" not in b
    out = capsys.readouterr().out
    assert "| task | utilization |" in out


def test_evaluate_errors(trained, tmp_path, capsys):
    model = str(trained / "mmoe_synthetic.keras")
    cases = [
        (["evaluate", str(tmp_path / "missing.keras")], "model file not found"),
        (["evaluate", model, "--tasks", "ctr"], "unknown task(s) ['ctr']"),
        (["evaluate", str(tmp_path)], "without saved_model.pb"),
        (["evaluate", str(trained / "mmoe_synthetic" / "1"), "--gates"], "--gates needs a .keras model"),
    ]
    (tmp_path / "orphan.keras").write_bytes(b"not a zip")
    cases.append((["evaluate", str(tmp_path / "orphan.keras"), "--samples", "100", "--dim", "100",
                   "--correlation", "0.5", "--seed", "0"], "cannot load"))
    cases.append((["evaluate", str(tmp_path / "orphan.keras")], "no training settings found"))
    for argv, message in cases:
        assert main(argv) == 2, argv
        assert message in _one_line_error(capsys, "evaluate"), argv


def test_evaluate_names_missing_features(trained, capsys):
    # census features for a synthetic model: the model's input "features" is missing
    code = main(["evaluate", str(trained / "mmoe_synthetic" / "1"), "--data", "census",
                 "--data-dir", CENSUS_SAMPLE_DIR, "--max-rows", "200"])
    assert code == 2
    assert "lacks the model's input feature(s) ['features']" in _one_line_error(capsys, "evaluate")


def test_config_file_sets_flags_and_the_command_line_wins(tmp_path, capsys):
    config = tmp_path / "study.json"
    config.write_text(json.dumps({"settings": ["0.05:3"], "seeds": 1, "quick": True, "out-dir": str(tmp_path / "a"),
                                  "correlation": 0.9}))
    assert main(["reproduce", "polarization", "--config", str(config), "--out-dir", str(tmp_path / "b")]) == 0
    assert not (tmp_path / "a").exists()
    record = json.loads((tmp_path / "b" / "polarization.json").read_text())
    assert record["settings"]["correlation"] == 0.9 and {r["num_experts"] for r in record["runs"]} == {3}


def test_toml_config_and_type_checks(tmp_path, capsys):
    from keras_mmoe.cli.common import apply_config

    parser = build_parser()
    toml = tmp_path / "train.toml"
    toml.write_text('epochs = 3\nlearning-rate = 0.01\nexpert_units = [32, 16]\nmodel = "omoe"\n')
    args = parser.parse_args(["train", "--config", str(toml), "--epochs", "7"])
    apply_config(args, ["train", "--config", str(toml), "--epochs", "7"])
    assert (args.epochs, args.learning_rate, args.expert_units, args.model) == (7, 0.01, [32, 16], "omoe")

    bad = [
        ('{"epochz": 1}', "unknown setting 'epochz'"),
        ('{"model": "transformer"}', "'transformer' is not one of"),
        ('{"epochs": "many"}', "invalid value 'many'"),
        ('{"epochs": [1, 2]}', "takes one value"),
        ('{"epochs": ', "cannot parse config file"),
        ("[1, 2]", "must hold a table of settings"),
    ]
    for i, (text, message) in enumerate(bad):
        path = tmp_path / f"bad{i}.json"
        path.write_text(text)
        assert main(["train", "--config", str(path)]) == 2
        assert message in _one_line_error(capsys, "train"), text
    assert main(["train", "--config", str(tmp_path / "absent.json")]) == 2
    assert "config file not found" in _one_line_error(capsys, "train")
