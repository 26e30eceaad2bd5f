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
"""

import base64
import numbers

import numpy as np

from keras_mmoe.serving.signatures import DEFAULT_SIGNATURE, EXAMPLES_INPUT, EXAMPLES_SIGNATURE

SERVING_EXTRA_HINT = (
    "tensorflow-serving-api is not installed; install the serving extra: pip install keras-mmoe[serving]"
)
_FORMATS = ("instances", "inputs")


def import_serving_apis():
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
    if not isinstance(inputs, dict) or not inputs:
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


def make_examples(inputs):
    """Serializes a dict of arrays into a 1-D object array of ``tf.train.Example`` bytes.

    Row ``i`` of every feature becomes example ``i``: floats go to ``float_list``, integers
    (and bools) to ``int64_list``, str/bytes to ``bytes_list`` (str as UTF-8), each flattened,
    which is what the ``predict_examples`` signature parses. A feature left out of ``inputs`` is
    absent from every example (see ``example_defaults`` of :func:`export_for_serving`).

    >>> make_examples({"age": [[39.0], [50.0]], "city": [["Paris"], ["Lima"]]}).shape
    (2,)
    """
    import tensorflow as tf

    arrays, batch = _batch(inputs)
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


def _check_examples(examples):
    """``examples`` as a 1-D object array of bytes; a dict of arrays is serialized first."""
    if isinstance(examples, dict):
        return make_examples(examples)
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


def rest_predict_body(inputs, signature_name=DEFAULT_SIGNATURE, format="instances"):
    """A TF Serving REST ``:predict`` body (a JSON-ready dict) for raw named features.

    Args:
        inputs: dict of feature name -> array with one row per example.
        signature_name: signature key (default ``serving_default``).
        format: ``"instances"`` (row format: one ``{name: value}`` object per example) or
            ``"inputs"`` (columnar: ``{name: [values of all examples]}``).

    Strings are sent as UTF-8 JSON strings; bytes that are not valid UTF-8 become
    ``{"b64": "..."}``, which TF Serving decodes back to bytes.
    """
    _check_format(format)
    arrays, batch = _batch(inputs)
    if format == "instances":
        rows = [{name: _json_value(array[i]) for name, array in arrays.items()} for i in range(batch)]
        return {"signature_name": signature_name, "instances": rows}
    return {"signature_name": signature_name, "inputs": {name: _json_value(a) for name, a in arrays.items()}}


def rest_examples_body(examples, signature_name=EXAMPLES_SIGNATURE, format="instances"):
    """A TF Serving REST ``:predict`` body for the ``predict_examples`` signature.

    ``examples`` is a 1-D sequence of serialized ``tf.train.Example`` bytes, or a dict of arrays
    (serialized with :func:`make_examples`). Every example is sent as ``{"b64": "..."}``:
    ``{"instances": [{"examples": {"b64": ...}}, ...]}`` or
    ``{"inputs": {"examples": [{"b64": ...}, ...]}}``.
    """
    _check_format(format)
    examples = _check_examples(examples)
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


def grpc_predict_request(inputs, model_name, signature_name=DEFAULT_SIGNATURE, version=None):
    """A gRPC ``tensorflow.serving.PredictRequest`` for raw named features.

    Each array becomes a ``TensorProto`` of its own dtype and shape (``tf.make_tensor_proto``);
    cast numbers to the model's input dtypes (e.g. float32) before calling. Needs
    tensorflow-serving-api (``pip install keras-mmoe[serving]``).
    """
    arrays, _ = _batch(inputs)
    return _predict_request(model_name, signature_name, version, arrays)


def grpc_examples_request(examples, model_name, signature_name=EXAMPLES_SIGNATURE, version=None):
    """A gRPC ``PredictRequest`` for the ``predict_examples`` signature (1-D string tensor ``examples``)."""
    return _predict_request(model_name, signature_name, version, {EXAMPLES_INPUT: _check_examples(examples)})
