"""keras_mmoe.saving: loading with one clear error per bad file, atomic saves, training records and
the record an export version carries (export_for_serving(metadata=...), read_metadata)."""

import json
import os

import numpy as np
import pytest

from keras_mmoe import saving
from keras_mmoe._keras import IS_KERAS_3, keras
from keras_mmoe.models import build_mmoe
from keras_mmoe.serving import export_for_serving, read_metadata

TASKS = {"click": "binary", "stay": "regression"}


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(2)
    return build_mmoe(4, TASKS, num_experts=2, expert_units=3, tower_units=(2,), seed=2)


def test_save_is_atomic_never_replaces_unasked_and_loads_back(model, tmp_path):
    path = tmp_path / "m.keras"
    assert saving.save_keras_model(model, path) == str(path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="m.keras already exists; pass overwrite=True"):
        saving.save_keras_model(model, path)
    assert path.read_bytes() == before
    saving.save_keras_model(model, path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]  # no temporary file left
    x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
    loaded = saving.load_keras_model(path)
    np.testing.assert_allclose(loaded.predict({"features": x}, verbose=0)["stay"],
                               model.predict({"features": x}, verbose=0)["stay"], rtol=1e-6)
    with pytest.raises(ValueError, match="must end with .keras"):
        saving.save_keras_model(model, tmp_path / "m.h5")


def test_bad_model_files_get_one_clear_error(model, tmp_path):
    """Before: random bytes in a .keras file gave "File not found" (Keras 3) although it exists."""
    (tmp_path / "random.keras").write_bytes(os.urandom(3000))
    (tmp_path / "random.h5").write_bytes(os.urandom(3000))
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty_dir").mkdir()
    cases = {
        "random.keras": "random.keras is not a valid Keras file: a .keras file is a zip archive, this file is not one",
        "random.h5": "random.h5 is not a valid Keras file: an .h5 file is HDF5, this file is not",
        "notes.txt": "notes.txt is not a Keras model: expected a .keras or .h5 file or a SavedModel directory",
        "empty_dir": "empty_dir is a directory without saved_model.pb",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError) as error:
            saving.load_keras_model(tmp_path / name)
        assert str(error.value) == f"{tmp_path / name}{message[len(name):]}" or message in str(error.value)
    with pytest.raises(FileNotFoundError, match="model file not found"):
        saving.load_keras_model(tmp_path / "absent.keras")

    version = export_for_serving(model, str(tmp_path / "export"))
    assert saving.model_format(version) == "saved_model"
    with pytest.raises(ValueError, match="is an exported SavedModel without Keras metadata"):
        saving.load_keras_model(version)

    # A .keras archive whose weights were damaged on disk: found by the zip's CRC check, before
    # TensorFlow is needed.
    good = tmp_path / "good.keras"
    model.save(str(good))
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle: middle + 200] = bytes(b ^ 0xFF for b in data[middle: middle + 200])
    (tmp_path / "damaged.keras").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="damaged.keras is not a valid Keras file: the zip archive is damaged"):
        saving.load_keras_model(tmp_path / "damaged.keras")

    # a valid archive holding something Keras cannot build: Keras's error, with the file named
    import zipfile

    with zipfile.ZipFile(tmp_path / "alien.keras", "w") as archive:
        archive.writestr("config.json", json.dumps({"class_name": "NoSuchLayer", "config": {}}))
        archive.writestr("metadata.json", json.dumps({"keras_version": "3.0.0"}))
    with pytest.raises(ValueError, match=f"cannot load {tmp_path / 'alien.keras'} as a Keras model: "):
        saving.load_keras_model(tmp_path / "alien.keras")


def test_records_round_trip_and_bad_ones_name_the_file(tmp_path):
    path = tmp_path / "model.json"
    assert saving.record_path(tmp_path / "model.keras") == str(path)
    saving.write_json(path, {"data": {"source": "synthetic"}, "nan": float("nan")})
    assert saving.read_record(path)["data"] == {"source": "synthetic"}
    assert os.listdir(tmp_path) == ["model.json"]
    (tmp_path / "text.json").write_text("not json")
    (tmp_path / "list.json").write_text("[]")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00")
    for name, message in [("text.json", "is not a training record: not JSON"),
                          ("list.json", "holds a JSON list, not an object"),
                          ("binary.json", "not a UTF-8 text file")]:
        with pytest.raises(ValueError, match=message) as error:
            saving.read_record(tmp_path / name)
        assert str(tmp_path / name) in str(error.value)
    with pytest.raises(FileNotFoundError, match="training record not found"):
        saving.read_record(tmp_path / "absent.json")


def test_each_export_version_carries_its_own_record(model, tmp_path):
    base = str(tmp_path / "m")
    first = export_for_serving(model, base, metadata={"data": {"seed": 1}, "tasks": TASKS})
    second = export_for_serving(model, base, metadata={"data": {"seed": 7}})
    third = export_for_serving(model, base)
    assert read_metadata(first) == {"data": {"seed": 1}, "tasks": TASKS}
    assert read_metadata(second) == {"data": {"seed": 7}}
    assert read_metadata(third) is None
    assert json.loads(open(os.path.join(first, "assets.extra", "keras_mmoe.json")).read())["data"]["seed"] == 1

    # a record that is not JSON is refused before anything is written
    with pytest.raises(ValueError, match="`metadata` must hold only JSON values"):
        export_for_serving(model, str(tmp_path / "other"), metadata={"when": object()})
    with pytest.raises(ValueError, match="`metadata` must be a dict"):
        export_for_serving(model, str(tmp_path / "other"), metadata=["seed", 1])
    assert not (tmp_path / "other").exists()


def test_the_record_does_not_disturb_serving(model, tmp_path):
    """The export with a record still loads through the TF1 session loader (TF Serving's path)."""
    import tensorflow as tf

    version = export_for_serving(model, str(tmp_path / "m"), metadata={"data": {"seed": 1}})
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], version)
    assert "serving_default" in meta_graph.signature_def
    assert IS_KERAS_3 in (True, False)
