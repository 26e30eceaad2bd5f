"""``keras-mmoe export``: a saved ``.keras`` model -> a versioned SavedModel for TF Serving.

Writes ``<--to>/<version>/`` with the ``serving_default`` (raw named features) and
``predict_examples`` (serialized ``tf.train.Example``) signatures, via
:func:`keras_mmoe.serving.export_for_serving`, and prints the version directory. The version is
the next free integer unless ``--version`` is given; an existing version is only replaced with
``--overwrite``.
"""

import os

from keras_mmoe.cli.common import CLIError, say


def add_parser(subparsers):
    p = subparsers.add_parser(
        "export",
        help="export a saved .keras model as a versioned SavedModel for TF Serving",
        description=__doc__,
    )
    p.add_argument("model", metavar="MODEL.keras", help="model saved with model.save('....keras')")
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


def load_keras_model(path):
    """Loads a ``.keras`` model with every keras_mmoe layer registered (no custom_objects needed)."""
    if not os.path.isfile(path):
        raise CLIError(f"model file not found: {path}")
    import keras_mmoe  # noqa: F401  (registers the package's layers for deserialization)
    from keras_mmoe._keras import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as error:  # the loader raises many types; report it as one line
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CLIError(f"cannot load {path} as a Keras model: {first_line}") from error


def run(args):
    if args.version is not None and args.version < 1:
        raise CLIError(f"--version must be a positive integer, received {args.version}")
    if not os.path.isfile(args.model):
        raise CLIError(f"model file not found: {args.model}")
    say("importing TensorFlow")
    from keras_mmoe import KERAS_FLAVOR
    from keras_mmoe.serving import export_for_serving, list_versions

    existing = list_versions(args.to).get(args.version) if args.version is not None else None
    if existing is not None and not args.overwrite:  # fail before the (slow) model load
        raise CLIError(f"version {args.version} already exists: {os.path.join(args.to, existing)} (use --overwrite)")
    say(f"Keras: {KERAS_FLAVOR}; loading {args.model}")
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
