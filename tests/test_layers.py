"""MMoELayer, ExpertDropoutGate and ExpertBank: numerics against NumPy, dropout, config, saving."""

import os

import numpy as np
import pytest
import tensorflow as tf

import keras_mmoe
from keras_mmoe import ExpertBank, ExpertDropoutGate, MMoELayer
from keras_mmoe._keras import IS_KERAS_3, keras

# --------------------------------------------------------------------------- NumPy reference


def np_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def np_relu(x):
    return np.maximum(x, 0.0)


def np_dense(layer, x):
    w = layer.kernel.numpy() if hasattr(layer.kernel, "numpy") else np.asarray(layer.kernel)
    y = x @ w
    if layer.use_bias:
        y = y + layer.bias.numpy()
    return y


def np_gate(gate, x):
    """Paper eq. 8 (plus optional hidden layers): softmax(W_g x / temperature)."""
    h = x
    for layer in gate.hidden_layers:
        h = np_relu(np_dense(layer, h))
    return np_softmax(np_dense(gate.logits_layer, h) / gate.temperature)


def np_experts(bank, x):
    """Each expert f_i as a plain per-expert MLP, one at a time (a loop, unlike the layer)."""
    kernels = [k.numpy() for k in bank.kernels]
    biases = [b.numpy() for b in bank.biases]
    outs = []
    for i in range(bank.num_experts):
        h = x
        for layer, k in enumerate(kernels):
            w = k[:, i, :] if layer == 0 else k[i]
            h = np_relu(h @ w + (biases[layer][i] if biases else 0.0))
        outs.append(h)
    return np.stack(outs, axis=1)  # (batch, E, u)


def np_mmoe(layer, x, xg=None):
    """Paper eq. 7: f^k(x) = sum_i g^k(x)_i f_i(x)."""
    xg = x if xg is None else xg
    experts = np_experts(layer.expert_bank, x)
    gates = [np_gate(g, xg) for g in layer.gates]
    if layer.shared_gate:
        gates = gates * layer.num_tasks
    g = np.stack(gates, axis=1)  # (batch, T, E)
    return [np.einsum("be,beu->bu", g[:, t], experts) for t in range(layer.num_tasks)], g


CASES = {
    "mmoe_one_layer": dict(num_experts=8, expert_units=16, num_tasks=2),
    "omoe_shared_gate": dict(num_experts=4, expert_units=6, num_tasks=3, shared_gate=True),
    "mlp_experts": dict(num_experts=3, expert_units=(12, 7, 5), task_names=["click", "buy"]),
    "temperature_gate_mlp": dict(
        num_experts=5, expert_units=4, num_tasks=2, gate_temperature=0.3, gate_hidden_units=(6,)
    ),
    "no_bias": dict(num_experts=2, expert_units=(3, 3), num_tasks=2, use_bias=False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_outputs_match_numpy_reference(case, rng):
    layer = MMoELayer(return_gate_weights=True, seed=3, **CASES[case])
    x = rng.normal(size=(7, 11)).astype("float32")
    outputs, gate_weights = layer(x)
    ref_outputs, ref_gates = np_mmoe(layer, x)
    assert len(outputs) == layer.num_tasks
    for out, ref in zip(outputs, ref_outputs):
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(gate_weights.numpy(), ref_gates, rtol=1e-5, atol=1e-6)
    assert gate_weights.shape == (7, layer.num_tasks, layer.num_experts)


def test_separate_gate_inputs_match_numpy_reference(rng):
    layer = MMoELayer(4, (8, 4), num_tasks=2, gate_temperature=2.0, return_gate_weights=True, seed=0)
    x = rng.normal(size=(5, 9)).astype("float32")
    xg = rng.normal(size=(5, 3)).astype("float32")
    outputs, gates = layer(x, gate_inputs=xg)
    ref_outputs, ref_gates = np_mmoe(layer, x, xg)
    assert layer.gates[0].logits_layer.kernel.shape == (3, 4)  # gates read the gate input
    np.testing.assert_allclose(gates.numpy(), ref_gates, rtol=1e-5, atol=1e-6)
    for out, ref in zip(outputs, ref_outputs):
        np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)


def test_experts_start_different_and_are_reproducible_with_seed():
    a = MMoELayer(8, (16, 8), num_tasks=2, seed=42)
    a.build((None, 10))
    k0 = a.expert_bank.kernels[0].numpy()  # (d, E, u)
    k1 = a.expert_bank.kernels[1].numpy()  # (E, u, v)
    for i in range(8):
        for j in range(i + 1, 8):
            assert not np.allclose(k0[:, i], k0[:, j])
            assert not np.allclose(k1[i], k1[j])
    g = [gate.logits_layer.kernel.numpy() for gate in a.gates]
    assert not np.allclose(g[0], g[1])
    b = MMoELayer(8, (16, 8), num_tasks=2, seed=42)
    b.build((None, 10))
    np.testing.assert_array_equal(k0, b.expert_bank.kernels[0].numpy())
    # Glorot scale is per expert: var = 2 / (fan_in + fan_out) = 2 / (10 + 16).
    assert abs(k0.var() - 2.0 / 26) < 0.25 * 2.0 / 26


def test_unseeded_layers_still_differ_per_expert():
    layer = MMoELayer(4, 8, num_tasks=2)
    layer.build((None, 6))
    k = layer.expert_bank.kernels[0].numpy()
    assert not np.allclose(k[:, 0], k[:, 1])


# --------------------------------------------------------------------------- expert dropout


def test_expert_dropout_statistics(rng):
    rate, n = 0.3, 6
    gate = ExpertDropoutGate(n, rate=rate, temperature=0.7, seed=5)
    x = tf.constant(rng.normal(size=(20000, 4)).astype("float32"))
    infer = gate(x, training=False).numpy()
    train = gate(x, training=True).numpy()
    dropped = train == 0.0
    # About `rate` of the weights dropped (rows where all would drop keep one: rate**n is tiny).
    assert abs(dropped.mean() - rate) < 0.01
    np.testing.assert_allclose(train.sum(axis=1), 1.0, atol=1e-5)
    assert (~dropped).any(axis=1).all()
    # Kept weights equal the inference weights re-normalized over the kept experts.
    kept = np.where(dropped, 0.0, infer)
    np.testing.assert_allclose(train, kept / kept.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-7)
    # Inference is the plain softmax and deterministic; training draws a new mask each call.
    np.testing.assert_array_equal(infer, gate(x, training=False).numpy())
    np.testing.assert_array_equal(infer, gate(x).numpy())
    assert not np.array_equal(train, gate(x, training=True).numpy())


def test_no_row_loses_all_experts_even_at_high_rate(rng):
    gate = ExpertDropoutGate(2, rate=0.95, seed=1)
    x = tf.constant(rng.normal(size=(5000, 3)).astype("float32"))
    w = gate(x, training=True).numpy()
    assert ((w > 0).sum(axis=1) >= 1).all()
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-6)
    # The rescued expert is chosen at random, not always the same one.
    single = (w > 0).sum(axis=1) == 1
    assert 0.3 < (w[single].argmax(axis=1) == 0).mean() < 0.7


def test_single_expert_is_never_dropped():
    gate = ExpertDropoutGate(1, rate=0.5, seed=0)
    np.testing.assert_array_equal(gate(tf.ones((100, 2)), training=True).numpy(), 1.0)


def test_dropout_reproducible_with_seed_and_inside_tf_function(rng):
    x = tf.constant(rng.normal(size=(64, 5)).astype("float32"))
    masks = []
    for _ in range(2):
        gate = ExpertDropoutGate(4, rate=0.4, seed=9)
        gate.build((None, 5))
        step = tf.function(lambda t: gate(t, training=True))
        masks.append([step(x).numpy() for _ in range(3)])
    for a, b in zip(*masks):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(masks[0][0] == 0, masks[0][1] == 0)  # new mask each step
    # A symbolic training flag is resolved in the graph.
    gate = ExpertDropoutGate(4, rate=0.4, seed=9)
    f = tf.function(lambda t, flag: gate(t, training=flag))
    assert (f(x, tf.constant(True)).numpy() == 0).any()
    assert not (f(x, tf.constant(False)).numpy() == 0).any()


def test_mmoe_layer_expert_dropout_only_in_training(rng):
    layer = MMoELayer(4, 3, num_tasks=2, expert_dropout_rate=0.5, return_gate_weights=True, seed=2)
    x = tf.constant(rng.normal(size=(256, 5)).astype("float32"))
    _, g_train = layer(x, training=True)
    _, g_infer = layer(x, training=False)
    assert abs((g_train.numpy() == 0).mean() - 0.5) < 0.06
    assert (g_infer.numpy() > 0).all()
    # The two tasks' gates draw independent masks.
    assert not np.array_equal(g_train.numpy()[:, 0] == 0, g_train.numpy()[:, 1] == 0)


# --------------------------------------------------------------------------- config and saving

GATE_ARGS = dict(
    num_experts=5, rate=0.2, temperature=0.5, hidden_units=[7, 3], activation="tanh", use_bias=False,
    kernel_initializer="he_normal", bias_initializer="ones", kernel_regularizer="l2", bias_regularizer="l1", seed=11,
)
MMOE_ARGS = dict(
    num_experts=3, expert_units=[6, 4], num_tasks=2, task_names=["ctr", "cvr"], expert_activation="elu",
    expert_dropout_rate=0.1, gate_temperature=2.0, gate_hidden_units=[5], shared_gate=False,
    return_gate_weights=True, use_bias=True, kernel_initializer="lecun_normal", bias_initializer="zeros",
    kernel_regularizer="l1", bias_regularizer="l2", seed=4,
)


def _normalize(value):
    """Config values compared by meaning: serialized Keras objects by class name and config."""
    if isinstance(value, dict) and "class_name" in value:
        cfg = {k: v for k, v in value.get("config", {}).items() if k not in ("dtype",)}
        return (value["class_name"].lower().replace("_", ""), _normalize(cfg))
    if isinstance(value, str):
        return value.lower().replace("_", "")
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    return value


def _assert_config_has(config, expected):
    for key, value in expected.items():
        got = config[key]
        if isinstance(value, str) and isinstance(got, dict):
            got = got.get("class_name", got)  # serialized initializer/regularizer/activation
        assert _normalize(got) == _normalize(value) or _normalize(value) in str(_normalize(got)), (key, got, value)


@pytest.mark.parametrize("cls,args", [(ExpertDropoutGate, GATE_ARGS), (MMoELayer, MMOE_ARGS)])
def test_get_config_round_trips_every_argument(cls, args):
    layer = cls(**args)
    config = layer.get_config()
    _assert_config_has(config, args)
    clone = cls.from_config(config)
    assert _normalize(clone.get_config()) == _normalize(config)


def test_get_config_round_trips_custom_experts(rng):
    experts = [
        keras.Sequential([keras.layers.Dense(5, activation="relu"), keras.layers.Dense(4)], name=f"expert_{i}")
        for i in range(2)
    ] + [keras.layers.Dense(4, activation="tanh", name="expert_2")]
    layer = MMoELayer(experts=experts, num_experts=3, task_names=["a", "b"], shared_gate=True)
    x = rng.normal(size=(6, 7)).astype("float32")
    outputs = layer(x)
    assert outputs[0].shape == (6, 4)
    config = layer.get_config()
    assert [e["config"]["name"] for e in config["experts"]] == ["expert_0", "expert_1", "expert_2"]
    clone = MMoELayer.from_config(config)
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x)[1].numpy(), outputs[1].numpy(), rtol=1e-6)
    # The custom experts' outputs are mixed by the gate (reference from the experts themselves).
    stacked = np.stack([e(x).numpy() for e in experts], axis=1)
    g = np_gate(layer.gates[0], x)
    np.testing.assert_allclose(outputs[0].numpy(), np.einsum("be,beu->bu", g, stacked), rtol=1e-5, atol=1e-6)


def _model_with_everything():
    x = keras.Input((6,), name="features")
    xg = keras.Input((3,), name="context")
    experts = [keras.layers.Dense(4, activation="relu", name=f"custom_{i}") for i in range(2)]
    mmoe = MMoELayer(3, (5, 4), task_names=["ctr", "cvr"], expert_dropout_rate=0.2, gate_hidden_units=(4,),
                     return_gate_weights=True, seed=1)
    outs, gates = mmoe(x, gate_inputs=xg)
    omoe = MMoELayer(experts=experts, num_tasks=2, shared_gate=True, seed=2, name="omoe")(x)
    gate = ExpertDropoutGate(3, rate=0.3, seed=3, name="extra_gate")(xg)
    outputs = {
        "ctr": keras.layers.Dense(1, activation="sigmoid", name="ctr")(keras.layers.Concatenate()([outs[0], omoe[0]])),
        "cvr": keras.layers.Dense(1, name="cvr")(keras.layers.Concatenate()([outs[1], omoe[1], gate])),
        "gates": keras.layers.Flatten(name="gates")(gates),
    }
    return keras.Model({"features": x, "context": xg}, outputs)


def _sample_inputs(rng, n=9):
    return {"features": rng.normal(size=(n, 6)).astype("float32"), "context": rng.normal(size=(n, 3)).astype("float32")}


def _assert_same_predictions(a, b, inputs):
    pa, pb = a.predict(inputs, verbose=0), b.predict(inputs, verbose=0)
    assert sorted(pa) == sorted(pb)
    for key in pa:
        np.testing.assert_allclose(pa[key], pb[key], rtol=1e-6, atol=1e-7)


def _fit_briefly(model, rng):
    model.compile("adam", {"ctr": "binary_crossentropy", "cvr": "mse", "gates": None} if IS_KERAS_3 else
                  {"ctr": "binary_crossentropy", "cvr": "mse"})
    x = _sample_inputs(rng, 32)
    y = {"ctr": rng.integers(0, 2, size=(32, 1)).astype("float32"), "cvr": rng.normal(size=(32, 1)).astype("float32")}
    if IS_KERAS_3:
        y["gates"] = np.zeros((32, 6), "float32")
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)


@pytest.mark.parametrize("fmt", [".keras"] + ([] if IS_KERAS_3 else [".h5"]))
def test_save_and_load_gives_identical_predictions_without_custom_objects(fmt, tmp_path, rng):
    model = _model_with_everything()
    _fit_briefly(model, rng)
    path = str(tmp_path / ("model" + fmt))
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: `import keras_mmoe` registered them
    _assert_same_predictions(model, loaded, _sample_inputs(rng))
    layer = loaded.get_layer("omoe")
    assert isinstance(layer, MMoELayer) and layer.shared_gate and len(layer.expert_bank.experts) == 2


@pytest.mark.skipif(IS_KERAS_3, reason="the legacy SavedModel save_format='tf' exists only in tf-keras")
def test_tf_keras_legacy_savedmodel_format(tmp_path, rng):
    # Known limitation (README): this legacy format rebuilds layers from their first input's
    # shape only, so a model whose MMoELayer reads separate `gate_inputs` must use .keras or .h5.
    x = keras.Input((6,), name="features")
    outs = MMoELayer(3, (5, 4), task_names=["ctr", "cvr"], expert_dropout_rate=0.2, seed=1)(x)
    model = keras.Model({"features": x}, {t: keras.layers.Dense(1, name=t)(o) for t, o in zip(["ctr", "cvr"], outs)})
    path = str(tmp_path / "model_tf")
    model.save(path, save_format="tf")
    loaded = keras.models.load_model(path)
    inputs = {"features": rng.normal(size=(5, 6)).astype("float32")}
    _assert_same_predictions(model, loaded, inputs)


# --------------------------------------------------------------------------- usage situations


def test_batch_size_one(rng):
    layer = MMoELayer(4, 3, num_tasks=2, return_gate_weights=True, expert_dropout_rate=0.5, seed=0)
    x = rng.normal(size=(1, 5)).astype("float32")
    outputs, gates = layer(x, training=True)
    assert outputs[0].shape == (1, 3) and gates.shape == (1, 2, 4)
    ref, _ = np_mmoe(layer, x)
    np.testing.assert_allclose(layer(x)[0][1].numpy(), ref[1], rtol=1e-5, atol=1e-6)


def test_mixed_precision_outputs_in_compute_dtype_and_stable_softmax(rng):
    keras.mixed_precision.set_global_policy("mixed_float16")
    layer = MMoELayer(4, 8, num_tasks=2, gate_temperature=0.01, return_gate_weights=True, seed=0)
    x = tf.constant(rng.normal(size=(16, 5)).astype("float32") * 100.0)  # huge logits
    outputs, gates = layer(x, training=True)
    assert outputs[0].dtype == tf.float16 and gates.dtype == tf.float16
    assert layer.expert_bank.kernels[0].dtype == tf.float32  # variables stay float32
    g = gates.numpy().astype("float32")
    assert np.isfinite(g).all() and np.allclose(g.sum(axis=-1), 1.0, atol=1e-2)
    assert np.isfinite(outputs[0].numpy()).all()
    gate = ExpertDropoutGate(3, rate=0.3, temperature=1e-3, seed=0)
    w = gate(x, training=True)
    assert w.dtype == tf.float16 and np.isfinite(w.numpy()).all()


def test_fit_on_tf_data_pipeline_learns(rng):
    x = rng.normal(size=(2048, 8)).astype("float32")
    y = {"a": (x[:, :1] > 0).astype("float32"), "b": x[:, 1:2] * 2.0}
    inp = keras.Input((8,), name="features")
    outs = MMoELayer(4, 8, task_names=["a", "b"], expert_dropout_rate=0.1, seed=0)(inp)
    model = keras.Model({"features": inp}, {"a": keras.layers.Dense(1, "sigmoid", name="a")(outs[0]),
                                           "b": keras.layers.Dense(1, name="b")(outs[1])})
    model.compile(keras.optimizers.Adam(0.01), {"a": "binary_crossentropy", "b": "mse"})
    ds = tf.data.Dataset.from_tensor_slices(({"features": x}, y)).shuffle(2048, seed=0).batch(64)
    history = model.fit(ds, epochs=4, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]


def test_inside_subclassed_model(rng):
    class Ranker(keras.Model):
        def __init__(self):
            super().__init__()
            self.mmoe = MMoELayer(3, 4, task_names=["click", "like"], seed=0)
            self.click = keras.layers.Dense(1, activation="sigmoid")
            self.like = keras.layers.Dense(1, activation="sigmoid")

        def call(self, inputs, training=None):
            click, like = self.mmoe(inputs, training=training)
            return {"click": self.click(click), "like": self.like(like)}

    model = Ranker()
    x = rng.normal(size=(64, 5)).astype("float32")
    y = {"click": np.ones((64, 1), "float32"), "like": np.zeros((64, 1), "float32")}
    model.compile("adam", {"click": "binary_crossentropy", "like": "binary_crossentropy"})
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    out = model(x)
    assert out["click"].shape == (64, 1)
    n_weights = len(model.mmoe.trainable_weights)
    assert n_weights == 2 + 2 * 2  # expert kernel + bias, two gates' kernel + bias
    assert len(model.trainable_weights) == n_weights + 4


# --------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_experts=0, expert_units=4, num_tasks=2), "num_experts.*0"),
        (dict(num_experts=2, expert_units=4, num_tasks=2, expert_dropout_rate=1.0), "expert_dropout_rate.*1.0"),
        (dict(num_experts=2, expert_units=4, num_tasks=2, expert_dropout_rate=-0.1), r"expert_dropout_rate.*-0\.1"),
        (dict(num_experts=2, expert_units=4, num_tasks=2, gate_temperature=0), "gate_temperature.*0"),
        (dict(num_experts=2, expert_units=4, task_names=["a", "a"]), r"duplicates \['a'\]"),
        (dict(num_experts=2, expert_units=4, num_tasks=3, task_names=["a", "b"]), "num_tasks.*3.*disagrees"),
        (dict(num_experts=2, expert_units=0, num_tasks=2), "expert_units.*0"),
        (dict(num_experts=2, expert_units=4), "num_tasks.*task_names"),
        (dict(num_experts=2, expert_units=4, task_names=["bad name"]), "bad name"),
        (dict(num_experts=3, expert_units=4, num_tasks=2, experts=[keras.layers.Dense(2)]), "num_experts.*3"),
    ],
)
def test_bad_mmoe_arguments_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MMoELayer(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_experts=0), "num_experts.*0"),
        (dict(num_experts=2, rate=1.0), "rate.*1.0"),
        (dict(num_experts=2, rate=-0.5), r"rate.*-0\.5"),
        (dict(num_experts=2, temperature=-1.0), r"temperature.*-1\.0"),
        (dict(num_experts=2, seed="x"), "seed.*'x'"),
    ],
)
def test_bad_gate_arguments_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ExpertDropoutGate(**kwargs)


def test_wrong_input_rank_and_gate_batch_raise_value_error():
    layer = MMoELayer(2, 3, num_tasks=2)
    with pytest.raises(ValueError, match=r"`inputs` of rank 2.*\(4, 3, 5\)"):
        layer(tf.ones((4, 3, 5)))
    with pytest.raises(ValueError, match=r"`inputs` of rank 2.*\(4,\)"):
        MMoELayer(2, 3, num_tasks=2)(tf.ones((4,)))
    with pytest.raises(ValueError, match=r"gate_inputs.*rank 2"):
        MMoELayer(2, 3, num_tasks=2)(tf.ones((4, 5)), gate_inputs=tf.ones((4, 2, 2)))
    with pytest.raises(ValueError, match=r"`gate_inputs` batch size 3 differs from `inputs` batch size 4"):
        MMoELayer(2, 3, num_tasks=2)(tf.ones((4, 5)), gate_inputs=tf.ones((3, 2)))
    with pytest.raises(ValueError, match=r"ExpertDropoutGate.*rank 2"):
        ExpertDropoutGate(2)(tf.ones((2, 2, 2)))
    # A batch mismatch only known at run time still fails, naming gate_inputs.
    layer = MMoELayer(2, 3, num_tasks=2)
    layer(tf.ones((4, 5)), gate_inputs=tf.ones((4, 2)))
    fn = tf.function(lambda a, b: layer(a, gate_inputs=b),
                     input_signature=[tf.TensorSpec((None, 5)), tf.TensorSpec((None, 2))])
    with pytest.raises(tf.errors.InvalidArgumentError, match="gate_inputs"):
        fn(tf.ones((4, 5)), tf.ones((3, 2)))


def test_public_api():
    assert keras_mmoe.MMoELayer is MMoELayer and keras_mmoe.ExpertDropoutGate is ExpertDropoutGate
    assert keras_mmoe.KERAS_FLAVOR == ("keras3" if IS_KERAS_3 else "tf_keras")
    assert keras_mmoe.KERAS_FLAVOR == ("tf_keras" if os.environ.get("TF_USE_LEGACY_KERAS") == "1" else "keras3")
