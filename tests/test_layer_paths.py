"""Every compute path of MMoELayer against NumPy: eager, graph, XLA, float32 and mixed_bfloat16.

Forward outputs are checked against the NumPy reference of test_layers.py; gradients against
central finite differences of a float64 NumPy forward pass. bfloat16 keeps 8 significant bits
(relative rounding 2^-9 per operation), so its tolerances are a few percent of the output's
scale: far below what a wrong mixture, a swapped gate or a missing bias would give.
"""

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe import ExpertBank, MMoELayer
from keras_mmoe._keras import IS_KERAS_3, keras
from keras_mmoe.layers import experts as experts_module
from keras_mmoe.models import build_mmoe
from test_layers import np_gate, np_mmoe

CASES = {
    "one_layer": dict(num_experts=5, expert_units=6, num_tasks=2),
    "mlp_experts_batched": dict(num_experts=4, expert_units=(7, 5, 3), task_names=["click", "buy"],
                                expert_implementation="batched"),
    "mlp_experts_per_expert": dict(num_experts=4, expert_units=(7, 5, 3), task_names=["click", "buy"],
                                   expert_implementation="per_expert"),
    # Every layer per expert, the first too (the path of wide first layers; the minimum width
    # is lowered for this case, see _case below).
    "mlp_experts_all_per_expert": dict(num_experts=4, expert_units=(7, 5, 3), num_tasks=2,
                                       expert_implementation="per_expert"),
    "shared_gate": dict(num_experts=3, expert_units=(6, 4), num_tasks=3, shared_gate=True,
                        expert_implementation="per_expert"),
    "gates_without_bias": dict(num_experts=4, expert_units=(6, 4), num_tasks=2, gate_use_bias=False),
    "gate_mlp_temperature": dict(num_experts=3, expert_units=5, num_tasks=2, gate_hidden_units=(4,),
                                 gate_temperature=0.5),
    "no_bias": dict(num_experts=3, expert_units=(4, 4), num_tasks=2, use_bias=False),
}
FIRST_LAYER_PER_EXPERT = {"mlp_experts_all_per_expert"}
MODES = ("eager", "graph", "xla")


def _case(case, monkeypatch):
    """The layer arguments of ``case``; for the all-per-expert case, lowers the first-layer size
    threshold so that the small test shapes take that path."""
    if case in FIRST_LAYER_PER_EXPERT:
        monkeypatch.setattr(experts_module, "PER_EXPERT_FIRST_LAYER_MIN_UNITS", 1)
    return CASES[case]


def _check_first_layer_path(layer, case):
    assert layer.expert_bank.first_layer_per_expert == (case in FIRST_LAYER_PER_EXPERT)
POLICIES = ("float32", "mixed_bfloat16")


def _runner(mode, fn):
    if mode == "eager":
        return fn
    return tf.function(fn, jit_compile=(mode == "xla"))


def _tolerance(policy, ref):
    scale = float(np.abs(ref).max())
    return dict(rtol=1e-5, atol=1e-5 * max(scale, 1.0)) if policy == "float32" else dict(rtol=3e-2, atol=3e-2 * scale)


# --------------------------------------------------------------------------- forward


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_forward_matches_numpy_in_every_mode_and_precision(case, mode, policy, rng, monkeypatch):
    layer = MMoELayer(return_gate_weights=True, seed=7, dtype=policy, **_case(case, monkeypatch))
    x = rng.normal(size=(9, 8)).astype("float32")
    layer(x)  # build
    _check_first_layer_path(layer, case)
    outputs, gates = _runner(mode, lambda t: layer(t, training=False))(tf.constant(x))
    ref_outputs, ref_gates = np_mmoe(layer, x)
    expected = tf.float32 if policy == "float32" else tf.bfloat16
    assert gates.dtype == expected and all(o.dtype == expected for o in outputs)
    floating = [v for v in layer.weights if tf.as_dtype(v.dtype).is_floating]
    assert floating and all(tf.as_dtype(v.dtype) == tf.float32 for v in floating)  # variables stay float32
    for out, ref in zip(outputs, ref_outputs):
        np.testing.assert_allclose(out.numpy().astype("float64"), ref, **_tolerance(policy, ref))
    np.testing.assert_allclose(gates.numpy().astype("float64"), ref_gates, **_tolerance(policy, ref_gates))


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("mode", MODES)
def test_custom_experts_and_gate_inputs_match_numpy(mode, policy, rng):
    experts = [keras.layers.Dense(4, activation="tanh", dtype=policy, name=f"e{i}") for i in range(3)]
    layer = MMoELayer(experts=experts, num_tasks=2, return_gate_weights=True, seed=1, dtype=policy)
    x = rng.normal(size=(6, 5)).astype("float32")
    xg = rng.normal(size=(6, 3)).astype("float32")
    layer(x, gate_inputs=xg)
    outputs, gates = _runner(mode, lambda a, b: layer(a, gate_inputs=b))(tf.constant(x), tf.constant(xg))
    stacked = np.stack([np.tanh(x @ e.kernel.numpy() + e.bias.numpy()) for e in experts], axis=1)
    g = np.stack([np_gate(gate, xg) for gate in layer.gates], axis=1)
    np.testing.assert_allclose(gates.numpy().astype("float64"), g, **_tolerance(policy, g))
    for t, out in enumerate(outputs):
        ref = np.einsum("be,beu->bu", g[:, t], stacked)
        np.testing.assert_allclose(out.numpy().astype("float64"), ref, **_tolerance(policy, ref))


def test_expert_bank_alone_matches_per_expert_mlps(rng):
    bank = ExpertBank(num_experts=3, units=(5, 4), activation="elu", seed=2)
    x = rng.normal(size=(7, 6)).astype("float32")
    out = bank(x).numpy()
    assert out.shape == (7, 3, 4)
    k0, k1 = (k.numpy() for k in bank.kernels)
    b0, b1 = (b.numpy() for b in bank.biases)
    elu = lambda z: np.where(z > 0, z, np.expm1(np.minimum(z, 0)))  # noqa: E731
    for i in range(3):
        ref = elu(elu(x @ k0[:, i] + b0[i]) @ k1[i] + b1[i])
        np.testing.assert_allclose(out[:, i], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("units,num_experts,expected", [
    (16, 8, "batched"),              # one layer: nothing to choose
    ((16, 8), 4, "per_expert"),      # 128 kernel entries >= 32 * 4
    ((16, 8), 16, "batched"),        # 128 < 32 * 16
    ((256, 128), 32, "per_expert"),
    ((128, 64, 32), 64, "per_expert"),  # smallest deeper kernel 64 * 32 = 2048 >= 32 * 64
    ((128, 8, 32), 64, "batched"),
])
def test_auto_implementation_follows_the_measured_rule(units, num_experts, expected):
    assert ExpertBank(num_experts=num_experts, units=units).deeper_layers == expected
    assert ExpertBank(num_experts=num_experts, units=units, implementation="batched").deeper_layers == "batched"


@pytest.mark.parametrize("in_dim,units,num_experts,expected", [
    (499, (256, 128), 32, True),      # u_1 >= 64 and d = 499 <= 2 * 256
    (128, (256, 128), 16, True),      # PLE's second level at the large size
    (499, (128, 64, 32), 64, False),  # d = 499 > 2 * 128
    (256, (128, 64, 32), 16, True),   # d = 256 = 2 * 128
    (32, (64, 32), 4, True),
    (32, (32, 32), 4, False),         # u_1 < 64
    (499, (256, 2), 32, False),       # deeper layers batched (256 * 2 < 32 * 32): first layer one matmul
    (100, 256, 8, False),             # one layer: one matmul
])
def test_first_layer_per_expert_follows_the_measured_rule(in_dim, units, num_experts, expected):
    bank = ExpertBank(num_experts=num_experts, units=units)
    bank.build((None, in_dim))
    assert bank.first_layer_per_expert == expected


def test_first_layer_per_expert_at_its_real_size_matches_the_one_matmul_path(rng):
    # Above the threshold without lowering it: (256 inputs) x (256 units) per expert.
    x = rng.normal(size=(5, 256)).astype("float32")
    banks = [ExpertBank(num_experts=3, units=(256, 4), seed=4, implementation=impl) for impl in ("per_expert", "batched")]
    outs = [bank(x).numpy() for bank in banks]
    assert banks[0].first_layer_per_expert and not banks[1].first_layer_per_expert
    k0, k1 = (k.numpy().astype("float64") for k in banks[0].kernels)
    b0, b1 = (b.numpy().astype("float64") for b in banks[0].biases)
    for i in range(3):
        ref = np.maximum(np.maximum(x @ k0[:, i] + b0[i], 0) @ k1[i] + b1[i], 0)
        np.testing.assert_allclose(outs[0][:, i], ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-4)


def test_implementations_share_weights_and_results(rng):
    x = rng.normal(size=(16, 9)).astype("float32")
    banks = [ExpertBank(num_experts=5, units=(8, 6, 4), seed=3, implementation=impl)
             for impl in ("batched", "per_expert")]
    outs = [bank(x).numpy() for bank in banks]
    for a, b in zip(banks[0].weights, banks[1].weights):
        assert a.shape == b.shape
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    config = banks[1].get_config()
    assert config["implementation"] == "per_expert"
    assert ExpertBank.from_config(config).implementation == "per_expert"
    with pytest.raises(ValueError, match=r"`implementation`.*'fast'"):
        ExpertBank(num_experts=2, units=3, implementation="fast")


def test_per_expert_activation_is_applied_per_expert(rng):
    # A non-elementwise activation (softmax) must act over each expert's own units.
    bank = ExpertBank(num_experts=3, units=4, activation="softmax", seed=0)
    out = bank(rng.normal(size=(5, 6)).astype("float32")).numpy()
    np.testing.assert_allclose(out.sum(axis=-1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------- gradients


def _named_variables(layer):
    bank = layer.expert_bank
    named = {f"expert_kernel_{i}": k for i, k in enumerate(bank.kernels)}
    named.update({f"expert_bias_{i}": b for i, b in enumerate(bank.biases)})
    for g, gate in enumerate(layer.gates):
        for j, dense in enumerate(gate.hidden_layers + [gate.logits_layer]):
            named[f"gate_{g}_{j}_kernel"] = dense.kernel
            if dense.use_bias:
                named[f"gate_{g}_{j}_bias"] = dense.bias
    return named


def _np_loss(layer, arrays, x, r):
    """sum_t <output_t, r_t> of the MMoE forward pass in float64, with weights from ``arrays``."""
    bank = layer.expert_bank
    experts = []
    for i in range(bank.num_experts):
        h = x
        for j in range(len(bank.units)):
            w = arrays[f"expert_kernel_{j}"]
            h = h @ (w[:, i] if j == 0 else w[i])
            if bank.use_bias:
                h = h + arrays[f"expert_bias_{j}"][i]
            h = np.maximum(h, 0.0)
        experts.append(h)
    experts = np.stack(experts, axis=1)
    total = 0.0
    for t in range(layer.num_tasks):
        g_index = 0 if layer.shared_gate else t
        gate = layer.gates[g_index]
        h = x
        for j in range(len(gate.hidden_layers) + 1):
            h = h @ arrays[f"gate_{g_index}_{j}_kernel"]
            if gate.use_bias:
                h = h + arrays[f"gate_{g_index}_{j}_bias"]
            if j < len(gate.hidden_layers):
                h = np.maximum(h, 0.0)
        z = h / gate.temperature
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        g = z / z.sum(axis=-1, keepdims=True)
        total += float(np.sum(np.einsum("be,beu->bu", g, experts) * r[t]))
    return total


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "case", ["mlp_experts_batched", "mlp_experts_per_expert", "mlp_experts_all_per_expert", "shared_gate",
             "gates_without_bias", "gate_mlp_temperature"]
)
def test_gradients_match_finite_differences(case, mode, policy, rng, monkeypatch):
    # Random (not zero) biases: a row whose first-layer units are all dead would otherwise put
    # the next layer exactly on ReLU's kink, where finite differences are meaningless.
    layer = MMoELayer(seed=11, dtype=policy, bias_initializer=keras.initializers.RandomNormal(stddev=0.3, seed=5),
                      **_case(case, monkeypatch))
    x = rng.normal(size=(6, 8))
    layer(x.astype("float32"))
    _check_first_layer_path(layer, case)
    r = rng.normal(size=(layer.num_tasks, 6, layer.expert_bank.output_units))
    named = _named_variables(layer)
    names = sorted(named)

    def loss_and_grads(t):
        with tf.GradientTape() as tape:
            outs = layer(t, training=True)
            loss = tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32) * r[i].astype("float32")) for i, o in enumerate(outs)])
        return loss, tape.gradient(loss, [named[n] for n in names])

    loss, grads = _runner(mode, loss_and_grads)(tf.constant(x.astype("float32")))
    arrays = {n: named[n].numpy().astype("float64") for n in names}
    ref_loss = _np_loss(layer, arrays, x, r)
    rel = 1e-5 if policy == "float32" else 3e-2
    assert abs(float(loss) - ref_loss) <= rel * max(1.0, abs(ref_loss)) * 10
    eps = 1e-6
    for name, grad in zip(names, grads):
        grad = grad.numpy().astype("float64")
        assert grad.shape == arrays[name].shape
        numeric = np.zeros_like(grad)
        flat = numeric.reshape(-1)
        for k in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            plus, minus = dict(arrays), dict(arrays)
            plus[name] = arrays[name].copy().reshape(-1)
            minus[name] = arrays[name].copy().reshape(-1)
            plus[name][k] += eps
            minus[name][k] -= eps
            plus[name] = plus[name].reshape(grad.shape)
            minus[name] = minus[name].reshape(grad.shape)
            flat[k] = (_np_loss(layer, plus, x, r) - _np_loss(layer, minus, x, r)) / (2 * eps)
            scale = max(np.abs(grad).max(), 1e-3)
            assert abs(grad.reshape(-1)[k] - flat[k]) <= rel * scale * (1 if policy == "float32" else 2), (
                name, k, grad.reshape(-1)[k], flat[k]
            )


# --------------------------------------------------------------------------- gates without bias


def test_gate_use_bias_defaults_to_use_bias_and_round_trips():
    assert MMoELayer(2, 3, num_tasks=2).gate_use_bias is True
    assert MMoELayer(2, 3, num_tasks=2, use_bias=False).gate_use_bias is False
    layer = MMoELayer(2, 3, num_tasks=2, gate_use_bias=False)
    layer.build((None, 4))
    assert layer.expert_bank.use_bias and not any(g.logits_layer.use_bias for g in layer.gates)
    assert len(layer.trainable_weights) == 2 + 2  # expert kernel + bias, one kernel per gate
    config = layer.get_config()
    assert config["gate_use_bias"] is False
    assert MMoELayer.from_config(config).gate_use_bias is False
    # A config saved before the argument existed keeps the old behaviour (gates follow use_bias).
    del config["gate_use_bias"]
    assert MMoELayer.from_config(config).gate_use_bias is True


def test_weight_names_and_shapes_are_stable():
    # Checkpoints and .keras files of earlier versions must keep loading: the variables of
    # the layer are the same whatever the compute path.
    layer = MMoELayer(4, (6, 5), task_names=["a", "b"], dtype="mixed_bfloat16")
    layer.build((None, 3))
    shapes = {v.name.split("/")[-1].split(":")[0]: tuple(v.shape) for v in layer.expert_bank.weights}
    assert shapes == {"kernel_0": (3, 4, 6), "bias_0": (4, 6), "kernel_1": (4, 6, 5), "bias_1": (4, 5)}
    assert [tuple(g.logits_layer.kernel.shape) for g in layer.gates] == [(3, 4), (3, 4)]


# --------------------------------------------------------------------------- whole models


def test_build_mmoe_mixed_bfloat16_trains_with_xla_and_saves(tmp_path, rng):
    model = build_mmoe(8, {"a": "binary", "b": "regression"}, num_experts=3, expert_units=(6, 4),
                       tower_units=(5,), dtype="mixed_bfloat16", return_gate_weights=True, seed=0)
    mmoe = model.get_layer("mmoe")
    assert mmoe.dtype_policy.name == "mixed_bfloat16" and mmoe.compute_dtype == "bfloat16"
    assert model.get_layer("a_tower_0").compute_dtype == "bfloat16"
    assert model.get_layer("a").compute_dtype == "float32"  # outputs, so losses, in float32
    x = {"features": rng.normal(size=(64, 8)).astype("float32")}
    out = model(x)
    assert {k: v.dtype for k, v in out.items()} == {"a": tf.float32, "b": tf.float32, "gate_weights": tf.float32}
    y = {"a": rng.integers(0, 2, size=(64, 1)).astype("float32"), "b": rng.normal(size=(64, 1)).astype("float32")}
    losses = {"a": "binary_crossentropy", "b": "mse"}
    if IS_KERAS_3:
        losses["gate_weights"] = None
        y["gate_weights"] = np.zeros((64, 2, 3), "float32")
    model.compile(keras.optimizers.Adam(1e-2), losses, jit_compile=True)
    history = model.fit(x, y, epochs=3, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and history.history["loss"][-1] < history.history["loss"][0]
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("mmoe").dtype_policy.name == "mixed_bfloat16"
    a, b = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for key in ("a", "b"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_mixed_bfloat16_export_serves_float32_and_computes_in_bfloat16(tmp_path, rng):
    # What a bfloat16-trained model serves in, checked in a fresh process without keras_mmoe.
    from conftest import run_python
    from keras_mmoe.serving import export_for_serving

    model = build_mmoe(6, ["a", "b"], num_experts=3, expert_units=(8, 4), dtype="mixed_bfloat16", seed=0)
    x = rng.normal(size=(5, 6)).astype("float32")
    expected = model.predict({"features": x}, verbose=0)
    path = export_for_serving(model, str(tmp_path / "model"), version=1)
    np.save(tmp_path / "x.npy", x)
    proc = run_python(f"""
        import json, sys
        import numpy as np, tensorflow as tf
        fn = tf.saved_model.load({path!r}).signatures["serving_default"]
        out = fn(features=tf.constant(np.load({str(tmp_path / "x.npy")!r})))
        graph = fn.graph.as_graph_def()
        dtypes = {{a.type for f in graph.library.function for n in f.node_def for a in n.attr.values()}}
        print(json.dumps(dict(
            inputs={{k: v.dtype.name for k, v in fn.structured_input_signature[1].items()}},
            outputs={{k: v.dtype.name for k, v in out.items()}},
            values={{k: v.numpy().tolist() for k, v in out.items()}},
            bfloat16_inside=tf.bfloat16.as_datatype_enum in dtypes,
            imported_keras_mmoe="keras_mmoe" in sys.modules)))
    """)
    import json

    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["inputs"] == {"features": "float32"}
    assert report["outputs"] == {"a": "float32", "b": "float32"}
    assert report["bfloat16_inside"] and not report["imported_keras_mmoe"]
    for key in ("a", "b"):
        np.testing.assert_allclose(np.array(report["values"][key]), expected[key], rtol=0, atol=2e-3)
