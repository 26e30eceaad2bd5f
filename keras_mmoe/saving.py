"""Saved models and their training records, with one clear error per bad file.

* :func:`load_keras_model` loads a ``.keras`` file (under tf-keras also ``.h5`` or a
  ``model.save(dir)`` directory) with every keras_mmoe layer registered; :func:`model_format`
  tells, from the file alone, what a path holds.
* :func:`save_keras_model` writes a ``.keras`` file atomically and never replaces one unasked.
* A *training record* is a JSON object describing how a model was trained (data settings, task
  kinds, metrics). A ``.keras`` file's record is its sibling ``<name>.json``
  (:func:`record_path`, :func:`read_record`); an export version's record is
  ``assets.extra/keras_mmoe.json`` (written by ``export_for_serving(..., metadata=...)`` before the
  version appears, read by :func:`read_metadata`). ``keras-mmoe evaluate`` reads the record of
  the model it scores, so it scores the rows that model held out.

The module imports no TensorFlow until a model is loaded or saved.
"""

from __future__ import annotations

import json
import os
import secrets
import zipfile
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the module itself imports no TensorFlow
    from keras_mmoe._keras import keras

#: File name of an export version's training record, inside its ``assets.extra/`` directory.
METADATA_FILE = "keras_mmoe.json"
METADATA_DIR = "assets.extra"

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def model_format(path: str | os.PathLike) -> str:
    """What ``path`` holds, judged from its files (no TensorFlow): ``"keras"`` (a ``.keras`` zip),
    ``"h5"`` (an HDF5 file), ``"keras_saved_model"`` (a tf-keras ``model.save(dir)`` directory) or
    ``"saved_model"`` (a SavedModel directory, e.g. an export version).

    Raises:
        FileNotFoundError: nothing at ``path``.
        ValueError: ``path`` exists but is none of these; the message names the file and what is wrong.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "saved_model.pb")):
            return "keras_saved_model" if os.path.isfile(os.path.join(path, "keras_metadata.pb")) else "saved_model"
        raise ValueError(f"{path} is a directory without saved_model.pb, not a SavedModel "
                         "(give a version directory such as NAME/1, or a .keras file)")
    if not os.path.exists(path):
        raise FileNotFoundError(f"model file not found: {path}")
    suffix = os.path.splitext(path)[1].lower()
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as error:
        raise OSError(f"cannot read {path}: {error.strerror or error}") from None
    if suffix == ".keras":
        if not zipfile.is_zipfile(path):
            raise ValueError(f"{path} is not a valid Keras file: a .keras file is a zip archive, this file is not one")
        try:
            with zipfile.ZipFile(path) as archive:
                names = set(archive.namelist())
                damaged = archive.testzip()  # the CRC of every member
        except (zipfile.BadZipFile, OSError, EOFError) as error:
            raise ValueError(f"{path} is not a valid Keras file: the zip archive is damaged ({error})") from None
        if damaged is not None:
            raise ValueError(f"{path} is not a valid Keras file: the zip archive is damaged ({damaged} fails its "
                             "CRC check)")
        if "config.json" not in names:
            raise ValueError(f"{path} is not a valid Keras file: the zip archive holds no config.json")
        return "keras"
    if suffix in (".h5", ".hdf5"):
        if head != _HDF5_SIGNATURE:
            raise ValueError(f"{path} is not a valid Keras file: an {suffix} file is HDF5, this file is not")
        return "h5"
    raise ValueError(f"{path} is not a Keras model: expected a .keras or .h5 file or a SavedModel directory")


def load_keras_model(path: str | os.PathLike, *, compile: bool = False) -> keras.Model:
    """Loads a saved Keras model with every keras_mmoe layer registered (no ``custom_objects``).

    ``path``: a ``.keras`` file; under tf-keras also an ``.h5`` file or a ``model.save(dir)``
    directory. Raises FileNotFoundError for a missing file and ValueError, naming the file, for
    anything that is not a loadable Keras model (random bytes, a truncated archive, an export
    without Keras metadata, a model built from unknown classes)."""
    path = os.fspath(path)
    kind = model_format(path)
    if kind == "saved_model":
        raise ValueError(f"{path} is an exported SavedModel without Keras metadata; load the .keras file it "
                         "was exported from (or call its serving signature with tf.saved_model.load)")
    import keras_mmoe

    keras_mmoe._load()  # TensorFlow, Keras and the registered layers
    from keras_mmoe._keras import keras

    try:
        return keras.models.load_model(path, compile=compile)
    except (ValueError, TypeError, KeyError, OSError, zipfile.BadZipFile) as error:
        text = " ".join(str(error).split()) or type(error).__name__
        raise ValueError(f"cannot load {path} as a Keras model: {text}") from error


def _write_atomically(path: str, write, suffix: str = "") -> str:
    """Calls ``write(temporary)`` on a hidden sibling of ``path`` and renames it to ``path``: the file
    is complete or absent, never half-written. ``suffix`` ends the temporary name (Keras needs .keras)."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, f".{name}.tmp-{secrets.token_hex(4)}{suffix}")
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def save_keras_model(model: keras.Model, path: str | os.PathLike, *, overwrite: bool = False) -> str:
    """Saves ``model`` to the ``.keras`` file ``path``: written to a hidden sibling first and renamed
    into place, so ``path`` is never half-written. Raises FileExistsError when ``path`` exists and
    ``overwrite`` is False (before writing anything). Returns ``path``."""
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"`path` must end with .keras, received: path={path!r}")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it")
    return _write_atomically(path, model.save, ".keras")


def write_text(path: str | os.PathLike, text: str) -> str:
    """Writes ``text`` (UTF-8) to ``path`` atomically (complete or absent); returns ``path``."""

    def write(temporary):
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)

    return _write_atomically(os.fspath(path), write)


def write_json(path: str | os.PathLike, data: Any) -> str:
    """Writes ``data`` as indented JSON to ``path`` atomically (complete or absent); returns ``path``."""
    return write_text(path, json.dumps(data, indent=1) + "\n")


def record_path(keras_path: str | os.PathLike) -> str:
    """The training record of a saved model file: ``<name>.json`` beside ``<name>.keras``."""
    return os.path.splitext(os.fspath(keras_path))[0] + ".json"


def read_record(path: str | os.PathLike) -> dict:
    """A training record (a JSON object) from ``path``.

    Raises FileNotFoundError when it is missing and ValueError, naming the file, when it is not a
    JSON object."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"training record not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not a training record: not a UTF-8 text file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not a training record: not JSON ({error})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a training record: it holds a JSON {type(data).__name__}, not an object")
    return data


def check_metadata(metadata: Any) -> str:
    """The JSON text of an export's ``metadata`` (a dict of JSON values), or ValueError."""
    if not isinstance(metadata, dict):
        raise ValueError(f"`metadata` must be a dict, received: metadata={metadata!r}")
    try:
        return json.dumps(metadata, indent=1) + "\n"
    except (TypeError, ValueError) as error:
        raise ValueError(f"`metadata` must hold only JSON values (str, numbers, bool, None, lists, dicts): {error}") from None


def write_metadata(version_dir: str | os.PathLike, metadata: dict) -> str:
    """Writes ``metadata`` to ``<version_dir>/assets.extra/keras_mmoe.json``; returns the file path.

    :func:`keras_mmoe.serving.export_for_serving` calls it on the unfinished export, before the
    version is renamed into place, so a version never appears without its record."""
    text = check_metadata(metadata)
    directory = os.path.join(os.fspath(version_dir), METADATA_DIR)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, METADATA_FILE)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path


def read_metadata(version_dir: str | os.PathLike) -> dict | None:
    """The training record stored with an export version (``assets.extra/keras_mmoe.json``), or
    None when the version has none. Raises ValueError, naming the file, when it is unreadable."""
    path = os.path.join(os.fspath(version_dir), METADATA_DIR, METADATA_FILE)
    if not os.path.isfile(path):
        return None
    return read_record(path)
