"""TF Serving warmup records: ``assets.extra/tf_serving_warmup_requests``.

What: TF Serving replays the ``PredictionLog`` records of this TFRecord file against a model
version before marking it available, so the first real requests do not pay for graph
initialization (lookup tables, kernels, memory pools). :func:`warmup_requests` turns sample
inputs into ``PredictRequest`` protos (one per batch and signature) and
:func:`write_warmup_file` writes them; :func:`read_warmup_file` reads them back (used by the
tests, which replay every record against the loaded SavedModel).

Why a separate module: it is the only part of the export that needs tensorflow-serving-api
(``pip install keras-mmoe[serving]``); everything else works without it.
"""

import os
from typing import Any, Dict, List, Mapping, Sequence, Union

from keras_mmoe.serving.requests import _batch, grpc_examples_request, grpc_predict_request, import_serving_apis
from keras_mmoe.serving.signatures import DEFAULT_SIGNATURE, EXAMPLES_SIGNATURE

#: Where TF Serving looks for warmup records, relative to the version directory.
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
#: TF Serving reads at most this many warmup records.
MAX_WARMUP_RECORDS = 1000


def normalize_warmup_inputs(
    warmup_inputs: Union[Mapping[str, Any], Sequence[Mapping[str, Any]]], input_specs: Mapping[str, Any]
) -> List[Dict[str, Any]]:
    """``warmup_inputs`` as a list of ``{name: array}`` batches holding exactly the model's inputs.

    Accepts one dict of arrays or a list of them. Numbers are cast to the input's dtype.
    """
    import numpy as np

    batches = [warmup_inputs] if isinstance(warmup_inputs, dict) else warmup_inputs
    if not isinstance(batches, (list, tuple)) or not batches:
        raise ValueError(
            "`warmup_inputs` must be a dict of feature name -> array or a non-empty list of such dicts, "
            f"received: {type(warmup_inputs).__name__}"
        )
    result = []
    for i, batch in enumerate(batches):
        arrays, _ = _batch(batch, arg=f"warmup_inputs[{i}]" if len(batches) > 1 else "warmup_inputs")
        missing, extra = sorted(set(input_specs) - set(arrays)), sorted(set(arrays) - set(input_specs))
        if missing or extra:
            raise ValueError(
                f"`warmup_inputs` must hold exactly the model's inputs {sorted(input_specs)}; "
                f"missing {missing}, unknown {extra}"
            )
        for name, spec in input_specs.items():
            if spec.dtype.name == "string":
                if arrays[name].dtype != object:
                    raise ValueError(f"`warmup_inputs` feature {name!r} must hold strings, received {arrays[name].dtype}")
            else:
                if arrays[name].dtype == object:
                    raise ValueError(f"`warmup_inputs` feature {name!r} must hold numbers, received strings")
                arrays[name] = arrays[name].astype(np.dtype(spec.dtype.as_numpy_dtype))
            if tuple(arrays[name].shape[1:]) != tuple(spec.shape[1:]) and None not in spec.shape[1:]:
                raise ValueError(
                    f"`warmup_inputs` feature {name!r} has rows of shape {tuple(arrays[name].shape[1:])}, "
                    f"the model's input takes {tuple(spec.shape[1:])}"
                )
        result.append(arrays)
    return result


def warmup_requests(
    batches: Sequence[Mapping[str, Any]], model_name: str, *, examples_signature: bool = True
) -> list:
    """One ``PredictRequest`` per batch for ``serving_default`` (and ``predict_examples``)."""
    requests = []
    for batch in batches:
        requests.append(grpc_predict_request(batch, model_name, DEFAULT_SIGNATURE))
        if examples_signature:
            requests.append(grpc_examples_request(batch, model_name, EXAMPLES_SIGNATURE))
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(
            f"`warmup_inputs` gives {len(requests)} warmup requests; TF Serving reads at most "
            f"{MAX_WARMUP_RECORDS}"
        )
    return requests


def write_warmup_file(version_dir: Union[str, "os.PathLike[str]"], requests: Sequence[Any]) -> str:
    """Writes ``requests`` as ``PredictionLog`` records to ``version_dir/assets.extra/...``; returns the path."""
    import tensorflow as tf

    _, prediction_log_pb2, _ = import_serving_apis()
    path = os.path.join(version_dir, WARMUP_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())
    return path


def read_warmup_file(version_dir: Union[str, "os.PathLike[str]"]) -> list:
    """The ``PredictRequest`` protos stored in a version's warmup file (an empty list when none)."""
    import tensorflow as tf

    _, prediction_log_pb2, _ = import_serving_apis()
    path = os.path.join(version_dir, WARMUP_FILE)
    if not os.path.exists(path):
        return []
    requests = []
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog.FromString(record)
        requests.append(log.predict_log.request)
    return requests
