"""The converged synthetic study: records, summary, resuming a stopped study, the command line."""

import json

import numpy as np
import pytest

from keras_mmoe.cli.main import main
from keras_mmoe.reproduce import synthetic_converged as sc

QUICK = dict(correlations=[0.5, 1.0], models=["mmoe", "shared_bottom"], runs=2, learning_rates=[1e-3, 1e-2],
             noise_stddevs=[0.1], samples=400, max_epochs=6, patience=2)


class Interrupt(Exception):
    pass


def without_timing(runs):
    return [{k: v for k, v in r.items() if k != "unit_seconds"} for r in runs]


def test_stopped_study_continues_to_the_uninterrupted_results(tmp_path):
    whole = sc.study(tmp_path / "whole.json", **QUICK)
    assert len(whole["units_done"]) == 8 and len(whole["runs"]) == 8 * 2

    # Stopped during the third unit's training (at its first epoch's progress message).
    path = tmp_path / "resumed.json"
    started = []

    def stop_in_third_unit(message):
        if message.startswith("["):
            started.append(message)
        if len(started) == 3 and "epoch 1:" in message:
            raise Interrupt

    with pytest.raises(Interrupt):
        sc.study(path, progress=stop_in_third_unit, **QUICK)
    partial = json.loads(path.read_text())
    assert len(partial["units_done"]) == 2 and len(partial["runs"]) == 4 and "summary" not in partial
    # The tables of a study in progress: its finished units, marked as such.
    paths = sc.write_outputs(partial, str(tmp_path))
    text = open(paths["markdown"]).read()
    assert "In progress: 2 of 8 units of work done" in text and "| MMoE |" in text
    assert set(paths) == {"markdown", "loss_curves_noise0.1", "test_loss_noise0.1"}
    messages = []
    resumed = sc.study(path, progress=messages.append, **QUICK)
    assert "2 done before" in messages[0]
    assert messages[1].startswith("[1/6] noise=0.1/p=0.5/shared_bottom/lr=0.001")  # only the unfinished units
    assert resumed["units_done"] == whole["units_done"]
    assert without_timing(resumed["runs"]) == without_timing(whole["runs"])
    assert resumed["summary"] == whole["summary"]
    assert len(resumed["sessions"]) == 2
    check_records_and_summary(whole)


def check_records_and_summary(record):
    runs = record["runs"]
    one = runs[0]
    assert {"model", "correlation", "noise_stddev", "seed", "learning_rate", "test_loss", "best_val_loss",
            "best_epoch", "epochs", "val_loss", "train_loss"} <= set(one)
    assert len(one["val_loss"]) == one["epochs"] and one["best_epoch"] <= one["epochs"] <= 6
    # Paired draws: the two models of a run see the same data (same label correlation).
    for corr in (0.5, 1.0):
        by_model = {m: sorted((r["seed"], r["label_correlation"]) for r in runs
                              if r["model"] == m and r["correlation"] == corr) for m in ("mmoe", "shared_bottom")}
        assert by_model["mmoe"] == by_model["shared_bottom"]
    cell = record["summary"]["noise_stddev=0.1"]["p=0.5"]
    for model in ("mmoe", "shared_bottom"):
        mine = [r for r in runs if r["model"] == model and r["correlation"] == 0.5]
        lr = cell["models"][model]["learning_rate"]
        means = {rate: np.mean([r["best_val_loss"] for r in mine if r["learning_rate"] == rate]) for rate in (1e-3, 1e-2)}
        assert lr == min(means, key=means.get)
        picked = [r["test_loss"] for r in mine if r["learning_rate"] == lr]
        assert cell["models"][model]["test_loss"]["mean"] == pytest.approx(np.mean(picked))
        assert cell["models"][model]["test_loss"]["q1"] == pytest.approx(np.percentile(picked, 25))
    pair = cell["paired"]["mmoe-shared_bottom"]
    test = {m: {r["seed"]: r["test_loss"] for r in runs if r["model"] == m and r["correlation"] == 0.5
                and r["learning_rate"] == cell["models"][m]["learning_rate"]} for m in ("mmoe", "shared_bottom")}
    assert pair["n"] == 2 and pair["mean"] == pytest.approx(np.mean([test["mmoe"][s] - test["shared_bottom"][s]
                                                                     for s in (0, 1)]))
    assert set(record["summary"]["noise_stddev=0.1"]["increase_1_to_0.5"]) == {"mmoe", "shared_bottom",
                                                                                "mmoe-shared_bottom"}


def test_study_checks_its_settings_before_any_work(tmp_path):
    path = tmp_path / "s.json"
    for kwargs, message in [
        (dict(models=["mmoe", "ple"]), "`models` must name some of"),
        (dict(correlations=[0.5, 1.5]), "`correlations` must be a float in \\[-1, 1\\]"),
        (dict(learning_rates=[]), "`learning_rates` must hold at least one value"),
        (dict(noise_stddevs=[-0.1]), "`noise_stddevs` must be floats >= 0"),
        (dict(runs=0), "`runs` must be a positive integer"),
        (dict(samples=10), "`samples` is too small"),
    ]:
        with pytest.raises(ValueError, match=message):
            sc.study(path, **kwargs)
    assert not path.exists()


def test_command_line_converged_quick_run_continues_and_refuses_other_settings(tmp_path, capsys):
    out = tmp_path / "out"
    start = ["reproduce", "synthetic", "--protocol", "converged", "--quick", "--models", "mmoe", "omoe"]
    argv = start + ["--correlations", "0.5", "1", "--out-dir", str(out)]
    assert main(argv) == 0
    record = json.loads((out / "synthetic_converged.json").read_text())
    assert len(record["runs"]) == 2 * 2 * 2 * 2 and record["settings"]["max_epochs"] == 2
    assert record["sessions"][0]["command"] == (
        "keras-mmoe reproduce synthetic --protocol converged --correlations 0.5 1 --models mmoe omoe --quick")
    table = (out / "synthetic_converged.md").read_text()
    assert "| MMoE |" in table and "| OMoE |" in table and "MMoE − OMoE" in table and "Learning rate choice" in table
    for kind in ("loss_curves", "test_loss"):
        assert (out / f"synthetic_converged_noise0.1_{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    capsys.readouterr()

    assert main(argv) == 0  # everything done: continues with nothing to train
    assert "8 units of 2 runs, 8 done before" in capsys.readouterr().err
    assert len(json.loads((out / "synthetic_converged.json").read_text())["sessions"]) == 2

    before = (out / "synthetic_converged.json").read_text()
    assert main(start + ["--correlations", "0.5", "--out-dir", str(out)]) == 2
    error = capsys.readouterr().err
    assert "holds a study with other settings (correlations: file [0.5, 1.0], now [0.5])" in error
    assert (out / "synthetic_converged.json").read_text() == before


@pytest.mark.parametrize("argv, message", [
    (["--protocol", "converged", "--noise-stddevs", "-1"], "argument --noise-stddevs: must be a float >= 0"),
    (["--protocol", "best"], "argument --protocol: invalid choice: 'best'"),
])
def test_command_line_bad_flags_exit_2(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["reproduce", "synthetic", *argv, "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, message", [
    (["--protocol", "converged", "--epochs", "3"], "--epochs applies to --protocol fixed, not converged"),
    (["--learning-rates", "0.1"], "--learning-rates applies to --protocol converged, not fixed"),
])
def test_command_line_refuses_the_other_protocols_flags(argv, message, tmp_path, capsys):
    assert main(["reproduce", "synthetic", *argv, "--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"keras-mmoe reproduce synthetic: error: {message}"]
    assert not list(tmp_path.iterdir())
