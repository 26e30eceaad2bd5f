"""CGCLayer and PLELayer: numerics against NumPy (PLE paper eq. 2-5), dropout, config, saving, builders."""

import numpy as np
import pytest
import tensorflow as tf

import keras_mmoe
from keras_mmoe import CGCLayer, MMoELayer, PLELayer
from keras_mmoe._keras import IS_KERAS_3, keras
from keras_mmoe.models import BUILDERS, build_cgc, build_ple
from keras_mmoe.models.baselines import count_params_formula
from test_layers import _assert_config_has, _assert_same_predictions, _normalize, _sample_inputs, np_experts, np_gate

# --------------------------------------------------------------------------- NumPy reference


def np_bank(bank, x):
    """(batch, experts, u): built-in experts one at a time, or each custom expert called alone."""
    if bank.experts is not None:
        return np.stack([np.asarray(expert(x)) for expert in bank.experts], axis=1)
    return np_experts(bank, x)


def np_cgc(layer, inputs, gate_inputs=None):
    """PLE paper eq. 2-4 (eq. 5 for a list of task inputs and the shared input), expert by expert."""
    num_tasks = layer.num_tasks
    if isinstance(inputs, (list, tuple)):
        task_in, shared_in = list(inputs[:-1]), inputs[-1]
    else:
        task_in, shared_in = [inputs] * num_tasks, inputs
    own = [[] for _ in range(num_tasks)]
    for k, bank in enumerate(layer.task_expert_banks):
        own[k] = list(np.moveaxis(np_bank(bank, task_in[k]), 1, 0))  # [E_{k,1}(x), ..., E_{k,m}(x)]
    bank = layer.shared_expert_bank
    shared = [] if bank is None else list(np.moveaxis(np_bank(bank, shared_in), 1, 0))

    def mix(gate, gate_x, experts):
        w = np_gate(gate, gate_x)
        assert w.shape[1] == len(experts)
        return sum(w[:, [i]] * expert for i, expert in enumerate(experts)), w

    outputs, task_weights = [], []
    for k in range(num_tasks):
        out, w = mix(layer.gates[k], task_in[k] if gate_inputs is None else gate_inputs, own[k] + shared)
        outputs.append(out)
        task_weights.append(w)
    weights = {"tasks": np.stack(task_weights, axis=1)}
    if layer.return_shared:
        every = [e for k in range(num_tasks) for e in own[k]] + shared
        out, weights["shared"] = mix(layer.gates[num_tasks], shared_in if gate_inputs is None else gate_inputs, every)
        outputs.append(out)
    return outputs, weights


def np_ple(layer, x, gate_inputs=None):
    """PLE paper eq. 5-6: level j reads level j-1's task outputs and shared output."""
    weights = {}
    for index, level in enumerate(layer.levels):
        x, level_weights = np_cgc(level, x, gate_inputs)
        weights.update({f"level_{index}_{key}": value for key, value in level_weights.items()})
    return x, weights


def assert_close(actual, expected, atol=1e-5):
    if isinstance(expected, dict):
        assert sorted(actual) == sorted(expected)
        for key in expected:
            np.testing.assert_allclose(np.asarray(actual[key]), expected[key], rtol=1e-5, atol=atol, err_msg=key)
    else:
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            np.testing.assert_allclose(np.asarray(a), e, rtol=1e-5, atol=atol)


CGC_CASES = {
    "one_layer_experts": dict(num_shared_experts=3, num_task_experts=2, expert_units=6, num_tasks=2),
    "mlp_experts_three_tasks": dict(num_shared_experts=2, num_task_experts=1, expert_units=(7, 5), num_tasks=3),
    "shared_gate": dict(num_shared_experts=2, num_task_experts=2, expert_units=4, num_tasks=2, return_shared=True),
    "temperature_gate_mlp": dict(
        num_shared_experts=2, num_task_experts=3, expert_units=4, task_names=["ctr", "cvr"], gate_temperature=0.3,
        gate_hidden_units=(6,), return_shared=True,
    ),
    "no_bias_anywhere": dict(
        num_shared_experts=1, num_task_experts=2, expert_units=(3, 3), num_tasks=2, use_bias=False, gate_use_bias=False
    ),
    "no_task_experts": dict(num_shared_experts=4, num_task_experts=0, expert_units=5, num_tasks=2, return_shared=True),
    "no_shared_experts": dict(num_shared_experts=0, num_task_experts=2, expert_units=5, num_tasks=2, return_shared=True),
}


@pytest.mark.parametrize("case", sorted(CGC_CASES))
def test_cgc_matches_numpy_reference(case, rng):
    layer = CGCLayer(return_gate_weights=True, seed=3, **CGC_CASES[case])
    x = rng.normal(size=(7, 11)).astype("float32")
    outputs, weights = layer(x)
    ref_outputs, ref_weights = np_cgc(layer, x)
    assert len(outputs) == layer.num_tasks + int(layer.return_shared)
    assert_close(outputs, ref_outputs)
    assert_close(weights, ref_weights, atol=1e-6)
    m, s = layer.num_task_experts, layer.num_shared_experts
    assert weights["tasks"].shape == (7, layer.num_tasks, m + s)
    if layer.return_shared:
        assert weights["shared"].shape == (7, layer.num_tasks * m + s) and layer.num_experts == layer.num_tasks * m + s
    np.testing.assert_allclose(weights["tasks"].numpy().sum(-1), 1.0, rtol=1e-5)
    assert not layer.gates[0].logits_layer.use_bias if not layer.gate_use_bias else layer.gates[0].logits_layer.use_bias


def test_cgc_deeper_level_reads_task_and_shared_inputs_and_gate_inputs(rng):
    layer = CGCLayer(2, 2, (5, 4), task_names=["a", "b"], return_shared=True, return_gate_weights=True, seed=5)
    inputs = [rng.normal(size=(6, d)).astype("float32") for d in (3, 4, 9)]  # task a, task b, shared
    outputs, weights = layer(inputs)
    assert layer.task_expert_banks[1].kernels[0].shape[0] == 4 and layer.shared_expert_bank.kernels[0].shape[0] == 9
    assert layer.gates[0].logits_layer.kernel.shape == (3, 4) and layer.gates[2].logits_layer.kernel.shape == (9, 6)
    assert_close(outputs, np_cgc(layer, inputs)[0])
    assert_close(weights, np_cgc(layer, inputs)[1], atol=1e-6)
    # Each input feeds only its own experts and gate: changing task a's input leaves task b's output.
    changed = [inputs[0] + 1.0] + inputs[1:]
    again = layer(changed)[0]
    np.testing.assert_array_equal(again[1].numpy(), outputs[1].numpy())
    assert not np.allclose(again[0].numpy(), outputs[0].numpy())
    # With gate_inputs, every gate reads it.
    layer = CGCLayer(2, 1, 4, num_tasks=2, return_shared=True, return_gate_weights=True, seed=6)
    xg = rng.normal(size=(6, 2)).astype("float32")
    outputs, weights = layer(inputs, gate_inputs=xg)
    assert all(gate.logits_layer.kernel.shape[0] == 2 for gate in layer.gates)
    ref_outputs, ref_weights = np_cgc(layer, inputs, xg)
    assert_close(outputs, ref_outputs)
    assert_close(weights, ref_weights, atol=1e-6)


def test_cgc_without_task_experts_is_mmoe(rng):
    """num_task_experts=0: every task gate weighs the same shared experts, i.e. MMoE (eq. 7-8 of MMoE)."""
    x = rng.normal(size=(8, 6)).astype("float32")
    cgc = CGCLayer(num_shared_experts=4, num_task_experts=0, expert_units=(5, 3), num_tasks=2, seed=1)
    mmoe = MMoELayer(4, (5, 3), num_tasks=2, seed=2)
    cgc(x), mmoe(x)
    mmoe.expert_bank.set_weights(cgc.shared_expert_bank.get_weights())
    for g_mmoe, g_cgc in zip(mmoe.gates, cgc.gates):
        g_mmoe.set_weights(g_cgc.get_weights())
    assert_close(cgc(x), [o.numpy() for o in mmoe(x)])


def test_cgc_custom_experts_match_reference_and_round_trip_config(rng):
    def dense(name, activation="relu"):
        return keras.layers.Dense(4, activation=activation, name=name)

    shared = [keras.Sequential([keras.layers.Dense(6, activation="relu"), keras.layers.Dense(4)], name="shared_mlp"),
              dense("shared_dense", "tanh")]
    tasks = [[dense("a_0"), dense("a_1")], [dense("b_0"), dense("b_1")]]
    layer = CGCLayer(shared_experts=shared, task_experts=tasks, task_names=["a", "b"], return_shared=True,
                     return_gate_weights=True, gate_temperature=0.5, seed=0)
    assert (layer.num_shared_experts, layer.num_task_experts, layer.num_experts) == (2, 2, 6)
    x = rng.normal(size=(5, 7)).astype("float32")
    outputs, weights = layer(x)
    ref_outputs, ref_weights = np_cgc(layer, x)
    assert_close(outputs, ref_outputs)
    assert_close(weights, ref_weights, atol=1e-6)
    config = layer.get_config()
    assert [e["config"]["name"] for e in config["shared_experts"]] == ["shared_mlp", "shared_dense"]
    assert [[e["config"]["name"] for e in t] for t in config["task_experts"]] == [["a_0", "a_1"], ["b_0", "b_1"]]
    assert config["expert_units"] is None
    clone = CGCLayer.from_config(config)
    clone(x)
    clone.set_weights(layer.get_weights())
    assert_close(clone(x)[0], [o.numpy() for o in outputs])
    # Custom task experts with built-in shared experts, and a width mismatch named.
    mixed = CGCLayer(num_shared_experts=2, expert_units=4, task_experts=[[dense("c")], [dense("d")]], num_tasks=2)
    assert mixed(x)[0].shape == (5, 4)
    bad = CGCLayer(num_shared_experts=2, expert_units=3, task_experts=[[dense("e")], [dense("f")]], num_tasks=2)
    with pytest.raises(ValueError, match="disagrees with the experts' output width 4"):
        bad(x)


# --------------------------------------------------------------------------- PLE

PLE_CASES = {
    "one_level_is_cgc": dict(num_levels=1, num_shared_experts=2, num_task_experts=2, expert_units=4, num_tasks=2),
    "two_levels": dict(num_levels=2, num_shared_experts=3, num_task_experts=2, expert_units=(6, 4), num_tasks=2),
    "three_levels_three_tasks_gate_mlp": dict(
        num_levels=3, num_shared_experts=2, num_task_experts=1, expert_units=5, num_tasks=3,
        gate_hidden_units=(4,), gate_temperature=2.0,
    ),
}


@pytest.mark.parametrize("case", sorted(PLE_CASES))
def test_ple_matches_numpy_reference(case, rng):
    layer = PLELayer(return_gate_weights=True, seed=7, **PLE_CASES[case])
    x = rng.normal(size=(6, 9)).astype("float32")
    outputs, weights = layer(x)
    ref_outputs, ref_weights = np_ple(layer, x)
    assert len(outputs) == layer.num_tasks
    assert_close(outputs, ref_outputs)
    assert_close(weights, ref_weights, atol=1e-6)
    levels = layer.num_levels
    assert sorted(weights) == sorted(
        [f"level_{j}_tasks" for j in range(levels)] + [f"level_{j}_shared" for j in range(levels - 1)]
    )
    assert [level.return_shared for level in layer.levels] == [True] * (levels - 1) + [False]
    # Levels after the first read the previous level's outputs (width u).
    for level in layer.levels[1:]:
        assert level.shared_expert_bank.kernels[0].shape[0] == layer.output_units


def test_ple_gate_inputs_feed_every_gate_of_every_level(rng):
    layer = PLELayer(2, 2, 1, 4, task_names=["a", "b"], return_gate_weights=True, seed=1)
    x = rng.normal(size=(5, 6)).astype("float32")
    xg = rng.normal(size=(5, 3)).astype("float32")
    outputs, weights = layer(x, gate_inputs=xg)
    assert all(gate.logits_layer.kernel.shape[0] == 3 for level in layer.levels for gate in level.gates)
    ref_outputs, ref_weights = np_ple(layer, x, xg)
    assert_close(outputs, ref_outputs)
    assert_close(weights, ref_weights, atol=1e-6)


def test_ple_custom_experts_are_copied_per_level(rng):
    shared = [keras.layers.Dense(4, activation="relu", name="s0"), keras.layers.Dense(4, name="s1")]
    tasks = [[keras.layers.Dense(4, activation="tanh", name="t0")], [keras.layers.Dense(4, name="t1")]]
    layer = PLELayer(2, shared_experts=shared, task_experts=tasks, num_tasks=2, seed=0)
    x = rng.normal(size=(3, 5)).astype("float32")
    outputs = layer(x)
    assert layer.levels[0].shared_expert_bank.experts[0] is shared[0]  # the given layers: the first level
    copy = layer.levels[1].shared_expert_bank.experts[0]
    assert copy is not shared[0] and copy.kernel.shape == (4, 4) and shared[0].kernel.shape == (5, 4)
    assert layer.levels[1].task_expert_banks[0].experts[0].activation is keras.activations.tanh
    assert_close(outputs, np_ple(layer, x)[0])
    config = layer.get_config()
    assert [e["config"]["name"] for e in config["shared_experts"]] == ["s0", "s1"]
    clone = PLELayer.from_config(config)
    clone(x)
    clone.set_weights(layer.get_weights())
    assert_close(clone(x), [o.numpy() for o in outputs])
    built = keras.layers.Dense(4)
    built.build((None, 5))
    with pytest.raises(ValueError, match=r"`shared_experts\[0\]`.*already built"):
        PLELayer(2, shared_experts=[built], num_task_experts=1, expert_units=4, num_tasks=2)


# --------------------------------------------------------------------------- gate_weights method


@pytest.mark.parametrize("cls", [CGCLayer, PLELayer])
def test_gate_weights_method_is_the_inference_gates(cls, rng):
    kwargs = dict(num_shared_experts=2, num_task_experts=2, expert_units=3, task_names=["a", "b"],
                  expert_dropout_rate=0.4, seed=4)
    layer = cls(2, **kwargs) if cls is PLELayer else cls(return_shared=True, **kwargs)
    x = tf.constant(rng.normal(size=(16, 5)).astype("float32"))
    weights = layer.gate_weights(x)  # builds the layer on first use
    expected = np_ple(layer, x.numpy())[1] if cls is PLELayer else np_cgc(layer, x.numpy())[1]
    assert_close(weights, expected, atol=1e-6)
    for value in weights.values():
        assert (value.numpy() > 0).all()  # no expert dropout
    compiled = tf.function(layer.gate_weights)
    assert_close(compiled(x), expected, atol=1e-6)
    # The same as the weights returned by call at inference.
    with_weights = cls.from_config({**layer.get_config(), "return_gate_weights": True})
    with_weights(x)
    with_weights.set_weights(layer.get_weights())
    assert_close(with_weights(x, training=False)[1], expected, atol=1e-6)


# --------------------------------------------------------------------------- initialization


def _expert_kernels(layer):
    levels = layer.levels if isinstance(layer, PLELayer) else [layer]
    kernels = []
    for level in levels:
        for bank in level.banks:
            k = bank.kernels[0].numpy()  # (d, E, u)
            kernels += [k[:, i] for i in range(k.shape[1])]
    return kernels


@pytest.mark.parametrize("seeded", ["layer_seed", "initializer_seed", "unseeded"])
def test_every_expert_of_every_bank_and_level_starts_different(seeded):
    kwargs = dict(num_levels=2, num_shared_experts=3, num_task_experts=3, expert_units=8, num_tasks=2)
    if seeded == "layer_seed":
        kwargs["seed"] = 11
    elif seeded == "initializer_seed":
        kwargs["kernel_initializer"] = keras.initializers.GlorotUniform(seed=5)
    layer = PLELayer(**kwargs)
    layer.build((None, 8))  # input width = expert width: every level's first kernel is (8, E, 8)
    kernels = _expert_kernels(layer)
    assert len(kernels) == 2 * 9
    for i in range(len(kernels)):
        for j in range(i + 1, len(kernels)):
            assert not np.allclose(kernels[i], kernels[j]), (i, j)
    gates = [gate.logits_layer.kernel.numpy() for gate in layer.levels[0].gates[:2]]
    assert not np.allclose(gates[0], gates[1])
    if seeded != "unseeded":
        again = PLELayer(**kwargs)
        again.build((None, 8))
        for a, b in zip(kernels, _expert_kernels(again)):
            np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- expert dropout


def test_expert_dropout_in_every_gate_only_in_training(rng):
    rate = 0.3
    layer = CGCLayer(3, 3, 4, num_tasks=2, expert_dropout_rate=rate, return_shared=True, return_gate_weights=True,
                     seed=2)
    x = tf.constant(rng.normal(size=(4000, 5)).astype("float32"))
    _, train = layer(x, training=True)
    infer = layer.gate_weights(x)
    masks = {}
    for key in ("tasks", "shared"):
        t, i = train[key].numpy(), infer[key].numpy()
        dropped = t == 0.0
        assert abs(dropped.mean() - rate) < 0.015, key
        np.testing.assert_allclose(t.sum(axis=-1), 1.0, atol=1e-5)
        assert (~dropped).any(axis=-1).all()
        kept = np.where(dropped, 0.0, i)  # kept weights = inference weights re-normalized over kept experts
        np.testing.assert_allclose(t, kept / kept.sum(axis=-1, keepdims=True), rtol=1e-5, atol=1e-7)
        assert (i > 0).all()
        masks[key] = dropped
    # The gates draw independent masks: the two task gates, and the task and shared gates.
    assert not np.array_equal(masks["tasks"][:, 0], masks["tasks"][:, 1])
    overlap = (masks["tasks"][:, 0] & masks["shared"][:, :6]).mean()
    assert abs(overlap - rate * rate) < 0.015
    # Inference is deterministic; training draws a new mask each call.
    np.testing.assert_array_equal(layer(x, training=False)[1]["tasks"].numpy(), layer(x)[1]["tasks"].numpy())
    assert not np.array_equal(layer(x, training=True)[1]["tasks"].numpy(), train["tasks"].numpy())


def test_ple_expert_dropout_reaches_every_level(rng):
    layer = PLELayer(2, 2, 2, 4, num_tasks=2, expert_dropout_rate=0.5, return_gate_weights=True, seed=3)
    x = tf.constant(rng.normal(size=(512, 5)).astype("float32"))
    _, weights = layer(x, training=True)
    for key, value in weights.items():
        assert 0.4 < (value.numpy() == 0).mean() < 0.6, key
    _, weights = layer(x, training=False)
    assert all((value.numpy() > 0).all() for value in weights.values())


# --------------------------------------------------------------------------- config and saving

CGC_ARGS = dict(
    num_shared_experts=3, num_task_experts=2, expert_units=[6, 4], num_tasks=2, task_names=["ctr", "cvr"],
    expert_activation="elu", expert_dropout_rate=0.1, gate_temperature=2.0, gate_hidden_units=[5],
    shared_experts=None, task_experts=None, return_shared=True, return_gate_weights=True, use_bias=False,
    gate_use_bias=False, kernel_initializer="lecun_normal", bias_initializer="ones", kernel_regularizer="l1",
    bias_regularizer="l2", seed=4,
)
PLE_ARGS = {**{k: v for k, v in CGC_ARGS.items() if k != "return_shared"}, "num_levels": 3}


@pytest.mark.parametrize("cls,args", [(CGCLayer, CGC_ARGS), (PLELayer, PLE_ARGS)])
def test_get_config_round_trips_every_argument(cls, args):
    import inspect

    parameters = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    assert parameters == set(args)  # every constructor argument is checked below
    layer = cls(**args)
    config = layer.get_config()
    _assert_config_has(config, {k: v for k, v in args.items() if v is not None})
    assert all(config[k] is None for k, v in args.items() if v is None)
    clone = cls.from_config(config)
    assert _normalize(clone.get_config()) == _normalize(config)
    layer.build((None, 5))
    clone.build((None, 5))
    assert [w.shape for w in clone.weights] == [w.shape for w in layer.weights]


def _model_with_everything():
    x = keras.Input((6,), name="features")
    xg = keras.Input((3,), name="context")
    experts = [keras.layers.Dense(4, activation="relu", name=f"custom_{i}") for i in range(2)]
    cgc_outs, cgc_gates = CGCLayer(2, 1, (5, 4), task_names=["ctr", "cvr"], expert_dropout_rate=0.2,
                                   gate_hidden_units=(4,), return_gate_weights=True, seed=1, name="cgc")(
        x, gate_inputs=xg)
    ple_outs = PLELayer(2, shared_experts=experts, num_task_experts=1, expert_units=4, num_tasks=2,
                        expert_dropout_rate=0.1, gate_use_bias=False, seed=2, name="ple")(x)
    outputs = {
        "ctr": keras.layers.Dense(1, activation="sigmoid", name="ctr")(
            keras.layers.Concatenate()([cgc_outs[0], ple_outs[0]])),
        "cvr": keras.layers.Dense(1, name="cvr")(keras.layers.Concatenate()([cgc_outs[1], ple_outs[1]])),
        "gates": keras.layers.Flatten(name="gates")(cgc_gates["tasks"]),
    }
    return keras.Model({"features": x, "context": xg}, outputs)


def _perturb(model, rng):
    """Moves every weight away from its (seeded) initial value, so only loaded weights can match."""
    for w in model.weights:
        if w.dtype.is_floating if hasattr(w.dtype, "is_floating") else "float" in str(w.dtype):
            w.assign(np.asarray(w) + rng.normal(scale=0.1, size=w.shape).astype("float32"))


@pytest.mark.parametrize("fmt", [".keras"] + ([] if IS_KERAS_3 else [".h5"]))
def test_save_and_load_gives_identical_predictions_without_custom_objects(fmt, tmp_path, rng):
    model = _model_with_everything()
    _perturb(model, rng)
    path = str(tmp_path / ("model" + fmt))
    model.save(path)
    loaded = keras.models.load_model(path)  # no custom_objects: `import keras_mmoe` registered them
    _assert_same_predictions(model, loaded, _sample_inputs(rng))
    ple = loaded.get_layer("ple")
    assert isinstance(ple, PLELayer) and ple.levels[1].shared_expert_bank.experts[0].kernel.shape == (4, 4)
    assert loaded.get_layer("cgc").gates[0].logits_layer.kernel.shape == (4, 3)


@pytest.mark.skipif(IS_KERAS_3, reason="the legacy SavedModel save_format='tf' exists only in tf-keras")
def test_tf_keras_legacy_savedmodel_format(tmp_path, rng):
    # As for MMoELayer, this legacy format rebuilds layers from their first input's shape only,
    # so the model reads no separate `gate_inputs`.
    x = keras.Input((6,), name="features")
    outs = PLELayer(2, 2, 1, (5, 4), task_names=["ctr", "cvr"], expert_dropout_rate=0.2, seed=1)(x)
    model = keras.Model({"features": x}, {t: keras.layers.Dense(1, name=t)(o) for t, o in zip(["ctr", "cvr"], outs)})
    _perturb(model, rng)
    path = str(tmp_path / "model_tf")
    model.save(path, save_format="tf")
    loaded = keras.models.load_model(path)
    _assert_same_predictions(model, loaded, {"features": rng.normal(size=(5, 6)).astype("float32")})


# --------------------------------------------------------------------------- usage situations

# Keras 3 compiles train steps with XLA when it can ("auto"); tracing is cheaper without (short runs).
NO_XLA = dict(jit_compile=False) if IS_KERAS_3 else {}


@pytest.mark.parametrize("cls", [CGCLayer, PLELayer])
def test_gate_use_bias_defaults_to_use_bias_like_mmoe(cls):
    """``gate_use_bias=None`` follows ``use_bias`` (as in MMoELayer); an explicit value wins."""
    extra = {"num_levels": 2} if cls is PLELayer else {}
    base = dict(num_shared_experts=1, num_task_experts=1, expert_units=3, num_tasks=2, **extra)
    assert cls(**base).get_config()["gate_use_bias"] is True
    assert cls(use_bias=False, **base).get_config()["gate_use_bias"] is False
    layer = cls(use_bias=False, gate_use_bias=True, **base)
    assert layer.get_config()["gate_use_bias"] is True
    assert cls.from_config(layer.get_config()).get_config()["gate_use_bias"] is True


def test_batch_size_one(rng):
    layer = PLELayer(2, 2, 2, 3, num_tasks=2, return_gate_weights=True, expert_dropout_rate=0.5, seed=0)
    x = rng.normal(size=(1, 5)).astype("float32")
    outputs, weights = layer(x, training=True)
    assert outputs[0].shape == (1, 3) and weights["level_0_shared"].shape == (1, 6)
    assert_close(layer(x)[0], np_ple(layer, x)[0])


def test_mixed_precision_outputs_in_compute_dtype_and_stable_softmax(rng):
    keras.mixed_precision.set_global_policy("mixed_float16")
    layer = PLELayer(2, 2, 2, 8, num_tasks=2, gate_temperature=0.01, expert_dropout_rate=0.2,
                     return_gate_weights=True, seed=0)
    x = tf.constant(rng.normal(size=(16, 5)).astype("float32") * 100.0)  # huge logits
    outputs, weights = layer(x, training=True)
    assert outputs[0].dtype == tf.float16 and weights["level_1_tasks"].dtype == tf.float16
    assert layer.levels[1].shared_expert_bank.kernels[0].dtype == tf.float32  # variables stay float32
    for value in weights.values():
        w = value.numpy().astype("float32")
        assert np.isfinite(w).all() and np.allclose(w.sum(axis=-1), 1.0, atol=1e-2)
    assert all(np.isfinite(o.numpy()).all() for o in outputs)


def test_fit_on_tf_data_pipeline_learns(rng):
    x = rng.normal(size=(2048, 8)).astype("float32")
    y = {"a": (x[:, :1] > 0).astype("float32"), "b": x[:, 1:2] * 2.0}
    inp = keras.Input((8,), name="features")
    outs = PLELayer(2, 2, 2, 8, task_names=["a", "b"], expert_dropout_rate=0.1, seed=0)(inp)
    model = keras.Model({"features": inp}, {"a": keras.layers.Dense(1, "sigmoid", name="a")(outs[0]),
                                           "b": keras.layers.Dense(1, name="b")(outs[1])})
    model.compile(keras.optimizers.Adam(0.01), {"a": "binary_crossentropy", "b": "mse"}, **NO_XLA)
    ds = tf.data.Dataset.from_tensor_slices(({"features": x}, y)).shuffle(2048, seed=0).batch(64)
    losses = model.fit(ds, epochs=3, verbose=0).history["loss"]
    assert losses[-1] < 0.5 * losses[0]


def test_inside_subclassed_model_tracks_every_weight(rng):
    class Ranker(keras.Model):
        def __init__(self):
            super().__init__()
            self.ple = PLELayer(2, 1, 1, 4, task_names=["click", "like"], seed=0)
            self.heads = [keras.layers.Dense(1, activation="sigmoid") for _ in range(2)]

        def call(self, inputs, training=None):
            click, like = self.ple(inputs, training=training)
            return {"click": self.heads[0](click), "like": self.heads[1](like)}

    model = Ranker()
    x = rng.normal(size=(32, 5)).astype("float32")
    model.compile("adam", {"click": "binary_crossentropy", "like": "binary_crossentropy"}, **NO_XLA)
    model.fit(x, {"click": np.ones((32, 1), "float32"), "like": np.zeros((32, 1), "float32")}, epochs=1, verbose=0)
    # Per level: 3 banks (kernel + bias), 2 task gates (kernel + bias); level 0 also a shared gate.
    assert len(model.ple.trainable_weights) == 2 * (3 * 2 + 2 * 2) + 2
    assert len(model.trainable_weights) == len(model.ple.trainable_weights) + 4


# --------------------------------------------------------------------------- bad arguments and inputs


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_shared_experts=-1, num_task_experts=2, expert_units=4, num_tasks=2), "num_shared_experts.*-1"),
        (dict(num_shared_experts=2, num_task_experts=1.5, expert_units=4, num_tasks=2), r"num_task_experts.*1\.5"),
        (dict(num_shared_experts=0, num_task_experts=0, expert_units=4, num_tasks=2), "at least one expert"),
        (dict(num_shared_experts=2, num_task_experts=2, num_tasks=2), "expert_units.*None"),
        (dict(num_shared_experts=2, num_task_experts=2, expert_units=0, num_tasks=2), "expert_units.*0"),
        (dict(num_shared_experts=2, num_task_experts=2, expert_units=4, num_tasks=2, expert_dropout_rate=1.0),
         r"expert_dropout_rate.*1\.0"),
        (dict(num_shared_experts=2, num_task_experts=2, expert_units=4, num_tasks=2, gate_temperature=0),
         "gate_temperature.*0"),
        (dict(num_shared_experts=2, num_task_experts=2, expert_units=4, task_names=["a", "a"]), "duplicates"),
        (dict(num_shared_experts=2, num_task_experts=2, expert_units=4), "num_tasks.*task_names"),
        (dict(num_shared_experts=3, shared_experts=[keras.layers.Dense(2)], num_tasks=2),
         r"num_shared_experts.*3.*shared_experts.*\(1\)"),
        (dict(shared_experts=[], num_tasks=2), r"shared_experts.*non-empty.*\[\]"),
        (dict(shared_experts=["dense"], num_tasks=2), r"shared_experts\[0\].*str"),
        (dict(task_experts=[[keras.layers.Dense(2)]], num_tasks=2), r"list of 2 lists.*one per task"),
        (dict(task_experts=[[keras.layers.Dense(2)], [keras.layers.Dense(2), keras.layers.Dense(2)]], num_tasks=2),
         r"same number of experts.*\[1, 2\]"),
        (dict(num_task_experts=2, task_experts=[[keras.layers.Dense(2)], [keras.layers.Dense(2)]], num_tasks=2),
         r"num_task_experts.*2.*\(1\)"),
    ],
)
def test_bad_cgc_arguments_raise_value_error_naming_them(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CGCLayer(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(num_levels=0), "num_levels.*0"),
        (dict(num_levels=2.0), r"num_levels.*2\.0"),
        (dict(num_levels=2, num_shared_experts=-2), "num_shared_experts.*-2"),
        (dict(num_levels=2, seed=-1), "seed.*-1"),
    ],
)
def test_bad_ple_arguments_raise_value_error_naming_them(kwargs, match):
    base = dict(num_shared_experts=2, num_task_experts=1, expert_units=4, num_tasks=2)
    with pytest.raises(ValueError, match=match):
        PLELayer(**{**base, **kwargs})


def test_wrong_inputs_raise_value_error_naming_them():
    layer = CGCLayer(2, 1, 3, num_tasks=2)
    with pytest.raises(ValueError, match=r"one tensor \(first level\) or a list of 3 tensors.*received a list of 2"):
        layer([tf.ones((4, 5)), tf.ones((4, 5))])
    with pytest.raises(ValueError, match=r"`inputs\[1\]` of rank 2.*\(4, 5, 1\)"):
        CGCLayer(2, 1, 3, num_tasks=2)([tf.ones((4, 5)), tf.ones((4, 5, 1)), tf.ones((4, 5))])
    with pytest.raises(ValueError, match=r"`inputs` of rank 2.*\(4,\)"):
        PLELayer(2, 2, 1, 3, num_tasks=2)(tf.ones((4,)))
    with pytest.raises(ValueError, match=r"`gate_inputs` batch size 3 differs from `inputs` batch size 4"):
        CGCLayer(2, 1, 3, num_tasks=2)(tf.ones((4, 5)), gate_inputs=tf.ones((3, 2)))
    with pytest.raises(ValueError, match=r"`gate_inputs` batch size 3 differs from `inputs` batch size 4"):
        PLELayer(2, 2, 1, 3, num_tasks=2)(tf.ones((4, 5)), gate_inputs=tf.ones((3, 2)))
    with pytest.raises(ValueError, match="task and shared experts must output the same width"):
        CGCLayer(shared_experts=[keras.layers.Dense(3)], task_experts=[[keras.layers.Dense(2)]], num_tasks=1)(
            tf.ones((2, 4)))
    # A batch mismatch only known at run time still fails, naming gate_inputs: every time, not
    # only when the graph happens to run the check before the gates and the mixture.
    for layer in (CGCLayer(2, 1, 3, num_tasks=2), PLELayer(2, 2, 1, 3, num_tasks=2)):
        layer(tf.ones((4, 5)), gate_inputs=tf.ones((4, 2)))
        fn = tf.function(lambda a, b, layer=layer: layer(a, gate_inputs=b),
                         input_signature=[tf.TensorSpec((None, 5)), tf.TensorSpec((None, 2))])
        for _ in range(200):
            with pytest.raises(tf.errors.InvalidArgumentError, match="gate_inputs"):
                fn(tf.ones((4, 5)), tf.ones((3, 2)))


def test_public_api():
    assert keras_mmoe.CGCLayer is CGCLayer and keras_mmoe.PLELayer is PLELayer
    assert keras_mmoe.layers.CGCLayer is CGCLayer and keras_mmoe.layers.PLELayer is PLELayer
    assert {"CGCLayer", "PLELayer"} <= set(keras_mmoe.__all__)


# --------------------------------------------------------------------------- builders

TASKS = {"click": "binary", "watch": "regression"}
SMALL = dict(num_shared_experts=2, num_task_experts=1, expert_units=4, tower_units=(4,))


@pytest.mark.parametrize("kind", ["cgc", "ple"])
def test_builders_give_dict_outputs_by_task_and_the_towers_gate_weights(kind, rng):
    inputs = {"a": keras.Input((3,), name="a"), "b": keras.Input((2,), name="b")}
    model = BUILDERS[kind](inputs, TASKS, return_gate_weights=True, seed=1, **SMALL)
    x = {"a": rng.normal(size=(10, 3)).astype("float32"), "b": rng.normal(size=(10, 2)).astype("float32")}
    out = model(x)
    assert sorted(out) == ["click", "gate_weights", "watch"]
    assert ((out["click"].numpy() > 0) & (out["click"].numpy() < 1)).all() and out["watch"].shape == (10, 1)
    layer = model.get_layer(kind)
    assert isinstance(layer, CGCLayer if kind == "cgc" else PLELayer) and layer.task_names == list(TASKS)
    # `gate_weights` is (batch, tasks, own + shared experts): the task gates that feed the towers.
    features = np.concatenate([x["a"], x["b"]], axis=1)
    weights = layer.gate_weights(tf.constant(features))
    last = "tasks" if kind == "cgc" else f"level_{layer.num_levels - 1}_tasks"
    assert out["gate_weights"].shape == (10, 2, 3) and out["gate_weights"].dtype == tf.float32
    np.testing.assert_allclose(out["gate_weights"].numpy(), weights[last].numpy(), rtol=1e-5, atol=1e-6)
    assert "gate_weights" not in BUILDERS[kind](inputs, TASKS, **SMALL).output


def test_ple_builder_levels_and_gate_features(rng):
    features = keras.Input((6,), name="features")
    context = keras.Input((2,), name="context")
    model = build_ple({"features": features, "context": context}, TASKS, features=features, gate_features=context,
                      num_levels=3, gate_use_bias=False, **SMALL)
    layer = model.get_layer("ple")
    assert layer.num_levels == 3 and len(layer.levels) == 3
    assert all(g.logits_layer.kernel.shape[0] == 2 and not g.logits_layer.use_bias
               for level in layer.levels for g in level.gates)
    # The parameter formula (used to match budgets) holds for other settings than the defaults.
    assert build_cgc(6, TASKS, **SMALL).count_params() == count_params_formula("cgc", 6, 2, **SMALL)
    sized = dict(SMALL, num_levels=3, gate_use_bias=False, expert_units=(5, 4))
    assert build_ple(6, TASKS, **sized).count_params() == count_params_formula("ple", 6, 2, **sized)
    with pytest.raises(ValueError, match="build_cgc builds one level.*num_levels=2"):
        build_cgc(6, TASKS, num_levels=2)


def _raw_feature_model(kind, seed=0):
    """Raw features in (a float vector and a string looked up inside the model), task outputs out."""
    keras.utils.set_random_seed(seed)
    numeric = keras.Input((3,), name="numeric")
    city = keras.Input((1,), dtype="string", name="city")
    city_vec = keras.layers.StringLookup(vocabulary=["paris", "lima", "oslo"], output_mode="one_hot",
                                         name="city_lookup")(city)
    encoded = keras.layers.Concatenate(name="encoded")([numeric, city_vec])
    return BUILDERS[kind]({"numeric": numeric, "city": city}, TASKS, features=encoded, expert_dropout_rate=0.5,
                          tower_dropout=0.5, seed=seed, **SMALL)


def _raw_batch(n, seed):
    r = np.random.default_rng(seed)
    cities = np.array([b"paris", b"lima", b"oslo", b"atlantis"], dtype=object)  # the last one unseen
    return {"numeric": r.normal(size=(n, 3)).astype("float32"), "city": r.choice(cities, size=(n, 1))}


def test_cgc_and_ple_export_for_serving_in_a_fresh_process(tmp_path):
    from keras_mmoe.serving import export_for_serving, make_examples
    from serving_models import predict, verify_in_subprocess

    cases, expected = [], {}
    batches = {"b1": _raw_batch(1, 1), "b300": _raw_batch(300, 2)}
    for kind in ("cgc", "ple"):
        model = _raw_feature_model(kind)
        _perturb(model, np.random.default_rng(3))
        path = export_for_serving(model, str(tmp_path / kind))
        cases.append({"key": kind, "path": path,
                      "batches": {b: {"raw": v, "examples": make_examples(v)} for b, v in batches.items()}})
        expected[kind] = {b: predict(model, v) for b, v in batches.items()}
        trained = predict(model, batches["b300"], training=True)
        assert not np.allclose(trained["watch"], expected[kind]["b300"]["watch"], atol=1e-3)  # dropout is on in training
    work = tmp_path / "verify"
    work.mkdir()
    results, messages = verify_in_subprocess(cases, str(work))
    assert messages["keras_mmoe_imported"] is False
    checked = 0
    for kind in ("cgc", "ple"):
        assert messages[f"{kind}/unregistered"] == []
        for loader in ("tf2", "tf1"):
            for signature in ("serving_default", "predict_examples"):
                for batch, outputs in expected[kind].items():
                    prefix = f"{kind}/{loader}/{signature}/{batch}/"
                    assert sorted(k[len(prefix):] for k in results if k.startswith(prefix)) == sorted(TASKS)
                    for name, value in outputs.items():
                        np.testing.assert_allclose(results[prefix + name], value, atol=1e-5, rtol=0, err_msg=prefix)
                        checked += 1
    assert checked == 2 * 2 * 2 * 2 * 2  # models x loaders x signatures x batches x tasks
