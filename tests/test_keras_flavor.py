"""The package follows the Keras that ``tf.keras`` really is, whatever was imported first.

Existing tf-keras code (DeepCTR, for one) runs ``from tensorflow.keras.layers import Dense``
before importing keras_mmoe; that import renames the ``tf.keras`` module, which once made the
package pick Keras 3 under ``TF_USE_LEGACY_KERAS=1``. Each order runs in a fresh process, in the
flavour of the current test pass, with a model that mixes ``tf.keras.layers.Dense`` and
``MMoELayer`` and trains.
"""

import json

import pytest

from conftest import run_python
from keras_mmoe._keras import KERAS_FLAVOR

TRAIN_MIXED_MODEL = """
import numpy as np
import tensorflow as tf

x = np.random.default_rng(0).normal(size=(64, 6)).astype("float32")
y = x[:, :1] * 2.0
inputs = tf.keras.Input((6,), name="features")
hidden = Dense(8, activation="relu", name="bottom")(inputs)
task_a, task_b = keras_mmoe.MMoELayer(2, 4, task_names=["a", "b"], seed=0)(hidden)
outputs = {"a": Dense(1, name="a")(task_a), "b": Dense(1, name="b")(task_b)}
model = tf.keras.Model({"features": inputs}, outputs)
model.compile("adam", loss={"a": "mse", "b": "mse"})
history = model.fit({"features": x}, {"a": y, "b": -y}, epochs=2, batch_size=16, verbose=0)
print(json.dumps({"flavor": keras_mmoe.KERAS_FLAVOR, "dense": Dense.__module__.split(".")[0],
                  "mmoe_base": keras_mmoe.MMoELayer.__mro__[1].__module__.split(".")[0],
                  "losses": [float(v) for v in history.history["loss"]]}))
"""

ORDERS = {
    "tf_keras_import_first": "import json\nfrom tensorflow.keras.layers import Dense\nimport keras_mmoe\n",
    "keras_mmoe_first": "import json\nimport keras_mmoe\nfrom tensorflow.keras.layers import Dense\n",
}


@pytest.mark.parametrize("order", sorted(ORDERS))
def test_flavour_follows_tf_keras_in_either_import_order(order):
    proc = run_python(ORDERS[order] + TRAIN_MIXED_MODEL)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    expected_package = "keras" if KERAS_FLAVOR == "keras3" else "tf_keras"
    assert result["flavor"] == KERAS_FLAVOR
    assert result["dense"] == result["mmoe_base"] == expected_package
    assert all(v == v for v in result["losses"]) and len(result["losses"]) == 2
