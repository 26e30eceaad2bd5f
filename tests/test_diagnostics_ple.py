"""Gate diagnostics of CGC and PLE layers: every task gate (over its own and the shared experts)
and every shared gate (over all experts of its level), against a NumPy reference written
independently here; the model probe, the callback, the plots and `evaluate --gates` on them."""

import math

import numpy as np
import pytest
import tensorflow as tf

from keras_mmoe._keras import keras
from keras_mmoe.diagnostics import (
    GateDiagnostics,
    diagnose,
    find_mmoe_layers,
    gate_statistics,
    gate_weights_from_model,
    num_task_experts,
    plot_gate_heatmap,
    plot_utilization_over_epochs,
)
from keras_mmoe.layers import CGCLayer, PLELayer
from keras_mmoe.models import build_cgc, build_ple, compile_kwargs
from test_cgc_ple import np_cgc, np_ple
from test_diagnostics import _read_events

TASKS = ["click", "buy"]
# Layer order of the experts of one CGC level with 2 tasks, 2 own experts each and 3 shared.
EXPERTS = ["click_0", "click_1", "buy_0", "buy_1", "shared_0", "shared_1", "shared_2"]


# ---------------------------------------------------------------- an independent NumPy reference


def reference(w, polarization_threshold=0.9, polarized_fraction=0.5, unused_threshold=None):
    """Statistics of one gate's weights w (examples, experts), example by example."""
    n, e = w.shape

    def h(p):
        return -sum(float(x) * math.log(float(x)) for x in p if x > 0)

    u = np.array([sum(w[i, j] for i in range(n)) / n for j in range(e)])
    mean_h = sum(h(w[i]) for i in range(n)) / n
    dominated = sum(1 for i in range(n) if max(w[i]) > polarization_threshold) / n
    threshold = 1.0 / (10 * e) if unused_threshold is None else unused_threshold
    return {
        "utilization": u,
        "entropy": mean_h,
        "utilization_entropy": h(u),
        "effective_experts": math.exp(h(u)),
        "effective_experts_per_example": math.exp(mean_h),
        "max_weight_fraction": dominated,
        "unused_experts": tuple(j for j in range(e) if u[j] < threshold),
        "polarized": dominated > polarized_fraction,
    }


def assert_matches_reference(stats, w, **kwargs):
    ref = reference(np.asarray(w, dtype=np.float64), **kwargs)
    np.testing.assert_allclose(stats.utilization, ref["utilization"], rtol=1e-9, atol=1e-12)
    for key in ("entropy", "utilization_entropy", "effective_experts", "effective_experts_per_example",
                "max_weight_fraction"):
        assert getattr(stats, key) == pytest.approx(ref[key], rel=1e-9, abs=1e-12), key
    assert stats.unused_experts == ref["unused_experts"]
    assert stats.polarized == ref["polarized"]


def rows(rng, n, e, zeros=(), dominant=None, fraction=0.0):
    """n rows over e experts summing to 1: columns in ``zeros`` get 0.001; with ``dominant``, the
    first ``fraction`` of rows put 0.97 on that expert."""
    used = [j for j in range(e) if j not in zeros]
    w = np.full((n, e), 0.001)
    w[:, used] = rng.dirichlet(np.ones(len(used)), size=n) * (1 - 0.001 * len(zeros))
    if dominant is not None:
        k = int(fraction * n)
        w[:k] = (1 - 0.97) / (e - 1)
        w[:k, dominant] = 0.97
    return w


def cgc_weights(rng, n=40):
    """A CGC level with a shared gate: click's gate leaves click_1 and shared_2 unused, buy's gate
    buy_0, shared_1 and shared_2, the shared gate buy_0 and shared_2 (it uses click_1)."""
    click = rows(rng, n, 5, zeros=(1, 4))     # click_0 click_1 | shared_0 shared_1 shared_2
    buy = rows(rng, n, 5, zeros=(0, 3, 4))    # buy_0 buy_1 | shared_0 shared_1 shared_2
    shared = rows(rng, n, 7, zeros=(2, 6))    # click_0 click_1 buy_0 buy_1 | shared_0..2
    return {"tasks": np.stack([click, buy], axis=1), "shared": shared}


# ---------------------------------------------------------------- statistics of CGC/PLE gate weights


def test_cgc_gates_over_their_own_experts_match_the_reference(rng):
    weights = cgc_weights(rng)
    report = gate_statistics(weights, TASKS, num_task_experts=2, layer_name="cgc")
    assert report.gate_names == ["click", "buy", "shared"]
    assert list(report.experts) == EXPERTS and report.num_experts == 7
    click, buy, shared = report.gates
    assert click.experts == ("click_0", "click_1", "shared_0", "shared_1", "shared_2")
    assert buy.experts == ("buy_0", "buy_1", "shared_0", "shared_1", "shared_2")
    assert shared.experts == tuple(EXPERTS)
    assert click.expert_ids == (0, 1, 4, 5, 6) and buy.expert_ids == (2, 3, 4, 5, 6)
    assert (click.task, buy.task, shared.task) == ("click", "buy", None) and shared.is_shared
    assert_matches_reference(click, weights["tasks"][:, 0])
    assert_matches_reference(buy, weights["tasks"][:, 1])
    assert_matches_reference(shared, weights["shared"])
    # The default unused threshold is 1/(10 E) of each gate's own E experts.
    assert click.unused_threshold == pytest.approx(1 / 50) and shared.unused_threshold == pytest.approx(1 / 70)
    assert report.unused_threshold is None
    assert click.unused_expert_names == ["click_1", "shared_2"]
    assert buy.unused_expert_names == ["buy_0", "shared_1", "shared_2"]
    assert shared.unused_expert_names == ["buy_0", "shared_2"]
    # Dead: unused by every gate that weighs it. click_1 is read by the shared gate, shared_1 by
    # click's gate; buy_0 (buy's gate and the shared gate) and shared_2 (all three) are dead.
    assert report.dead_experts == [2, 6] and report.dead_expert_names == ["buy_0", "shared_2"]
    # Weight by group: own experts versus shared ones, and each task's share in the shared gate.
    u = weights["tasks"].mean(0)
    assert list(click.group_weights) == ["click", "shared"]
    assert click.group_weights["click"] == pytest.approx(u[0, :2].sum())
    assert click.group_weights["shared"] == pytest.approx(u[0, 2:].sum())
    us = weights["shared"].mean(0)
    assert shared.group_weights == pytest.approx({"click": us[:2].sum(), "buy": us[2:4].sum(), "shared": us[4:].sum()})
    # The utilization matrix over the layer's experts: blank (NaN) where a gate does not weigh an expert.
    matrix = report.utilization
    assert matrix.shape == (3, 7)
    assert np.isnan(matrix[0, [2, 3]]).all() and np.isnan(matrix[1, [0, 1]]).all()
    np.testing.assert_allclose(matrix[0, [0, 1, 4, 5, 6]], u[0])
    np.testing.assert_allclose(matrix[2], us)


def test_ple_levels_name_their_gates_and_experts_and_the_last_level_has_no_shared_gate(rng):
    level0 = cgc_weights(rng)
    last = np.stack([rows(rng, 40, 5, zeros=(1,)), rows(rng, 40, 5)], axis=1)  # click_1 unused at the last level
    weights = {"level_0_tasks": level0["tasks"], "level_0_shared": level0["shared"], "level_1_tasks": last}
    report = gate_statistics(weights, TASKS, num_task_experts=2)
    assert report.gate_names == ["level_0/click", "level_0/buy", "level_0/shared", "level_1/click", "level_1/buy"]
    assert list(report.experts) == [f"level_0/{e}" for e in EXPERTS] + [f"level_1/{e}" for e in EXPERTS]
    assert [g.level for g in report.gates] == [0, 0, 0, 1, 1]
    assert report["level_1/click"].expert_ids == (7, 8, 11, 12, 13)
    assert_matches_reference(report["level_0/shared"], level0["shared"])
    assert_matches_reference(report["level_1/click"], last[:, 0])
    assert_matches_reference(report["level_1/buy"], last[:, 1])
    # At the last level nothing else reads click_1: it is dead there, not at level 0.
    assert report.dead_expert_names == ["level_0/buy_0", "level_0/shared_2", "level_1/click_1"]
    assert report.utilization.shape == (5, 14) and np.isnan(report.utilization[3, :7]).all()
    with pytest.raises(KeyError, match="level_1/click"):
        report["click"]


def test_polarization_rule_applies_to_each_gate(rng):
    n = 50
    click = rows(rng, n, 5, dominant=0, fraction=0.8)      # its own expert 0 for 80% of examples
    buy = rows(rng, n, 5)                                  # balanced
    shared = rows(rng, n, 7, dominant=5, fraction=0.5)     # shared_1 for exactly half: not more than half
    report = gate_statistics({"tasks": np.stack([click, buy], 1), "shared": shared}, TASKS, num_task_experts=2)
    assert report.polarized_gates == ["click"] and report.any_polarized
    assert report["click"].verdict == "polarized" and report["click"].top_expert == 0
    assert report["shared"].max_weight_fraction == pytest.approx(0.5) and not report["shared"].polarized
    lenient = gate_statistics({"tasks": np.stack([click, buy], 1), "shared": shared}, TASKS, num_task_experts=2,
                              polarized_fraction=0.4, unused_threshold=0.0)
    assert lenient.polarized_gates == ["click", "shared"] and lenient.unused_threshold == 0.0
    for gate in lenient:
        assert_matches_reference(gate, {"click": click, "buy": buy, "shared": shared}[gate.name],
                                 polarized_fraction=0.4, unused_threshold=0.0)


def test_task_gate_array_with_num_task_experts_and_edge_sizes(rng):
    """An array (examples, tasks, m + s), as build_ple's gate_weights output, reads as CGC task gates;
    m = 0 (all experts shared) and s = 0 (no shared experts) are labelled too."""
    w = np.stack([rows(rng, 10, 4), rows(rng, 10, 4)], axis=1)
    report = gate_statistics(w, TASKS, num_task_experts=1)
    assert report.gate_names == TASKS and list(report.experts) == ["click_0", "buy_0", "shared_0", "shared_1", "shared_2"]
    assert report["buy"].experts == ("buy_0", "shared_0", "shared_1", "shared_2")
    no_own = gate_statistics(w, TASKS, num_task_experts=0)
    assert list(no_own.experts) == ["shared_0", "shared_1", "shared_2", "shared_3"]
    assert no_own["click"].group_weights == pytest.approx({"shared": 1.0})
    no_shared = gate_statistics(w, TASKS, num_task_experts=4)
    assert no_shared["buy"].experts == ("buy_0", "buy_1", "buy_2", "buy_3")
    assert no_shared["buy"].group_weights == pytest.approx({"buy": 1.0})
    # A task named "shared": the shared experts and gate take another name.
    clash = gate_statistics(w, ["shared", "buy"], num_task_experts=1)
    assert list(clash.experts) == ["shared_0", "buy_0", "shared__0", "shared__1", "shared__2"]
    assert clash["shared"].group_weights == pytest.approx({"shared": w[:, 0, 0].mean(), "shared_": w[:, 0, 1:].mean(0).sum()})


def test_cgc_report_text_dict_and_logs(rng):
    weights = cgc_weights(rng)
    report = gate_statistics(weights, TASKS, num_task_experts=2, layer_name="cgc")
    text = report.to_markdown()
    assert text.splitlines()[0].startswith("| gate | utilization | weight by group | entropy (nats) |")
    click = report["click"]
    u = " ".join(f"{v:.2f}" for v in click.utilization[:2])
    assert f"| click | click: {u}; shared: " in text and "| shared | click: " in text
    assert "click_1, shared_2" in text  # click's unused experts, by name
    assert "Dead experts (unused by every gate that weighs them): buy_0, shared_2." in text
    assert "A gate is *polarized*" in text and "1/(10 E) for a gate over E experts" in text
    d = report.to_dict()
    assert d["experts"] == EXPERTS and d["dead_expert_names"] == ["buy_0", "shared_2"]
    assert d["tasks"]["shared"]["task"] is None and d["tasks"]["buy"]["unused_expert_names"] == ["buy_0", "shared_1", "shared_2"]
    logs = report.to_logs()
    assert logs["gate/click/utilization_click_1"] == pytest.approx(click.utilization[1])
    assert logs["gate/click/utilization_shared_2"] == pytest.approx(click.utilization[4])
    assert logs["gate/shared/weight_on_buy"] == pytest.approx(report["shared"].group_weights["buy"])
    assert logs["gate/buy/weight_on_shared"] == pytest.approx(report["buy"].group_weights["shared"])
    assert logs["gate/buy/num_unused_experts"] == 3.0
    # 7 statistics, then one utilization per expert and one weight per group, per gate.
    assert len(logs) == 3 * 7 + (5 + 2) + (5 + 2) + (7 + 3)


@pytest.mark.parametrize(
    "weights, kwargs, match",
    [
        ({"tasks": np.full((3, 2, 4), 0.25)}, {}, "`num_task_experts` is needed"),
        ({"tasks": np.full((3, 2, 4), 0.25), "gates": np.ones((3, 1))}, {"num_task_experts": 1}, "keys must be those"),
        ({"tasks": np.full((3, 2, 4), 0.25), "shared": np.full((3, 6), 1 / 6)}, {"num_task_experts": 1},
         r"shape \(3, 6\); with 2 tasks of 1 own experts and 3 shared experts the shared gate weighs 5 experts"),
        ({"tasks": np.full((3, 2, 4), 0.25), "shared": np.full((3, 4), 0.25)}, {"num_task_experts": 1},
         "the shared gate weighs 5 experts"),
        ({"tasks": np.full((3, 2, 4), 0.25)}, {"num_task_experts": 5}, "fewer than num_task_experts=5"),
        ({"tasks": np.full((3, 2, 4), 0.25)}, {"num_task_experts": 1, "task_names": ["a"]}, "`task_names` has 1 names"),
        ({"level_0_tasks": np.full((3, 2, 4), 0.25), "level_2_tasks": np.full((3, 2, 4), 0.25)},
         {"num_task_experts": 1}, "levels 0, 1, ... without gaps"),
        ({"level_0_shared": np.full((3, 5), 0.2)}, {"num_task_experts": 1}, "no task gates 'level_0_tasks'"),
        ({"tasks": np.full((3, 2, 4), 0.3)}, {"num_task_experts": 1}, r"gate_weights\['tasks'\]` must sum to 1"),
        ({"tasks": np.full((3, 4), 0.25)}, {"num_task_experts": 1}, r"gate_weights\['tasks'\]` must have shape"),
        ({"level_0_tasks": np.full((3, 2, 4), 0.25), "level_1_tasks": np.full((2, 2, 4), 0.25)},
         {"num_task_experts": 1}, "disagree on the number of examples"),
    ],
)
def test_bad_cgc_gate_weights_are_refused_naming_the_entry(weights, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gate_statistics(weights, **{"task_names": TASKS, **kwargs})


# ---------------------------------------------------------------- from a model


def _sharpen_gates(layer, scale=4.0):
    """Larger gate kernels, so the softmax weights are far from uniform."""
    levels = layer.levels if isinstance(layer, PLELayer) else [layer]
    for level in levels:
        for gate in level.gates:
            kernel = gate.logits_layer.kernel
            kernel.assign(np.asarray(kernel) * scale)


@pytest.mark.parametrize("kind", ["cgc", "ple"])
def test_diagnose_a_cgc_or_ple_model_equals_statistics_of_the_numpy_gates(kind, rng):
    builder = build_cgc if kind == "cgc" else build_ple
    extra = {} if kind == "cgc" else {"num_levels": 3}
    model = builder(6, TASKS, num_shared_experts=3, num_task_experts=2, expert_units=4, seed=2,
                    expert_dropout_rate=0.5, **extra)
    layer = model.get_layer(kind)
    assert [path for path, _ in find_mmoe_layers(model)] == [kind] and num_task_experts(layer) == 2
    _sharpen_gates(layer)
    x = rng.normal(size=(30, 6)).astype("float32")
    expected = (np_cgc(layer, x) if kind == "cgc" else np_ple(layer, x))[1]  # inference: no expert dropout
    weights = gate_weights_from_model(model, {"features": x}, batch_size=8)
    assert sorted(weights) == sorted(expected)
    for key in expected:
        assert weights[key].dtype == np.float32
        np.testing.assert_allclose(weights[key], expected[key], atol=1e-5, err_msg=key)

    report = diagnose(model, {"features": x}, batch_size=8)
    assert report.layer_name == kind
    if kind == "cgc":
        assert report.gate_names == TASKS  # build_cgc's layer has no shared gate
    else:
        assert report.gate_names == [f"level_{l}/{g}" for l in (0, 1) for g in TASKS + ["shared"]] + [
            "level_2/click", "level_2/buy"]
    for gate in report:
        key = ("" if gate.level is None else f"level_{gate.level}_") + ("shared" if gate.is_shared else "tasks")
        w = expected[key] if gate.is_shared else expected[key][:, TASKS.index(gate.task)]
        np.testing.assert_allclose(gate.utilization, w.mean(0), atol=1e-5)
        ref = reference(w.astype(np.float64))
        assert gate.effective_experts == pytest.approx(ref["effective_experts"], abs=1e-4)
        assert gate.max_weight_fraction == pytest.approx(ref["max_weight_fraction"])


def test_a_cgc_layer_with_a_shared_gate_and_gate_inputs_in_a_functional_model(rng):
    x_in, g_in = keras.Input((5,), name="x"), keras.Input((3,), name="g")
    layer = CGCLayer(2, 1, 4, task_names=TASKS, return_shared=True, seed=3, name="cgc_level")
    click, buy, shared = layer(x_in, gate_inputs=g_in)
    model = keras.Model({"x": x_in, "g": g_in}, {"click": keras.layers.Dense(1, name="click")(click),
                                                 "buy": keras.layers.Dense(1, name="buy")(buy),
                                                 "shared_out": keras.layers.Dense(1, name="shared_out")(shared)})
    _sharpen_gates(layer)
    x = rng.normal(size=(12, 5)).astype("float32")
    g = rng.normal(size=(12, 3)).astype("float32")
    expected = np_cgc(layer, x, g)[1]
    report = diagnose(model, {"x": x, "g": g})
    assert report.gate_names == ["click", "buy", "shared"]
    assert list(report.experts) == ["click_0", "buy_0", "shared_0", "shared_1"]
    np.testing.assert_allclose(report["shared"].utilization, expected["shared"].mean(0), atol=1e-5)
    np.testing.assert_allclose(report["buy"].utilization, expected["tasks"][:, 1].mean(0), atol=1e-5)


# ---------------------------------------------------------------- callback and plots


def test_callback_on_a_ple_model_logs_every_gate(rng, tmp_path):
    model = build_ple(4, TASKS, num_levels=2, num_shared_experts=2, num_task_experts=1, expert_units=4,
                      tower_units=(), seed=0)
    model.compile(optimizer="adam", **compile_kwargs(TASKS))
    x = rng.normal(size=(32, 4)).astype("float32")
    y = {t: rng.integers(0, 2, size=(32, 1)).astype("float32") for t in TASKS}
    train = tf.data.Dataset.from_tensor_slices(({"features": x}, y)).batch(16)
    held_out = tf.data.Dataset.from_tensor_slices({"features": x[:10]}).batch(5)
    callback = GateDiagnostics(held_out, log_dir=tmp_path / "gates")
    history = model.fit(train, epochs=2, callbacks=[callback], verbose=0).history

    gates = ["level_0/click", "level_0/buy", "level_0/shared", "level_1/click", "level_1/buy"]
    assert callback.gate_names == gates and callback.task_names == gates
    assert callback.expert_names[:4] == ["level_0/click_0", "level_0/buy_0", "level_0/shared_0", "level_0/shared_1"]
    for key in ("gate/level_0/shared/utilization_buy_0", "gate/level_0/shared/weight_on_shared",
                "gate/level_1/click/utilization_click_0", "gate/level_1/buy/weight_on_buy",
                "gate/level_1/buy/polarized", "gate/level_0/click/effective_experts"):
        assert len(history[key]) == 2, (key, sorted(history))
    assert not any(k.startswith("gate/level_1/shared") for k in history)  # the last level has no shared gate
    final = diagnose(model, held_out)
    assert history["gate/level_0/shared/weight_on_shared"][-1] == pytest.approx(
        final["level_0/shared"].group_weights["shared"], abs=1e-6)
    utilization = np.stack(callback.history["utilization"])
    assert utilization.shape == (2, 5, 8) and np.isnan(utilization[:, 3, :4]).all()
    assert np.stack(callback.history["entropy"]).shape == (2, 5)
    events = _read_events(tmp_path / "gates")
    assert float(events[("gate/level_1/click/weight_on_shared", 1)][1]) == pytest.approx(
        history["gate/level_1/click/weight_on_shared"][1], rel=1e-6)
    assert b"| level_0/shared |" in events[("gate/report", 1)][1].item()

    fig = plot_utilization_over_epochs(callback)
    assert [ax.get_title() for ax in fig.axes] == gates
    shared_axes = fig.axes[2]  # the shared gate weighs the 4 experts of level 0
    assert [line.get_label() for line in shared_axes.get_lines()] == callback.expert_names[:4]
    click_axes = fig.axes[3]   # level 1 click: its own expert, then the 2 shared ones
    assert [line.get_label() for line in click_axes.get_lines()] == [
        "level_1/click_0", "level_1/shared_0", "level_1/shared_1"]
    np.testing.assert_allclose(click_axes.get_lines()[0].get_ydata(), utilization[:, 3, 4])
    with pytest.raises(ValueError, match="No gate 'click' to plot"):
        plot_utilization_over_epochs(callback, tasks=["click"])


def test_heatmap_of_a_cgc_report_leaves_experts_a_gate_does_not_weigh_blank(rng, tmp_path):
    report = gate_statistics(cgc_weights(rng), TASKS, num_task_experts=2)
    fig = plot_gate_heatmap(report)
    ax = fig.axes[0]
    shown = ax.images[0].get_array()
    assert shown.mask[0, 2] and shown.mask[1, 0] and not shown.mask[2].any()
    np.testing.assert_allclose(shown.filled(np.nan), report.utilization)
    assert [t.get_text() for t in ax.get_xticklabels()] == EXPERTS
    assert [t.get_text() for t in ax.get_yticklabels()] == ["click", "buy", "shared"]
    assert len(ax.texts) == 5 + 5 + 7 and ax.get_ylabel() == "gate"
    fig.savefig(tmp_path / "cgc.png")
    assert (tmp_path / "cgc.png").read_bytes()[:4] == b"\x89PNG"

