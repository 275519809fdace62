"""Choosing a tf.distribute strategy.

- "default": the default strategy (one device).
- "mirrored": `MirroredStrategy` over `num_devices` devices. On a machine
  without accelerators the CPU is split into that many logical devices, which
  gives a real multi-replica run on a laptop.
- "multi_worker": `MultiWorkerMirroredStrategy` from the `TF_CONFIG`
  environment variable (one process per worker).

`make_strategy` must run before TensorFlow initialises its devices (before the
first op), as logical device configuration cannot change afterwards.

When a worker of a multi-worker job dies, TensorFlow's coordination service
stops receiving its heartbeats and aborts the collectives of the others
(about 10 s here); `explain_lost_workers` turns that into `WorkerLostError`,
which says how to resume. Restarting every worker with the same command
resumes from the chief's last checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


def split_cpu(num_devices: int) -> list[str]:
    """Splits the CPU into `num_devices` logical devices; returns their names."""
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if not current or len(current) != num_devices:
        try:
            tf.config.set_logical_device_configuration(
                cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices
            )
        except RuntimeError as e:
            raise RuntimeError(
                f"cannot split the CPU into {num_devices} devices after TensorFlow has "
                f"initialised: create the strategy first ({e})"
            ) from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def make_strategy(kind: str = "default", num_devices: int = 1) -> tf.distribute.Strategy:
    """The strategy for `kind` (module docstring)."""
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if len(gpus) >= num_devices:
            devices = [f"/gpu:{i}" for i in range(num_devices)]
        else:
            devices = split_cpu(num_devices)
        return tf.distribute.MirroredStrategy(devices=devices)
    if kind == "multi_worker":
        config = os.environ.get("TF_CONFIG")
        if not config:
            raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable")
        try:
            json.loads(config)
        except json.JSONDecodeError as e:
            raise ValueError(f"TF_CONFIG is not valid JSON: {e}") from None
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"strategy must be one of {STRATEGIES}, got {kind!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True on the worker that writes checkpoints, summaries and results."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
    )


class WorkerLostError(RuntimeError):
    """A multi-worker job lost a worker (its collectives were aborted)."""


@contextlib.contextmanager
def explain_lost_workers(strategy: tf.distribute.Strategy, model_dir: str):
    """Re-raises a collective failure of a multi-worker job as `WorkerLostError`."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        yield
        return
    try:
        yield
    except (
        tf.errors.UnavailableError,
        tf.errors.DeadlineExceededError,
        tf.errors.AbortedError,
        tf.errors.CancelledError,
    ) as e:
        first = str(e).strip().splitlines()
        raise WorkerLostError(
            f"{resolver.task_type} {resolver.task_id}: the multi-worker job lost a worker "
            f"({type(e).__name__}: {' '.join(first[:3])[:400]}). Restart every worker with "
            f"the same command and TF_CONFIG to resume from {model_dir}/ckpt."
        ) from e
