"""`keras-mmoe train --spec`, `evaluate --spec` and `spec infer` on a small table of every feature type:
end to end in-process, the export answering raw rows in a process that never imports keras_mmoe,
metrics against keras_mmoe.metrics, and each bad input as one line, exit code 2, nothing written.

Small data (400 rows), one or two epochs; runs under Keras 3 and tf-keras.
"""

import contextlib
import copy
import io
import json
import os

import numpy as np
import pytest

from conftest import run_python
from spec_data import SPEC, csv_lines, make_table, reference_inputs, write_csv, write_shards

N = 400


def cli(*argv):
    """``(exit code, stdout, stderr)`` of ``keras-mmoe *argv`` run in-process."""
    from keras_mmoe.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_info:  # argparse's own errors
            code = exit_info.code
    return code, out.getvalue(), err.getvalue()


def one_line_error(err, command="train"):
    lines = err.strip().splitlines()
    assert len(lines) >= 1 and lines[-1].startswith(f"keras-mmoe {command}: error: "), err
    assert not any("Traceback" in line for line in lines), err
    return lines[-1]


def write_spec(directory, tables, name="spec.toml"):
    from keras_mmoe.data import spec_to_toml

    path = os.path.join(str(directory), name)
    with open(path, "w", encoding="utf-8") as f:
        f.write(spec_to_toml(tables))
    return path


@pytest.fixture(scope="module")
def table():
    return make_table(N, seed=3)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, table):
    directory = tmp_path_factory.mktemp("spec_cli")
    write_shards(str(directory), table, 2)
    write_spec(directory, SPEC)
    return directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("out")
    code, stdout, stderr = cli("train", "--spec", data_dir / "spec.toml", "--out-dir", out, "--name", "ranker",
                               "--epochs", "2")
    assert code == 0, stderr
    return out, stdout, stderr


def edge_rows():
    """Raw rows a request may carry: missing values, unseen categories, several tokens in a cell."""
    return {
        "age": [[float("nan")], [33.0], [80.0], [float("nan")]],
        "income": [[20000.0], [5000.0], [80000.0], [30000.0]],
        "country": [[""], ["Atlantis"], ["US"], ["FR"]],
        "device": [[-1], [999], [101], [103]],
        "tags": [[""], ["mobile|tablet|never-seen"], ["tv"], ["||car|"]],
    }


# ------------------------------------------------------------------------------------ train --spec


def test_train_spec_prints_the_plan_trains_saves_and_exports_with_its_record(trained, table):
    from keras_mmoe import saving

    out, stdout, stderr = trained
    lines = [line[len("[keras-mmoe] "):] for line in stderr.splitlines() if line.startswith("[keras-mmoe] ")]
    text = "\n".join(lines)
    assert "train: 2 file(s), " in text and "validation: " in text
    assert "feature tags (multi_categorical): vocabulary 7 incl. OOV (6 distinct)" in text
    assert "feature device (categorical): vocabulary 9 incl. OOV (8 distinct), one_hot" in text
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [e.split(":")[0] for e in epochs] == ["epoch 1/2", "epoch 2/2"]
    assert all("validation: click AUC " in e and "watch RMSE " in e for e in epochs), epochs
    version_dir = str(out / "ranker" / "1")
    assert stdout.strip() == os.path.abspath(version_dir)
    assert (out / "ranker.keras").is_file() and (out / "ranker" / "1" / "saved_model.pb").is_file()
    assert sorted(os.listdir(out)) == ["ranker", "ranker.json", "ranker.keras"]  # no temporary file left

    record = saving.read_record(out / "ranker.json")
    exported = saving.read_metadata(version_dir)
    assert record == dict(exported, export_version=1)
    assert record["written_by"] == "keras-mmoe train --spec" and record["model"] == "mmoe"
    assert record["tasks"] == {"click": "binary", "watch": "regression"}
    assert record["training"]["epochs"] == 2 and record["training"]["batch_size"] == SPEC["train"]["batch_size"]
    assert record["statistics"]["rows"] + record["statistics"]["validation_rows"] == N
    assert record["data"]["spec"]["features"][0]["name"] == "age"
    # The record's spec is the spec trained with (evaluate reads it).
    from keras_mmoe.workflow import spec_from_record

    spec = spec_from_record(record)
    assert [f.name for f in spec.features] == [f["name"] for f in SPEC["features"]]
    assert spec.resolve_path("train-00.csv") == os.path.normpath(os.path.join(record["data"]["base_dir"], "train-00.csv"))
    last = [e for e in epochs if e.startswith("epoch 2/2")][0]
    auc = record["validation_metrics"]["click"]["auc"]
    assert f"validation: click AUC {auc:.4f}" in last
    watch_std = float(np.std(table["watch_seconds"]))
    assert 0 < record["validation_metrics"]["watch"]["rmse"] < 3 * watch_std  # label units, not standardized


def test_export_answers_raw_rows_in_a_process_without_keras_mmoe(trained, table, tmp_path):
    from keras_mmoe import saving

    out, _, _ = trained
    version_dir = str(out / "ranker" / "1")
    rows = reference_inputs(table, range(20))
    raw = {k: [[v.decode() if isinstance(v, bytes) else v.item()] for v in rows[k]]
           for k in ("age", "income", "country", "device", "tags")}
    for k, v in edge_rows().items():
        raw[k] = raw[k] + v
    (tmp_path / "rows.json").write_text(json.dumps(raw))  # NaN is written as NaN, which json reads back
    code = f"""
        import json, sys
        import numpy as np
        import tensorflow as tf
        rows = json.load(open({str(tmp_path / 'rows.json')!r}))
        loaded = tf.saved_model.load({version_dir!r})
        fn = loaded.signatures["serving_default"]
        specs = fn.structured_input_signature[1]
        out = fn(**{{k: tf.constant(v, dtype=specs[k].dtype) for k, v in rows.items()}})
        examples = []
        for i in range(len(rows["age"])):
            f = {{}}
            if not np.isnan(rows["age"][i][0]):
                f["age"] = tf.train.Feature(float_list=tf.train.FloatList(value=rows["age"][i]))
            f["income"] = tf.train.Feature(float_list=tf.train.FloatList(value=rows["income"][i]))
            if rows["country"][i][0]:
                f["country"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[rows["country"][i][0].encode()]))
            if rows["device"][i][0] != -1:
                f["device"] = tf.train.Feature(int64_list=tf.train.Int64List(value=rows["device"][i]))
            tokens = [t.encode() for t in rows["tags"][i][0].split("|") if t]
            if tokens:
                f["tags"] = tf.train.Feature(bytes_list=tf.train.BytesList(value=tokens))
            examples.append(tf.train.Example(features=tf.train.Features(feature=f)).SerializeToString())
        by_example = loaded.signatures["predict_examples"](examples=tf.constant(examples))
        print(json.dumps({{
            "raw": {{k: v.numpy().ravel().tolist() for k, v in out.items()}},
            "examples": {{k: v.numpy().ravel().tolist() for k, v in by_example.items()}},
            "keras_mmoe": any(m.startswith("keras_mmoe") for m in sys.modules),
        }}))
    """
    answer = json.loads(run_python(code).stdout.strip().splitlines()[-1])
    assert answer["keras_mmoe"] is False
    model = saving.load_keras_model(out / "ranker.keras")
    import tensorflow as tf

    feed = {k: tf.constant(v, dtype={"country": tf.string, "tags": tf.string, "device": tf.int64}.get(k, tf.float32))
            for k, v in raw.items()}
    expected = {k: np.asarray(v).ravel() for k, v in model(feed, training=False).items()}
    for signature in ("raw", "examples"):
        for task in ("click", "watch"):
            np.testing.assert_allclose(answer[signature][task], expected[task], rtol=1e-5, atol=1e-5,
                                       err_msg=f"{signature} {task}")
    assert np.all((np.array(answer["raw"]["click"]) > 0) & (np.array(answer["raw"]["click"]) < 1))
    assert np.mean(answer["raw"]["watch"]) > 100  # seconds, not a standardized value


def test_second_train_needs_overwrite_and_flags_win_over_the_spec(trained, data_dir):
    from keras_mmoe import saving

    out, _, _ = trained
    before = (out / "ranker.keras").read_bytes()
    code, _, err = cli("train", "--spec", data_dir / "spec.toml", "--out-dir", out, "--name", "ranker")
    assert code == 2
    assert "ranker.keras already exists (from an earlier train); pass --overwrite" in one_line_error(err)
    assert (out / "ranker.keras").read_bytes() == before and not (out / "ranker" / "2").exists()

    code, stdout, err = cli("train", "--spec", data_dir / "spec.toml", "--out-dir", out, "--name", "ranker",
                            "--overwrite", "--epochs", "1", "--batch-size", "50", "--learning-rate", "0.02",
                            "--seed", "5", "--mixed-precision", "mixed_bfloat16")
    assert code == 0, err
    assert stdout.strip().endswith(os.path.join("ranker", "2"))
    assert "training 1 epoch(s), batch size 50, learning rate 0.02, mixed_bfloat16" in err
    record = saving.read_record(out / "ranker.json")
    assert record["export_version"] == 2
    assert {k: record["training"][k] for k in ("epochs", "batch_size", "learning_rate", "seed", "mixed_precision")} == {
        "epochs": 1, "batch_size": 50, "learning_rate": 0.02, "seed": 5, "mixed_precision": "mixed_bfloat16"}
    # Version 1 keeps its own record.
    assert saving.read_metadata(out / "ranker" / "1")["training"]["epochs"] == 2
    model = saving.load_keras_model(out / "ranker.keras")
    assert model.get_layer("mmoe").compute_dtype == "bfloat16"


def test_max_bad_rows_skips_and_counts_then_fails_beyond(tmp_path, table):
    lines = csv_lines(table)
    for i in (3, 10):  # two rows with a binary label of 5
        cells = lines[i].split(",")
        cells[6] = "5"
        lines[i] = ",".join(cells)
    (tmp_path / "train-bad.csv").write_text("\n".join(lines) + "\n")
    tables = copy.deepcopy(SPEC)
    tables["data"]["train"] = ["train-bad.csv"]
    spec = write_spec(tmp_path, tables)
    out = tmp_path / "out"
    code, _, err = cli("train", "--spec", spec, "--out-dir", out)
    assert code == 2
    assert "train-bad.csv: line 4: column 'clicked' (label of task 'click'): a binary label must be 0 or 1, received '5'" in one_line_error(err)
    code, _, err = cli("train", "--spec", spec, "--out-dir", out, "--max-bad-rows", "1")
    assert code == 2
    assert "more than max_bad_rows=1 malformed rows" in one_line_error(err)
    assert not out.exists()
    code, _, err = cli("train", "--spec", spec, "--out-dir", out, "--max-bad-rows", "2")
    assert code == 0, err
    assert "(2 malformed rows skipped)" in err
    from keras_mmoe import saving

    record = saving.read_record(out / "model.json")
    assert record["statistics"]["bad_rows"] == 2 and record["training"]["max_bad_rows"] == 2


def _spec_variant(directory, change):
    tables = copy.deepcopy(SPEC)
    change(tables)
    return write_spec(directory, tables, "variant.toml")


@pytest.mark.parametrize("make_argv, message", [
    (lambda d, o: ["--spec", _spec_variant(d, lambda t: t["model"].update(num_expert=3))],
     "variant.toml: [model]: unknown key 'num_expert' for architecture 'mmoe'; valid keys: architecture, "),
    (lambda d, o: ["--spec", _spec_variant(d, lambda t: t["model"].update(architecture="moe"))],
     "variant.toml: [model]: unknown architecture 'moe'; choose one of ['cgc', "),
    (lambda d, o: ["--spec", _spec_variant(d, lambda t: t["train"].update(mixed_precision="float16"))],
     "variant.toml: [train]: `mixed_precision` must be one of ['float32', 'mixed_bfloat16', 'mixed_float16'], "
     "received 'float16'"),
    (lambda d, o: ["--spec", _spec_variant(d, lambda t: t.update(model={"architecture": "cross_stitch",
                                                                         "hidden_units": [4]})),
                   "--mixed-precision", "mixed_bfloat16"],
     "`mixed_precision` = 'mixed_bfloat16' needs an architecture whose layers take a dtype (cgc, mmoe, omoe, ple, "
     "shared_bottom, single_task); 'cross_stitch' does not"),
    (lambda d, o: ["--spec", _spec_variant(d, lambda t: t["data"].update(train=["nothing-*.csv"]))],
     "[data] train: the pattern"),
    (lambda d, o: ["--spec", _spec_variant(d, lambda t: t["features"][1].update(name="salary"))],
     "no column 'salary'"),
    (lambda d, o: ["--spec", d / "spec.toml", "--jit-compile"],
     "[train]: `jit_compile` = true: the model looks up the categorical feature 'country' in a vocabulary table"),
    (lambda d, o: ["--spec", d / "spec.toml", "--num-experts", "4"],
     "--num-experts applies to the built-in synthetic data, not to --spec (set [model] num_experts in the spec)"),
    (lambda d, o: ["--spec", d / "spec.toml", "--samples", "100"],
     "--samples applies to the built-in synthetic data, not to --spec (the data are the spec's files)"),
    (lambda d, o: ["--spec", d / "absent.toml"], "spec file not found: "),
    (lambda d, o: ["--spec", d / "spec.toml", "--devices", "2"],
     "--devices splits the CPU for --strategy mirrored, received --strategy None"),
    (lambda d, o: ["--max-bad-rows", "3"], "--max-bad-rows applies to training on your own files: give --spec FILE"),
    (lambda d, o: ["--spec", d / "spec.toml", "--strategy", "none", "--mixed-precision", "mixed_float16"],
     "`mixed_precision` = 'mixed_float16' needs loss scaling, which the distributed training loop (strategy 'none') "
     "does not do"),
])
def test_train_spec_mistakes_are_one_line_exit_2_and_write_nothing(data_dir, tmp_path, make_argv, message):
    out = tmp_path / "out"
    code, stdout, err = cli("train", *make_argv(data_dir, out), "--out-dir", out)
    assert code == 2 and stdout == ""
    assert message in one_line_error(err), err
    assert not out.exists()


# ------------------------------------------------------------------------------------ evaluate --spec


def test_evaluate_export_on_other_files_with_gauc_agrees_with_keras_mmoe_metrics(trained, tmp_path):
    from keras_mmoe import metrics, saving

    out, _, _ = trained
    other = make_table(150, seed=11)
    write_csv(str(tmp_path / "test.csv"), other)
    scores = tmp_path / "scores.json"
    code, stdout, err = cli("evaluate", out / "ranker" / "1", "--data", tmp_path / "test.csv", "--group-by", "user",
                            "--json", scores)
    assert code == 0, err
    assert "spec from the training record" in err and "150 rows of 1 file(s)" in err
    got = json.loads(scores.read_text())
    assert got["rows"] == 150 and got["bad_rows"] == 0 and got["group_by"] == "user"
    assert json.loads(stdout) == got["tasks"]
    # The reference: the .keras model's predictions on the same rows, metrics from keras_mmoe.metrics.
    rows = reference_inputs(other)
    import tensorflow as tf

    model = saving.load_keras_model(out / "ranker.keras")
    feed = {k: tf.constant(rows[k].reshape(-1, 1)) for k in ("age", "income", "country", "device", "tags")}
    predicted = {k: np.asarray(v, np.float64).ravel() for k, v in model(feed, training=False).items()}
    y, p = rows["click"], predicted["click"]
    gauc, used, skipped = metrics.group_auc(y, p, np.array(other["user"]))
    expected_click = {"auc": metrics.roc_auc(y, p), "loss": metrics.binary_crossentropy(y, p),
                      "calibration": metrics.calibration(y, p), "gauc": gauc}
    for name, value in expected_click.items():
        # The SavedModel's graph may differ from Keras by one float32 ulp, which can split exact ties.
        assert got["tasks"]["click"][name] == pytest.approx(value, rel=1e-4, abs=1e-3), name
    assert (got["tasks"]["click"]["gauc_groups"], got["tasks"]["click"]["gauc_skipped_groups"]) == (used, skipped)
    assert used + skipped == len(set(other["user"]))
    assert got["tasks"]["watch"]["rmse"] == pytest.approx(metrics.rmse(rows["watch"], predicted["watch"]), rel=1e-4)
    line = next(line for line in err.splitlines() if line.startswith("[keras-mmoe] click: AUC "))
    assert f"GAUC {gauc:.4f} over {used} groups ({skipped} holding one class skipped)" in line


def test_evaluate_keras_file_with_spec_scores_the_held_out_split(trained, data_dir):
    from keras_mmoe import saving

    out, _, _ = trained
    record = saving.read_record(out / "ranker.json")
    code, stdout, err = cli("evaluate", out / "ranker.keras", "--spec", data_dir / "spec.toml", "--tasks", "watch")
    assert code == 0, err
    assert "on the spec's validation split" in err
    assert f"{record['statistics']['validation_rows']} rows of 2 file(s)" in err
    got = json.loads(stdout)
    assert list(got) == ["watch"]
    # The same rows and model as the last epoch's validation metrics of the training.
    assert got["watch"]["rmse"] == pytest.approx(record["validation_metrics"]["watch"]["rmse"], rel=1e-4)


@pytest.mark.parametrize("make_argv, message", [
    (lambda o, t: [o / "ranker" / "1", "--group-by", "nobody"], "no column 'nobody'"),
    (lambda o, t: [o / "ranker" / "1", "--data", t / "absent-*.csv"], "the pattern"),
    (lambda o, t: [o / "ranker.keras", "--data", t / "nolabel.csv"], "no column 'watch_seconds'"),
    (lambda o, t: [o / "ranker.keras", "--samples", "100"],
     "--samples applies to the built-in data sources; a spec model is scored on files (--data FILES)"),
    (lambda o, t: [o / "ranker.keras", "--tasks", "buy"], "unknown task(s) ['buy'] for --tasks"),
    (lambda o, t: [o / "ranker.keras", "--spec", t / "absent.toml"], "spec file not found: "),
])
def test_evaluate_spec_mistakes_are_one_line_exit_2(trained, tmp_path, make_argv, message, table):
    out, _, _ = trained
    write_csv(str(tmp_path / "nolabel.csv"), table, rows=range(20),
              columns=["age", "income", "country", "device", "tags", "user", "clicked"])
    json_path = tmp_path / "scores.json"
    code, stdout, err = cli("evaluate", *make_argv(out, tmp_path), "--json", json_path)
    assert code == 2 and stdout == ""
    assert message in one_line_error(err, "evaluate"), err
    assert not json_path.exists()


def test_built_in_train_takes_mixed_precision_and_jit_compile_and_evaluate_refuses_spec_flags(tmp_path):
    from keras_mmoe import saving

    code, _, err = cli("train", "--epochs", "1", "--samples", "200", "--dim", "4", "--num-experts", "2",
                       "--expert-units", "4", "--out-dir", tmp_path, "--mixed-precision", "mixed_bfloat16",
                       "--jit-compile")
    assert code == 0, err
    assert "parameters, mixed_bfloat16, XLA) for 1 epochs" in err
    record = saving.read_record(tmp_path / "mmoe_synthetic.json")
    assert (record["training"]["mixed_precision"], record["training"]["jit_compile"]) == ("mixed_bfloat16", True)
    model = tmp_path / "mmoe_synthetic.keras"
    assert saving.load_keras_model(model).get_layer("mmoe").compute_dtype == "bfloat16"
    code, _, err = cli("evaluate", model, "--group-by", "user")
    assert code == 2 and "--group-by applies to models trained on your own files: give --spec FILE" in one_line_error(
        err, "evaluate")
    code, _, err = cli("evaluate", model, "--data", "test.csv")
    assert code == 2 and "--data takes a built-in source (census, synthetic) for this model, received test.csv" in (
        one_line_error(err, "evaluate"))
    code, stdout, err = cli("evaluate", model, "--data", "synthetic")
    assert code == 0, err
    assert sorted(json.loads(stdout)) == ["y1", "y2"]


# ------------------------------------------------------------------------------------ spec infer / check


def test_spec_infer_writes_a_spec_that_loads_and_check_reads_its_files(data_dir, tmp_path, monkeypatch):
    from keras_mmoe.data import infer_spec, load_spec, resolve_source

    monkeypatch.chdir(data_dir)
    code, stdout, err = cli("spec", "infer", "train-*.csv", "--label", "clicked:binary",
                            "--label", "watch_seconds:regression")
    assert code == 0, err
    assert stdout == infer_spec(["train-*.csv"], ["clicked:binary", "watch_seconds:regression"])
    (tmp_path / "stdout.toml").write_text(stdout)
    spec = load_spec(str(tmp_path / "stdout.toml"), base_dir=str(data_dir))
    assert [t.name for t in spec.tasks] == ["clicked", "watch_seconds"]
    assert {f.name: f.type for f in spec.features}["tags"] == "multi_categorical"
    assert "user" in [f.name for f in spec.features]

    # --out in another directory: the patterns are rewritten relative to it.
    out = tmp_path / "specs" / "ranker.toml"
    code, stdout, err = cli("spec", "infer", "train-*.csv", "--label", "clicked:binary", "--out", out)
    assert code == 0 and stdout == "", err
    spec = load_spec(str(out))
    assert resolve_source(spec, "train").files == [str(data_dir / "train-00.csv"), str(data_dir / "train-01.csv")]
    before = out.read_text()
    code, _, err = cli("spec", "infer", "train-00.csv", "--label", "clicked:binary", "--out", out)
    assert code == 2 and "ranker.toml already exists; pass --overwrite to replace it" in one_line_error(err, "spec infer")
    assert out.read_text() == before
    code, _, err = cli("spec", "infer", "train-00.csv", "--label", "clicked:binary", "--out", out, "--overwrite")
    assert code == 0, err
    assert 'train = ["../../' in out.read_text() and out.read_text() != before

    code, stdout, err = cli("spec", "check", out)
    assert code == 0, err
    lines = stdout.splitlines()
    assert lines[0].startswith("train: 1 file(s), ") and any(line.startswith("feature tags (multi_categorical)")
                                                           for line in lines)
    assert lines[-2].startswith("model: mmoe (num_experts=8, expert_units=[64, 32]")


@pytest.mark.parametrize("argv, message", [
    (["infer", "train-*.csv", "--label", "click:binary"], "train-00.csv: no column 'click' for the label; the columns are: "),
    (["infer", "train-*.csv", "--label", "clicked:ctr"], "label 'clicked': unknown type 'ctr'; choose one of"),
    (["infer", "train-*.csv", "--label", "clicked"], "a label must be COLUMN:TYPE"),
    (["infer", "none-*.csv", "--label", "clicked:binary"], "spec infer: the pattern"),
    (["infer", "train-*.csv", "--label", "clicked:binary", "--out", "spec.json"], "--out must name a .toml file"),
    (["infer", "train-*.csv", "--label", "clicked:binary", "--delimiter", ";;"], "--delimiter must be one character"),
    (["check", "absent.toml"], "spec file not found: absent.toml"),
])
def test_spec_command_mistakes_are_one_line_exit_2(data_dir, monkeypatch, argv, message):
    monkeypatch.chdir(data_dir)
    before = sorted(os.listdir(data_dir))
    code, stdout, err = cli("spec", *argv)
    assert code == 2 and stdout == ""
    assert message in one_line_error(err, f"spec {argv[0]}"), err
    assert sorted(os.listdir(data_dir)) == before
