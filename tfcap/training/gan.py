"""The adversarial phase: policy gradient on r = alpha * d + (1 - alpha) * e.

d is the discriminator's probability that a sampled caption is human-written
(given the image), e the evaluator's score (CIDEr-D with train document
frequencies, or BLEU-4). The baseline is the SCST one (`tfcap.training.scst`).
The discriminator is first trained alone for `d_pretrain_steps` steps on
real / fake (sampled) / wrong (another image's) pairs, then `d_steps` times per
generator step. Generator, discriminator and both optimizers are in the
checkpoint; `discriminator.json` beside it holds D's config.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import tensorflow as tf
from absl import logging

from tfcap.model.discriminator import Discriminator
from tfcap.training import discriminator_step as dstep
from tfcap.training import phases, scst, xe
from tfcap.training.loop import Trainer

DISCRIMINATOR_JSON = "discriminator.json"


@dataclasses.dataclass(frozen=True)
class GanConfig:
    alpha: float = 0.7
    evaluator: str = "cider"
    d_encoder: str = "lstm"
    d_hidden: int = 256
    d_learning_rate: float = 1e-3
    d_steps: int = 1
    d_pretrain_steps: int = 200


def build_discriminator(trainer: Trainer, cfg: GanConfig) -> Discriminator:
    meta = trainer.meta
    with trainer.strategy.scope():
        d = Discriminator(
            meta["vocab_size"],
            embed_dim=cfg.d_hidden,
            hidden=cfg.d_hidden,
            encoder=cfg.d_encoder,
            max_len=trainer.model.max_len + 1,
            name="discriminator",
        )
        d.build((None, None, meta["feature_dim"]))
    if trainer.chief:
        with open(os.path.join(trainer.run.model_dir, DISCRIMINATOR_JSON), "w") as f:
            json.dump({"config": d.get_config(), "feature_dim": meta["feature_dim"]}, f, indent=1)
    return d


def load_discriminator(model_dir: str, which: str = "latest") -> Discriminator:
    """The discriminator of a gan run (for judging captions), from its checkpoint."""
    from tfcap import checkpoints

    path = os.path.join(model_dir, DISCRIMINATOR_JSON)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {model_dir} has no gan phase")
    with open(path) as f:
        info = json.load(f)
    d = Discriminator.from_config(info["config"])
    d.build((None, None, info["feature_dim"]))
    ckpt = checkpoints.checkpoint_path(model_dir, which)
    tf.train.Checkpoint(discriminator=d).restore(ckpt).expect_partial()
    return d


def gan_reward(d: Discriminator, evaluator: scst.RewardFn, alpha: float) -> scst.RewardGraphFn:
    """r = alpha * d + (1 - alpha) * e for `ids` of the batch's images."""
    evaluate = scst.evaluator_reward(evaluator)

    def reward(batch, ids, per_image):
        e = evaluate(batch, ids, per_image)
        p = dstep.human_probability(d, batch["features"], batch["region_mask"], ids, per_image)
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


def run_gan(trainer: Trainer, phase: phases.PhaseConfig, policy: scst.SCSTConfig, cfg: GanConfig):
    """D pre-training, then alternating D and generator updates."""
    model, strategy, run = trainer.model, trainer.strategy, trainer.run
    d = build_discriminator(trainer, cfg)
    with strategy.scope():
        d_opt = keras.optimizers.Adam(cfg.d_learning_rate, name="d_adam")
        d_opt.build(d.trainable_variables)
        d_counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="d_pretrain_step")
    g_opt = phases.make_optimizer(trainer, phase, model.trainable_variables)
    trainer.restore(gan_optimizer=g_opt, discriminator=d, d_optimizer=d_opt, d_pretrain=d_counter)
    d_update = dstep.make_d_step(
        strategy,
        d,
        d_opt,
        dstep.DConfig(),
        seq_per_img=run.seq_per_img,
        loss_multiplier=trainer.loss_multiplier,
    )
    sample = make_fake_sampler(strategy, model, run.seq_per_img, policy.temperature)
    reward = gan_reward(d, phases.evaluator(trainer, cfg.evaluator), cfg.alpha)
    policy_step = scst.make_policy_step(
        strategy, model, g_opt, reward, policy, trainer.loss_multiplier
    )

    def train_d(batch, step):
        seed = tf.constant([run.seed + 2, step], tf.int64)
        out = {f"d_{k}": float(v) for k, v in d_update(batch, sample(batch, seed)).items()}
        return {**out, "d_skipped": float(xe.step_skipped(out["d_loss"], out["d_grad_norm"]))}

    _pretrain_d(trainer, d_counter, cfg.d_pretrain_steps, train_d)

    def step_fn(batch, step, epoch):
        d_out, d_skipped = {}, 0.0
        for i in range(cfg.d_steps):
            d_out = train_d(batch, step * max(cfg.d_steps, 1) + i)
            d_skipped += d_out.pop("d_skipped")
        seed = tf.constant([run.seed + 3, step], tf.int64)
        out = {k: float(v) for k, v in policy_step(batch, seed).items()}
        # the step counts as skipped when any of its updates was
        out["skipped"] = float(xe.step_skipped(out["loss"], out["grad_norm"])) + d_skipped
        return {**out, **d_out, "lr": phases.current_lr(g_opt)}

    phases.run_phase(trainer, phase, step_fn, 2)


def _pretrain_d(trainer: Trainer, counter: tf.Variable, total: int, train_d) -> None:
    step = int(counter.numpy())
    if step >= total:
        return
    logging.info("gan: discriminator pre-training, steps %d..%d", step, total)
    spe = trainer.steps_per_epoch()
    while step < total:
        epoch, offset = divmod(step, spe)
        iterator = trainer.epoch_iterator(epoch, offset, seed_offset=3000)
        for _ in range(min(spe - offset, total - step)):
            out = train_d(trainer.next_batch(iterator), step)
            trainer.check_step("gan_pretrain_d", out.pop("d_skipped"))
            counter.assign_add(1)
            step += 1
            if step % trainer.run.log_every == 0 or step == total:
                trainer.log_scalars("train", {f"gan/pretrain_{k}": v for k, v in out.items()})
                logging.info(
                    "gan: D pre-training step %d/%d: %s",
                    step,
                    total,
                    " ".join(f"{k} {v:.3g}" for k, v in out.items()),
                )
    trainer.save()
