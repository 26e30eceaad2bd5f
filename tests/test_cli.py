"""The command line as a whole: help, config files, training records, evaluate, one-line errors."""

import ast
import json
import os
import zipfile

import pytest

from conftest import CENSUS_SAMPLE_DIR, REPO_ROOT
from keras_mmoe.cli.main import COMMAND_MODULES, build_parser, main


def _one_line_error(capsys, command):
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.strip()]
    assert len(err) >= 1 and err[-1].startswith(f"keras-mmoe {command}: error: "), err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def _train(out, *extra):
    return main(["train", "--epochs", "1", "--samples", "1500", "--out-dir", str(out), *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    assert _train(out, "--seed", "3") == 0
    return out


def test_help_lists_every_command_and_shows_defaults(capsys):
    parser = build_parser()
    text = parser.format_help()
    for name in COMMAND_MODULES:
        assert name in text
    for name in COMMAND_MODULES:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "--config" in capsys.readouterr().out or name in ("reproduce", "spec")  # commands of sub-commands
    for command in ("infer", "check"):
        with pytest.raises(SystemExit):
            main(["spec", command, "--help"])
        assert "--config" in capsys.readouterr().out
    for study in ("census", "synthetic", "polarization"):
        with pytest.raises(SystemExit):
            main(["reproduce", study, "--help"])
        out = capsys.readouterr().out
        assert "--config" in out and "(default: results)" in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("training epochs (default: 10)", "Adam learning rate (default: 0.01)", "(default: 20000)",
                 "hidden units of each expert, or of the shared bottom / single-task network (default: 16)"):
        assert text in out, text


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "train" in capsys.readouterr().out


def test_bad_flags_are_one_line_naming_the_flag(capsys, tmp_path):
    cases = [
        (["train", "--epochs", "0"], "train", "argument --epochs: must be a positive integer, received 0"),
        (["train", "--epochs", "many"], "train", "argument --epochs: expected a positive integer, received 'many'"),
        (["train", "--correlation", "2"], "train", "argument --correlation: must be a float in [-1, 1], received 2"),
        (["train", "--expert-dropout-rate", "1"], "train", "argument --expert-dropout-rate: must be a float in [0, 1)"),
        (["train", "--learning-rate", "0"], "train", "argument --learning-rate: must be a float > 0, received 0"),
        (["evaluate", "m.keras", "--seed", "-1"], "evaluate", "argument --seed: must be a non-negative integer"),
    ]
    for argv, command, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, "--out-dir", str(tmp_path)] if command == "train" else argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"keras-mmoe {command}: error: {message}"), (argv, err)
    assert not os.listdir(tmp_path)


def test_train_refuses_too_few_samples_before_any_work(tmp_path, capsys):
    """Before: `--samples 1` trained, then failed with "error: y1_mse" (an empty held-out split)."""
    out = tmp_path / "out"
    assert main(["train", "--samples", "1", "--out-dir", str(out)]) == 2
    assert "--samples must be at least 10" in _one_line_error(capsys, "train")
    assert not out.exists()


def test_second_train_into_the_same_out_dir_needs_overwrite_and_each_version_keeps_its_record(tmp_path, capsys):
    """Before: the second train replaced <name>.keras and <name>.json silently, and evaluate scored
    version 1 on the second run's data settings (mse 1.36 -> 7.9)."""
    out = tmp_path / "models"
    assert _train(out, "--seed", "1") == 0
    first = json.loads((out / "mmoe_synthetic.json").read_text())
    keras_file = out / "mmoe_synthetic.keras"
    before = keras_file.read_bytes()
    capsys.readouterr()

    assert _train(out, "--seed", "7", "--correlation", "0.9") == 2
    assert "mmoe_synthetic.keras already exists" in _one_line_error(capsys, "train")
    assert keras_file.read_bytes() == before and sorted(os.listdir(out / "mmoe_synthetic")) == ["1"]

    assert _train(out, "--seed", "7", "--correlation", "0.9", "--overwrite") == 0
    second = json.loads((out / "mmoe_synthetic.json").read_text())
    assert second["data"]["seed"] == 7 and second["export_version"] == 2 and keras_file.read_bytes() != before
    assert first["data"]["seed"] == 1 and first["export_version"] == 1

    from keras_mmoe.serving import read_metadata

    for version, record in ((1, first), (2, second)):
        stored = read_metadata(out / "mmoe_synthetic" / str(version))
        assert stored["data"] == record["data"] and stored["held_out_metrics"] == record["held_out_metrics"]
        result = tmp_path / f"v{version}.json"
        assert main(["evaluate", str(out / "mmoe_synthetic" / str(version)), "--json", str(result)]) == 0
        scored = json.loads(result.read_text())
        assert scored["data"]["seed"] == record["data"]["seed"]
        for task in ("y1", "y2"):  # the rows this version held out: the metrics it was trained to
            assert scored["tasks"][task]["mse"] == pytest.approx(record["held_out_metrics"][task]["mse"], rel=1e-4)


def test_evaluate_keras_model_and_its_export_agree_with_training(trained, tmp_path, capsys):
    record = json.loads((trained / "mmoe_synthetic.json").read_text())
    assert record["data"]["samples"] == 1500 and record["data"]["seed"] == 3 and record["held_out_rows"] == 300
    keras_json, export_json = tmp_path / "keras.json", tmp_path / "export.json"
    assert main(["evaluate", str(trained / "mmoe_synthetic.keras"), "--gates", "--json", str(keras_json)]) == 0
    assert main(["evaluate", str(trained / "mmoe_synthetic" / "1"), "--json", str(export_json)]) == 0
    a, b = json.loads(keras_json.read_text()), json.loads(export_json.read_text())
    assert a["rows"] == b["rows"] == 300
    for task in ("y1", "y2"):
        assert a["tasks"][task]["mse"] == pytest.approx(b["tasks"][task]["mse"], rel=1e-4)
        assert a["tasks"][task]["mse"] == pytest.approx(record["held_out_metrics"][task]["mse"], rel=1e-4)
        assert a["tasks"][task]["baseline_mse"] == pytest.approx(record["held_out_metrics"][task]["baseline_mse"])
    assert set(a["gates"]) >= {"num_experts", "tasks"} and "gates" not in b
    captured = capsys.readouterr()
    assert "| task | utilization |" in captured.out
    assert "predicting the training mean: mse" in captured.err and "variance explained" in captured.err


def test_evaluate_with_flags_instead_of_a_record_and_replacing_recorded_values(trained, tmp_path, capsys):
    loose = tmp_path / "loose.keras"
    loose.write_bytes((trained / "mmoe_synthetic.keras").read_bytes())  # no record beside it
    assert main(["evaluate", str(loose)]) == 2
    assert "no training record for" in _one_line_error(capsys, "evaluate")
    assert main(["evaluate", str(loose), "--data", "synthetic", "--samples", "1500", "--dim", "100"]) == 2
    assert "--correlation, --seed" in _one_line_error(capsys, "evaluate")
    result = tmp_path / "flags.json"
    assert main(["evaluate", str(loose), "--samples", "1500", "--dim", "100", "--correlation", "0.5", "--seed", "3",
                 "--data", "synthetic", "--json", str(result)]) == 0
    record = json.loads((trained / "mmoe_synthetic.json").read_text())
    assert json.loads(result.read_text())["tasks"]["y1"]["mse"] == pytest.approx(
        record["held_out_metrics"]["y1"]["mse"], rel=1e-4)
    assert main(["evaluate", str(trained / "mmoe_synthetic.keras"), "--seed", "4"]) == 0
    assert "--seed 4 replaces the recorded 3: these are not the rows the model held out" in capsys.readouterr().err
    assert main(["evaluate", str(loose), "--settings", str(trained / "mmoe_synthetic.json")]) == 0


def test_evaluate_errors_name_the_file_and_what_is_wrong(trained, tmp_path, capsys):
    model = str(trained / "mmoe_synthetic.keras")
    (tmp_path / "random.keras").write_bytes(os.urandom(2000))
    (tmp_path / "notmodel.txt").write_text("hello\n")
    with zipfile.ZipFile(tmp_path / "empty.keras", "w") as archive:
        archive.writestr("readme.txt", "no model here")
    cases = [
        (["evaluate", str(tmp_path / "missing.keras")], "model file not found"),
        (["evaluate", model, "--tasks", "ctr"], "unknown task(s) ['ctr']"),
        (["evaluate", str(tmp_path)], "is a directory without saved_model.pb"),
        (["evaluate", str(trained / "mmoe_synthetic" / "1"), "--gates"], "--gates needs a .keras model"),
        (["evaluate", str(tmp_path / "random.keras")],
         f"{tmp_path / 'random.keras'} is not a valid Keras file: a .keras file is a zip archive"),
        (["evaluate", str(tmp_path / "empty.keras")], "is not a valid Keras file: the zip archive holds no config.json"),
        (["evaluate", str(tmp_path / "notmodel.txt")],
         f"{tmp_path / 'notmodel.txt'} is not a Keras model: expected a .keras or .h5 file or a SavedModel directory"),
        (["evaluate", model, "--settings", str(tmp_path / "notmodel.txt")],
         f"{tmp_path / 'notmodel.txt'} is not a training record: not JSON"),
        (["evaluate", model, "--settings", str(tmp_path / "absent.json")], "training record not found"),
        (["evaluate", model, "--settings", str(trained / "mmoe_synthetic" / "1" / "fingerprint.pb")],
         "is not a training record: not a UTF-8 text file"),
    ]
    (tmp_path / "list.json").write_text("[1, 2]")
    cases.append((["evaluate", model, "--settings", str(tmp_path / "list.json")], "holds a JSON list, not an object"))
    (tmp_path / "other.json").write_text('{"epochs": 3}')
    cases.append((["evaluate", model, "--settings", str(tmp_path / "other.json")], "is not a keras-mmoe training record"))
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
    config.write_text(json.dumps({"settings": ["0.05:3"], "seeds": 1, "rates": [0], "quick": True, "out-dir": str(tmp_path / "a"),
                                  "correlation": 0.9}))
    assert main(["reproduce", "polarization", "--config", str(config), "--out-dir", str(tmp_path / "b")]) == 0
    assert not (tmp_path / "a").exists()
    record = json.loads((tmp_path / "b" / "polarization.json").read_text())
    assert record["settings"]["correlation"] == 0.9 and {r["num_experts"] for r in record["runs"]} == {3}
    # the recorded command holds what changed the results, from the file too, and no path
    assert record["command"] == "keras-mmoe reproduce polarization --settings 0.05:3 --rates 0 --seeds 1 --correlation 0.9 --quick"


def test_toml_config_and_type_checks(tmp_path, capsys):
    from keras_mmoe.cli.common import apply_config_file

    parser = build_parser()
    toml = tmp_path / "train.toml"
    toml.write_text('epochs = 3\nlearning-rate = 0.02\nexpert_units = [32, 16]\nmodel = "omoe"\n')
    train_parser = parser._subparsers._group_actions[0].choices["train"]
    apply_config_file(train_parser, str(toml))
    args = parser.parse_args(["train", "--epochs", "7"])
    assert (args.epochs, args.learning_rate, args.expert_units, args.model) == (7, 0.02, [32, 16], "omoe")

    bad = [
        ('{"epochz": 1}', "unknown setting 'epochz'"),
        ('{"model": "transformer"}', "'transformer' is not one of"),
        ('{"epochs": "many"}', "setting 'epochs' in"),
        ('{"epochs": 0}', "must be a positive integer, received 0"),
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


def test_nothing_outside_the_cli_imports_the_cli():
    """Dependencies point down: cli -> reproduce -> the rest; nothing imports keras_mmoe.cli."""
    offenders = []
    package = os.path.join(REPO_ROOT, "keras_mmoe")
    for directory, _, files in os.walk(package):
        if os.path.relpath(directory, package).split(os.sep)[0] == "cli":
            continue
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(directory, name)
            for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
                if any(m == "keras_mmoe.cli" or m.startswith("keras_mmoe.cli.") for m in modules):
                    offenders.append(os.path.relpath(path, REPO_ROOT))
    assert offenders == []


def test_package_exposes_its_subpackages():
    import keras_mmoe

    assert callable(keras_mmoe.serving.export_for_serving) and callable(keras_mmoe.serving.read_metadata)
    assert callable(keras_mmoe.features.build_feature_encoder) and callable(keras_mmoe.data.make_synthetic)
    assert callable(keras_mmoe.saving.load_keras_model) and callable(keras_mmoe.metrics.task_metrics)
