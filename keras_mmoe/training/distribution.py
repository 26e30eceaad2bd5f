"""Which ``tf.distribute`` strategy a training process runs, and this process's role in it.

:func:`make_distribution` is called first in a training program, before TensorFlow creates its
devices: ``"none"`` (one device), ``"mirrored"`` (all local devices; ``devices=N`` splits the CPU
into N logical devices), ``"multi-worker"`` (``MultiWorkerMirroredStrategy`` from ``TF_CONFIG``)
or ``"parameter-server"`` (``ParameterServerStrategy`` with a ``ClusterCoordinator`` on the chief;
the ``worker`` and ``ps`` tasks of ``TF_CONFIG`` serve a ``tf.distribute.Server`` until killed).
"""

import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import tensorflow as tf

STRATEGIES = ("none", "mirrored", "multi-worker", "parameter-server")

# One strategy per process and arguments: two strategies over the same devices would reuse the
# same collective-op keys (TensorFlow then fails with a shape mismatch between collectives).
_CREATED = {}


@dataclass
class Distribution:
    """A strategy and this process's place in it.

    Attributes:
        name: one of :data:`STRATEGIES`.
        strategy: the ``tf.distribute.Strategy`` (the default strategy for ``"none"``).
        coordinator: the ``ClusterCoordinator`` (``"parameter-server"`` chief only), else None.
        task_type, task_id: this process's task in ``TF_CONFIG`` (``None``/0 without a cluster).
        is_chief: whether this process writes checkpoints, the ``.keras`` file and the export.
    """

    name: str
    strategy: Any
    coordinator: Any = None
    task_type: Optional[str] = None
    task_id: int = 0
    is_chief: bool = True

    @property
    def num_replicas(self) -> int:
        """Replicas whose gradients are summed each step (parameter-server: per worker step)."""
        return int(self.strategy.num_replicas_in_sync)

    def scope(self) -> Any:
        """The strategy's scope: create the model, the optimizer and the metrics in it."""
        return self.strategy.scope()

    def describe(self) -> str:
        """One line for the training plan: strategy, replicas, this task."""
        text = f"strategy {self.name}: {self.num_replicas} replica(s) in sync"
        if self.name == "mirrored":
            devices = self.strategy.extended.worker_devices
            text += f" on {', '.join(devices)}"
        if self.task_type is not None:
            text += f"; this process is {self.task_type} {self.task_id}" + (" (chief)" if self.is_chief else "")
        return text


def read_tf_config(strategy_name: str) -> dict:
    """The ``TF_CONFIG`` environment variable as a dict, checked for ``strategy_name``.

    Raises:
        ValueError: one line naming what is missing or wrong.
    """
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise ValueError(
            f"strategy {strategy_name!r} reads the cluster from the TF_CONFIG environment variable, which is "
            'not set; e.g. TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}}\''
        )
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON ({error}): {raw[:200]}") from None
    cluster = config.get("cluster") if isinstance(config, dict) else None
    task = config.get("task") if isinstance(config, dict) else None
    if not isinstance(cluster, dict) or not cluster:
        raise ValueError(f"TF_CONFIG needs a non-empty 'cluster' table of job name -> addresses, received: {raw[:200]}")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ValueError(f"TF_CONFIG needs 'task': {{'type': ..., 'index': ...}}, received: {raw[:200]}")
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(isinstance(a, str) for a in addresses):
            raise ValueError(f"TF_CONFIG cluster job {job!r} must be a non-empty list of 'host:port', received: {addresses!r}")
    task_type, task_id = task["type"], task["index"]
    if task_type not in cluster:
        raise ValueError(f"TF_CONFIG task type {task_type!r} is not a job of the cluster {sorted(cluster)}")
    if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 <= task_id < len(cluster[task_type]):
        raise ValueError(
            f"TF_CONFIG task index {task_id!r} is out of range for job {task_type!r} "
            f"({len(cluster[task_type])} address(es))"
        )
    if strategy_name == "multi-worker":
        extra = sorted(set(cluster) - {"chief", "worker"})
        if extra or "worker" not in cluster and "chief" not in cluster:
            raise ValueError(
                f"strategy 'multi-worker' needs TF_CONFIG cluster jobs 'worker' (and optionally 'chief'), "
                f"received jobs {sorted(cluster)}"
            )
    if strategy_name == "parameter-server":
        missing = [job for job in ("chief", "worker", "ps") if job not in cluster]
        extra = sorted(set(cluster) - {"chief", "worker", "ps"})
        if missing or extra:
            raise ValueError(
                f"strategy 'parameter-server' needs TF_CONFIG cluster jobs 'chief', 'worker' and 'ps' "
                f"(and no others), received jobs {sorted(cluster)}"
            )
        if len(cluster["chief"]) != 1:
            raise ValueError(f"strategy 'parameter-server' needs exactly one chief, received {cluster['chief']}")
    return config


def split_cpu(devices: int) -> list:
    """Splits the first physical CPU into ``devices`` logical devices; returns their names.

    Must run before TensorFlow initializes its devices (before any tensor is created).
    """
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 1:
        raise ValueError(f"`devices` must be a positive integer, received: devices={devices!r}")
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(devices)]
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError:
        current = tf.config.list_logical_devices("CPU")
        if len(current) != devices:
            raise ValueError(
                f"`devices={devices}` must be set before TensorFlow initializes its devices (it already has "
                f"{len(current)} logical CPU device(s)); call make_distribution first in the program, "
                "before building data or models"
            ) from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def serve(config: dict) -> None:
    """Runs this process's ``tf.distribute.Server`` (a parameter-server ``worker`` or ``ps`` task)
    and blocks until the process is killed: the chief drives the training."""
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    server = tf.distribute.Server(
        resolver.cluster_spec(),
        job_name=config["task"]["type"],
        task_index=config["task"]["index"],
        protocol=resolver.rpc_layer or "grpc",
        start=True,
    )
    server.join()


def make_distribution(strategy: str = "none", *, devices: Optional[int] = None,
                      log: Optional[Callable[[str], None]] = None) -> Distribution:
    """Creates the strategy; call it first in the program (strategies set up devices and servers).

    Args:
        strategy: ``"none"``, ``"mirrored"``, ``"multi-worker"`` or ``"parameter-server"``.
        devices: ``"mirrored"`` only: split the CPU into this many logical devices and mirror over
            them (for CPU machines and tests). Without it, ``"mirrored"`` uses every local GPU, or
            the CPU when there is none.
        log: optional callable taking one line (what a ``worker`` or ``ps`` task does).

    On a ``"parameter-server"`` ``worker`` or ``ps`` task this function runs the task's server and
    never returns (the process ends when it is killed), so the same program runs unchanged on every
    machine of the cluster.

    Returns:
        A :class:`Distribution`; called again with the same arguments, the same one (a process
        creates each strategy once: a second strategy over the same devices breaks TensorFlow's
        collective operations).

    Raises:
        ValueError: an unknown strategy, ``devices`` with another strategy, a missing or malformed
            ``TF_CONFIG``, or devices already initialized.

    Example:

    >>> distribution = make_distribution("mirrored", devices=2)   # first thing in the program
    >>> distribution.num_replicas
    2
    """
    key = (strategy, devices)
    if key in _CREATED:
        return _CREATED[key]
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}, received: strategy={strategy!r}")
    if devices is not None and strategy != "mirrored":
        raise ValueError(
            f"`devices` splits the CPU for strategy 'mirrored' only, received devices={devices!r} with strategy={strategy!r}"
        )
    if strategy == "none":
        return Distribution("none", tf.distribute.get_strategy())
    if strategy == "mirrored":
        names = split_cpu(devices) if devices is not None else None
        _CREATED[key] = Distribution("mirrored", tf.distribute.MirroredStrategy(names))
        return _CREATED[key]

    config = read_tf_config(strategy)
    task_type, task_id = config["task"]["type"], config["task"]["index"]
    cluster = config["cluster"]
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    if strategy == "multi-worker":
        mwms = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
        is_chief = task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)
        _CREATED[key] = Distribution("multi-worker", mwms, task_type=task_type, task_id=task_id, is_chief=is_chief)
        return _CREATED[key]

    if task_type in ("worker", "ps"):
        if log is not None:
            log(f"parameter-server cluster: this process is {task_type} {task_id}, serving until it is stopped")
        serve(config)  # never returns
    ps = tf.distribute.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(ps)
    _CREATED[key] = Distribution("parameter-server", ps, coordinator, task_type=task_type, task_id=task_id, is_chief=True)
    return _CREATED[key]
