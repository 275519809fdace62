"""The training phases run by `tfcap.train`, in order: xe, scst, gan.

Each phase has its own step counter and optimizer in the checkpoint, so a run
resumes inside any phase and `--phases=xe,scst,gan` continues from where the
last checkpoint left it. The global step (TensorBoard, checkpoint numbers) is
the sum over phases.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import tensorflow as tf
from absl import logging

from tfcap import metrics
from tfcap.training import scst, xe
from tfcap.training.loop import Trainer

PHASES = ("xe", "scst", "gan")


@dataclasses.dataclass(frozen=True)
class PhaseConfig:
    """Budget and optimizer of one phase (`steps` wins over `epochs` when > 0)."""

    name: str
    steps: int = 0
    epochs: float = 0.0
    learning_rate: float = 5e-4
    lr_decay_epochs: float = 0.0  # 0: constant learning rate
    lr_decay_rate: float = 1.0


@dataclasses.dataclass(frozen=True)
class ScheduledSampling:
    start: int = -1
    every: int = 5
    increase: float = 0.05
    maximum: float = 0.25


def total_steps(trainer: Trainer, phase: PhaseConfig) -> int:
    return phase.steps or int(round(phase.epochs * trainer.steps_per_epoch()))


def make_optimizer(trainer: Trainer, phase: PhaseConfig, variables) -> keras.optimizers.Optimizer:
    """Adam with step decay, built in the strategy scope (needed before the first step)."""
    lr = phase.learning_rate
    if phase.lr_decay_epochs:
        every = max(1, int(phase.lr_decay_epochs * trainer.steps_per_epoch()))
        lr = keras.optimizers.schedules.ExponentialDecay(
            lr, every, phase.lr_decay_rate, staircase=True
        )
    with trainer.strategy.scope():
        optimizer = keras.optimizers.Adam(lr, name=f"{phase.name}_adam")
        optimizer.build(variables)
    return optimizer


def current_lr(optimizer: keras.optimizers.Optimizer) -> float:
    lr = optimizer.learning_rate
    return float(lr(optimizer.iterations) if callable(lr) else lr)


def run_phase(trainer: Trainer, phase: PhaseConfig, step_fn, phase_index: int) -> None:
    """The loop of one phase: input per epoch, `step_fn`, logging, validation, checkpoints.

    `step_fn(dist_batch, phase_step, epoch) -> dict of float scalars` does one update;
    its `skipped` entry (> 0: an update was skipped as not finite) goes to
    `Trainer.check_step`.
    """
    counter = trainer.phase_step(phase.name)
    total, spe, run = total_steps(trainer, phase), trainer.steps_per_epoch(), trainer.run
    step = int(counter.numpy())
    if step >= total:
        logging.info("%s: done (%d/%d steps)", phase.name, step, total)
        trainer.save_phase(phase.name)
        return
    logging.info(
        "%s: steps %d..%d (%d per epoch), batch %d images",
        phase.name,
        step,
        total,
        spe,
        run.batch_size,
    )
    trainer.reset_progress(step)
    while step < total:
        epoch, offset = divmod(step, spe)
        iterator = trainer.epoch_iterator(epoch, offset, seed_offset=1000 * phase_index)
        for _ in range(min(spe - offset, total - step)):
            trainer.inject_faults()
            scalars = step_fn(trainer.next_batch(iterator), step, epoch)
            trainer.check_step(phase.name, scalars.pop("skipped"))
            counter.assign_add(1)
            trainer.step.assign_add(1)
            step += 1
            if step % run.log_every == 0 or step == total:
                trainer.progress(phase.name, step, total, scalars)
            if step % run.eval_every == 0 or step == total:
                trainer.validate(phase.name)
            if step % run.checkpoint_every == 0 or step == total:
                trainer.save()
    trainer.save_phase(phase.name)


def run_xe(trainer: Trainer, phase: PhaseConfig, config: xe.XEConfig, ss: ScheduledSampling):
    """Cross-entropy with teacher forcing (and scheduled sampling)."""
    model = trainer.model
    optimizer = make_optimizer(trainer, phase, model.trainable_variables)
    trainer.restore(xe_optimizer=optimizer)
    train_step = xe.make_xe_step(
        trainer.strategy, model, optimizer, config, loss_multiplier=trainer.loss_multiplier
    )

    def step_fn(batch, step, epoch):
        prob = xe.scheduled_sampling_prob(epoch, ss.start, ss.every, ss.increase, ss.maximum)
        seed = tf.constant([trainer.run.seed, step], tf.int64)
        loss, norm = train_step(batch, tf.constant(prob, tf.float32), seed)
        return {
            "skipped": float(xe.step_skipped(loss, norm)),
            "loss": float(loss),
            "lr": current_lr(optimizer),
            "grad_norm": float(norm),
            "sample_prob": prob,
        }

    run_phase(trainer, phase, step_fn, 0)


def evaluator(trainer: Trainer, name: str) -> scst.RewardFn:
    """The host reward function: CIDEr-D with the train df, or sentence BLEU-4."""
    if name == "cider":
        return scst.cider_reward(trainer.train_cider())
    if name == "bleu":
        return scst.bleu_reward()
    raise ValueError(f"evaluator must be cider or bleu, got {name!r}")


def run_scst(trainer: Trainer, phase: PhaseConfig, config: scst.SCSTConfig, reward: str):
    """Self-critical training on the evaluator's reward."""
    model = trainer.model
    optimizer = make_optimizer(trainer, phase, model.trainable_variables)
    trainer.restore(scst_optimizer=optimizer)
    reward_fn = scst.evaluator_reward(evaluator(trainer, reward))
    policy_step = scst.make_policy_step(
        trainer.strategy, model, optimizer, reward_fn, config, trainer.loss_multiplier
    )

    def step_fn(batch, step, epoch):
        seed = tf.constant([trainer.run.seed + 1, step], tf.int64)
        out = {k: float(v) for k, v in policy_step(batch, seed).items()}
        skipped = float(xe.step_skipped(out["loss"], out["grad_norm"]))
        return {**out, "skipped": skipped, "lr": current_lr(optimizer)}

    run_phase(trainer, phase, step_fn, 1)


def final_scores(trainer: Trainer, phase: str) -> dict:
    """pycocoevalcap scores on all of val with the current weights; saved and logged."""
    decoded = trainer.decode_val(None)
    refs = {int(i): trainer.val_refs[int(i)] for i in decoded.image_ids}
    cands = {int(i): c for i, c in zip(decoded.image_ids, decoded.captions, strict=True)}
    scores = metrics.score_captions(refs, cands)
    numbers = {k: v for k, v in scores.items() if isinstance(v, float)}
    trainer.log_scalars("val", {f"{phase}/final/{k}": v for k, v in numbers.items()})
    if trainer.chief:
        path = os.path.join(trainer.run.model_dir, f"scores_{phase}_val.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(scores, f, indent=1)
    return scores
