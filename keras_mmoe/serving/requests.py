"""Requests for a model exported by :func:`keras_mmoe.serving.export_for_serving`.

What: builders that turn a dict of arrays (one row per example, the same dict you would give
``model.predict``) into

* serialized ``tf.train.Example`` protos (:func:`make_examples`), the input of the
  ``predict_examples`` signature;
* TF Serving REST bodies for ``POST /v1/models/<name>[/versions/<v>]:predict``, in the row
  (``"instances"``) or columnar (``"inputs"``) format (:func:`rest_predict_body`,
  :func:`rest_examples_body`), with TF Serving's ``{"b64": ...}`` convention for binary strings;
* gRPC ``tensorflow.serving.PredictRequest`` protos (:func:`grpc_predict_request`,
  :func:`grpc_examples_request`), which need ``pip install keras-mmoe[serving]``
  (``tensorflow-serving-api``).

Why: TF Serving's JSON and proto conventions (row vs columnar, base64 for bytes, one signature
per request, 1-D batches of serialized examples) are easy to get subtly wrong; these builders
produce exactly what the exported signatures expect, and the test-suite replays them against
the exported model.

With ``export_dir`` (the exported version directory), every builder also checks the values
against the export's signature, read from its ``saved_model.pb`` (:func:`describe_signatures`):
unknown or missing features, a row shape the input does not take, and values of a dtype the
input cannot take (a string for a number, a fraction for an integer) raise one ``ValueError``
naming the feature, the dtype received and the dtype wanted, instead of TF Serving's "input #0
(zero-based) was expected to be a float tensor". Numbers the input can take are converted to its
dtype (integers to a float input, float64 to float32), as TF Serving does for JSON.
"""

import base64
import numbers
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Union

import numpy as np

from keras_mmoe.serving.signatures import DEFAULT_SIGNATURE, EXAMPLES_INPUT, EXAMPLES_SIGNATURE

PathLike = Union[str, "os.PathLike[str]"]
Inputs = Mapping[str, Any]

SERVING_EXTRA_HINT = (
    "tensorflow-serving-api is not installed; install the serving extra: pip install keras-mmoe[serving]"
)
_FORMATS = ("instances", "inputs")


def import_serving_apis() -> tuple:
    """Returns ``(predict_pb2, prediction_log_pb2, model_pb2)`` or raises a clear ImportError."""
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError as error:
        raise ImportError(f"{SERVING_EXTRA_HINT} ({error})") from error
    return predict_pb2, prediction_log_pb2, model_pb2


def _to_array(name, value):
    array = np.asarray(value)
    if array.dtype.kind == "U":
        array = np.char.encode(array, "utf-8").astype(object)
    elif array.dtype.kind == "S":
        array = array.astype(object)
    elif array.dtype.kind == "O":
        flat = [v.encode("utf-8") if isinstance(v, str) else v for v in array.reshape(-1)]
        if not all(isinstance(v, bytes) for v in flat):
            kinds = sorted({type(v).__name__ for v in flat})
            raise ValueError(f"Feature {name!r}: object arrays must hold str or bytes, received {kinds}")
        array = np.array(flat, dtype=object).reshape(array.shape)
    elif array.dtype.kind not in "biuf":
        raise ValueError(f"Feature {name!r}: unsupported dtype {array.dtype} (use float, int or string values)")
    if array.ndim < 1:
        raise ValueError(
            f"Feature {name!r} must have a batch dimension (one row per example), received a scalar {value!r}"
        )
    return array


def _batch(inputs, arg="inputs"):
    """Validates a dict of arrays with one shared batch size; returns ``({name: array}, batch)``."""
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError(
            f"`{arg}` must be a non-empty dict of feature name -> array (one row per example), "
            f"received: {type(inputs).__name__}"
        )
    arrays = {}
    for name, value in inputs.items():
        if not isinstance(name, str):
            raise ValueError(f"`{arg}` keys must be feature names (str), received: {name!r}")
        arrays[name] = _to_array(name, value)
    sizes = {name: a.shape[0] for name, a in arrays.items()}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"`{arg}` features disagree on the batch size: {sizes}")
    return arrays, next(iter(sizes.values()))


def _signature_inputs(export_dir, signature_name):
    """``{name: info}`` of the inputs of ``signature_name`` in the export at ``export_dir``."""
    from keras_mmoe.serving.inspection import describe_signatures

    signatures = describe_signatures(export_dir)
    if signature_name not in signatures:
        raise ValueError(
            f"The export at {os.fspath(export_dir)} has no signature {signature_name!r}; it has {sorted(signatures)}"
        )
    return signatures[signature_name]["inputs"]


def _received(array):
    return "string" if array.dtype == object else array.dtype.name


def _conform(arrays, export_dir, signature_name, *, all_required):
    """Checks ``arrays`` against the signature's inputs and converts numbers to the input dtypes.

    ``all_required``: every signature input must be present (raw inputs); otherwise only the
    given ones are checked (tf.Example features, which the export may default).
    """
    expected = _signature_inputs(export_dir, signature_name)
    where = f"signature {signature_name!r} of {os.fspath(export_dir)}"
    unknown = sorted(set(arrays) - set(expected))
    missing = sorted(set(expected) - set(arrays)) if all_required else []
    if unknown or missing:
        raise ValueError(
            f"The features must be the inputs of {where}, {sorted(expected)}: missing {missing}, unknown {unknown}"
        )
    result = {}
    for name, array in arrays.items():
        wanted = expected[name]["dtype"]
        problem = None
        if wanted == "string":
            if array.dtype != object:
                problem = "send str or bytes"
        elif array.dtype == object or array.dtype.kind == "b":
            problem = "send numbers"
        else:
            target = np.dtype(wanted)
            if target.kind in "iu":
                if array.dtype.kind == "f":
                    problem = "send integers, e.g. .astype('int64')"
                elif array.size and (array.min() < np.iinfo(target).min or array.max() > np.iinfo(target).max):
                    problem = f"values from {array.min()} to {array.max()} do not fit"
            if problem is None:
                array = array.astype(target)
        if problem is not None:
            raise ValueError(
                f"Feature {name!r}: received {_received(array)} values, but {where} takes {wanted} ({problem})"
            )
        shape = expected[name]["shape"]
        if shape is not None and (
            len(shape) != array.ndim or any(d is not None and d != n for d, n in zip(shape[1:], array.shape[1:]))
        ):
            rows = tuple(array.shape[1:])
            takes = tuple("any" if d is None else d for d in shape[1:])
            raise ValueError(
                f"Feature {name!r}: received rows of shape {rows}, but {where} takes rows of shape {takes}"
            )
        result[name] = array
    return result


def make_examples(inputs: Inputs, *, export_dir: Optional[PathLike] = None) -> np.ndarray:
    """Serializes a dict of arrays into a 1-D object array of ``tf.train.Example`` bytes.

    Row ``i`` of every feature becomes example ``i``: floats go to ``float_list``, integers
    (and bools) to ``int64_list``, str/bytes to ``bytes_list`` (str as UTF-8), each flattened,
    which is what the ``predict_examples`` signature parses. A feature left out of ``inputs`` is
    absent from every example (see ``example_defaults`` of :func:`export_for_serving`).
    With ``export_dir``, each feature is first checked against (and converted to) the dtype of
    the export's input of that name (see the module docstring).

    >>> make_examples({"age": [[39.0], [50.0]], "city": [["Paris"], ["Lima"]]}).shape
    (2,)
    """
    import tensorflow as tf

    arrays, batch = _batch(inputs)
    if export_dir is not None:
        arrays = _conform(arrays, export_dir, DEFAULT_SIGNATURE, all_required=False)
    serialized = np.empty((batch,), dtype=object)
    for i in range(batch):
        feature = {}
        for name, array in arrays.items():
            row = np.asarray(array[i]).reshape(-1)
            if array.dtype == object:
                feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=list(row)))
            elif array.dtype.kind == "f":
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=row.astype(np.float32)))
            else:
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=row.astype(np.int64)))
        serialized[i] = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()
    return serialized


def _check_examples(examples, export_dir=None):
    """``examples`` as a 1-D object array of bytes; a dict of arrays is serialized first."""
    if isinstance(examples, Mapping):
        return make_examples(examples, export_dir=export_dir)
    array = np.asarray(examples, dtype=object) if not isinstance(examples, np.ndarray) else examples
    if array.ndim != 1:
        raise ValueError(
            "`examples` must be a 1-D batch of serialized tf.train.Example (one bytes string per example), "
            f"received an array of shape {array.shape}"
        )
    if not all(isinstance(e, bytes) for e in array):
        kinds = sorted({type(e).__name__ for e in array})
        raise ValueError(f"`examples` must hold serialized tf.train.Example bytes, received {kinds}")
    return array.astype(object)


def _json_value(value):
    """A JSON value from an array element or sub-array, TF Serving's b64 object for binary bytes."""
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return [_json_value(v) for v in value]
        return value.tolist()
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, (np.generic, numbers.Number)):
        return value.item() if isinstance(value, np.generic) else value
    return value


def _b64(value):
    return {"b64": base64.b64encode(value).decode("ascii")}


def _check_format(format):
    if format not in _FORMATS:
        raise ValueError(f"`format` must be one of {_FORMATS}, received: format={format!r}")


def rest_predict_body(
    inputs: Inputs,
    signature_name: str = DEFAULT_SIGNATURE,
    format: str = "instances",
    *,
    export_dir: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """A TF Serving REST ``:predict`` body (a JSON-ready dict) for raw named features.

    Args:
        inputs: dict of feature name -> array with one row per example.
        signature_name: signature key (default ``serving_default``).
        format: ``"instances"`` (row format: one ``{name: value}`` object per example) or
            ``"inputs"`` (columnar: ``{name: [values of all examples]}``).

    Strings are sent as UTF-8 JSON strings; bytes that are not valid UTF-8 become
    ``{"b64": "..."}``, which TF Serving decodes back to bytes. With ``export_dir`` the features
    are checked against the export's signature first (see the module docstring).
    """
    _check_format(format)
    arrays, batch = _batch(inputs)
    if export_dir is not None:
        arrays = _conform(arrays, export_dir, signature_name, all_required=True)
    if format == "instances":
        rows = [{name: _json_value(array[i]) for name, array in arrays.items()} for i in range(batch)]
        return {"signature_name": signature_name, "instances": rows}
    return {"signature_name": signature_name, "inputs": {name: _json_value(a) for name, a in arrays.items()}}


def rest_examples_body(
    examples: Union[Inputs, Sequence[bytes], np.ndarray],
    signature_name: str = EXAMPLES_SIGNATURE,
    format: str = "instances",
    *,
    export_dir: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """A TF Serving REST ``:predict`` body for the ``predict_examples`` signature.

    ``examples`` is a 1-D sequence of serialized ``tf.train.Example`` bytes, or a dict of arrays
    (serialized with :func:`make_examples`). Every example is sent as ``{"b64": "..."}``:
    ``{"instances": [{"examples": {"b64": ...}}, ...]}`` or
    ``{"inputs": {"examples": [{"b64": ...}, ...]}}``. With ``export_dir``, a dict of arrays is
    checked against the export's inputs (see :func:`make_examples`).
    """
    _check_format(format)
    examples = _check_examples(examples, export_dir)
    if format == "instances":
        return {"signature_name": signature_name, "instances": [{EXAMPLES_INPUT: _b64(e)} for e in examples]}
    return {"signature_name": signature_name, "inputs": {EXAMPLES_INPUT: [_b64(e) for e in examples]}}


def _predict_request(model_name, signature_name, version, tensors):
    import tensorflow as tf

    predict_pb2, _, _ = import_serving_apis()
    if not isinstance(model_name, str) or not model_name:
        raise ValueError(f"`model_name` must be a non-empty string, received: model_name={model_name!r}")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 0:
            raise ValueError(f"`version` must be None or an integer >= 0, received: version={version!r}")
        request.model_spec.version.value = version
    for name, array in tensors.items():
        dtype = tf.string if array.dtype == object else None
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array, dtype=dtype))
    return request


def grpc_predict_request(
    inputs: Inputs,
    model_name: str,
    signature_name: str = DEFAULT_SIGNATURE,
    version: Optional[int] = None,
    *,
    export_dir: Optional[PathLike] = None,
) -> Any:
    """A gRPC ``tensorflow.serving.PredictRequest`` for raw named features.

    Each array becomes a ``TensorProto`` of its shape and dtype (``tf.make_tensor_proto``). TF
    Serving needs the signature's exact dtype: pass ``export_dir`` to have the features checked
    and numbers converted to it (see the module docstring), or cast them yourself (e.g. to
    float32). Needs tensorflow-serving-api (``pip install keras-mmoe[serving]``).
    """
    arrays, _ = _batch(inputs)
    if export_dir is not None:
        arrays = _conform(arrays, export_dir, signature_name, all_required=True)
    return _predict_request(model_name, signature_name, version, arrays)


def grpc_examples_request(
    examples: Union[Inputs, Sequence[bytes], np.ndarray],
    model_name: str,
    signature_name: str = EXAMPLES_SIGNATURE,
    version: Optional[int] = None,
    *,
    export_dir: Optional[PathLike] = None,
) -> Any:
    """A gRPC ``PredictRequest`` for the ``predict_examples`` signature (1-D string tensor ``examples``).

    ``examples``: serialized examples, or a dict of arrays serialized by :func:`make_examples`
    (checked against the export's inputs when ``export_dir`` is given).
    """
    examples = _check_examples(examples, export_dir)
    return _predict_request(model_name, signature_name, version, {EXAMPLES_INPUT: examples})
