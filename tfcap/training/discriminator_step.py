"""Training the discriminator D: (image, caption) pairs, the loss, the distributed step.

Pairs of a batch (`make_pairs`). With `k = seq_per_img`, every image `i` gets
`per_image` image-major rows, in this order:

- real (kind 0, label 1): image `i` with its own `k` human captions;
- fake (kind 1, label 0): image `i` with the generator's `k` captions (only
  when fake ids are given);
- wrong (kind 2, label 0): image `i` with the `k` human captions of image
  `i - 1` (the batch rolled by one image), so D must check the caption
  against the image, not only its fluency.

All captions are in the generator's convention (`w1 .. wn <eos> 0 ..`, no
`<bos>`, see `tfcap.model.discriminator`). Invalid pairs get no weight: empty
human captions (images without references), and wrong captions equal to one of
the image's own captions (duplicates, or a per-replica batch of one image).

Loss (`d_loss`): sigmoid cross-entropy, averaged per kind and weighted,
`real_weight * mean_real + fake_weight * mean_fake + wrong_weight * mean_wrong`
(default 1, 0.5, 0.5: the negatives together weigh as much as the positives,
as in conditional-GAN caption discriminators). A kind without pairs adds 0.
Under a strategy the means divide by the GLOBAL count of each kind, so N
replicas take the same step as one device on the same global batch, except
that wrong pairs are drawn within each replica's share of the batch.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import keras
import tensorflow as tf

from tfcap.data import vocab
from tfcap.model.discriminator import Discriminator
from tfcap.training.updates import apply_if_finite, reduce_gradients

REAL, FAKE, WRONG = 0, 1, 2
KINDS = ("real", "fake", "wrong")


class Pairs(NamedTuple):
    """The D training rows of one batch (module docstring); `pairs = batch * per_image`.

    Attributes:
        ids: int32 `[pairs, length]`, generator convention.
        image_index: int32 `[pairs]`, the image (batch row) each pair shows.
        labels: float32 `[pairs]`, 1 for real, 0 for fake and wrong.
        kinds: int32 `[pairs]`, REAL, FAKE or WRONG.
        valid: bool `[pairs]`, False on pairs that must not count.
        per_image: int, rows per image (`3 * k`, or `2 * k` without fakes).
    """

    ids: tf.Tensor
    image_index: tf.Tensor
    labels: tf.Tensor
    kinds: tf.Tensor
    valid: tf.Tensor
    per_image: int


@dataclasses.dataclass(frozen=True)
class DConfig:
    """Knobs of the D step: the per-kind loss weights and gradient clipping (0 disables)."""

    real_weight: float = 1.0
    fake_weight: float = 0.5
    wrong_weight: float = 0.5
    grad_clip: float = 5.0
    grad_clip_mode: str = "norm"

    @property
    def weights(self) -> tuple[float, float, float]:
        return (self.real_weight, self.fake_weight, self.wrong_weight)


def human_ids(captions: tf.Tensor, length) -> tf.Tensor:
    """Pipeline captions `[..., L]` (`<bos>` first) -> int32 `[..., length]`, no `<bos>`.

    >>> human_ids(tf.constant([[1, 5, 6, 2, 0]]), 6).numpy().tolist()
    [[5, 6, 2, 0, 0, 0]]
    """
    ids = tf.cast(captions, tf.int32)[..., 1:]
    missing = tf.maximum(length - tf.shape(ids)[-1], 0)
    pad = tf.concat([tf.zeros([tf.rank(ids) - 1, 2], tf.int32), [[0, missing]]], axis=0)
    return tf.pad(ids, pad)[..., :length]


def make_pairs(
    batch: dict[str, tf.Tensor], fake_ids: tf.Tensor | None, seq_per_img: int, length=None
) -> Pairs:
    """Real, fake and wrong pairs of `batch` (module docstring).

    Args:
        batch: the pipeline's batch dict; uses `captions` int `[batch, seq_per_img, L]`.
        fake_ids: int `[batch * seq_per_img, T]` generated captions, image-major,
            or None for real and wrong pairs only.
        seq_per_img: int, `k`.
        length: caption length `T` when `fake_ids` is None (default `L - 1`).

    Returns:
        `Pairs` with `pairs = batch * per_image` rows.
    """
    captions = batch["captions"]
    if captions.shape.rank != 3 or captions.shape[1] != seq_per_img:
        raise ValueError(f"captions must be [batch, {seq_per_img}, length], got {captions.shape}")
    if fake_ids is not None:
        fake_ids = tf.cast(fake_ids, tf.int32)
        if fake_ids.shape.rank != 2:
            raise ValueError(f"fake_ids must be [batch * seq_per_img, T], got {fake_ids.shape}")
        length = fake_ids.shape[1] or tf.shape(fake_ids)[1]
    elif length is None:
        length = captions.shape[-1] - 1 if captions.shape[-1] else tf.shape(captions)[-1] - 1
    n = tf.shape(captions)[0]
    own = human_ids(captions, length)  # [batch, k, T]
    wrong = tf.roll(own, shift=1, axis=0)
    nonempty = tf.reduce_any(tf.not_equal(own, vocab.PAD_ID), axis=-1)  # [batch, k]
    same = tf.reduce_all(tf.equal(wrong[:, :, None, :], own[:, None, :, :]), axis=-1)
    wrong_ok = tf.roll(nonempty, 1, axis=0) & ~tf.reduce_any(same, axis=-1)  # [batch, k]
    groups = [(own, REAL, nonempty)]
    if fake_ids is not None:
        fake = tf.reshape(fake_ids, [n, seq_per_img, length])
        groups.append((fake, FAKE, tf.ones([n, seq_per_img], tf.bool)))
    groups.append((wrong, WRONG, wrong_ok))
    per_image = len(groups) * seq_per_img
    ids = tf.reshape(tf.stack([g[0] for g in groups], axis=1), [-1, length])  # [pairs, T]
    kinds = tf.constant([[g[1]] * seq_per_img for g in groups], tf.int32)  # [groups, k]
    kinds = tf.reshape(tf.tile(kinds[None], [n, 1, 1]), [-1])  # [pairs]
    valid = tf.reshape(tf.stack([g[2] for g in groups], axis=1), [-1])
    return Pairs(
        ids=ids,
        image_index=tf.repeat(tf.range(n), per_image),
        labels=tf.cast(tf.equal(kinds, REAL), tf.float32),
        kinds=kinds,
        valid=valid,
        per_image=per_image,
    )


def pair_counts(pairs: Pairs) -> tf.Tensor:
    """float32 `[3]`: valid pairs per kind (REAL, FAKE, WRONG)."""
    return tf.reduce_sum(_kind_weights(pairs), axis=0)


def _kind_weights(pairs: Pairs) -> tf.Tensor:
    """float32 `[pairs, 3]`: one-hot kind, zero on invalid pairs."""
    return tf.one_hot(pairs.kinds, len(KINDS)) * tf.cast(pairs.valid, tf.float32)[:, None]


def d_loss(
    logits: tf.Tensor, pairs: Pairs, config: DConfig = DConfig(), counts: tf.Tensor | None = None
) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """The weighted per-kind mean cross-entropy, and per-kind sums.

    Args:
        logits: float `[pairs]` of D on `pairs.ids`.
        pairs: from `make_pairs`.
        config: the kind weights.
        counts: float32 `[3]` pairs per kind to divide by (default: these
            pairs' own; under a strategy, the global counts).

    Returns:
        scalar loss and a dict of float32 `[3]` sums per kind: `count`,
        `loss` (cross-entropy), `correct` (real: p > 0.5; fake, wrong: p < 0.5)
        and `prob` (p(human)); `summarize` turns them into means.
    """
    logits = tf.cast(logits, tf.float32)
    onehot = _kind_weights(pairs)  # [pairs, 3]
    ce = tf.nn.sigmoid_cross_entropy_with_logits(labels=pairs.labels, logits=logits)
    correct = tf.where(pairs.labels > 0.5, logits > 0.0, logits < 0.0)
    sums = {
        "count": tf.reduce_sum(onehot, axis=0),
        "loss": tf.reduce_sum(onehot * ce[:, None], axis=0),
        "correct": tf.reduce_sum(onehot * tf.cast(correct, tf.float32)[:, None], axis=0),
        "prob": tf.reduce_sum(onehot * tf.sigmoid(logits)[:, None], axis=0),
    }
    counts = sums["count"] if counts is None else counts
    loss = tf.reduce_sum(tf.constant(config.weights) * sums["loss"] / tf.maximum(counts, 1.0))
    return loss, sums


def summarize(sums: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """`acc_real`, `acc_fake`, `acc_wrong`, `p_real`, `p_fake`, `p_wrong` (0 for an absent kind)."""
    count = tf.maximum(sums["count"], 1.0)
    out = {}
    for i, kind in enumerate(KINDS):
        out[f"acc_{kind}"] = sums["correct"][i] / count[i]
        out[f"p_{kind}"] = sums["prob"][i] / count[i]
    return out


def make_d_step(
    strategy: tf.distribute.Strategy,
    discriminator: Discriminator,
    optimizer: keras.optimizers.Optimizer,
    config: DConfig = DConfig(),
    seq_per_img: int | None = None,
    jit_compile: bool = False,
    loss_multiplier: tf.Variable | None = None,
):
    """A tf.function `(distributed batch, fake_ids=None) -> metrics dict`, one D update.

    `fake_ids` is per replica (e.g. the result of a `strategy.run` of the
    generator's sampling), int `[replica batch * seq_per_img, T]`, or None.
    `seq_per_img` defaults to the batch's `captions.shape[1]`. The metrics are
    scalars: `loss` (the global loss), `grad_norm` (before clipping) and
    `summarize`'s per-kind accuracies and mean probabilities over the global batch.
    A step whose `loss` or `grad_norm` is not finite made no update
    (`tfcap.training.updates.step_skipped`). Build D and the optimizer (in
    `strategy.scope()`) before the first call. `loss_multiplier`: a testing aid
    as in `tfcap.training.xe.make_xe_step`.
    """

    def replica_step(batch, fake_ids):
        ctx = tf.distribute.get_replica_context()
        k = seq_per_img or batch["captions"].shape[1]
        pairs = make_pairs(batch, fake_ids, k)
        counts = ctx.all_reduce(tf.distribute.ReduceOp.SUM, pair_counts(pairs))
        variables = discriminator.trainable_variables
        with tf.GradientTape() as tape:
            logits = discriminator.score(
                batch["features"], batch.get("region_mask"), pairs.ids, training=True
            )
            loss, sums = d_loss(logits, pairs, config, counts)
            if loss_multiplier is not None:
                loss = loss * loss_multiplier
        # The embedding's gradient is IndexedSlices; reduce_gradients makes it dense.
        grads, norm, finite = reduce_gradients(tape.gradient(loss, variables), loss)
        return loss, sums, norm, grads, finite

    @tf.function(jit_compile=jit_compile)
    def step(dist_batch, fake_ids=None):
        args = (dist_batch, fake_ids)
        loss, sums, norm, grads, finite = strategy.run(replica_step, args=args)
        variables = discriminator.trainable_variables
        clip, mode = config.grad_clip, config.grad_clip_mode
        apply_if_finite(strategy, optimizer, variables, grads, finite, clip, mode)
        total = lambda x: strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None)  # noqa: E731
        sums = tf.nest.map_structure(total, sums)
        return {
            "loss": total(loss),
            "grad_norm": strategy.experimental_local_results(norm)[0],
            **summarize(sums),
        }

    return step


def human_probability(
    discriminator: Discriminator,
    features: tf.Tensor,
    region_mask: tf.Tensor | None,
    ids: tf.Tensor,
    k: int,
) -> tf.Tensor:
    """D's p(human) float32 `[rows]` of `ids` `[rows, T]`, `rows = batch * k` image-major.

    For the GAN reward `r = alpha * d + (1 - alpha) * e`: inference mode, no gradient.
    """
    rows, batch = ids.shape[0], features.shape[0]
    if rows is not None and batch is not None and rows != batch * k:
        raise ValueError(f"ids has {rows} rows, expected batch {batch} x k {k}")
    logits = discriminator.score(features, region_mask, ids, training=False)
    return tf.stop_gradient(tf.sigmoid(logits))
