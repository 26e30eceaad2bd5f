"""Look inside an exported SavedModel: its signatures and whether TF Serving can run its ops.

What: :func:`describe_signatures` reads ``saved_model.pb`` (no model loading, no Keras) and
lists each signature's method, inputs and outputs (name, dtype, shape, tensor name);
:func:`check_serving_ops` collects every op type in the graph and in its function library and
checks that each one is a registered TensorFlow op and none is a Python callback (``PyFunc``,
``EagerPyFunc``, ``PyFuncStateless``), which ``tensorflow_model_server`` cannot run because it
has no Python. :func:`format_report` renders both for ``keras-mmoe inspect``.

Why: the real ``tensorflow_model_server`` is not installable everywhere (no PyPI package; Docker
needs an engine), so it cannot run in every test environment; these
static checks catch the usual reasons a SavedModel loads in Python but not in TF Serving.
"Registered" means registered in the TensorFlow this process runs; an op from an extra
library (e.g. tensorflow-text) would pass here once that library is imported, and would need
a TF Serving build that links it.
"""

import os
from typing import Any, Dict, Iterable, Set, Tuple, Union

PathLike = Union[str, "os.PathLike[str]"]

#: Ops that call back into Python: TF Serving has no Python interpreter to run them.
DENIED_OPS = ("PyFunc", "PyFuncStateless", "EagerPyFunc")


def _read_saved_model(export_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(os.fspath(export_dir), "saved_model.pb")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No SavedModel at {export_dir}: {path} does not exist")
    saved_model = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    return saved_model


def _serve_meta_graph(saved_model, export_dir):
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ValueError(f"The SavedModel at {export_dir} has no MetaGraph tagged 'serve'")


def _tensor_info(info):
    from tensorflow.python.framework import dtypes

    shape = None if info.tensor_shape.unknown_rank else [d.size if d.size >= 0 else None for d in info.tensor_shape.dim]
    return {"dtype": dtypes.as_dtype(info.dtype).name, "shape": shape, "tensor": info.name}


def describe_signatures(export_dir: PathLike) -> Dict[str, Dict[str, Any]]:
    """``{signature key: {"method", "inputs": {name: info}, "outputs": {name: info}}}`` of the ``serve`` graph.

    ``info`` is ``{"dtype", "shape" (None for unknown dims), "tensor" (graph tensor name)}``.
    The internal ``__saved_model_init_op`` entry (lookup table initialization) is left out.
    """
    meta_graph = _serve_meta_graph(_read_saved_model(export_dir), export_dir)
    result = {}
    for key in sorted(meta_graph.signature_def):
        if key.startswith("__"):
            continue
        sig = meta_graph.signature_def[key]
        result[key] = {
            "method": sig.method_name,
            "inputs": {name: _tensor_info(sig.inputs[name]) for name in sorted(sig.inputs)},
            "outputs": {name: _tensor_info(sig.outputs[name]) for name in sorted(sig.outputs)},
        }
    return result


class OpCheck:
    """Result of :func:`check_serving_ops`: ``ops`` used, ``unregistered`` and ``denied`` ones."""

    def __init__(self, ops: Iterable[str], unregistered: Iterable[str], denied: Iterable[str]) -> None:
        self.ops = sorted(ops)
        self.unregistered = sorted(unregistered)
        self.denied = sorted(denied)

    @property
    def ok(self) -> bool:
        return not self.unregistered and not self.denied

    def __repr__(self):
        return f"OpCheck(ok={self.ok}, ops={len(self.ops)}, unregistered={self.unregistered}, denied={self.denied})"

    def summary(self) -> str:
        if self.ok:
            return f"OK: {len(self.ops)} op types, all registered TensorFlow ops, no Python callbacks"
        parts = []
        if self.unregistered:
            parts.append(f"unregistered ops {self.unregistered}")
        if self.denied:
            parts.append(f"Python callback ops {self.denied} (TF Serving cannot run them)")
        return "FAILED: " + "; ".join(parts)


def collect_ops(export_dir: PathLike) -> Set[str]:
    """Every op type in every MetaGraph of the SavedModel: graph nodes and function-library nodes.

    Calls of library functions by name are not op types and are left out.
    """
    saved_model = _read_saved_model(export_dir)
    ops = set()
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        functions = {f.signature.name for f in graph.library.function}
        ops.update(node.op for node in graph.node)
        for function in graph.library.function:
            ops.update(node.op for node in function.node_def)
        ops -= functions
    return ops


def check_serving_ops(export_dir: PathLike, raise_on_error: bool = False) -> OpCheck:
    """Checks that every op of the SavedModel is a registered TensorFlow op and none calls Python.

    Returns an :class:`OpCheck`; with ``raise_on_error=True`` raises ``ValueError`` listing the
    offending ops instead of returning a failed check.
    """
    from tensorflow.python.framework import op_def_registry

    ops = collect_ops(export_dir)
    unregistered = {op for op in ops if op_def_registry.get(op) is None}
    denied = {op for op in ops if op in DENIED_OPS}
    result = OpCheck(ops, unregistered, denied)
    if raise_on_error and not result.ok:
        raise ValueError(f"The SavedModel at {export_dir} cannot run in TF Serving: {result.summary()}")
    return result


def _shape_text(shape):
    if shape is None:
        return "unknown rank"
    return "(" + ", ".join("-1" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def format_report(export_dir: PathLike) -> Tuple[str, OpCheck]:
    """A human-readable report of the signatures and the op check (what ``keras-mmoe inspect`` prints)."""
    from keras_mmoe.serving.warmup import WARMUP_FILE

    lines = [f"SavedModel: {os.path.abspath(export_dir)}"]
    for key, sig in describe_signatures(export_dir).items():
        lines.append(f"signature '{key}' (method {sig['method']})")
        for kind in ("inputs", "outputs"):
            lines.append(f"  {kind}:")
            for name, info in sig[kind].items():
                lines.append(f"    {name}: {info['dtype']} {_shape_text(info['shape'])}  [{info['tensor']}]")
    warmup = os.path.join(export_dir, WARMUP_FILE)
    lines.append(f"warmup records: {warmup}" if os.path.exists(warmup) else "warmup records: none")
    check = check_serving_ops(export_dir)
    lines.append(f"op check: {check.summary()}")
    return "\n".join(lines), check
