"""The adversarial update: discriminator steps, and the generator's policy step on
r = alpha * d + (1 - alpha) * e.

d is the discriminator's probability that a sampled caption is human-written
(given the image), e the evaluator's score (CIDEr-D with train document
frequencies, or BLEU-4). The baseline is the SCST one (`tfcap.training.scst`).
The discriminator learns from real (image, its caption), fake (image, a caption
the generator samples at that moment) and wrong (image, another image's
caption) pairs (`tfcap.training.discriminator_step`): first alone for
`d_pretrain_steps`, then `d_steps` times before each generator step.
`discriminator.json` in the model dir holds D's config.
"""

from __future__ import annotations

import dataclasses
import json
import os

import tensorflow as tf

from tfcap import checkpoints, errors
from tfcap.model.discriminator import Discriminator
from tfcap.training import discriminator_step as dstep
from tfcap.training import scst
from tfcap.training.updates import step_skipped

DISCRIMINATOR_JSON = "discriminator.json"


@dataclasses.dataclass(frozen=True)
class GanConfig:
    alpha: float = 0.3  # tfcap.train's defaults (the alpha table)
    evaluator: str = "cider"
    reward_scale: str = "spread"  # or "none" (gan_reward)
    d_encoder: str = "lstm"
    d_hidden: int = 256
    d_learning_rate: float = 1e-3
    d_steps: int = 1
    d_pretrain_steps: int = 200
    d_fake_weight: float = 0.5  # loss weights of the fake and wrong pairs (real: 1)
    d_wrong_weight: float = 0.5


def build_discriminator(strategy, meta: dict, max_len: int, cfg: GanConfig) -> Discriminator:
    """A new discriminator for the dataset `meta` (in the strategy's scope)."""
    with strategy.scope():
        d = Discriminator(
            meta["vocab_size"],
            embed_dim=cfg.d_hidden,
            hidden=cfg.d_hidden,
            encoder=cfg.d_encoder,
            max_len=max_len + 1,
            name="discriminator",
        )
        d.build((None, None, meta["feature_dim"]))
    return d


def write_discriminator_json(model_dir: str, d: Discriminator, feature_dim: int) -> None:
    with open(os.path.join(model_dir, DISCRIMINATOR_JSON), "w", encoding="utf-8") as f:
        json.dump({"config": d.get_config(), "feature_dim": feature_dim}, f, indent=1)


def load_discriminator(model_dir: str, which: str = "latest") -> Discriminator:
    """The discriminator of a gan run (for judging captions), from its checkpoint."""
    path = os.path.join(model_dir, DISCRIMINATOR_JSON)
    if not os.path.exists(path):
        raise errors.MissingInput(f"{path} not found: {model_dir} has no gan phase")
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    d = Discriminator.from_config(info["config"])
    d.build((None, None, info["feature_dim"]))
    ckpt = checkpoints.checkpoint_path(model_dir, which)
    tf.train.Checkpoint(discriminator=d).restore(ckpt).expect_partial()
    return d


REWARD_SCALES = ("none", "spread")
SPREAD_FLOOR = 1e-3


def spread(x: tf.Tensor, per_image: int) -> tf.Tensor:
    """The within-image spread of a reward term: the root mean square, over the batch,
    of each sample's difference from its image's mean (float32 scalar), at least
    `SPREAD_FLOOR` (a term that does not vary is amplified at most 1,000 times).

    >>> float(spread(tf.constant([1.0, 3.0, 10.0, 10.0]), 2))
    0.7071067690849304
    """
    if per_image < 2:
        raise ValueError("a reward term's spread needs at least 2 samples per image")
    x = tf.reshape(tf.cast(x, tf.float32), [-1, per_image])
    centred = x - tf.reduce_mean(x, axis=1, keepdims=True)
    return tf.maximum(tf.sqrt(tf.reduce_mean(tf.square(centred))), SPREAD_FLOOR)


def gan_reward(
    d: Discriminator, evaluator: scst.RewardFn, alpha: float, scale: str = "none"
) -> scst.RewardGraphFn:
    """r = alpha * d + (1 - alpha) * e for `ids` of the batch's images.

    `scale="spread"` puts both terms on the same scale first: each is divided by
    its within-image spread in this batch (`spread`), so alpha weighs how far each
    term moves the policy rather than the terms' units (CIDEr-D spreads over about
    one unit between samples of an image, D's p(human) over a few hundredths once
    D is trained). It needs several samples per image (the mean baseline).
    """
    if scale not in REWARD_SCALES:
        raise ValueError(f"scale must be one of {REWARD_SCALES}, got {scale!r}")
    evaluate = scst.evaluator_reward(evaluator)

    def reward(batch, ids, per_image):
        e = evaluate(batch, ids, per_image)
        p = dstep.human_probability(d, batch["features"], batch["region_mask"], ids, per_image)
        if scale == "spread":
            e, p = e / spread(e, per_image), p / spread(p, per_image)
        return alpha * p + (1.0 - alpha) * e

    return reward


def make_fake_sampler(strategy: tf.distribute.Strategy, model, per_image: int, temperature: float):
    """tf.function `(distributed batch, seed) -> per-replica sampled ids` for D's fakes."""

    def replica(batch, seed):
        ctx = tf.distribute.get_replica_context()
        seed = tf.random.experimental.stateless_fold_in(seed, ctx.replica_id_in_sync_group)
        return model.generate(
            batch["features"],
            batch["region_mask"],
            method="sample",
            num_samples=per_image,
            temperature=temperature,
            seed=seed,
        ).ids

    @tf.function
    def sample(dist_batch, seed):
        return strategy.run(replica, args=(dist_batch, seed))

    return sample


def make_d_train(sample, d_update, seed: int):
    """`(batch, n) -> metrics`: D update number `n` on the generator's samples at seed
    `[seed, n]` (fakes) and the batch's human captions (reals, wrongs)."""

    def train(batch, n: int) -> dict[str, float]:
        fakes = sample(batch, tf.constant([seed, n], tf.int64))
        out = {f"d_{k}": float(v) for k, v in d_update(batch, fakes).items()}
        return {**out, "skipped": float(step_skipped(out["d_loss"], out["d_grad_norm"]))}

    return train


def make_gan_step(d_train, policy_step, d_steps: int, seed: int, lr):
    """`(batch, step) -> metrics`: `d_steps` D updates, then one generator update.

    The step counts as skipped when any of its updates was (not finite)."""

    def step_fn(batch, step: int) -> dict[str, float]:
        d_out, skipped = {}, 0.0
        for i in range(d_steps):
            d_out = d_train(batch, step * max(d_steps, 1) + i)
            skipped += d_out.pop("skipped")
        out = {
            k: float(v) for k, v in policy_step(batch, tf.constant([seed, step], tf.int64)).items()
        }
        skipped += float(step_skipped(out["loss"], out["grad_norm"]))
        return {**out, **d_out, "lr": lr(), "skipped": skipped}

    return step_fn


def discriminator_accuracy(
    d: Discriminator, model, data_dir: str, split: str = "val", images: int | None = None
) -> dict[str, float]:
    """D on `split`: the share of human captions it judges human (`acc_real`), of
    another image's human captions (`acc_wrong`) and of the generator's greedy
    captions (`acc_fake`) it judges not human, and its mean p(human) of each."""
    from tfcap.data import pipeline

    k = 5
    ds = pipeline.make_dataset(data_dir, split, 50, seq_per_img=k)
    if images:
        ds = ds.unbatch().take(images).batch(50)
    sums = None
    for batch in ds:
        greedy = model.generate(batch["features"], batch["region_mask"], method="greedy")[0]
        fakes = tf.repeat(greedy, k, axis=0)  # [batch * k, T]
        pairs = dstep.make_pairs(batch, fakes, k)
        logits = d.score(batch["features"], batch["region_mask"], pairs.ids)
        _, part = dstep.d_loss(logits, pairs)
        sums = part if sums is None else {key: sums[key] + part[key] for key in part}
    return {key: float(v) for key, v in dstep.summarize(sums).items()}
