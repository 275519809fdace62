"""The cross-entropy (teacher forcing) update of the xe phase, under any tf.distribute strategy.

The loss is the sum of token cross-entropies over the global batch divided by
the global number of target tokens, so N replicas compute the same step as one
device on the same global batch; summing, clipping and the finite-only update
are `tfcap.training.updates`'.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from tfcap.data import vocab
from tfcap.losses import token_cross_entropy
from tfcap.model.captioner import Captioner
from tfcap.model.grad_taps import GradTaps
from tfcap.training.updates import apply_if_finite, reduce_gradients


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


def make_xe_step(
    strategy: tf.distribute.Strategy,
    model: Captioner,
    optimizer: keras.optimizers.Optimizer,
    config: XEConfig,
    jit_compile: bool = False,
    loss_multiplier: tf.Variable | None = None,
):
    """A function `(distributed batch, sample_prob, seed [2]) -> (loss, grad_norm)`.

    `loss` is the global batch's mean token cross-entropy; `sample_prob` the
    scheduled-sampling probability (Python float or float32 scalar). At 0 the
    step runs a tf.function without the sampling ops, whose loop also leaves
    the vocabulary projection to one product after it; above 0, one with them.
    A step whose `loss` or `grad_norm` is not finite made no update
    (`tfcap.training.updates.step_skipped`). `loss_multiplier`: a testing aid, a float32 scalar
    variable the loss is multiplied by (1.0; NaN or Inf injects a fault).
    """

    def replica_step(batch, sample_prob, seed, scheduled):
        ctx = tf.distribute.get_replica_context()
        captions = batch["captions"]  # [batch, seq_per_img, length]
        targets = tf.reshape(captions[..., 1:], [-1, captions.shape[-1] - 1])  # [rows, time]
        mask = tf.not_equal(targets, vocab.PAD_ID)
        tokens = ctx.all_reduce(
            tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.cast(mask, tf.float32))
        )
        replica_seed = tf.random.experimental.stateless_fold_in(seed, ctx.replica_id_in_sync_group)
        variables = model.trainable_variables
        tapped = not scheduled and model.takes_grad_taps
        with tf.GradientTape() as tape:
            taps = GradTaps(tape) if tapped else None
            logits, _ = model.teacher_forcing(
                batch["features"],
                batch["region_mask"],
                captions,
                training=True,
                sample_prob=sample_prob if scheduled else 0.0,
                seed=replica_seed,
                taps=taps,
            )
            loss = token_cross_entropy(logits, targets, mask, config.label_smoothing)
            loss = tf.reduce_sum(loss) / tf.maximum(tokens, 1.0)
            if loss_multiplier is not None:
                loss = loss * loss_multiplier
        grads = taps.gradients(loss, variables) if tapped else tape.gradient(loss, variables)
        grads, norm, finite = reduce_gradients(grads, loss)
        return loss, norm, grads, finite

    def make(scheduled):
        @tf.function(jit_compile=jit_compile)
        def step(dist_batch, sample_prob, seed):
            losses, norms, grads, finite = strategy.run(
                replica_step, args=(dist_batch, sample_prob, seed, scheduled)
            )
            variables = model.trainable_variables
            clip, mode = config.grad_clip, config.grad_clip_mode
            apply_if_finite(strategy, optimizer, variables, grads, finite, clip, mode)
            loss = strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)
            return loss, strategy.experimental_local_results(norms)[0]

        return step

    plain, scheduled = make(False), make(True)

    def step(dist_batch, sample_prob, seed):
        prob = tf.convert_to_tensor(sample_prob, tf.float32)
        return (scheduled if float(prob) > 0 else plain)(dist_batch, prob, seed)

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
