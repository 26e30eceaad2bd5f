"""``keras-mmoe export``: a saved ``.keras`` model -> a versioned SavedModel for TF Serving.

Writes ``<--to>/<version>/`` with the ``serving_default`` (raw named features) and
``predict_examples`` (serialized ``tf.train.Example``) signatures, via
:func:`keras_mmoe.serving.export_for_serving`, and prints the version directory. The version is
the next free integer unless ``--version`` is given; an existing version is only replaced with
``--overwrite``. The model's training record (``<name>.json`` beside ``<name>.keras``, or
``--record FILE``) goes into the version's ``assets.extra/keras_mmoe.json``, so
``keras-mmoe evaluate`` can score the version on the rows the model held out. MODEL may also be,
under tf-keras, an ``.h5`` file or a ``model.save(dir)`` SavedModel directory. A model trained with
``keras-mmoe train --spec`` is exported with its spec's serving rules, as ``train`` exports it:
missing values (NaN, ``""``, an absent tf.Example feature) follow the spec, and a
multi_categorical feature is a bytes_list in ``predict_examples``.

Example::

    keras-mmoe export saved_models/mmoe_synthetic.keras --to saved_models/mmoe_synthetic --version 3
"""

from __future__ import annotations

import argparse
import os

from keras_mmoe.cli.common import CLIError, add_command, check_version_free, import_tensorflow, positive_int, say


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "export", help="export a saved .keras model as a versioned SavedModel for TF Serving",
                    description=__doc__)
    p.add_argument("model", metavar="MODEL.keras", help="model saved with model.save('NAME.keras')")
    p.add_argument("--to", required=True, metavar="BASE_DIR",
                   help="the model's base directory for TF Serving, e.g. saved_models/NAME")
    p.add_argument("--version", type=positive_int, default=None, help="version number (default: the next free one)")
    p.add_argument("--overwrite", action="store_true", help="replace the version if it exists")
    p.add_argument("--record", default=None, metavar="FILE",
                   help="training record stored with the version (default: <name>.json beside the model, if any)")
    p.add_argument("--no-examples-signature", dest="examples_signature", action="store_false",
                   help="do not export the predict_examples (tf.train.Example) signature")
    p.add_argument("--include-gate-weights", action="store_true",
                   help="also output each task's gate weights (<task>_gate_weights)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from keras_mmoe import saving

    kind = saving.model_format(args.model)  # FileNotFoundError / ValueError naming the file
    if kind == "saved_model":
        raise CLIError(f"{args.model} is already an exported SavedModel; export takes a Keras model (.keras)")
    record_file = args.record or saving.record_path(args.model)
    record = saving.read_record(record_file) if (args.record or os.path.isfile(record_file)) else None
    check_version_free(args.to, args.version, args.overwrite)  # fail before the (slow) model load
    import_tensorflow()
    from keras_mmoe.serving import export_for_serving

    options = {}
    if (record or {}).get("data", {}).get("source") == "spec":
        from keras_mmoe.features import serving_options
        from keras_mmoe.workflow import spec_from_record

        options = serving_options(spec_from_record(record, record_file))
        say(f"serving rules for missing values from the spec in {record_file}")
    say(f"loading {args.model}")
    model = saving.load_keras_model(args.model)
    version_dir = export_for_serving(
        model,
        args.to,
        version=args.version,
        examples_signature=args.examples_signature,
        include_gate_weights=args.include_gate_weights,
        overwrite=args.overwrite,
        metadata=record,
        **options,
    )
    say(f"exported SavedModel for TF Serving: {version_dir}"
        + (f" (with the training record {record_file})" if record is not None else " (no training record found)"))
    print(version_dir)
    return 0
