"""Re-creates saved_models/example_mmoe/: a small MMoE export for TF Serving plus golden I/O.

    python saved_models/make_example.py

Runs ``keras-mmoe train --name example_mmoe --out-dir saved_models --num-experts 4
--expert-units 8 --seed 7`` (the default 20,000 synthetic rows and 10 epochs: a model that has
learned, most of each task's variance explained) (as ``python -m keras_mmoe.cli.main``, so the
keras_mmoe on ``sys.path`` makes it; export version 1; delete saved_models/example_mmoe,
example_mmoe.keras and example_mmoe.json first to regenerate it) and writes
``example_mmoe/golden.json``: three held-out input rows and the Keras model's predictions for
them. tests/test_example_export.py checks the committed export against it in a process that
never imports keras_mmoe, and checks that NaN and inf inputs are rejected.
"""

import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    base = os.path.join(HERE, "example_mmoe")
    if not os.path.isdir(os.path.join(base, "1")):
        subprocess.run([sys.executable, "-m", "keras_mmoe.cli.main", "train", "--name", "example_mmoe",
                        "--out-dir", HERE, "--num-experts", "4",
                        "--expert-units", "8", "--seed", "7"], check=True)
    from keras_mmoe._keras import keras
    from keras_mmoe.data import make_synthetic

    _, test = make_synthetic(20_000, dim=100, correlation=0.5, seed=7).split(0.8, seed=7)
    model = keras.models.load_model(os.path.join(HERE, "example_mmoe.keras"))
    rows = test.x[:3]
    predictions = model.predict({"features": rows}, verbose=0)
    golden = {"inputs": {"features": rows.tolist()},
              "outputs": {k: v.tolist() for k, v in predictions.items()},
              "signature": "serving_default", "version": 1}
    with open(os.path.join(base, "golden.json"), "w", encoding="utf-8") as f:
        json.dump(golden, f)
    print(os.path.join(base, "golden.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
