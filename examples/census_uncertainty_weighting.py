"""MMoE on census-income group 1 with fixed equal task weights vs learned uncertainty weights.

    python examples/census_uncertainty_weighting.py [--epochs 3] [--data-dir DIR]

Same data, same seed, same model (keras_mmoe.models.build_mmoe on the raw-feature encoder);
the only difference is the training loss: income_loss + marital_loss, or
keras_mmoe.weighting.UncertaintyWeightedModel's sum_k exp(-s_k) L_k + s_k. Prints test AUC per
task and the learned weights exp(-s_k).
"""

import argparse
import json

from keras_mmoe._keras import keras
from keras_mmoe.data import load_census_income
from keras_mmoe.features import census_feature_encoder
from keras_mmoe.models import build_mmoe, compile_kwargs
from keras_mmoe.weighting import UncertaintyWeightedModel


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--max-rows", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load_census_income(args.data_dir, group=1, max_rows=args.max_rows)
    tasks = {t: "binary" for t in data.task_names}
    results = {}
    for variant in ("fixed equal weights", "uncertainty weighting"):
        keras.backend.clear_session()
        keras.utils.set_random_seed(args.seed)
        inputs, encoded = census_feature_encoder(data)
        base = build_mmoe(inputs, tasks, features=encoded, seed=args.seed)
        metrics = {t: [keras.metrics.AUC(name="auc")] for t in tasks}
        if variant == "fixed equal weights":
            model = base
            model.compile(optimizer=keras.optimizers.Adam(1e-3), **compile_kwargs(tasks))
        else:
            model = UncertaintyWeightedModel(base, tasks)
            model.compile(optimizer=keras.optimizers.Adam(1e-3), metrics=metrics)
        print(f"== {variant}")
        model.fit(data.dataset("train", seed=args.seed), validation_data=data.validation, epochs=args.epochs, verbose=2)
        test = model.evaluate(data.test, verbose=0, return_dict=True)
        results[variant] = {f"test {t} AUC": round(float(test[f"{t}_auc"]), 4) for t in tasks}
        if variant == "uncertainty weighting":
            results[variant]["learned weights"] = {t: round(w, 3) for t, w in model.task_weights().items()}
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
