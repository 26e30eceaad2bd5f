"""Version directories: numbering, no silent overwrite, whole replacement, and crash safety.

TF Serving loads every child of the model's base directory whose name is an integer, so an
export must never leave a numeric directory that is not a complete SavedModel.
"""

import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import REPO_ROOT, run_python
from keras_mmoe._keras import keras
from keras_mmoe.serving import export, export_for_serving, list_versions, next_version


def tiny_model(seed=0):
    keras.utils.set_random_seed(seed)
    x = keras.Input((2,), name="x")
    return keras.Model({"x": x}, {"y": keras.layers.Dense(1, name="y")(x)})


def snapshot(base):
    """Every file under ``base`` with its size, mtime and content hash."""
    result = {}
    for root, _, files in os.walk(base):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            stat = os.stat(path)
            result[os.path.relpath(path, base)] = (stat.st_size, stat.st_mtime_ns, digest)
    return result


def served(version_dir, x):
    return tf.saved_model.load(version_dir).signatures["serving_default"](x=tf.constant(x))["y"].numpy()


X = np.array([[1.0, 2.0], [3.0, -1.0]], np.float32)


def test_two_exports_give_versions_1_and_2(tmp_path):
    model = tiny_model()
    first = export_for_serving(model, str(tmp_path), examples_signature=False)
    second = export_for_serving(model, str(tmp_path), examples_signature=False)
    assert (first, second) == (str(tmp_path / "1"), str(tmp_path / "2"))
    assert sorted(os.listdir(tmp_path)) == ["1", "2"]
    assert list_versions(str(tmp_path)) == {1: "1", 2: "2"} and next_version(str(tmp_path)) == 3
    np.testing.assert_allclose(served(second, X), np.asarray(model({"x": X})["y"]), atol=1e-6)
    umask = os.umask(0o022)
    os.umask(umask)
    # Readable like any directory the user creates (tempfile.mkdtemp would give 0700).
    assert os.stat(second).st_mode & 0o777 == 0o777 & ~umask


def test_explicit_version_and_versions_that_tf_serving_ignores(tmp_path):
    for name in (".tmp-export-9-abc", "notes", "v3", "-4", "12a"):
        (tmp_path / name).mkdir()
    (tmp_path / "15").write_text("a file, not a version")
    assert list_versions(str(tmp_path)) == {} and next_version(str(tmp_path)) == 1
    (tmp_path / "007").mkdir()
    assert list_versions(str(tmp_path)) == {7: "007"} and next_version(str(tmp_path)) == 8
    model = tiny_model()
    assert export_for_serving(model, str(tmp_path), 41, examples_signature=False) == str(tmp_path / "41")
    assert next_version(str(tmp_path)) == 42
    with pytest.raises(FileExistsError, match="007"):  # TF Serving reads 007 as version 7
        export_for_serving(model, str(tmp_path), 7, examples_signature=False)


def test_existing_version_without_overwrite_raises_and_changes_nothing(tmp_path):
    export_for_serving(tiny_model(0), str(tmp_path), 1, examples_signature=False)
    before = snapshot(str(tmp_path))
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_for_serving(tiny_model(1), str(tmp_path), 1, examples_signature=False)
    assert snapshot(str(tmp_path)) == before
    assert sorted(os.listdir(tmp_path)) == ["1"]


def test_overwrite_replaces_the_version_as_a_whole(tmp_path):
    old_model, new_model = tiny_model(0), tiny_model(1)
    export_for_serving(old_model, str(tmp_path), 1)
    (tmp_path / "1" / "stale.txt").write_text("left by the old export")
    path = export_for_serving(new_model, str(tmp_path), 1, overwrite=True, examples_signature=False)
    assert sorted(os.listdir(tmp_path)) == ["1"]  # nothing left beside it
    assert not os.path.exists(os.path.join(path, "stale.txt"))
    signatures = tf.saved_model.load(path).signatures
    assert sorted(signatures) == ["serving_default"]  # the old predict_examples is gone too
    np.testing.assert_allclose(served(path, X), np.asarray(new_model({"x": X})["y"]), atol=1e-6)
    assert not np.allclose(served(path, X), np.asarray(old_model({"x": X})["y"]))


def _fail_after_writing(monkeypatch):
    original = export._write_saved_model

    def write_then_fail(functions, path, examples_signature):
        original(functions, path, examples_signature)
        assert os.path.exists(os.path.join(path, "saved_model.pb"))  # the failure is truly mid-export
        raise RuntimeError("injected failure")

    monkeypatch.setattr(export, "_write_saved_model", write_then_fail)


def test_failure_mid_export_leaves_no_directory_behind(tmp_path, monkeypatch):
    _fail_after_writing(monkeypatch)
    with pytest.raises(RuntimeError, match="injected failure"):
        export_for_serving(tiny_model(), str(tmp_path))
    assert os.listdir(tmp_path) == []


def test_failure_mid_overwrite_keeps_the_old_version(tmp_path, monkeypatch):
    export_for_serving(tiny_model(0), str(tmp_path), 1, examples_signature=False)
    before = snapshot(str(tmp_path))
    _fail_after_writing(monkeypatch)
    with pytest.raises(RuntimeError, match="injected failure"):
        export_for_serving(tiny_model(1), str(tmp_path), 1, overwrite=True)
    assert snapshot(str(tmp_path)) == before


def test_failure_while_writing_warmup_leaves_no_directory_behind(tmp_path, monkeypatch):
    def broken_warmup(version_dir, requests):
        os.makedirs(os.path.join(version_dir, "assets.extra"))
        raise OSError("disk full (injected)")

    monkeypatch.setattr(export._warmup, "write_warmup_file", broken_warmup)
    with pytest.raises(OSError, match="injected"):
        export_for_serving(tiny_model(), str(tmp_path), warmup_inputs={"x": X})
    assert os.listdir(tmp_path) == []


def test_a_crash_mid_export_leaves_only_a_directory_tf_serving_ignores(tmp_path):
    """The process dies (os._exit, no cleanup) after the SavedModel is written, before the rename."""
    base = str(tmp_path / "model")
    run_python(
        f"""
        import os, sys
        sys.path.insert(0, {REPO_ROOT!r})
        from keras_mmoe._keras import keras
        from keras_mmoe.serving import export
        x = keras.Input((2,), name="x")
        model = keras.Model({{"x": x}}, {{"y": keras.layers.Dense(1)(x)}})
        def crash(temp_dir, target, overwrite):
            assert os.path.exists(os.path.join(temp_dir, "saved_model.pb"))
            os._exit(0)
        export._install = crash
        export.export_for_serving(model, {base!r})
        raise SystemExit("not reached")
        """
    )
    left = os.listdir(base)
    assert len(left) == 1 and left[0].startswith(".tmp-export-1-"), left
    assert os.path.exists(os.path.join(base, left[0], "saved_model.pb"))
    assert list_versions(base) == {}
    assert export_for_serving(tiny_model(), base, examples_signature=False) == os.path.join(base, "1")


def test_bad_version_is_a_clear_error(tmp_path):
    model = tiny_model()
    for version in (0, -1, "2", 1.0, True):
        with pytest.raises(ValueError, match=r"`version` must be None or an integer >= 1, received: version="):
            export_for_serving(model, str(tmp_path), version)
    assert os.listdir(tmp_path) == []


def test_base_dir_that_is_a_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model"
    path.write_text("")
    with pytest.raises(ValueError, match="`base_dir` must be a directory"):
        export_for_serving(tiny_model(), str(path))
