"""Gradient updates shared by every step (xe, scst, gan, discriminator): sum, clip, apply if finite.

Each step computes its replica's share of one global loss (divided by global
counts, so N replicas take the step one device would on the same global
batch). `reduce_gradients` sums the gradients across replicas before
clipping, so clipping sees the global gradient; `apply_if_finite` applies the
update only when the global loss and gradient norm are finite. All replicas
decide on the same all-reduced values, so they skip together, and a skipped
update changes no weight, no optimizer slot and not the optimizer's
iteration count. The loop counts skips (`tfcap.training.guard`).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


def clip_gradients(grads: list[tf.Tensor], clip: float, mode: str) -> list[tf.Tensor]:
    """Clips gradients by value or by global norm (`clip` 0 disables).

    >>> [g.numpy().tolist() for g in clip_gradients([tf.constant([3.0, -0.05])], 0.1, "value")]
    [[0.10000000149011612, -0.05000000074505806]]
    """
    if not clip:
        return grads
    if mode == "value":
        return [tf.clip_by_value(g, -clip, clip) for g in grads]
    if mode == "norm":
        return tf.clip_by_global_norm(grads, clip)[0]
    raise ValueError(f"grad_clip_mode must be 'value' or 'norm', got {mode!r}")


def reduce_gradients(
    grads: list[tf.Tensor], loss: tf.Tensor
) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor]:
    """Sums this replica's `grads` and `loss` over replicas (call in a replica context).

    Returns the summed gradients, their global norm (before clipping) and a
    bool scalar, True when the summed loss and the norm are finite (the same
    on every replica).
    """
    ctx = tf.distribute.get_replica_context()
    grads = [tf.convert_to_tensor(g) for g in grads]  # IndexedSlices (embeddings) made dense
    *grads, total = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [*grads, tf.cast(loss, tf.float32)])
    norm = tf.linalg.global_norm(grads)
    return grads, norm, tf.math.is_finite(norm) & tf.math.is_finite(total)


def apply_if_finite(
    strategy: tf.distribute.Strategy,
    optimizer: keras.optimizers.Optimizer,
    variables: list,
    grads,
    finite,
    clip: float,
    mode: str,
) -> tf.Tensor:
    """Clips and applies the summed `grads` unless they are not `finite`; returns `skipped`.

    Call in the cross-replica context of a step's tf.function with the per-replica
    results of `reduce_gradients` (the condition must sit outside `strategy.run`:
    the optimizer's cross-replica sync cannot run inside control flow there). The
    optimizer sums what each replica passes, so each passes its share
    (`1 / replicas`) of the summed, clipped gradient.
    """

    def replica_apply(summed):
        share = 1.0 / tf.distribute.get_replica_context().num_replicas_in_sync
        clipped = clip_gradients(summed, clip, mode)
        optimizer.apply_gradients([(g * share, v) for g, v in zip(clipped, variables, strict=True)])

    def update():
        strategy.run(replica_apply, args=(grads,))
        return tf.constant(False)

    ok = strategy.experimental_local_results(finite)[0]
    return tf.cond(ok, update, lambda: tf.constant(True))


def step_skipped(loss, grad_norm) -> bool:
    """Whether a step that returned this global `loss` and `grad_norm` skipped its
    update (`apply_if_finite` applies only finite ones).

    >>> step_skipped(1.0, float("nan")), step_skipped(1.0, 2.0)
    (True, False)
    """
    return not (np.isfinite(float(loss)) and np.isfinite(float(grad_norm)))
