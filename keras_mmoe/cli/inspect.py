"""``keras-mmoe inspect``: what a SavedModel serves, and whether TF Serving can run it.

Prints every signature (method, input and output names, dtypes, shapes and graph tensor
names), whether warmup records are present, and the op check: every op in the graph and its
function library must be a registered TensorFlow op and none a Python callback (PyFunc).
Exit status 0 when the op check passes, 1 when it fails, 2 on a usage error or a SavedModel
that cannot be read. Given a base directory instead of a version directory, inspects its highest
version.

Example::

    keras-mmoe inspect saved_models/mmoe_synthetic/1
    keras-mmoe inspect saved_models/mmoe_synthetic --json    # the highest version, as JSON
"""

from __future__ import annotations

import argparse
import json
import os

from keras_mmoe.cli.common import CLIError, add_command, import_tensorflow, say


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = add_command(subparsers, "inspect", help="print an exported SavedModel's signatures and check its ops for TF Serving",
                    description=__doc__)
    p.add_argument("path", metavar="EXPORT_DIR", help="a version directory (e.g. saved_models/NAME/1) or a base directory (its highest version)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
    return p


def resolve_export_dir(path: str) -> str:
    """``path`` itself if it holds a SavedModel, else its highest numeric version."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if not os.path.isdir(path):
        raise CLIError(f"no such directory: {path}")
    import_tensorflow(announce=False)
    from keras_mmoe.serving import list_versions

    versions = list_versions(path)
    if not versions:
        raise CLIError(f"{path} holds no SavedModel (no saved_model.pb) and no numeric version directory")
    chosen = os.path.join(path, versions[max(versions)])
    if not os.path.isfile(os.path.join(chosen, "saved_model.pb")):
        raise CLIError(f"{chosen} holds no saved_model.pb")
    say(f"inspecting the highest version: {chosen}")
    return chosen


def run(args: argparse.Namespace) -> int:
    path = resolve_export_dir(args.path)
    import_tensorflow(announce=False)
    from google.protobuf.message import DecodeError

    try:
        return _report(path, args.json)
    except DecodeError as error:
        raise CLIError(f"{os.path.join(path, 'saved_model.pb')} is not a valid SavedModel: it does not parse "
                       f"as a SavedModel protocol buffer ({error})") from None


def _report(path: str, as_json: bool) -> int:
    from keras_mmoe.serving import check_serving_ops, describe_signatures, format_report

    if as_json:
        check = check_serving_ops(path)
        report = {
            "path": os.path.abspath(path),
            "signatures": describe_signatures(path),
            "op_check": {"ok": check.ok, "ops": check.ops, "unregistered": check.unregistered,
                         "denied": check.denied},
        }
        print(json.dumps(report, indent=2))
    else:
        text, check = format_report(path)
        print(text)
    return 0 if check.ok else 1
