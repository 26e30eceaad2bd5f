"""Export for TensorFlow Serving, request builders and SavedModel checks.

What: :func:`export_for_serving` writes a versioned SavedModel (``base_dir/<version>/``) whose
signatures TF Serving runs without any of this package's Python code: ``serving_default`` on
the model's named raw features, ``predict_examples`` on serialized ``tf.train.Example``, both
returning one output per task (and optionally each task's gate weights). The request
builders produce TF Serving REST bodies and gRPC ``PredictRequest`` protos from dicts of
arrays; :func:`check_serving_ops` and :func:`describe_signatures` inspect an export.

Why: the package's models are trained in Python but deployed with TF Serving; this is the one
place that knows both sides' conventions. Works the same under Keras 3 and tf-keras.
"""

from keras_mmoe.serving.export import export_for_serving, list_versions, next_version
from keras_mmoe.serving.inspection import (
    DENIED_OPS,
    OpCheck,
    check_serving_ops,
    collect_ops,
    describe_signatures,
    format_report,
)
from keras_mmoe.serving.requests import (
    grpc_examples_request,
    grpc_predict_request,
    make_examples,
    rest_examples_body,
    rest_predict_body,
)
from keras_mmoe.serving.signatures import (
    DEFAULT_SIGNATURE,
    EXAMPLES_INPUT,
    EXAMPLES_SIGNATURE,
    example_feature_spec,
    input_specs,
)
from keras_mmoe.serving.warmup import WARMUP_FILE, read_warmup_file
from keras_mmoe.saving import read_metadata

__all__ = [
    "DEFAULT_SIGNATURE",
    "DENIED_OPS",
    "EXAMPLES_INPUT",
    "EXAMPLES_SIGNATURE",
    "OpCheck",
    "WARMUP_FILE",
    "check_serving_ops",
    "collect_ops",
    "describe_signatures",
    "example_feature_spec",
    "export_for_serving",
    "format_report",
    "grpc_examples_request",
    "grpc_predict_request",
    "input_specs",
    "list_versions",
    "make_examples",
    "next_version",
    "read_metadata",
    "read_warmup_file",
    "rest_examples_body",
    "rest_predict_body",
]
