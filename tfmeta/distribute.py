"""Training on several devices and machines: TensorFlow's `tf.distribute`, as a scope.

`make_strategy` turns `train.strategy` into a strategy:

- "default": one device, TensorFlow's default strategy.
- "mirrored": `MirroredStrategy` over every local GPU (NCCL all-reduce), or over `train.devices`.
  CPU devices beyond the one physical CPU device ("/cpu:0", "/cpu:1", ...) are made logical
  devices, so that replicas can be tried and tested side by side on a CPU.
- "multi-worker": `MultiWorkerMirroredStrategy` over the cluster described by `TF_CONFIG`, exactly
  as TensorFlow defines it: {"cluster": {"worker": ["host:port", ...], "chief": ["host:port"]},
  "task": {"type": "worker", "index": 0}}. Each worker runs the same `tfmeta train` command.

The meta-step is the same under each (`training.make_meta_step`): replica r of R computes the
meta-gradient of its share of the global meta-batch, already divided by the global size n, the
strategy sums, and one Adam update follows. Replica r takes episodes i n + r n/R ... i n + (r+1)
n/R - 1 of meta-batch i (`replica_batches`); episodes are pure functions of (seed, index), so the
union over replicas is the one-process meta-batch and the result does not depend on R, up to the
order of floating-point sums. Statistics over the whole meta-batch (gradient agreement's weights,
maml-reg's mean direction) are summed across replicas with `all_sum`, which is differentiable and
the identity with one replica.
"""

import contextlib
import json
import os
import re
from typing import Callable, Iterator, Optional

import tensorflow as tf

from tfmeta import ports
from tfmeta.config.train import DISTRIBUTIONS
from tfmeta.errors import ConfigError, LostWorkerError

TF_CONFIG_EXAMPLE = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
                     '"task": {"type": "worker", "index": 0}}')


def read_tf_config(text: Optional[str]) -> dict:
    """TF_CONFIG's cluster and task, checked field by field; raises ConfigError naming the field."""
    def fail(message):
        raise ConfigError(f"TF_CONFIG {message}. A two-worker example: {TF_CONFIG_EXAMPLE}")

    if not text:
        fail("is not set: --strategy multi-worker reads the cluster from it, as TensorFlow "
             "defines it (Kubeflow's TFJob sets it for each worker)")
    try:
        value = json.loads(text)
    except ValueError as error:
        fail(f"is not JSON ({error})")
    if not isinstance(value, dict):
        fail(f"must be a JSON object, got {type(value).__name__}")
    cluster = value.get("cluster")
    if not isinstance(cluster, dict) or not cluster:
        fail("field 'cluster' must be an object of roles to lists of \"host:port\" addresses")
    for role, addresses in cluster.items():
        if role in ("ps", "evaluator"):
            fail(f"field 'cluster.{role}': {role} tasks are not supported; "
                 "MultiWorkerMirroredStrategy trains synchronously with 'worker' and 'chief'")
        if role not in ("worker", "chief"):
            fail(f"field 'cluster.{role}': unknown role; expected 'worker' and optionally "
                 "'chief'")
        if not isinstance(addresses, list) or not addresses:
            fail(f"field 'cluster.{role}' must be a non-empty list of \"host:port\" addresses")
        for i, address in enumerate(addresses):
            host, _, port = str(address).rpartition(":")
            if not isinstance(address, str) or not host or not port.isdigit() or not (
                    0 < int(port) < 65536):
                fail(f"field 'cluster.{role}[{i}]' is {address!r}; expected \"host:port\"")
    if len(cluster.get("chief", [])) > 1:
        fail(f"field 'cluster.chief' lists {len(cluster['chief'])} addresses; there is one chief")
    task = value.get("task")
    if not isinstance(task, dict):
        fail("field 'task' must be an object {\"type\": ..., \"index\": ...} naming this process")
    role, index = task.get("type"), task.get("index")
    if role not in cluster:
        fail(f"field 'task.type' is {role!r}, which is not a role of the cluster "
             f"({', '.join(cluster)})")
    if not isinstance(index, int) or isinstance(index, bool) or not (
            0 <= index < len(cluster[role])):
        fail(f"field 'task.index' is {index!r}, but cluster.{role} has {len(cluster[role])} "
             f"address(es): this process's task is not in the cluster")
    return {"cluster": cluster, "task": {"type": role, "index": index}}


def local_cluster(workers: int) -> list:
    """One TF_CONFIG value per worker of a cluster on this machine (127.0.0.1, free ports): for
    trying a multi-worker job on one host."""
    addresses = [f"127.0.0.1:{port}" for port in ports.free_ports(workers)]
    return [json.dumps({"cluster": {"worker": addresses}, "task": {"type": "worker", "index": i}})
            for i in range(workers)]


def is_chief_task(tf_config: dict) -> bool:
    """TensorFlow's rule: the chief is task "chief", or worker 0 when the cluster has none."""
    task = tf_config["task"]
    if "chief" in tf_config["cluster"]:
        return task["type"] == "chief"
    return task["type"] == "worker" and task["index"] == 0


def configure_devices(devices: list) -> list:
    """Checks `train.devices` and makes the logical CPU devices it names; returns them as device
    strings. Logical devices can only be made before TensorFlow starts its runtime."""
    specs = []
    for name in devices:
        try:
            spec = tf.DeviceSpec.from_string(name if str(name).startswith("/") else f"/{name}")
        except (ValueError, TypeError):
            spec = None
        if spec is None or spec.device_type not in ("CPU", "GPU") or spec.device_index is None:
            raise ConfigError(f"train.devices: {name!r} is not a device; expected names like "
                              "\"/gpu:0\" or \"/cpu:1\"")
        specs.append(spec)
    cpus = max((s.device_index + 1 for s in specs if s.device_type == "CPU"), default=0)
    physical = tf.config.list_physical_devices("CPU")
    # Listing logical devices would start the runtime; the configuration does not.
    logical = tf.config.get_logical_device_configuration(physical[0])
    if cpus > (len(logical) if logical else 1):
        try:
            tf.config.set_logical_device_configuration(
                physical[0], [tf.config.LogicalDeviceConfiguration()] * cpus)
        except RuntimeError:
            raise ConfigError(f"train.devices names {cpus} CPU devices, but TensorFlow has "
                              "already started with fewer; logical CPU devices must be made "
                              "before it starts (run in a fresh process)") from None
    gpus = len(tf.config.list_physical_devices("GPU"))
    for name, spec in zip(devices, specs):
        if spec.device_type == "GPU" and spec.device_index >= gpus:
            raise ConfigError(f"train.devices: {name!r} does not exist; this machine has "
                              f"{gpus} GPU(s)")
    return [f"/{s.device_type.lower()}:{s.device_index}" for s in specs]


_MADE: dict = {}  # one strategy object per kind and process: see make_strategy


def make_strategy(strategy: str, devices: list = ()) -> tf.distribute.Strategy:
    """The strategy `train.strategy` names; call it before any other TensorFlow op.

    A process keeps one strategy object of each kind and returns it again: two MirroredStrategy
    objects over the same devices would reuse collective-op keys and fail, and TensorFlow allows
    one MultiWorkerMirroredStrategy per process.

    Raises:
        ConfigError: an unknown strategy, devices that do not exist, or a bad TF_CONFIG.
    """
    key = (strategy, tuple(devices))
    if key not in _MADE:
        _MADE[key] = _new_strategy(strategy, devices)
    return _MADE[key]


def _new_strategy(strategy: str, devices: list) -> tf.distribute.Strategy:
    if strategy not in DISTRIBUTIONS:
        raise ConfigError(f"train.strategy must be one of {', '.join(DISTRIBUTIONS)}, got "
                          f"{strategy!r}")
    if devices and strategy != "mirrored":
        raise ConfigError(f"train.devices is for --strategy mirrored, not {strategy}; a "
                          "multi-worker job uses every local GPU of each worker (restrict them "
                          "with CUDA_VISIBLE_DEVICES)")
    if strategy == "default":
        return tf.distribute.get_strategy()
    if strategy == "mirrored":
        return tf.distribute.MirroredStrategy(configure_devices(list(devices)) or None)
    tf_config = read_tf_config(os.environ.get("TF_CONFIG"))
    task = tf_config["task"]
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except (tf.errors.OpError, RuntimeError, ValueError) as error:
        address = tf_config["cluster"][task["type"]][task["index"]]
        raise ConfigError(f"cannot start {task['type']} {task['index']} at {address}: "
                          f"{error}") from None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, logs and history (always, but in a multi-worker
    job, where only the chief does)."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return is_chief_task(read_tf_config(os.environ.get("TF_CONFIG")))
    return True


@contextlib.contextmanager
def peers_watched(strategy: tf.distribute.Strategy, checkpoint: Callable[[], Optional[str]]):
    """Turns the error a surviving worker gets when a peer of its multi-worker job dies into a
    `LostWorkerError` that names the peer and the remedy; `checkpoint()` gives the checkpoint a
    restarted job continues from. Other errors, and other strategies, pass unchanged."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.CancelledError, tf.errors.AbortedError,
            tf.errors.InternalError) as error:
        if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or not (
                isinstance(error, tf.errors.UnavailableError)
                or "Collective ops is aborted" in error.message):
            raise
        raise LostWorkerError(lost_peer_message(
            error.message, read_tf_config(os.environ.get("TF_CONFIG")), checkpoint())) from error


def lost_peer_message(message: str, tf_config: dict, checkpoint: Optional[str],
                      probe: Callable[[str], bool] = ports.accepts) -> str:
    """One line for TensorFlow's lost-peer `message`: which task was lost (as TF_CONFIG names it),
    why, and how to continue from `checkpoint` (None: from the beginning).

    Which of TensorFlow's mechanisms notices the loss first is a race, and each words it its own
    way ("recvmsg:Connection reset by peer", "Socket closed", "Failed to send RPC to coordination
    service"): the reason is cut to one sentence on one line, and when the message names no task,
    the peers whose addresses no longer accept a connection (`probe`) are named instead."""
    task = re.search(r"remote target /job:(\w+)/replica:\d+/task:(\d+)", message)
    if task:
        lost = [(task.group(1), int(task.group(2)))]
    else:
        me = tf_config["task"]
        lost = [(role, i) for role, addresses in tf_config["cluster"].items()
                for i, address in enumerate(addresses)
                if (role, i) != (me["type"], me["index"]) and not probe(address)]
    peer = " and ".join(_task_name(tf_config, role, index) for role, index in lost) or "a peer"
    return (f"lost {peer} of the multi-worker job ({_one_line_reason(message)}); the job cannot go "
            "on without it. Restart every worker with the same command and --auto-resume: the "
            "job continues from " + (f"its last checkpoint, {checkpoint}" if checkpoint
                                     else "the beginning (no checkpoint yet)"))


def _task_name(tf_config: dict, role: str, index: int) -> str:
    addresses = tf_config["cluster"].get(role, [])
    return f"{role} {index}" + (f" ({addresses[index]})" if index < len(addresses) else "")


def _one_line_reason(message: str) -> str:
    """The cause in TensorFlow's status `message`: the collective's abort reason, or else its last
    line, without graph-node and op suffixes, cut to its first sentence (the coordination service
    goes on to advise reading logs) and to 200 characters."""
    message = re.sub(r"\[\[\{\{node [^]]*\]\]|\[Op:[^]]*\]", "", message)
    cause = re.search(r"Collective ops is aborted by: ([^\n]+)", message)
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reason = cause.group(1) if cause else (lines or ["no reason given"])[-1]
    return re.split(r"(?<=[a-z])\. ", reason.strip())[0].strip()[:200]


def check_divisible(batch_size: int, strategy: tf.distribute.Strategy, key: str) -> None:
    """A global batch that does not split evenly over the replicas is refused."""
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ConfigError(f"{key} is {batch_size}, which does not divide by the {replicas} "
                          f"replicas of this strategy; use a multiple of {replicas} (each replica "
                          "takes an equal share)")


def replica_batches(strategy: tf.distribute.Strategy,
                    make_dataset: Callable[[int, int], tf.data.Dataset]) -> Iterator:
    """Each step's input: replica r's share from `make_dataset(r, replicas)`, as a distributed
    value (a plain batch with one replica). `next` on it also works inside a `tf.function`, so a
    compiled loop can draw several steps' inputs in one call (`training.repeat`)."""
    replicas = strategy.num_replicas_in_sync
    if replicas == 1:
        return iter(make_dataset(0, 1))
    return _ReplicaShares(strategy, make_dataset)


class _ReplicaShares:
    """An iterator of distributed values: one element of a dataset that zips this worker's
    replicas' shares, handed to each replica by its id."""

    def __init__(self, strategy: tf.distribute.Strategy,
                 make_dataset: Callable[[int, int], tf.data.Dataset]):
        replicas = strategy.num_replicas_in_sync
        local = []   # a multi-worker job calls value functions for this worker's replicas only
        strategy.experimental_distribute_values_from_function(
            lambda context: local.append(context.replica_id_in_sync_group) or 0)
        self.strategy, self.position = strategy, {r: i for i, r in enumerate(local)}
        self.shares = iter(tf.data.Dataset.zip(tuple(make_dataset(r, replicas) for r in local)))

    def __iter__(self):
        return self

    def __next__(self):
        shares = next(self.shares)
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: shares[self.position[context.replica_id_in_sync_group]])


def all_sum(value):
    """The sum of `value` (a nest of tensors) over all replicas, inside a replica's step; the
    identity with one replica. Its gradient is again an all-sum, so it may sit on a tape."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)
