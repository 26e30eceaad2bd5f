"""`keras-mmoe reproduce census|synthetic`: tables, plots, paper numbers, errors, the census export."""

import importlib
import json
import os
import re

import numpy as np
import pytest

from conftest import CENSUS_SAMPLE_DIR, run_python
from keras_mmoe.cli.main import main
from keras_mmoe.reproduce import census, paper, report, synthetic, versus_mmoe

# The MMoE paper's census-income tables (Ma et al., KDD 2018, Tables 2 and 3), transcribed here a
# second time, independently of keras_mmoe/reproduce/paper.py, so the two transcriptions check
# each other. Columns: group 1 income best, income mean, marital; group 2 education best,
# education mean, marital (the marital columns are means over runs).
PAPER_TABLE = """
| method | G1 income best | G1 income mean | G1 marital | G2 education best | G2 education mean | G2 marital |
|---|---|---|---|---|---|---|
| Single-Task | 0.9398 | 0.9337 | 0.9933 | 0.8843 | 0.8792 | 0.9933 |
| Shared-Bottom | 0.9361 | 0.9295 | 0.9915 | 0.8836 | 0.8813 | 0.9927 |
| L2-Constrained | 0.9389 | 0.9359 | 0.9922 | 0.8855 | 0.8823 | 0.9923 |
| Cross-Stitch | 0.9406 | 0.9361 | 0.9917 | 0.8855 | 0.8819 | 0.9919 |
| Tensor-Factorization | 0.7460 | 0.6765 | 0.8175 | 0.7367 | 0.7256 | 0.7453 |
| OMoE | 0.9387 | 0.9319 | 0.9928 | 0.8852 | 0.8813 | 0.9915 |
| MMoE | 0.9410 | 0.9359 | 0.9926 | 0.8860 | 0.8826 | 0.9932 |
"""
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _assert_png(path):
    data = open(path, "rb").read()
    assert data[:8] == PNG_MAGIC and len(data) > 5000, path


def test_paper_numbers_equal_an_independent_transcription():
    text = PAPER_TABLE
    rows = re.findall(r"^\| ([A-Za-z0-9 -]+) \| ([0-9. |]+)\|$", text, flags=re.M)
    parsed = {name.strip(): [float(v) for v in values.split("|")] for name, values in rows}
    assert len(parsed) == 7
    for key, method in paper.METHOD_NAMES.items():
        g1_best, g1_mean, g1_marital, g2_best, g2_mean, g2_marital = parsed[method]
        assert paper.CENSUS_AUC[1][key] == (g1_best, g1_mean, g1_marital)
        assert paper.CENSUS_AUC[2][key] == (g2_best, g2_mean, g2_marital)


def test_ple_paper_anchors():
    """The PLE paper (Tang et al., RecSys 2020) on census-income, income + marital status, its own
    setup: MMoE 0.9493 / 0.9928, PLE 0.9522 / 0.9945 AUC (transcribed here independently)."""
    assert paper.PLE_CENSUS_AUC == {1: {"mmoe": (0.9493, 0.9928), "ple": (0.9522, 0.9945)}}
    assert "edge over MMoE grows as the task correlation falls" in paper.PLE_SYNTHETIC_FINDING
    assert paper.DISPLAY_NAMES["cgc"] == "CGC (PLE, 1 level)" and paper.DISPLAY_NAMES["ple"] == "PLE (2 levels)"
    assert set(census.MODELS) == set(census.DEFAULT_MODELS) | {"cgc", "ple"}
    assert synthetic.MODELS == ("mmoe", "omoe", "shared_bottom", "cgc", "ple")


def test_aggregate_matches_numpy():
    values = [0.93, 0.95, 0.94, 0.91]
    stats = report.aggregate(values)
    assert stats["mean"] == pytest.approx(np.mean(values))
    assert stats["std"] == pytest.approx(np.std(values, ddof=1))
    assert (stats["best"], stats["worst"], stats["n"]) == (0.95, 0.91, 4)
    assert stats["median"] == pytest.approx(np.median(values))
    assert report.aggregate([0.5])["std"] == 0.0
    with pytest.raises(ValueError, match="at least one value"):
        report.aggregate([])


def test_census_summary_and_table_from_hand_made_runs():
    runs = [
        {"model": "mmoe", "params": 10, "epochs_trained": e, "seconds": 1.0,
         "test_auc": {"income": a, "marital": b}}
        for e, a, b in [(3, 0.94, 0.99), (5, 0.92, 0.98)]
    ]
    summary = census.summarize(runs, ["income", "marital"], 1)
    mmoe = summary["mmoe"]
    assert mmoe["test_auc"]["income"]["mean"] == pytest.approx(0.93)
    assert mmoe["test_auc"]["income"]["best"] == 0.94
    assert mmoe["mean_epochs"] == 4.0
    assert mmoe["paper"]["income"] == {"best": 0.9410, "mean": 0.9359}
    assert mmoe["paper"]["marital"] == {"mean": 0.9926}
    table = census.to_markdown(summary, ["income", "marital"], 1)
    assert "| MMoE | 10 | 2 | 4.0 | 0.9300 ± 0.0141 | 0.9400 | 0.9359 | 0.9410 | 0.9850 ± 0.0071 | 0.9900 | 0.9926 |" in table


def test_synthetic_summary_increase_is_mean_difference():
    runs = [
        {"model": "mmoe", "params": 5, "correlation": c, "final_loss": v}
        for c, v in [(1.0, 0.1), (1.0, 0.3), (0.5, 0.4), (0.5, 0.6)]
    ]
    entry = synthetic.summarize(runs)["mmoe"]
    assert entry["final_loss"]["1"]["mean"] == pytest.approx(0.2)
    assert entry["final_loss"]["0.5"]["std"] == pytest.approx(np.std([0.4, 0.6], ddof=1))
    assert entry["increase_1_to_0.5"] == pytest.approx(0.3)
    assert "+0.3000" in synthetic.to_markdown({"mmoe": entry})


def _census_runs(model, aucs):
    return [{"model": model, "seed": seed, "params": 10, "epochs_trained": 3, "seconds": 1.0,
             "test_auc": {"income": a, "marital": b}} for seed, (a, b) in enumerate(aucs)]


def test_census_cgc_and_ple_against_mmoe_paired_by_seed_beside_the_ple_paper():
    mmoe = [(0.940, 0.990), (0.945, 0.992), (0.935, 0.991)]
    ple = [(0.944, 0.991), (0.943, 0.995), (0.941, 0.990)]
    cgc = [(0.930, 0.990), (0.946, 0.993)]  # a run short: paired over the seeds it has
    runs = _census_runs("mmoe", mmoe) + _census_runs("ple", ple) + _census_runs("cgc", cgc)
    versus = versus_mmoe.census(runs, ["income", "marital"], 1)
    assert list(versus["models"]) == ["cgc", "ple"]
    d = np.array(ple) - np.array(mmoe)
    for k, task in enumerate(["income", "marital"]):
        got = versus["models"]["ple"][task]
        assert got["mean"] == pytest.approx(d[:, k].mean()) and got["std"] == pytest.approx(d[:, k].std(ddof=1))
        assert got["n"] == 3 and got["better"] == int((d[:, k] > 0).sum())
    assert versus["models"]["cgc"]["income"]["n"] == 2
    assert versus["models"]["cgc"]["income"]["mean"] == pytest.approx(((0.930 - 0.940) + (0.946 - 0.945)) / 2)
    assert versus["paper"] == {"mmoe": {"income": 0.9493, "marital": 0.9928}, "ple": {"income": 0.9522, "marital": 0.9945}}

    summary = census.summarize(runs, ["income", "marital"], 1)
    table = census.to_markdown(summary, ["income", "marital"], 1, versus=versus)
    assert "| PLE (2 levels) | 10 | 3 |" in table and "| CGC (PLE, 1 level) | 10 | 2 |" in table
    assert (f"| PLE (2 levels) | 3 | {np.mean(ple, 0)[0]:.4f} | {d[:, 0].mean():+.4f} ± {d[:, 0].std(ddof=1):.4f} | 2/3 "
            "| 0.9522 (+0.0029) |") in table
    assert f"| MMoE | 3 | {np.mean(mmoe, 0)[0]:.4f} |  |  | 0.9493 |" in table
    assert "PLE paper (Tang et al., RecSys 2020; income + marital, its own setup): MMoE 0.9493 / 0.9928; " \
           "PLE 0.9522 / 0.9945 AUC" in table
    # Group 2 has no PLE paper numbers; without CGC/PLE (or without MMoE) there is no comparison.
    assert "paper" not in versus_mmoe.census(runs, ["income", "marital"], 2)
    assert "| PLE (2 levels) | 3 |" in census.to_markdown(summary, ["income", "marital"], 2,
                                                         versus=versus_mmoe.census(runs, ["income", "marital"], 2))
    assert versus_mmoe.census(_census_runs("mmoe", mmoe), ["income", "marital"], 1) is None
    assert versus_mmoe.census(_census_runs("ple", ple), ["income", "marital"], 1) is None


def test_synthetic_edge_over_mmoe_per_correlation_and_whether_it_grows():
    losses = {  # (correlation, seed) -> (mmoe, cgc, ple)
        (1.0, 0): (0.10, 0.11, 0.10), (1.0, 1): (0.12, 0.12, 0.11),
        (0.9, 0): (0.20, 0.19, 0.17), (0.9, 1): (0.22, 0.23, 0.20),
        (0.5, 0): (0.40, 0.38, 0.30), (0.5, 1): (0.44, 0.47, 0.36),
    }
    runs = [{"model": m, "correlation": c, "seed": s, "params": 5, "final_loss": v[i]}
            for (c, s), v in losses.items() for i, m in enumerate(("mmoe", "cgc", "ple"))]
    versus = versus_mmoe.synthetic(runs)
    ple = versus["models"]["ple"]
    assert list(ple["edge"]) == ["1", "0.9", "0.5"]
    assert ple["edge"]["0.5"]["mean"] == pytest.approx(np.mean([0.40 - 0.30, 0.44 - 0.36]))
    assert ple["edge"]["0.5"]["std"] == pytest.approx(np.std([0.10, 0.08], ddof=1))
    assert ple["edge"]["1"]["better"] == 1 and ple["grows_as_correlation_falls"] is True
    cgc = versus["models"]["cgc"]  # edges -0.005, 0.0, -0.005: does not grow
    assert cgc["edge"]["0.9"]["mean"] == pytest.approx(0.0, abs=1e-12) and cgc["grows_as_correlation_falls"] is False
    assert versus["paper"] == paper.PLE_SYNTHETIC_FINDING
    table = synthetic.to_markdown(synthetic.summarize(runs), versus=versus)
    assert "| PLE (2 levels) | +0.0050 ± 0.0071 (1/2) | +0.0250 ± 0.0071 (2/2) | +0.0900 ± 0.0141 (2/2) | yes |" in table
    assert "| CGC (PLE, 1 level) |" in table and "| no |" in table
    assert "PLE paper (Tang et al., RecSys 2020): PLE's edge over MMoE grows as the task correlation falls." in table
    one = versus_mmoe.synthetic([r for r in runs if r["correlation"] == 0.5])
    assert one["models"]["ple"]["grows_as_correlation_falls"] is None


def test_quick_census_run_writes_tables_and_an_export_that_serves_raw_features(tmp_path, capsys):
    out, export = tmp_path / "out", tmp_path / "export"
    code = main(["reproduce", "census", "--quick", "--group", "2", "--models", "mmoe", "shared_bottom",
                 "--data-seed", "3", "--data-dir", CENSUS_SAMPLE_DIR, "--out-dir", str(out),
                 "--export-dir", str(export)])
    assert code == 0
    record = json.loads((out / "census_group2.json").read_text())
    # a portable command: what changes the results, no path of this machine
    assert record["command"] == "keras-mmoe reproduce census --group 2 --models mmoe shared_bottom --data-seed 3 --quick"
    assert record["settings"]["data_seed"] == 3 and record["settings"]["max_rows"] == 3000
    assert record["export_version"] == 1 and "export" not in record
    assert record["task_names"] == ["education", "marital"]
    assert [r["model"] for r in record["runs"]] == ["mmoe", "shared_bottom"]
    for run in record["runs"]:
        assert set(run["test_auc"]) == {"education", "marital"}
        assert all(0.0 <= v <= 1.0 for v in run["test_auc"].values())
        assert run["epochs_trained"] == 1 and run["params"] > 1000
    assert record["summary"]["mmoe"]["paper"]["education"] == {"best": 0.8860, "mean": 0.8826}
    table = (out / "census_group2.md").read_text()
    assert table.count("\n| MMoE |") == 1 and table.count("\n| Shared-Bottom |") == 1
    assert "paper education mean" in table and "Command: `" in table

    # The exported MMoE answers raw census features in a process that never imports keras_mmoe.
    assert os.listdir(export) == ["1"]
    result = run_python(f"""
import json, sys, numpy as np, tensorflow as tf
loaded = tf.saved_model.load({str(export / "1")!r})
fn = loaded.signatures["serving_default"]
specs = fn.structured_input_signature[1]
feed = {{k: tf.constant([["Not in universe"]] * 3) if s.dtype == tf.string else tf.constant([[30.0]] * 3)
        for k, s in specs.items()}}
feed["class_of_worker"] = tf.constant([["Private"], ["Astronaut"], ["Never worked"]])
out = fn(**feed)
assert "keras_mmoe" not in sys.modules
print(json.dumps({{k: v.numpy().ravel().tolist() for k, v in out.items()}}))
""")
    outputs = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(outputs) >= {"education", "marital"}
    for values in (outputs["education"], outputs["marital"]):
        assert len(values) == 3 and all(0.0 < v < 1.0 for v in values)

    # evaluate scores the export on the split it was trained with (data seed 3, from its record);
    # before, `evaluate --data census` had no data seed and scored another split.
    scored = tmp_path / "scored.json"
    capsys.readouterr()
    assert main(["evaluate", str(export / "1"), "--data-dir", CENSUS_SAMPLE_DIR, "--json", str(scored)]) == 0
    result = json.loads(scored.read_text())
    assert result["data"] == {"source": "census", "group": 2, "data_seed": 3, "max_rows": 3000}
    assert result["rows"] == record["runs"][0]["test_rows"]
    for task in ("education", "marital"):  # the exported MMoE run's own test loss, to float precision
        assert result["tasks"][task]["loss"] == pytest.approx(record["runs"][0]["test_loss"][task], rel=1e-5)


def test_quick_synthetic_run_writes_tables_and_figures(tmp_path):
    out = tmp_path / "out"
    code = main(["reproduce", "synthetic", "--quick", "--models", "mmoe", "shared_bottom",
                 "--correlations", "0.5", "1.0", "--out-dir", str(out)])
    assert code == 0
    record = json.loads((out / "synthetic.json").read_text())
    assert len(record["runs"]) == 2 * 2 * 2
    for run in record["runs"]:
        assert len(run["loss_curve"]) == 2 and run["final_loss"] == run["loss_curve"][-1] > 0
        assert run["steps"] == [7, 14]  # 1600 training rows, batch 256
    summary = record["summary"]
    assert set(summary) == {"mmoe", "shared_bottom"}
    assert abs(summary["mmoe"]["params"] - summary["shared_bottom"]["params"]) / summary["mmoe"]["params"] < 0.05
    for entry in summary.values():
        assert set(entry["final_loss"]) == {"0.5", "1"} and "increase_1_to_0.5" in entry
    table = (out / "synthetic.md").read_text()
    assert "| MMoE |" in table and "| Shared-Bottom |" in table and "increase 1.0 → 0.5" in table
    _assert_png(out / "synthetic_loss_curves.png")
    _assert_png(out / "synthetic_final_loss.png")


def test_quick_census_run_with_cgc_and_ple_shows_them_against_mmoe_and_the_ple_paper(tmp_path):
    out = tmp_path / "out"
    assert main(["reproduce", "census", "--quick", "--models", "mmoe", "cgc", "ple", "--data-dir", CENSUS_SAMPLE_DIR,
                 "--out-dir", str(out)]) == 0
    record = json.loads((out / "census_group1.json").read_text())
    assert record["command"] == "keras-mmoe reproduce census --models mmoe cgc ple --quick"
    assert [r["model"] for r in record["runs"]] == ["mmoe", "cgc", "ple"]
    params = {r["model"]: r["params"] for r in record["runs"]}
    # matched_budget_kwargs: MMoE's 8 experts as 4 shared + 2 per task; PLE's second level adds small experts.
    assert 0.9 < params["cgc"] / params["mmoe"] < 1.0 < params["ple"] / params["mmoe"] < 1.25
    versus = record["versus_mmoe"]
    for name in ("cgc", "ple"):
        for task in ("income", "marital"):
            run = {r["model"]: r["test_auc"][task] for r in record["runs"]}
            assert versus["models"][name][task]["mean"] == pytest.approx(run[name] - run["mmoe"])
    assert versus["paper"]["ple"] == {"income": 0.9522, "marital": 0.9945}
    table = (out / "census_group1.md").read_text()
    assert "| CGC (PLE, 1 level) |" in table and "PLE paper income" in table and "0.9522 (+0.0029)" in table


def test_quick_synthetic_study_with_cgc_and_ple(tmp_path):
    record = synthetic.study(models=["mmoe", "cgc", "ple"], correlations=[1.0, 0.5], runs=1, samples=400, epochs=1)
    assert [r["model"] for r in record["runs"][:3]] == ["mmoe", "cgc", "ple"]
    summary = record["summary"]
    assert summary["cgc"]["params"] == 14_430 and summary["ple"]["params"] == 17_618 and summary["mmoe"]["params"] == 14_834
    versus = record["versus_mmoe"]
    for name in ("cgc", "ple"):
        assert set(versus["models"][name]["edge"]) == {"1", "0.5"}
        run = {r["model"]: r["final_loss"] for r in record["runs"] if r["correlation"] == 0.5}
        assert versus["models"][name]["edge"]["0.5"]["mean"] == pytest.approx(run["mmoe"] - run[name])
        assert versus["models"][name]["grows_as_correlation_falls"] in (True, False)
    paths = synthetic.write_outputs(record, str(tmp_path))
    table = open(paths["markdown"], encoding="utf-8").read()
    assert "| PLE (2 levels) | 17618 |" in table and "edge grows as p falls" in table
    _assert_png(paths["final_loss"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["census", "--group", "3"], "argument --group: invalid choice: 3 (choose from 1, 2)"),
        (["census", "--runs", "0"], "argument --runs: must be a positive integer, received 0"),
        (["census", "--models", "mmoe", "transformer"], "argument --models: invalid choice: 'transformer'"),
        (["synthetic", "--correlations", "1.5"], "argument --correlations: must be a float in [-1, 1], received 1.5"),
        (["synthetic", "--models", "ple", "moe"], "argument --models: invalid choice: 'moe'"),
        (["synthetic", "--learning-rate", "0"], "argument --learning-rate: must be a float > 0"),
    ],
)
def test_user_errors_are_one_line_with_exit_code_2(argv, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", *argv, "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not os.listdir(tmp_path)


def test_census_max_rows_floor_is_one_line(capsys, tmp_path):
    assert main(["reproduce", "census", "--max-rows", "5", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["keras-mmoe reproduce census: error: --max-rows must be at least 10, received 5"]


@pytest.mark.parametrize(
    "study, kwargs, message",
    [
        ("census", {"models": ["mmoe", "mmoe2"]}, "`models` must name some of"),
        ("synthetic", {"models": ["ple", "transformer"]}, "`models` must name some of"),
        ("census", {"runs": 0}, "`runs` must be a positive integer"),
        ("census", {"group": 3}, "`group` must be 1 (income, marital) or 2"),
        ("census", {"learning_rate": -1.0}, "`learning_rate` must be a float > 0"),
        ("synthetic", {"correlations": [0.5, 2.0]}, "`correlations` must be a float in [-1, 1]"),
        ("synthetic", {"epochs": 0}, "`epochs` must be a positive integer"),
        ("polarization", {"rates": [0.1, 1.0]}, "`rates` must be a float in [0, 1)"),
        ("polarization", {"settings": ["0.05"]}, "LEARNING_RATE:NUM_EXPERTS"),
    ],
)
def test_studies_are_plain_functions_that_check_their_settings_first(study, kwargs, message):
    """Settings in, record out: a bad setting is a ValueError naming it, before any work (the
    progress callback is never called)."""
    module = importlib.import_module(f"keras_mmoe.reproduce.{study}")
    said = []
    with pytest.raises(ValueError) as error:
        module.study(progress=said.append, **kwargs)
    assert message in str(error.value) and said == []


def test_the_reproduce_modules_build_no_command_line():
    for study in ("census", "synthetic", "polarization"):
        module = importlib.import_module(f"keras_mmoe.reproduce.{study}")
        assert not hasattr(module, "add_arguments") and not hasattr(module, "run")
        assert callable(module.study) and callable(module.write_outputs)


def test_reproduce_without_a_study_prints_help_and_fails(capsys):
    assert main(["reproduce"]) == 2
    out = capsys.readouterr().out
    assert "census" in out and "synthetic" in out and "polarization" in out
