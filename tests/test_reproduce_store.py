"""The resumable study store: units appended atomically, continued, other settings refused."""

import json
import os

import pytest

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
    assert path.read_text() == before and not store.is_done("b") and len(store.runs) == 1
    assert sorted(os.listdir(tmp_path)) == ["s.json"]  # no temporary file left behind
    store.add("b", [{"run": 1}])
    assert [r["unit"] for r in read(path)["runs"]] == ["a", "b"]
