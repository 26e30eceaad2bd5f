"""Request builders: tf.train.Example serialization, TF Serving REST bodies and gRPC protos.

The REST bodies are decoded here by TF Serving's documented JSON rules (row format: one object
per example, stacked per input; columnar: one list per input; ``{"b64": ...}`` is bytes; values
take the signature's dtype) and fed to the exported model, which must return the in-memory
predictions. The real TF Serving REST server is not available on this machine.
"""

import base64
import json

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe.serving import (
    describe_signatures,
    example_feature_spec,
    export_for_serving,
    grpc_examples_request,
    grpc_predict_request,
    make_examples,
    rest_examples_body,
    rest_predict_body,
)
from serving_models import build_feature_model, feature_batch, predict


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    model = build_feature_model(seed=2)
    path = export_for_serving(model, str(tmp_path_factory.mktemp("requests") / "features"))
    return model, path, tf.saved_model.load(path)


def _decode_json_value(value):
    if isinstance(value, dict):
        assert list(value) == ["b64"], value
        return base64.b64decode(value["b64"])
    if isinstance(value, list):
        return [_decode_json_value(v) for v in value]
    return value.encode("utf-8") if isinstance(value, str) else value


def decode_rest_body(body, signature_inputs):
    """The tensors TF Serving builds from a REST ``:predict`` body (documented JSON rules)."""
    body = json.loads(json.dumps(body))  # must survive JSON
    if "instances" in body:
        rows = body["instances"]
        columns = {name: [_decode_json_value(row[name]) for row in rows] for name in rows[0]}
    else:
        columns = {name: _decode_json_value(value) for name, value in body["inputs"].items()}
    tensors = {}
    for name, values in columns.items():
        dtype = signature_inputs[name]["dtype"]
        tensors[name] = np.array(values, dtype=object if dtype == "string" else dtype)
    return body["signature_name"], tensors


def test_make_examples_round_trips_through_the_example_spec():
    model = build_feature_model()
    inputs = feature_batch(5)
    examples = make_examples(inputs)
    assert examples.shape == (5,) and examples.dtype == object and all(isinstance(e, bytes) for e in examples)
    parsed = tf.io.parse_example(examples, example_feature_spec(model))
    for name, value in inputs.items():
        np.testing.assert_array_equal(parsed[name].numpy().astype(value.dtype), value)
    as_text = make_examples({"city": np.array(["lima", "oslo"]), "n": [[1, 2], [3, 4]]})
    parsed = tf.io.parse_example(as_text, {"city": tf.io.FixedLenFeature([], tf.string),
                                           "n": tf.io.FixedLenFeature([2], tf.int64)})
    assert parsed["city"].numpy().tolist() == [b"lima", b"oslo"] and parsed["n"].numpy().tolist() == [[1, 2], [3, 4]]


def test_make_examples_rejects_bad_inputs():
    with pytest.raises(ValueError, match="must have a batch dimension"):
        make_examples({"age": 3.0})
    with pytest.raises(ValueError, match=r"disagree on the batch size: \{'a': 2, 'b': 3\}"):
        make_examples({"a": [1, 2], "b": [1, 2, 3]})
    with pytest.raises(ValueError, match="must be a non-empty dict"):
        make_examples([1, 2])
    with pytest.raises(ValueError, match="object arrays must hold str or bytes"):
        make_examples({"a": np.array([1, "x"], dtype=object)})


@pytest.mark.parametrize("format", ["instances", "inputs"])
def test_rest_bodies_decode_to_the_in_memory_predictions(served, format):
    model, path, loaded = served
    signatures = describe_signatures(path)
    inputs = feature_batch(4, seed=11)
    inputs["city"][0] = "Zürich".encode("utf-8")  # unseen, non-ASCII
    inputs["city"][1] = b"\xff\xfe binary"  # not UTF-8: sent as {"b64": ...}
    expected = predict(model, inputs)
    bodies = [rest_predict_body(inputs, format=format), rest_examples_body(inputs, format=format),
              rest_examples_body(make_examples(inputs), format=format)]
    for body in bodies:
        signature, tensors = decode_rest_body(body, signatures[body["signature_name"]]["inputs"])
        out = loaded.signatures[signature](**{k: tf.constant(v) for k, v in tensors.items()})
        for name, value in expected.items():
            np.testing.assert_allclose(out[name].numpy(), value, atol=1e-5, rtol=0, err_msg=f"{signature} {format}")


def test_rest_body_shapes():
    inputs = {"age": np.array([[39.0], [50.0]], np.float32), "city": np.array([b"lima", b"\xff"], dtype=object)}
    body = rest_predict_body(inputs)
    assert body == {"signature_name": "serving_default", "instances": [
        {"age": [39.0], "city": "lima"}, {"age": [50.0], "city": {"b64": base64.b64encode(b"\xff").decode()}}]}
    body = rest_predict_body(inputs, signature_name="other", format="inputs")
    assert body == {"signature_name": "other", "inputs": {
        "age": [[39.0], [50.0]], "city": ["lima", {"b64": base64.b64encode(b"\xff").decode()}]}}
    examples = rest_examples_body([b"\x0a\x00", b"x"])
    assert examples == {"signature_name": "predict_examples", "instances": [
        {"examples": {"b64": "CgA="}}, {"examples": {"b64": "eA=="}}]}
    assert rest_examples_body([b"x"], format="inputs")["inputs"] == {"examples": [{"b64": "eA=="}]}
    with pytest.raises(ValueError, match="`format` must be one of .*received: format='rows'"):
        rest_predict_body(inputs, format="rows")


def test_an_example_batch_that_is_not_1d_is_rejected_by_the_builders():
    examples = make_examples({"a": [1.0, 2.0]})
    for build in (rest_examples_body, lambda e: grpc_examples_request(e, "m")):
        with pytest.raises(ValueError, match=r"must be a 1-D batch of serialized tf.train.Example.*shape \(2, 1\)"):
            build(examples.reshape(2, 1))
        with pytest.raises(ValueError, match="must hold serialized tf.train.Example bytes"):
            build(["not bytes"])


def test_grpc_requests_carry_the_tensors_and_the_model_spec():
    inputs = {"age": np.array([[39.0], [50.0]], np.float32), "city": np.array(["lima", "oslo"])}
    request = grpc_predict_request(inputs, "census", version=3)
    assert (request.model_spec.name, request.model_spec.signature_name, request.model_spec.version.value) == (
        "census", "serving_default", 3)
    np.testing.assert_array_equal(tf.make_ndarray(request.inputs["age"]), inputs["age"])
    assert tf.make_ndarray(request.inputs["city"]).tolist() == [b"lima", b"oslo"]
    assert request.inputs["age"].dtype == tf.float32.as_datatype_enum
    request = grpc_examples_request({"age": inputs["age"]}, "census")
    assert request.model_spec.signature_name == "predict_examples" and not request.model_spec.HasField("version")
    examples = tf.make_ndarray(request.inputs["examples"])
    assert examples.shape == (2,)
    assert tf.io.parse_example(examples, {"age": tf.io.FixedLenFeature([1], tf.float32)})["age"].numpy().tolist() == [
        [39.0], [50.0]]
    with pytest.raises(ValueError, match="`model_name` must be a non-empty string"):
        grpc_predict_request(inputs, "")
    with pytest.raises(ValueError, match="`version` must be None or an integer >= 0, received: version='3'"):
        grpc_predict_request(inputs, "census", version="3")


def test_grpc_client_code_of_the_docs_against_a_prediction_service(served):
    """The documented client (stub.Predict with our requests) against an in-test PredictionService.

    The server is a stand-in backed by the loaded SavedModel (the real tensorflow_model_server is
    not installable here); it proves the client side: the stub call, the request the builders make,
    and reading outputs with tf.make_ndarray.
    """
    from concurrent import futures

    import grpc
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    model, _, loaded = served
    seen = []

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            seen.append((request.model_spec.name, request.model_spec.signature_name))
            fn = loaded.signatures[request.model_spec.signature_name or "serving_default"]
            out = fn(**{k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()})
            response = predict_pb2.PredictResponse()
            for name, value in out.items():
                response.outputs[name].CopyFrom(tf.make_tensor_proto(value.numpy()))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(Servicer(), server)
    port = server.add_insecure_port("localhost:0")
    server.start()
    try:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(grpc.insecure_channel(f"localhost:{port}"))
        inputs = feature_batch(3, seed=5)
        expected = predict(model, inputs)
        for request in (grpc_predict_request(inputs, model_name="features"),
                        grpc_examples_request(inputs, model_name="features")):
            response = stub.Predict(request, timeout=30.0)
            for name, value in expected.items():
                np.testing.assert_allclose(tf.make_ndarray(response.outputs[name]), value, atol=1e-5, rtol=0)
    finally:
        server.stop(0)
    assert seen == [("features", "serving_default"), ("features", "predict_examples")]


def test_builders_check_values_against_the_exports_signature(served):
    """With ``export_dir`` a wrong dtype is one line naming the feature and both dtypes, not TF
    Serving's "input #0(zero-based) was expected to be a float tensor"."""
    model, path, loaded = served
    good = feature_batch(3, seed=8)
    where = f"signature 'serving_default' of {path}"
    wrong = [
        (dict(good, count=good["count"] + 0.5), f"Feature 'count': received float64 values, but {where} takes int32 "
                                                r"\(send integers"),
        (dict(good, city=np.array([1.0, 2.0, 3.0])),
         f"Feature 'city': received float64 values, but {where} takes string"),
        (dict(good, numeric=np.array([["1", "2", "3"]] * 3)), f"Feature 'numeric': received string values, but {where} "
                                                             r"takes float32 \(send numbers\)"),
        (dict(good, count=np.array([1, 2, 2**40])), "Feature 'count': received int64 values.*do not fit"),
        (dict(good, numeric=good["numeric"][:, :2]), r"Feature 'numeric': received rows of shape \(2,\), but .* takes "
                                                     r"rows of shape \(3,\)"),
    ]
    builders = [lambda x: rest_predict_body(x, export_dir=path),
                lambda x: grpc_predict_request(x, "features", export_dir=path),
                lambda x: make_examples(x, export_dir=path),
                lambda x: rest_examples_body(x, export_dir=path),
                lambda x: grpc_examples_request(x, "features", export_dir=path)]
    for inputs, message in wrong:
        for build in builders:
            with pytest.raises(ValueError, match=message) as info:
                build(inputs)
            assert "\n" not in str(info.value)
    without_segment = {k: v for k, v in good.items() if k != "segment"}
    with pytest.raises(ValueError, match=r"missing \['segment'\], unknown \[\]"):
        rest_predict_body(without_segment, export_dir=path)
    make_examples(without_segment, export_dir=path)  # Example features may be absent (example_defaults)
    with pytest.raises(ValueError, match=r"missing \[\], unknown \['cty'\]"):
        make_examples(dict(without_segment, cty=good["city"]), export_dir=path)
    with pytest.raises(ValueError, match=r"has no signature 'other'; it has \['predict_examples', 'serving_default'\]"):
        rest_predict_body(good, signature_name="other", export_dir=path)


def test_builders_convert_numbers_to_the_signatures_dtypes(served):
    """float64 and int64 arrays, as NumPy makes them, reach the model as its float32 / int32 inputs."""
    model, path, loaded = served
    inputs = feature_batch(4, seed=9)
    loose = dict(inputs, numeric=inputs["numeric"].astype(np.float64), count=inputs["count"].astype(np.int64))
    expected = predict(model, inputs)
    raw = grpc_predict_request(loose, "features")
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError)):  # what TF Serving would refuse
        loaded.signatures["serving_default"](**{k: tf.constant(tf.make_ndarray(v)) for k, v in raw.inputs.items()})
    request = grpc_predict_request(loose, "features", export_dir=path)
    assert request.inputs["numeric"].dtype == tf.float32.as_datatype_enum
    assert request.inputs["count"].dtype == tf.int32.as_datatype_enum
    feed = {k: tf.constant(tf.make_ndarray(v)) for k, v in request.inputs.items()}
    out = loaded.signatures["serving_default"](**feed)
    for name, value in expected.items():
        np.testing.assert_allclose(out[name].numpy(), value, atol=1e-5, rtol=0)
    ints_for_floats = dict(inputs, numeric=np.round(inputs["numeric"] * 10).astype(np.int64))
    examples = make_examples(ints_for_floats, export_dir=path)  # float_list, as the export parses
    parsed = tf.io.parse_example(examples, example_feature_spec(model))
    np.testing.assert_array_equal(parsed["numeric"].numpy(), ints_for_floats["numeric"].astype(np.float32))
    body = rest_predict_body(ints_for_floats, export_dir=path, format="inputs")
    assert isinstance(body["inputs"]["numeric"][0][0], float)
