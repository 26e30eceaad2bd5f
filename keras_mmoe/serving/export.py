"""Export a multi-task Keras model as a versioned SavedModel for TensorFlow Serving.

What: :func:`export_for_serving` writes ``base_dir/<version>/`` (``saved_model.pb``,
``variables/``, ``assets/`` and, with ``warmup_inputs``, ``assets.extra/tf_serving_warmup_requests``)
with the signatures of :mod:`keras_mmoe.serving.signatures` (tag ``serve``, method
``tensorflow/serving/predict``).

Why it is built this way:

* TF Serving watches ``base_dir`` and loads every child whose name is an integer. A version
  must therefore appear complete or not at all: the SavedModel is written into a sibling
  ``.tmp-export-<version>-<random>`` directory (not an integer, so TF Serving ignores it) and
  renamed into place with ``os.rename``, atomic on one filesystem. A crash mid-export leaves at
  worst that hidden directory, never a half-written version. An exception removes it.
* ``overwrite=True`` replaces a version as a whole: the new export is completed first, then the
  old directory is renamed away, the new one renamed in, the old one deleted. Between those two
  renames (microseconds) the version is absent; POSIX has no atomic directory swap.
* The platform forces one step to differ per Keras flavour (measured on TF 2.21): under Keras 3,
  ``tf.saved_model.save`` of a module holding the model writes variables that the TF1 session
  loader (TF Serving's path) cannot find, so Keras 3 goes through ``keras.export.ExportArchive``,
  which tracks the underlying ``tf.Variable`` objects; under tf-keras a ``tf.Module`` holding the
  model and the signature ``tf.function`` is saved with ``tf.saved_model.save``. The signature
  functions, example parsing, versioning, atomic rename and warmup are shared.
"""

import os
import secrets
import shutil
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from keras_mmoe import saving as _saving
from keras_mmoe._keras import IS_KERAS_3
from keras_mmoe.serving import warmup as _warmup
from keras_mmoe.serving.signatures import DEFAULT_SIGNATURE, EXAMPLES_SIGNATURE, ServingFunctions

TEMP_PREFIX = ".tmp-export-"


def list_versions(base_dir: Union[str, "os.PathLike[str]"]) -> Dict[int, str]:
    """``{version: directory name}`` of the children of ``base_dir`` that TF Serving loads as versions."""
    versions = {}
    if not os.path.isdir(base_dir):
        return versions
    for name in os.listdir(base_dir):
        if name.isascii() and name.isdigit() and os.path.isdir(os.path.join(base_dir, name)):
            versions.setdefault(int(name), name)
    return versions


def next_version(base_dir: Union[str, "os.PathLike[str]"]) -> int:
    """One more than the highest numeric version in ``base_dir`` (1 when there is none)."""
    versions = list_versions(base_dir)
    return max(versions) + 1 if versions else 1


def _unique_sibling(base_dir, label):
    """A new, unused path ``base_dir/.tmp-export-<label>-<random>`` (not created)."""
    while True:
        path = os.path.join(base_dir, f"{TEMP_PREFIX}{label}-{secrets.token_hex(4)}")
        if not os.path.lexists(path):
            return path


def _make_temp_dir(base_dir, version):
    """Creates the hidden sibling the export is written to (``os.mkdir``: the umask's permissions,
    unlike ``tempfile.mkdtemp``'s 0700, so TF Serving running as another user can read it)."""
    while True:
        path = _unique_sibling(base_dir, version)
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def _check_version(version):
    if version is None:
        return None
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be None or an integer >= 1, received: version={version!r}")
    return version


def _save_keras3(functions, path, examples_signature):
    from keras_mmoe._keras import keras

    archive = keras.export.ExportArchive()
    archive.track(functions.model)
    archive.add_endpoint(DEFAULT_SIGNATURE, functions.raw, functions.raw_signature())
    if examples_signature:
        archive.add_endpoint(EXAMPLES_SIGNATURE, functions.examples, functions.examples_signature())
    archive.write_out(path, verbose=False)


def _save_tf_keras(functions, path, examples_signature):
    import tensorflow as tf

    module = tf.Module()
    module.model = functions.model
    module.serving_default = tf.function(functions.raw, input_signature=functions.raw_signature())
    signatures = {DEFAULT_SIGNATURE: module.serving_default}
    if examples_signature:
        module.predict_examples = tf.function(functions.examples, input_signature=functions.examples_signature())
        signatures[EXAMPLES_SIGNATURE] = module.predict_examples
    tf.saved_model.save(module, path, signatures=signatures)


def _write_saved_model(functions, path, examples_signature):
    """Writes the SavedModel into the (existing, empty) directory ``path``."""
    if IS_KERAS_3:
        _save_keras3(functions, path, examples_signature)
    else:
        _save_tf_keras(functions, path, examples_signature)
    os.makedirs(os.path.join(path, "assets"), exist_ok=True)


def _install(temp_dir, target, overwrite):
    """Renames the finished export ``temp_dir`` to ``target`` (replacing it as a whole if asked)."""
    base_dir = os.path.dirname(target)
    if not os.path.exists(target):
        os.rename(temp_dir, target)
        return
    if not overwrite:
        raise FileExistsError(f"Version directory {target} already exists; pass overwrite=True to replace it")
    old = _unique_sibling(base_dir, f"replaced-{os.path.basename(target)}")
    os.rename(target, old)
    try:
        os.rename(temp_dir, target)
    except BaseException:
        os.rename(old, target)  # put the previous version back
        raise
    shutil.rmtree(old, ignore_errors=True)


def export_for_serving(
    model: Any,
    base_dir: Union[str, "os.PathLike[str]"],
    version: Optional[int] = None,
    *,
    examples_signature: bool = True,
    include_gate_weights: bool = False,
    warmup_inputs: Union[None, Mapping[str, Any], List[Mapping[str, Any]]] = None,
    overwrite: bool = False,
    example_defaults: Union[None, str, Mapping[str, Any]] = None,
    allow_non_finite: Sequence[str] = (),
    metadata: Optional[Dict[str, Any]] = None,
    example_separators: Optional[Mapping[str, str]] = None,
) -> str:
    """Exports ``model`` to ``base_dir/<version>/`` for TensorFlow Serving; returns that directory.

    Signatures (tag ``serve``, method ``tensorflow/serving/predict``), all running the model with
    ``training=False`` (dropout and expert dropout off) and rejecting NaN and inf in float inputs
    (see ``allow_non_finite``):

    * ``serving_default``: the model's named raw inputs (names, dtypes and shapes of its
      ``keras.Input``, batch dimension ``None``) -> ``{task: (batch, 1)}``: probabilities for
      binary (sigmoid) tasks, values for regression tasks. With ``include_gate_weights=True``
      also ``{<task>_gate_weights: (batch, num_experts)}``.
    * ``predict_examples`` (``examples_signature=True``): input ``examples``, a 1-D string
      tensor of serialized ``tf.train.Example`` whose features are the model's inputs by name
      (float_list / int64_list / bytes_list, fixed length); same outputs. String values never seen
      in training map to the ``StringLookup``'s OOV index, as in ``serving_default``. Missing
      features: see ``example_defaults``.

    Args:
        model: Functional Keras model. Inputs: a dict (named by key), a list or a single
            ``keras.Input`` (named by the Input's name). Outputs: a dict keyed by task name, or a
            list or a single tensor, named by the layers that produce them (see
            :func:`keras_mmoe.serving.signatures.output_names`).
        base_dir: the model's directory as TF Serving's ``--model_base_path`` sees it.
        version: positive integer; default: one more than the highest numeric version in
            ``base_dir`` (1 when there is none).
        examples_signature: also export ``predict_examples``.
        include_gate_weights: also output each task's gate weights (model with one MMoELayer).
        warmup_inputs: a dict of arrays (one row per example) or a list of them; each becomes a
            warmup ``PredictRequest`` per signature in ``assets.extra/tf_serving_warmup_requests``.
            Needs tensorflow-serving-api (``pip install keras-mmoe[serving]``).
        overwrite: replace an existing version directory (as a whole) instead of raising.
        example_defaults: which ``tf.train.Example`` features may be missing: ``None`` (all
            required; a missing one fails the request with ``InvalidArgumentError`` naming the
            feature), ``"zeros"`` (all optional: 0 or ``""``), or ``{name: default}``. See
            :func:`keras_mmoe.serving.example_feature_spec`.
        metadata: a dict of JSON values (e.g. the training record: data settings, task kinds,
            metrics) written to ``assets.extra/keras_mmoe.json`` inside the version before it
            appears, so each version carries its own; read it with
            :func:`keras_mmoe.serving.read_metadata`. TF Serving ignores the file.
        allow_non_finite: names of float inputs passed to the model unchecked. By default every
            float input is checked in the graph (``tf.debugging.check_numerics``) and a request
            with NaN or inf in it fails with ``InvalidArgumentError`` naming the input, instead of
            returning a finite prediction computed from it. List the inputs a model imputes itself.
        example_separators: ``{name: separator}`` of string inputs holding a joined list of tokens;
            in ``predict_examples`` such a feature is a ``bytes_list`` of any length (absent = no
            token), joined with the separator before the model splits it again.

    Returns:
        The version directory, ``base_dir/<version>``.

    Raises:
        ValueError: an input or output that cannot be named or served (the message names it), bad arguments.
        FileExistsError: the version exists and ``overwrite`` is False (nothing is changed).
        ImportError: ``warmup_inputs`` given without tensorflow-serving-api installed.
    """
    if not isinstance(base_dir, (str, os.PathLike)) or not os.fspath(base_dir):
        raise ValueError(f"`base_dir` must be a directory path, received: base_dir={base_dir!r}")
    base_dir = os.path.abspath(os.fspath(base_dir))
    version = _check_version(version)
    for arg, value in (("examples_signature", examples_signature), ("include_gate_weights", include_gate_weights),
                       ("overwrite", overwrite)):
        if not isinstance(value, bool):
            raise ValueError(f"`{arg}` must be True or False, received: {arg}={value!r}")
    if os.path.exists(base_dir) and not os.path.isdir(base_dir):
        raise ValueError(f"`base_dir` must be a directory, received the file {base_dir}")

    # Validate everything before touching the filesystem.
    if metadata is not None:
        _saving.check_metadata(metadata)
    functions = ServingFunctions(model, include_gate_weights=include_gate_weights, example_defaults=example_defaults,
                                 allow_non_finite=allow_non_finite, example_separators=example_separators)
    if examples_signature:
        functions.feature_spec  # noqa: B018 (raises for inputs that cannot be Example features)
    warmup_batches = None
    if warmup_inputs is not None:
        _warmup.import_serving_apis()
        warmup_batches = _warmup.normalize_warmup_inputs(warmup_inputs, functions.input_specs)

    os.makedirs(base_dir, exist_ok=True)
    if version is None:
        version = next_version(base_dir)
    existing = list_versions(base_dir).get(version)
    target = os.path.join(base_dir, existing or str(version))
    if existing is not None and not overwrite:
        raise FileExistsError(f"Version directory {target} already exists; pass overwrite=True to replace it")

    temp_dir = _make_temp_dir(base_dir, version)
    try:
        _write_saved_model(functions, temp_dir, examples_signature)
        if warmup_batches is not None:
            model_name = os.path.basename(base_dir)
            requests = _warmup.warmup_requests(warmup_batches, model_name, examples_signature=examples_signature)
            _warmup.write_warmup_file(temp_dir, requests)
        if metadata is not None:
            _saving.write_metadata(temp_dir, metadata)
        _install(temp_dir, target, overwrite)
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    return target
