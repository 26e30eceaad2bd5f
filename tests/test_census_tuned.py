"""The tuned census study: search on validation, paired final runs, resuming, the command line."""

import json
import shutil

import numpy as np
import pytest

from conftest import CENSUS_SAMPLE_DIR
from keras_mmoe.cli.main import main
from keras_mmoe.reproduce import census_tuned as ct
from keras_mmoe.reproduce import stats

#: The settings of the quick command below (``--quick --groups 1 --models mmoe shared_bottom``).
QUICK = dict(ct.QUICK, groups=[1], models=["mmoe", "shared_bottom"])
COMMAND = ["reproduce", "census", "--protocol", "tuned", "--quick", "--groups", "1", "--models", "mmoe",
           "shared_bottom", "--data-dir", CENSUS_SAMPLE_DIR]


class Interrupt(Exception):
    pass


TIMING = ("seconds", "cpu_seconds")


def without_timing(runs):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in runs]


def summary_without_timing(summary):
    return {g: dict(entry, models={m: dict(e, final={k: v for k, v in e["final"].items() if k not in TIMING})
                                   for m, e in entry["models"].items()})
            for g, entry in summary.items()}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick study run once by the command line: its output directory."""
    out = tmp_path_factory.mktemp("tuned") / "out"
    assert main(COMMAND + ["--out-dir", str(out)]) == 0
    return out


def test_quick_command_searches_on_validation_then_pairs_the_final_runs(quick):
    record = json.loads((quick / "census_tuned.json").read_text())
    assert record["settings"]["learning_rates"] == [1e-3, 1e-2] and record["settings"]["max_rows"] == 3000
    assert record["sessions"][0]["command"] == (
        "keras-mmoe reproduce census --protocol tuned --groups 1 --models mmoe shared_bottom --quick")
    runs = record["runs"]
    # 2 configurations x 1 search run + 2 final runs, per model.
    assert len(runs) == 8 and [r["phase"] for r in runs] == ["search"] * 4 + ["final"] * 4
    assert [r["unit"] for r in runs] == record["units_done"]
    # Final runs alternate between the models, run by run: a stopped study holds paired runs.
    assert [(r["model"], r["seed"]) for r in runs[4:]] == [("mmoe", 0), ("shared_bottom", 0), ("mmoe", 1),
                                                           ("shared_bottom", 1)]
    assert {r["seed"] for r in runs[:4]} == {1000}
    for r in runs:
        assert 1 <= r["best_epoch"] <= r["epochs"] <= 2 and len(r["validation_curve"]) == r["epochs"]
        assert r["validation_auc"]["income"] == pytest.approx(max(r["validation_curve"]), abs=1e-6)
        assert r["validation_curve"][r["best_epoch"] - 1] == max(r["validation_curve"])
        assert set(r["test_auc"]) == set(r["test_loss"]) == {"income", "marital"}
        assert 0 < r["test_auc"]["marital"] < 1 and r["cpu_seconds"] > 0
    group = record["summary"]["group=1"]
    for model in ("mmoe", "shared_bottom"):
        search = {r["learning_rate"]: r["validation_auc"]["income"] for r in runs[:4] if r["model"] == model}
        chosen = group["models"][model]["chosen"]
        assert chosen["learning_rate"] == max(search, key=search.get) and chosen["width"] == 1
        final = [r for r in runs[4:] if r["model"] == model]
        assert all(r["learning_rate"] == chosen["learning_rate"] for r in final)
        assert group["models"][model]["final"]["test_auc"]["income"]["mean"] == pytest.approx(
            np.mean([r["test_auc"]["income"] for r in final]))
    test = {m: {r["seed"]: r["test_auc"]["marital"] for r in runs[4:] if r["model"] == m} for m in ("mmoe", "shared_bottom")}
    pair = group["paired"]["mmoe-shared_bottom"]["marital"]
    assert pair["n"] == 2 and pair["mean"] == pytest.approx(np.mean([test["mmoe"][s] - test["shared_bottom"][s]
                                                                     for s in (0, 1)]))
    assert ct.load(quick / "census_tuned.json")["summary"] == record["summary"]

    table = (quick / "census_tuned.md").read_text()
    assert "| MMoE | 0.01, 1 (" in table or "| MMoE | 0.001, 1 (" in table
    assert "MMoE − Shared-Bottom" in table and "Runs recorded: 8 of 8." in table
    assert (quick / "census_tuned_group1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stopped_study_continues_to_the_uninterrupted_results(quick, tmp_path):
    whole = json.loads((quick / "census_tuned.json").read_text())
    path = tmp_path / "census_tuned.json"

    def stop_at_the_sixth_run(message):  # a final run: the choice is read back from the file
        if message.startswith("[6/8]"):
            raise Interrupt

    with pytest.raises(Interrupt):
        ct.study(path, data_dir=CENSUS_SAMPLE_DIR, progress=stop_at_the_sixth_run, **QUICK)
    partial = json.loads(path.read_text())
    assert len(partial["runs"]) == 5 and "summary" not in partial
    table = ct.to_markdown(ct.load(path))  # the tables of a study in progress
    assert "Runs recorded: 5 of 8 (the study is not finished)." in table and "| Shared-Bottom | 0.0" in table
    messages = []
    resumed = ct.study(path, data_dir=CENSUS_SAMPLE_DIR, progress=messages.append, **QUICK)
    assert messages[0] == f"tuned census study: 8 runs, 5 done before (continuing {path})"
    assert [m for m in messages if m.startswith("[")][0].startswith("[6/8] group=1/shared_bottom/final/")
    assert resumed["units_done"] == whole["units_done"]
    assert without_timing(resumed["runs"]) == without_timing(whole["runs"])  # a seed fixes a run
    assert summary_without_timing(resumed["summary"]) == summary_without_timing(whole["summary"])
    assert len(resumed["sessions"]) == 2


def test_command_continues_a_finished_study_and_refuses_other_settings(quick, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(quick, out)
    capsys.readouterr()
    assert main(COMMAND + ["--out-dir", str(out)]) == 0  # nothing left to train
    assert "tuned census study: 8 runs, 8 done before" in capsys.readouterr().err
    assert len(json.loads((out / "census_tuned.json").read_text())["sessions"]) == 2

    before = (out / "census_tuned.json").read_text()
    other = ["reproduce", "census", "--protocol", "tuned", "--quick", "--groups", "1", "--models", "mmoe"]
    assert main(other + ["--data-dir", CENSUS_SAMPLE_DIR, "--out-dir", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error[-1].endswith("holds a study with other settings (models: file ['mmoe', 'shared_bottom'], now "
                              "['mmoe']); continue it with its own settings or write to another file"), error
    assert json.loads((out / "census_tuned.json").read_text())["runs"] == json.loads(before)["runs"]


def test_choice_uses_validation_auc_only_with_ties_to_the_smaller_model():
    settings = ct.make_settings(groups=[1], models=["mmoe"], runs=1, search_runs=2, learning_rates=[1e-3, 1e-2],
                                widths=[1, 2], max_epochs=2, patience=1, seed=0, data_seed=0, max_rows=None)

    def run(lr, width, validation, test, seed):
        return {"phase": "search", "group": 1, "model": "mmoe", "learning_rate": lr, "width": width, "seed": seed,
                "validation_auc": {"income": validation, "marital": 0.99}, "test_auc": {"income": test}}

    # Means exact in binary floating point, so the tie is a tie.
    runs = [run(1e-3, 1.0, 0.5, 0.99, 1000), run(1e-3, 1.0, 0.75, 0.99, 1001),     # mean 0.625, best test
            run(1e-2, 1.0, 0.875, 0.80, 1000), run(1e-2, 1.0, 0.625, 0.80, 1001),  # mean 0.75
            run(1e-3, 2.0, 0.75, 0.80, 1000), run(1e-3, 2.0, 0.75, 0.80, 1001),    # mean 0.75, wider
            run(1e-2, 2.0, 1.0, 0.80, 1000)]
    assert ct.choose_configuration(runs, 1, "mmoe", settings) is None  # a search run is missing
    runs.append(run(1e-2, 2.0, float("nan"), 0.80, 1001))  # a diverged run never wins
    chosen = ct.choose_configuration(runs, 1, "mmoe", settings)
    assert chosen == {"learning_rate": 1e-2, "width": 1.0, "validation_auc": 0.75}


def test_summary_pairs_final_runs_by_seed_with_bootstrap_intervals():
    settings = dict(groups=[2], models=["mmoe", "omoe"], runs=3, search_runs=1, learning_rates=[1e-3], widths=[1.0],
                    seed=0)
    rng = np.random.default_rng(0)
    runs = []
    for model in ("mmoe", "omoe"):
        runs.append({"phase": "search", "group": 2, "model": model, "learning_rate": 1e-3, "width": 1.0, "seed": 1000,
                     "params": 10, "epochs": 3, "stopped": True,
                     "validation_auc": {"education": 0.88, "marital": 0.99}})
        for seed in (0, 1, 2):
            runs.append({"phase": "final", "group": 2, "model": model, "learning_rate": 1e-3, "width": 1.0,
                         "seed": seed, "params": 10, "epochs": 3, "stopped": True, "seconds": 1.0, "cpu_seconds": 1.0,
                         "test_auc": {"education": 0.88 + rng.normal(0, 0.01), "marital": 0.99}})
    summary = ct.summarize({"settings": settings, "runs": runs}, n_resamples=2000)["group=2"]
    mine = {r["seed"]: r["test_auc"]["education"] for r in runs if r["phase"] == "final" and r["model"] == "mmoe"}
    theirs = {r["seed"]: r["test_auc"]["education"] for r in runs if r["phase"] == "final" and r["model"] == "omoe"}
    pair = summary["paired"]["mmoe-omoe"]
    expected = stats.paired_difference(mine, theirs, n_resamples=2000, seed=0)
    assert {k: pair["education"][k] for k in expected} == expected
    assert pair["education"]["mmoe_higher"] == sum(mine[s] > theirs[s] for s in mine)
    assert pair["paper"]["mmoe_paper"]["education"] == pytest.approx(0.8826 - 0.8813)
    table = ct.to_markdown({"settings": settings, "runs": runs, "summary": {"group=2": summary}})
    assert "### Group 2: education (main) and marital" in table and "| MMoE − OMoE |" in table


@pytest.mark.parametrize("kwargs, message", [
    (dict(models=["mmoe", "mmoe"]), "`models` must name some of"),
    (dict(groups=[3]), "`groups` must name task groups 1"),
    (dict(widths=[0.01]), "`widths` must be budget multiples"),
    (dict(learning_rates=[]), "`learning_rates` must hold at least one value"),
    (dict(search_runs=0), "`search_runs` must be a positive integer"),
    (dict(max_rows=5), "`max_rows` must be at least 10"),
])
def test_study_checks_its_settings_before_any_work(kwargs, message, tmp_path):
    said = []
    with pytest.raises(ValueError, match=message):
        ct.study(tmp_path / "s.json", progress=said.append, **kwargs)
    assert said == [] and not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--protocol", "tuned", "--epochs", "3"], "--epochs applies to --protocol fixed, not tuned"),
    (["--protocol", "tuned", "--group", "2"], "--group applies to --protocol fixed, not tuned"),
    (["--widths", "1", "3"], "--widths applies to --protocol tuned, not fixed"),
    (["--protocol", "tuned", "--groups", "1", "1"], "`groups` must name task groups 1 (income, marital) and/or 2"),
])
def test_command_line_refuses_flags_of_the_other_protocol_in_one_line(argv, message, tmp_path, capsys):
    assert main(["reproduce", "census", *argv, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list(tmp_path.iterdir())


def test_load_refuses_files_that_are_not_a_tuned_study(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"settings": {"correlations": [0.5]}, "units_done": [], "runs": []}))
    with pytest.raises(ValueError, match="other.json: not a tuned census study file"):
        ct.load(path)
    path.write_text("{")
    with pytest.raises(ValueError, match="other.json: not a readable study file"):
        ct.load(path)
