"""Gate diagnostics: statistics against hand computations, the probe against a NumPy
reference, the callback's History keys and TensorBoard events, and the plots."""

import glob
import math
import os
import struct
import sys

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe._keras import keras
from keras_mmoe.diagnostics import (
    GateDiagnostics,
    GateReport,
    build_gate_probe,
    diagnose,
    find_mmoe_layers,
    gate_statistics,
    gate_weights_from_model,
    plot_gate_heatmap,
    plot_utilization_over_epochs,
)
from keras_mmoe.layers import MMoELayer
from keras_mmoe.layers.gating import record_call
from keras_mmoe.models import build_mmoe, build_omoe, compile_kwargs

LOG2 = math.log(2.0)


# ---------------------------------------------------------------- statistics on hand-built gates


def hand_built():
    """3 examples, 2 tasks, 2 experts, with hand-computed statistics below."""
    return np.array(
        [
            [[0.5, 0.5], [1.0, 0.0]],
            [[1.0, 0.0], [1.0, 0.0]],
            [[0.0, 1.0], [0.95, 0.05]],
        ]
    )


def test_statistics_match_hand_computation():
    report = gate_statistics(hand_built(), task_names=["click", "buy"])
    click, buy = report["click"], report["buy"]
    # click: rows (.5,.5), (1,0), (0,1)
    np.testing.assert_allclose(click.utilization, [0.5, 0.5])
    assert click.entropy == pytest.approx(LOG2 / 3)  # H = log2, 0, 0
    assert click.utilization_entropy == pytest.approx(LOG2)
    assert click.effective_experts == pytest.approx(2.0)
    assert click.effective_experts_per_example == pytest.approx(math.exp(LOG2 / 3))
    assert click.max_weight_fraction == pytest.approx(2 / 3)  # rows 2 and 3 have a weight of 1 > 0.9
    assert click.polarized  # 2/3 > 0.5 of examples dominated by one expert
    assert click.unused_experts == ()
    # buy: rows (1,0), (1,0), (.95,.05)
    np.testing.assert_allclose(buy.utilization, [2.95 / 3, 0.05 / 3])
    h3 = -(0.95 * math.log(0.95) + 0.05 * math.log(0.05))
    assert buy.entropy == pytest.approx(h3 / 3)
    u = np.array([2.95 / 3, 0.05 / 3])
    assert buy.utilization_entropy == pytest.approx(-(u * np.log(u)).sum())
    assert buy.effective_experts == pytest.approx(math.exp(-(u * np.log(u)).sum()))
    assert buy.max_weight_fraction == pytest.approx(1.0)
    assert buy.polarized
    assert buy.top_expert == 0
    # unused threshold 1 / (10 * 2) = 0.05: expert 1 (0.0167) is unused by buy, but not by click.
    assert report.unused_threshold == pytest.approx(0.05)
    assert buy.unused_experts == (1,)
    assert report.dead_experts == []
    np.testing.assert_allclose(report.utilization, [[0.5, 0.5], [2.95 / 3, 0.05 / 3]])


def test_uniform_one_hot_and_hard_balanced_routing():
    n, e = 8, 4
    uniform = np.full((n, 1, e), 1.0 / e)
    one_hot = np.zeros((n, 1, e))
    one_hot[:, 0, 2] = 1.0
    balanced_hard = np.zeros((n, 1, e))
    balanced_hard[np.arange(n), 0, np.arange(n) % e] = 1.0
    w = np.concatenate([uniform, one_hot, balanced_hard], axis=1)
    report = gate_statistics(w, ["uniform", "one_hot", "hard"])

    s = report["uniform"]
    assert s.entropy == pytest.approx(math.log(e)) and s.effective_experts == pytest.approx(e)
    assert s.max_weight_fraction == 0.0 and not s.polarized and s.verdict == "ok"

    s = report["one_hot"]
    assert s.entropy == pytest.approx(0.0) and s.effective_experts == pytest.approx(1.0)
    assert s.unused_experts == (0, 1, 3) and s.polarized and s.verdict == "polarized"

    # Each example on one expert, examples spread evenly: all experts used, none mixed.
    s = report["hard"]
    assert s.effective_experts == pytest.approx(e)
    assert s.effective_experts_per_example == pytest.approx(1.0)
    assert s.polarized  # every example puts weight 1 on one expert
    # Experts 0, 1, 3 are unused by one_hot but used by the others: no dead expert.
    assert report.dead_experts == []


def test_polarization_verdict_polarized_and_balanced(rng):
    n, e = 200, 4
    # Polarized: 80% of examples put 0.97 on expert 0.
    polarized = np.full((n, e), 0.01)
    polarized[:, 0] = 0.97
    polarized[160:] = rng.dirichlet(np.ones(e), size=40)
    # Balanced: softmax of small logits, every weight well below 0.9.
    logits = rng.normal(scale=0.3, size=(n, e))
    balanced = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    report = gate_statistics(np.stack([polarized, balanced], axis=1), ["polar", "balanced"])
    assert report["polar"].polarized and report["polar"].max_weight_fraction >= 0.8
    assert not report["balanced"].polarized and report["balanced"].max_weight_fraction == 0.0
    assert report.polarized_tasks == ["polar"] and report.any_polarized
    assert report["balanced"].effective_experts > 3.9
    # The rule is "more than polarized_fraction": exactly half dominated is not polarized.
    half = np.tile(np.array([[1.0, 0.0]]), (4, 1))
    half[2:] = [0.5, 0.5]
    s = gate_statistics(half[:, None, :])["task_0"]
    assert s.max_weight_fraction == 0.5 and not s.polarized
    assert gate_statistics(half[:, None, :], polarized_fraction=0.4)["task_0"].polarized
    # And "more than polarization_threshold": weight exactly at the threshold does not count.
    at = np.tile(np.array([[0.9, 0.1]]), (4, 1))[:, None, :]
    assert gate_statistics(at)["task_0"].max_weight_fraction == 0.0
    assert gate_statistics(at, polarization_threshold=0.85)["task_0"].polarized


def test_dead_experts_and_custom_unused_threshold():
    w = np.zeros((4, 2, 3))
    w[:, :, 0] = 0.7
    w[:, :, 1] = 0.29
    w[:, :, 2] = 0.01  # below 1/30 for both tasks
    report = gate_statistics(w)
    assert report.dead_experts == [2]
    assert report["task_0"].verdict == "unused experts"
    assert gate_statistics(w, unused_threshold=0.005).dead_experts == []
    assert gate_statistics(w, unused_threshold=0.5).dead_experts == [1, 2]


def test_statistics_validate_their_input():
    cases = [
        (np.full((4, 3), 1 / 3), {}, "examples, tasks, experts"),
        (np.zeros((0, 1, 2)), {}, "empty"),
        (np.full((2, 1, 2), 0.4), {}, "sum to 1"),
        (np.array([[[1.5, -0.5]]]), {}, "non-negative"),
        (np.array([[[np.nan, 1.0]]]), {}, "NaN"),
        (np.full((2, 2, 2), 0.5), {"task_names": ["a"]}, "task_names"),
        (np.full((2, 1, 2), 0.5), {"polarization_threshold": 1.5}, "polarization_threshold"),
        (np.full((2, 1, 2), 0.5), {"polarized_fraction": -0.1}, "polarized_fraction"),
    ]
    for weights, kwargs, match in cases:
        with pytest.raises(ValueError, match=match):
            gate_statistics(weights, **kwargs)


def test_report_text_dict_and_logs():
    report = gate_statistics(hand_built(), ["click", "buy"], layer_name="mmoe")
    text = str(report)
    assert text == report.to_markdown()
    assert "| click |" in text and "| buy |" in text and "polarized" in text and "`mmoe`" in text
    assert "more than 0.5 of examples" in text
    d = report.to_dict()
    assert d["tasks"]["buy"]["unused_experts"] == [1] and d["tasks"]["click"]["verdict"] == "polarized"
    logs = report.to_logs()
    assert logs["gate/click/entropy"] == pytest.approx(LOG2 / 3)
    assert logs["gate/buy/utilization_1"] == pytest.approx(0.05 / 3)
    assert logs["gate/buy/polarized"] == 1.0 and logs["gate/buy/num_unused_experts"] == 1.0
    assert len(logs) == 2 * (7 + 2)
    with pytest.raises(KeyError, match="click"):
        report["nope"]


# ---------------------------------------------------------------- gate weights from a model


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def _reference_gates(layer, x_gate):
    """NumPy gate weights (examples, tasks, experts) of linear gates on ``x_gate``."""
    per_gate = []
    for gate in layer.gates:
        kernel, bias = (np.asarray(v) for v in gate.logits_layer.weights)
        per_gate.append(_softmax((x_gate @ kernel + bias) / gate.temperature))
    w = np.stack(per_gate, axis=1)
    return np.broadcast_to(w, (len(x_gate), layer.num_tasks, layer.num_experts)) if layer.shared_gate else w


def test_gate_weights_from_model_match_numpy_and_gate_output(rng):
    x = rng.normal(size=(12, 5)).astype("float32")
    plain = build_mmoe(5, ["click", "buy"], num_experts=3, expert_units=4, seed=3, expert_dropout_rate=0.5)
    w = gate_weights_from_model(plain, {"features": x})
    assert w.shape == (12, 2, 3)
    # Inference mode: expert dropout (rate 0.5) is off, so the weights are the plain softmax.
    np.testing.assert_allclose(w, _reference_gates(plain.get_layer("mmoe"), x), atol=1e-5)

    exposed = build_mmoe(5, ["click", "buy"], num_experts=3, expert_units=4, seed=3, return_gate_weights=True)
    ds = tf.data.Dataset.from_tensor_slices(({"features": x}, {"click": np.ones(12), "buy": np.ones(12)})).batch(5)
    w = gate_weights_from_model(exposed, ds)
    np.testing.assert_allclose(w, exposed.predict({"features": x}, verbose=0)["gate_weights"], atol=1e-6)
    assert gate_weights_from_model(exposed, ds, steps=2).shape == (10, 2, 3)
    # The probe is built once per model and layer, not once per call.
    probe, layer, path = build_gate_probe(exposed)
    assert build_gate_probe(exposed)[0] is probe and path == "mmoe" and layer is exposed.get_layer("mmoe")


def test_shared_gate_and_gate_inputs(rng):
    x = rng.normal(size=(6, 4)).astype("float32")
    omoe = build_omoe(4, ["a", "b", "c"], num_experts=2, expert_units=3, seed=1)
    w = gate_weights_from_model(omoe, {"features": x})
    assert w.shape == (6, 3, 2)
    np.testing.assert_allclose(w[:, 0], w[:, 2])
    np.testing.assert_allclose(w, _reference_gates(omoe.get_layer("omoe"), x), atol=1e-5)

    inputs = {"x": keras.Input((4,), name="x"), "g": keras.Input((2,), name="g")}
    model = build_mmoe(inputs, ["a", "b"], features=inputs["x"], gate_features=inputs["g"],
                       num_experts=3, expert_units=3, seed=2)
    g = rng.normal(size=(6, 2)).astype("float32")
    w = gate_weights_from_model(model, {"x": x, "g": g})
    np.testing.assert_allclose(w, _reference_gates(model.get_layer("mmoe"), g), atol=1e-5)


def test_nested_model_and_layer_selection(rng):
    inner_in = keras.Input((3,), name="inner_in")
    a, b = MMoELayer(2, 3, task_names=["a", "b"], seed=0, name="inner_mmoe")(inner_in)
    inner = keras.Model(inner_in, [a, b], name="inner")
    outer_in = keras.Input((5,), name="x")
    hidden = keras.layers.Dense(3, name="bottom")(outer_in)
    ya, yb = inner(hidden)
    c, d = MMoELayer(4, 2, task_names=["c", "d"], seed=1, name="top_mmoe")(outer_in)
    outer = keras.Model(outer_in, [ya, yb, c, d], name="outer")

    assert [p for p, _ in find_mmoe_layers(outer)] == ["inner/inner_mmoe", "top_mmoe"]
    with pytest.raises(ValueError, match="choose one with `layer=`"):
        gate_weights_from_model(outer, rng.normal(size=(2, 5)))
    with pytest.raises(ValueError, match=r"No gated layer \(MMoELayer, CGCLayer, PLELayer\) named 'zzz'"):
        gate_weights_from_model(outer, rng.normal(size=(2, 5)), layer="zzz")

    x = rng.normal(size=(7, 5)).astype("float32")
    w = gate_weights_from_model(outer, x, layer="inner_mmoe")
    kernel, bias = (np.asarray(v) for v in outer.get_layer("bottom").weights)
    np.testing.assert_allclose(w, _reference_gates(inner.get_layer("inner_mmoe"), x @ kernel + bias), atol=1e-5)
    report = diagnose(outer, x, layer="top_mmoe")
    assert report.task_names == ["c", "d"] and report.num_experts == 4 and report.layer_name == "top_mmoe"
    np.testing.assert_allclose(report.utilization, _reference_gates(outer.get_layer("top_mmoe"), x).mean(0),
                               atol=1e-5)

    no_mmoe = keras.Model(outer_in, hidden)
    with pytest.raises(ValueError, match="holds no gated layer"):
        build_gate_probe(no_mmoe)


def test_mmoe_layer_gate_weights_match_numpy(rng):
    x = rng.normal(size=(6, 4)).astype("float32")
    g = rng.normal(size=(6, 2)).astype("float32")
    for shared in (False, True):
        layer = MMoELayer(3, 5, task_names=["a", "b", "c"], shared_gate=shared, expert_dropout_rate=0.5, seed=4)
        with pytest.raises(ValueError, match="not built yet"):
            layer.gate_weights(x)
        layer(x, gate_inputs=g)
        w = np.asarray(layer.gate_weights(x, gate_inputs=g))  # inference: expert dropout (0.5) is off
        assert w.shape == (6, 3, 3)
        np.testing.assert_allclose(w, _reference_gates(layer, g), atol=1e-6)
        np.testing.assert_allclose(np.asarray(layer.gate_weights(x, g)), w)
    layer = MMoELayer(2, 3, num_tasks=2, seed=0)
    layer(x)
    np.testing.assert_allclose(np.asarray(layer.gate_weights(x)), _reference_gates(layer, x), atol=1e-6)
    with pytest.raises(ValueError, match="rank 2"):
        layer.gate_weights(x[:, :, None])


def test_gate_input_by_position_and_a_subclassed_model(rng):
    x = rng.normal(size=(5, 4)).astype("float32")
    g = rng.normal(size=(5, 2)).astype("float32")
    xi, gi = keras.Input((4,), name="x"), keras.Input((2,), name="g")
    layer = MMoELayer(3, 3, task_names=["a", "b"], seed=5, name="mmoe")
    a, b = layer(xi, gi)  # gate input by position
    model = keras.Model([xi, gi], [keras.layers.Dense(1, name="a")(a), keras.layers.Dense(1, name="b")(b)])
    np.testing.assert_allclose(gate_weights_from_model(model, [x, g]), _reference_gates(layer, g), atol=1e-5)

    class Ranker(keras.Model):  # a subclassed model: no graph to walk, the layer is found while it runs
        def __init__(self):
            super().__init__()
            self.bottom = keras.layers.Dense(4, name="bottom")
            self.mixture = MMoELayer(2, 3, task_names=["a", "b"], seed=6, name="mixture")

        def call(self, inputs):
            return self.mixture(self.bottom(inputs), gate_inputs=inputs)

    ranker = Ranker()
    ranker(x)
    w = gate_weights_from_model(ranker, x, batch_size=2)
    np.testing.assert_allclose(w, _reference_gates(ranker.mixture, x), atol=1e-5)
    assert diagnose(ranker, x).layer_name == "mixture"


class _DuckGate(keras.layers.Layer):
    """A stand-in for another gated layer (PLE/CGC): a ``gate_weights`` method and :func:`record_call`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.task_names = ["p", "q"]
        self.num_tasks = 2

    def __call__(self, inputs, *args, **kwargs):
        record_call(self, (inputs,) + args, kwargs)
        return super().__call__(inputs, *args, **kwargs)

    def gate_weights(self, inputs):
        z = tf.stack([inputs[:, :3], -inputs[:, :3]], axis=1)  # (batch, 2 tasks, 3 experts)
        return tf.nn.softmax(z, axis=-1)

    def call(self, inputs):
        return [inputs, inputs]


def test_any_layer_with_gate_weights_and_record_call_is_read_the_same_way(rng):
    x = rng.normal(size=(4, 3)).astype("float32")
    inputs = keras.Input((3,), name="x")
    p, q = _DuckGate(name="cgc")(keras.layers.Dense(3, name="bottom")(inputs))
    model = keras.Model(inputs, {"p": keras.layers.Dense(1, name="p")(p), "q": keras.layers.Dense(1, name="q")(q)})
    assert [path for path, _ in find_mmoe_layers(model)] == ["cgc"]
    kernel, bias = (np.asarray(v) for v in model.get_layer("bottom").weights)
    h = x @ kernel + bias
    np.testing.assert_allclose(gate_weights_from_model(model, x), np.stack([_softmax(h), _softmax(-h)], axis=1),
                               atol=1e-5)


def test_no_private_keras_graph_api_is_used():
    """Serving, diagnostics and the gating helper read gate weights with public Keras APIs only."""
    import keras_mmoe
    root = os.path.dirname(keras_mmoe.__file__)
    files = glob.glob(os.path.join(root, "serving", "*.py")) + glob.glob(os.path.join(root, "diagnostics", "*.py"))
    files.append(os.path.join(root, "layers", "gating.py"))
    private = ("_inbound_nodes", "_outbound_nodes", "_network_nodes", "._nodes", "_keras_history", "_ib-",
               "node.arguments", ".call_args", ".call_kwargs")
    for path in files:
        text = open(path, encoding="utf-8").read()
        for name in private:
            assert name not in text, (path, name)


# ---------------------------------------------------------------- callback


def _tiny_fit_setup(rng, n=32):
    tasks = ["click", "buy"]
    model = build_mmoe(4, tasks, num_experts=3, expert_units=4, tower_units=(), seed=0)
    model.compile(optimizer="adam", **compile_kwargs(tasks))
    x = rng.normal(size=(n, 4)).astype("float32")
    y = {t: rng.integers(0, 2, size=(n, 1)).astype("float32") for t in tasks}
    train = tf.data.Dataset.from_tensor_slices(({"features": x}, y)).batch(16)
    held_out = tf.data.Dataset.from_tensor_slices(({"features": x[:10]}, {t: v[:10] for t, v in y.items()})).batch(5)
    return model, train, held_out, x


def _read_events(log_dir):
    """``{(tag, step): (plugin name, value)}`` from the TensorBoard event files in ``log_dir``."""
    found = {}
    for path in glob.glob(f"{log_dir}/events.out.tfevents.*"):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                found[(value.tag, event.step)] = (value.metadata.plugin_data.plugin_name,
                                                  tf.make_ndarray(value.tensor))
    return found


def test_callback_records_history_and_tensorboard(rng, tmp_path, capsys):
    model, train, held_out, x = _tiny_fit_setup(rng)
    log_dir = tmp_path / "gates"
    callback = GateDiagnostics(held_out, log_dir=log_dir)
    # A second callback on the same fit: every other epoch, one batch, its own key prefix.
    sparse = GateDiagnostics(held_out, every=2, steps=1, prefix="g", verbose=True)
    history = model.fit(train, epochs=2, callbacks=[callback, sparse], verbose=0)

    keys = [f"gate/{t}/{s}" for t in ("click", "buy") for s in (
        "entropy", "utilization_entropy", "effective_experts", "effective_experts_per_example",
        "max_weight_fraction", "num_unused_experts", "polarized", "utilization_0", "utilization_1",
        "utilization_2")]
    for key in keys:
        assert key in history.history, (key, sorted(history.history))
        assert len(history.history[key]) == 2
    assert set(history.history["gate/click/polarized"]) <= {0.0, 1.0}
    util = [history.history[f"gate/buy/utilization_{i}"][-1] for i in range(3)]
    assert sum(util) == pytest.approx(1.0, abs=1e-5)
    # The last epoch's record equals a fresh diagnosis of the trained model on the same data.
    final = diagnose(model, held_out)
    np.testing.assert_allclose(util, final["buy"].utilization, atol=1e-6)
    assert history.history["gate/click/entropy"][-1] == pytest.approx(final["click"].entropy, abs=1e-6)

    assert callback.history["epoch"] == [0, 1]
    assert np.stack(callback.history["utilization"]).shape == (2, 2, 3)
    assert np.stack(callback.history["entropy"]).shape == (2, 2)
    assert len(callback.reports) == 2 and callback.task_names == ["click", "buy"]

    events = _read_events(log_dir)
    for key in keys:
        for epoch in (0, 1):
            assert (key, epoch) in events, (key, sorted(events))
            plugin, value = events[(key, epoch)]
            assert plugin == "scalars"
            assert float(value) == pytest.approx(history.history[key][epoch], rel=1e-6, abs=1e-7)
    plugin, text = events[("gate/report", 1)]
    assert plugin == "text" and b"| buy |" in text.item()

    assert sparse.history["epoch"] == [0]
    assert len(history.history["g/click/entropy"]) == 1 and len(history.history["loss"]) == 2
    assert sparse.reports[0].num_examples == 5  # steps=1: one batch of 5
    printed = capsys.readouterr().out
    assert printed.count("Gate diagnostics, epoch") == 1 and "over 5 examples" in printed


def test_callback_arguments_are_validated():
    for every in (0, 1.5, True):
        with pytest.raises(ValueError, match="every"):
            GateDiagnostics(None, every=every)
    with pytest.raises(ValueError, match="prefix"):
        GateDiagnostics(None, prefix="")

# ---------------------------------------------------------------- plots


def _assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 50 and height > 50 and len(data) > 1000


def test_heatmap_shows_the_utilization_matrix(tmp_path):
    report = gate_statistics(hand_built(), ["click", "buy"])
    fig = plot_gate_heatmap(report)
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.images[0].get_array(), report.utilization)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["click", "buy"]
    assert [t.get_text() for t in ax.texts] == ["0.50", "0.50", "0.98", "0.02"]
    fig.savefig(tmp_path / "heatmap.png")
    _assert_png(tmp_path / "heatmap.png")
    with pytest.raises(ValueError, match="gates, experts"):
        plot_gate_heatmap(np.ones(3))


def test_utilization_over_epochs_lines(tmp_path):
    reports = [gate_statistics(hand_built(), ["click", "buy"]),
               gate_statistics(hand_built()[::-1][:1], ["click", "buy"])]
    fig = plot_utilization_over_epochs(reports)
    assert len(fig.axes) == 2 and fig.axes[1].get_title() == "buy"
    for k, ax in enumerate(fig.axes):
        lines = ax.get_lines()
        assert len(lines) == 2
        for i, line in enumerate(lines):
            np.testing.assert_allclose(line.get_xdata(), [0, 1])
            np.testing.assert_allclose(line.get_ydata(), [r.utilization[k, i] for r in reports])
    fig.savefig(tmp_path / "epochs.png")
    _assert_png(tmp_path / "epochs.png")

    # A callback's history dict: x values are its recorded epochs.
    history = {"epoch": [0, 2, 4], "utilization": [np.array([[0.2, 0.8]])] * 3}
    fig = plot_utilization_over_epochs(history, tasks=["task_0"])
    np.testing.assert_allclose(fig.axes[0].get_lines()[1].get_xdata(), [0, 2, 4])
    np.testing.assert_allclose(fig.axes[0].get_lines()[1].get_ydata(), [0.8, 0.8, 0.8])


def test_plots_name_the_extra_when_matplotlib_is_missing(monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    report = gate_statistics(hand_built())
    with pytest.raises(ImportError, match=r"pip install keras-mmoe\[plots\]"):
        plot_gate_heatmap(report)
    with pytest.raises(ImportError, match=r"pip install keras-mmoe\[plots\]"):
        plot_utilization_over_epochs([report])
    assert isinstance(report, GateReport)


def test_probing_leaves_the_model_savable(rng, tmp_path):
    model = build_mmoe(4, ["a", "b"], num_experts=3, expert_units=4, seed=1)
    x = {"features": rng.normal(size=(6, 4)).astype("float32")}
    before = diagnose(model, x)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    expected, actual = model.predict(x, verbose=0), loaded.predict(x, verbose=0)
    for task in ("a", "b"):
        np.testing.assert_allclose(actual[task], expected[task], atol=1e-6)
    np.testing.assert_allclose(diagnose(loaded, x).utilization, before.utilization, atol=1e-6)


def test_mixed_precision_gates(rng):
    keras.mixed_precision.set_global_policy("mixed_float16")
    model = build_mmoe(4, ["a", "b"], num_experts=3, expert_units=4, seed=1)
    x = {"features": rng.normal(size=(6, 4)).astype("float32")}
    w = gate_weights_from_model(model, x)
    assert w.dtype == np.float32 and w.shape == (6, 2, 3)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=5e-3)
    assert diagnose(model, x)["a"].effective_experts > 1.0
