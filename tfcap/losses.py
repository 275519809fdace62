"""Caption losses."""

from __future__ import annotations

import tensorflow as tf


def token_cross_entropy(
    logits: tf.Tensor, targets: tf.Tensor, mask: tf.Tensor, label_smoothing: float = 0.0
) -> tf.Tensor:
    """Per-token cross-entropy, zero where `mask` is False.

    Args:
        logits: float `[rows, time, vocab]`.
        targets: int `[rows, time]`.
        mask: bool `[rows, time]`.
        label_smoothing: float in [0, 1): the target distribution puts
            `1 - label_smoothing` on the target and spreads the rest uniformly.

    Returns:
        float32 `[rows, time]`.

    >>> logits = tf.math.log([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1]]])
    >>> loss = token_cross_entropy(logits, tf.constant([[0, 1]]), tf.constant([[True, False]]))
    >>> [round(float(x), 4) for x in loss[0]]
    [0.6931, 0.0]
    """
    if logits.shape.rank != 3 or targets.shape.rank != 2:
        raise ValueError(
            f"logits must be [rows, time, vocab] and targets [rows, time], got "
            f"{logits.shape} and {targets.shape}"
        )
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32))
    nll = -tf.gather(log_probs, tf.cast(targets, tf.int32), batch_dims=2)  # [rows, time]
    if label_smoothing:
        uniform = -tf.reduce_mean(log_probs, axis=-1)
        nll = (1.0 - label_smoothing) * nll + label_smoothing * uniform
    return tf.where(mask, nll, 0.0)
