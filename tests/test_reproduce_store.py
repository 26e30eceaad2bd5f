"""Resumable studies: the JSON store, and a converged synthetic study killed half way and resumed."""

import json
import os

import numpy as np
import pytest

from keras_mmoe.reproduce import synthetic_converged as sc
from keras_mmoe.reproduce.store import StudyStore

SETTINGS = {"runs": 2, "learning_rates": [1e-3, 1e-2], "epochs": 5}


def read(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_store_appends_units_and_continues(tmp_path):
    path = tmp_path / "study" / "s.json"
    store = StudyStore(path, SETTINGS, session={"command": "first"})
    assert store.pending(["a", "b", "c"]) == ["a", "b", "c"]
    store.add("a", [{"run": 0, "loss": 0.5}, {"run": 1, "loss": 0.25}])
    on_disk = read(path)
    assert on_disk["units_done"] == ["a"] and [r["unit"] for r in on_disk["runs"]] == ["a", "a"]
    again = StudyStore(path, dict(SETTINGS), session={"command": "second"})
    assert again.pending(["a", "b", "c"]) == ["b", "c"] and again.is_done("a")
    again.add("b", [{"run": 0, "loss": 0.1}])
    again.update(summary={"n": 3})
    on_disk = read(path)
    assert [s["command"] for s in on_disk["sessions"]] == ["first", "second"]
    assert len(on_disk["runs"]) == 3 and on_disk["summary"] == {"n": 3}
    with pytest.raises(ValueError, match="already recorded"):
        again.add("a", [])
    with pytest.raises(ValueError, match="cannot set"):
        again.update(runs=[])


def test_store_refuses_other_settings_and_foreign_files(tmp_path):
    path = tmp_path / "s.json"
    StudyStore(path, SETTINGS).add("a", [{"run": 0}])
    before = path.read_text()
    with pytest.raises(ValueError, match=r"other settings \(epochs: file 5, now 6\)"):
        StudyStore(path, dict(SETTINGS, epochs=6))
    with pytest.raises(ValueError, match="runs: file 2, now None"):
        StudyStore(path, {"learning_rates": [1e-3, 1e-2], "epochs": 5})
    assert path.read_text() == before  # nothing overwritten
    foreign = tmp_path / "other.json"
    foreign.write_text('{"rows": [1, 2]}')
    with pytest.raises(ValueError, match="other.json: not a study file"):
        StudyStore(foreign, SETTINGS)
    broken = tmp_path / "broken.json"
    broken.write_text('{"settings": ')
    with pytest.raises(ValueError, match="broken.json: not a readable study file"):
        StudyStore(broken, SETTINGS)
    assert foreign.read_text() == '{"rows": [1, 2]}'


def test_store_write_is_atomic(tmp_path):
    path = tmp_path / "s.json"
    store = StudyStore(path, SETTINGS)
    store.add("a", [{"run": 0}])
    before = path.read_text()
    with pytest.raises(TypeError):
        store.add("b", [{"run": object()}])  # not JSON-serializable: the write fails half way
    assert path.read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["s.json"]  # no temporary file left behind


QUICK = sc.settings_with(correlations=[0.5, 1.0], models=["mmoe", "shared_bottom"], runs=2,
                         learning_rates=[1e-3, 1e-2], noise_stddevs=[0.1], samples=400, batch_size=64,
                         max_epochs=6, patience=2)


class Interrupt(Exception):
    pass


def without_timing(runs):
    return [{k: v for k, v in r.items() if k != "unit_seconds"} for r in runs]


def test_killed_study_resumes_with_the_uninterrupted_results(tmp_path):
    whole = sc.run(QUICK, tmp_path / "whole.json")
    assert len(whole["units_done"]) == 8 and len(whole["runs"]) == 8 * 2

    # Killed during the third unit's training (at its first epoch's progress message).
    path = tmp_path / "resumed.json"
    started = []

    def kill_in_third_unit(message):
        if message.startswith("["):
            started.append(message)
        if len(started) == 3 and "epoch 1:" in message:
            raise Interrupt

    with pytest.raises(Interrupt):
        sc.run(QUICK, path, progress=kill_in_third_unit)
    partial = read(path)
    assert len(partial["units_done"]) == 2 and len(partial["runs"]) == 4 and "summary" not in partial
    messages = []
    resumed = sc.run(QUICK, path, progress=messages.append)
    assert messages[0].startswith("[1/6] noise=0.1/p=0.5/shared_bottom/lr=0.001")  # only the unfinished units
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
    pair = cell["paired"]["mmoe-shared_bottom"]
    test = {m: {r["seed"]: r["test_loss"] for r in runs if r["model"] == m and r["correlation"] == 0.5
                and r["learning_rate"] == cell["models"][m]["learning_rate"]} for m in ("mmoe", "shared_bottom")}
    assert pair["n"] == 2 and pair["mean"] == pytest.approx(np.mean([test["mmoe"][s] - test["shared_bottom"][s]
                                                                     for s in (0, 1)]))
    assert set(record["summary"]["noise_stddev=0.1"]["increase_1_to_0.5"]) == {"mmoe", "shared_bottom",
                                                                                "mmoe-shared_bottom"}


def test_protocol_settings_are_checked():
    with pytest.raises(ValueError, match="unknown synthetic protocol settings \\['epochs'\\]"):
        sc.settings_with(epochs=3)
    with pytest.raises(ValueError, match="unknown model"):
        sc.settings_with(models=["mmoe", "ple"])
    with pytest.raises(ValueError, match="split"):
        sc.settings_with(split=[0.8, 0.2])
