"""``keras-mmoe export``: a saved ``.keras`` model -> a versioned SavedModel for TF Serving.

Writes ``<--to>/<version>/`` with the ``serving_default`` (raw named features) and
``predict_examples`` (serialized ``tf.train.Example``) signatures, via
:func:`keras_mmoe.serving.export_for_serving`, and prints the version directory. The version is
the next free integer unless ``--version`` is given; an existing version is only replaced with
``--overwrite``. MODEL may also be, under tf-keras, an ``.h5`` file or a ``model.save(dir)``
SavedModel directory.

Example::

    keras-mmoe export saved_models/mmoe_synthetic.keras --to saved_models/mmoe_synthetic --version 3
"""

import os

from keras_mmoe.cli.common import (
    CLIError,
    check_version_free,
    import_tensorflow,
    is_keras_saved_model_dir,
    load_keras_model,
    say,
)


def add_parser(subparsers):
    p = subparsers.add_parser(
        "export",
        help="export a saved .keras model as a versioned SavedModel for TF Serving",
        description=__doc__,
    )
    p.add_argument("model", metavar="MODEL.keras", help="model saved with model.save('NAME.keras')")
    p.add_argument("--to", required=True, metavar="BASE_DIR",
                   help="the model's base directory for TF Serving, e.g. saved_models/NAME")
    p.add_argument("--version", type=int, default=None, help="version number (default: next free)")
    p.add_argument("--overwrite", action="store_true", help="replace the version if it exists")
    p.add_argument("--no-examples-signature", dest="examples_signature", action="store_false",
                   help="do not export the predict_examples (tf.train.Example) signature")
    p.add_argument("--include-gate-weights", action="store_true",
                   help="also output each task's gate weights (<task>_gate_weights)")
    p.set_defaults(func=run)
    return p


def run(args):
    if args.version is not None and args.version < 1:
        raise CLIError(f"--version must be a positive integer, received {args.version}")
    if not (os.path.isfile(args.model) or is_keras_saved_model_dir(args.model)):
        raise CLIError(f"model file not found: {args.model}")
    check_version_free(args.to, args.version, args.overwrite)  # fail before the (slow) model load
    import_tensorflow()
    from keras_mmoe.serving import export_for_serving

    say(f"loading {args.model}")
    model = load_keras_model(args.model)
    version_dir = export_for_serving(
        model,
        args.to,
        version=args.version,
        examples_signature=args.examples_signature,
        include_gate_weights=args.include_gate_weights,
        overwrite=args.overwrite,
    )
    say(f"exported SavedModel for TF Serving: {version_dir}")
    print(version_dir)
    return 0
