"""The cross-entropy (teacher forcing) training step, under any tf.distribute strategy.

The loss is the sum of token cross-entropies over the global batch divided by
the global number of target tokens, so N replicas compute the same step as one
device on the same global batch. Gradients are summed across replicas before
clipping, so clipping sees the global gradient too.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from tfcap.data import vocab
from tfcap.losses import token_cross_entropy
from tfcap.model.captioner import Captioner


@dataclasses.dataclass(frozen=True)
class XEConfig:
    """Knobs of the XE step.

    Attributes:
        label_smoothing: float in [0, 1).
        grad_clip: clip threshold (0 disables).
        grad_clip_mode: "value" (element-wise, the Up-Down recipe) or "norm" (global norm).
    """

    label_smoothing: float = 0.0
    grad_clip: float = 0.1
    grad_clip_mode: str = "value"


def clip_gradients(grads: list[tf.Tensor], clip: float, mode: str) -> list[tf.Tensor]:
    """Clips gradients by value or by global norm (`clip` 0 disables)."""
    if not clip:
        return grads
    if mode == "value":
        return [tf.clip_by_value(g, -clip, clip) for g in grads]
    if mode == "norm":
        return tf.clip_by_global_norm(grads, clip)[0]
    raise ValueError(f"grad_clip_mode must be 'value' or 'norm', got {mode!r}")


def apply_replica_gradients(
    optimizer: keras.optimizers.Optimizer,
    grads: list[tf.Tensor],
    variables: list,
    clip: float,
    mode: str,
) -> tf.Tensor:
    """Sums `grads` over replicas, clips, applies; returns the pre-clip global norm.

    Call inside a replica context. The optimizer sums what each replica passes,
    so each passes its share (`1 / replicas`) of the summed, clipped gradient.
    """
    ctx = tf.distribute.get_replica_context()
    grads = [tf.convert_to_tensor(g) for g in grads]  # IndexedSlices (embeddings) made dense
    grads = ctx.all_reduce(tf.distribute.ReduceOp.SUM, grads)
    norm = tf.linalg.global_norm(grads)
    grads = clip_gradients(grads, clip, mode)
    share = 1.0 / ctx.num_replicas_in_sync
    optimizer.apply_gradients([(g * share, v) for g, v in zip(grads, variables, strict=True)])
    return norm


def make_xe_step(
    strategy: tf.distribute.Strategy,
    model: Captioner,
    optimizer: keras.optimizers.Optimizer,
    config: XEConfig,
    jit_compile: bool = False,
):
    """A tf.function `(distributed batch, sample_prob, seed [2]) -> (loss, grad_norm)`.

    `loss` is the global batch's mean token cross-entropy; `sample_prob` the
    scheduled-sampling probability (float32 scalar).
    """

    def replica_step(batch, sample_prob, seed):
        ctx = tf.distribute.get_replica_context()
        captions = batch["captions"]  # [batch, seq_per_img, length]
        targets = tf.reshape(captions[..., 1:], [-1, captions.shape[-1] - 1])  # [rows, time]
        mask = tf.not_equal(targets, vocab.PAD_ID)
        tokens = ctx.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.cast(mask, tf.float32))
        )
        replica_seed = tf.random.experimental.stateless_fold_in(seed, ctx.replica_id_in_sync_group)
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            logits, _ = model.teacher_forcing(
                batch["features"],
                batch["region_mask"],
                captions,
                training=True,
                sample_prob=sample_prob,
                seed=replica_seed,
            )
            loss = token_cross_entropy(logits, targets, mask, config.label_smoothing)
            loss = tf.reduce_sum(loss) / tf.maximum(tokens, 1.0)
        grads = tape.gradient(loss, variables)
        norm = apply_replica_gradients(
            optimizer, grads, variables, config.grad_clip, config.grad_clip_mode
        )
        return loss, norm

    @tf.function(jit_compile=jit_compile)
    def step(dist_batch, sample_prob, seed):
        losses, norms = strategy.run(replica_step, args=(dist_batch, sample_prob, seed))
        loss = strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)
        return loss, strategy.experimental_local_results(norms)[0]

    return step


def scheduled_sampling_prob(
    epoch: int, start: int, every: int, increase: float, maximum: float
) -> float:
    """Probability of feeding the model's own word at `epoch` (0-based); `start` < 0 disables.

    >>> [scheduled_sampling_prob(e, 0, 5, 0.05, 0.25) for e in (0, 4, 5, 30)]
    [0.0, 0.0, 0.05, 0.25]
    """
    if start < 0 or epoch < start:
        return 0.0
    return min(maximum, increase * ((epoch - start) // max(every, 1)))
