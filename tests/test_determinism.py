"""A seed fixes a run: weights, expert-dropout draws and whole study runs repeat exactly."""

import json

import numpy as np
import pytest

from conftest import run_python
from keras_mmoe._keras import keras
from keras_mmoe.models import BUILDERS, matched_budget_kwargs

TASKS = {"y1": "regression", "y2": "regression"}


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


@pytest.mark.parametrize("name", ["mmoe", "omoe"])
def test_set_random_seed_fixes_unseeded_layer_weights(name):
    # MMoELayer and its gates used to draw unseeded initializer seeds from the OS, so
    # keras.utils.set_random_seed did not fix the experts' and gates' initial weights.
    sizes = matched_budget_kwargs(20, 2, num_experts=4, expert_units=8)[name]
    keras.utils.set_random_seed(3)
    first = _weights(BUILDERS[name](20, TASKS, **sizes))
    keras.utils.set_random_seed(3)
    second = _weights(BUILDERS[name](20, TASKS, **sizes))
    keras.utils.set_random_seed(4)
    other = _weights(BUILDERS[name](20, TASKS, **sizes))
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    experts = 0  # the stacked expert kernel, the first weight
    assert not np.array_equal(first[experts], other[experts])


def test_set_random_seed_fixes_unseeded_expert_dropout():
    from keras_mmoe import ExpertDropoutGate

    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")

    def draws(seed):
        keras.utils.set_random_seed(seed)
        gate = ExpertDropoutGate(num_experts=5, rate=0.4)
        return [np.array(gate(x, training=True)) for _ in range(3)]

    first, second, other = draws(1), draws(1), draws(2)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])  # a new mask every step
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))


QUICK_RUN = dict(samples=1000, epochs=2, learning_rate=0.01)


def test_quick_synthetic_run_repeats_in_process_and_in_a_fresh_process():
    from keras_mmoe.reproduce.synthetic import train_run

    first = train_run("mmoe", 0.5, 0, **QUICK_RUN)
    second = train_run("mmoe", 0.5, 0, **QUICK_RUN)
    assert first["loss_curve"] == second["loss_curve"]
    proc = run_python(f"""
        import json
        from keras_mmoe.reproduce.synthetic import train_run
        print(json.dumps(train_run("mmoe", 0.5, 0, **{QUICK_RUN!r})["loss_curve"]))
    """)
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == first["loss_curve"]
    assert train_run("mmoe", 0.5, 1, **QUICK_RUN)["loss_curve"] != first["loss_curve"]
