"""The phases xe, scst and gan as `loop.Phase`s, and what a phase leaves when it ends.

A builder makes the phase's optimizer (and for gan the discriminator), adds
them to the checkpoint (`RunState.restore`), and wraps its update into a step
function `(batch, step) -> metrics`. Step seeds are `[seed + k, step]` (xe
k=0, scst 1, discriminator 2, gan generator 3) and each phase reads the
input in its own order, so runs repeat exactly under `--deterministic`.

When a phase ends (`end_phase`), the model is kept in `MODEL_DIR/phase_NAME/`
and pycocoevalcap's val scores in `scores_NAME_val.json`, once: a run resumed
after the phase ended finds both and leaves them as they are.
"""

from __future__ import annotations

import dataclasses
import json
import os

import keras
import tensorflow as tf
from absl import logging

from tfcap import checkpoints, errors
from tfcap.rewards import cider
from tfcap.training import discriminator_step as dstep
from tfcap.training import gan, scst, xe
from tfcap.training.loop import Phase
from tfcap.training.state import RunState, write_json
from tfcap.training.updates import step_skipped
from tfcap.training.validation import Validator

INPUT_OFFSETS = {"xe": 0, "scst": 1000, "gan": 2000, "gan_d": 3000}


@dataclasses.dataclass(frozen=True)
class PhaseConfig:
    """Budget and optimizer of one phase (`steps` wins over `epochs` when > 0)."""

    name: str
    steps: int = 0
    epochs: float = 0.0
    learning_rate: float = 5e-4
    lr_decay_epochs: float = 0.0  # 0: constant learning rate
    lr_decay_rate: float = 1.0

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.steps or int(round(self.epochs * steps_per_epoch))


@dataclasses.dataclass(frozen=True)
class ScheduledSampling:
    start: int = -1
    every: int = 5
    increase: float = 0.05
    maximum: float = 0.25


@dataclasses.dataclass(frozen=True)
class Context:
    """What every builder needs: the run, its seed, checkpoint interval, input epochs."""

    run: RunState
    seed: int
    steps_per_epoch: int
    checkpoint_every: int
    seq_per_img: int
    meta: dict
    data_dir: str
    cider_eos: bool = False  # the CIDEr-D reward counts <eos> as a word (train df likewise)
    val_images: int = 500  # images of a validation (the discriminator's too)


def make_optimizer(ctx: Context, phase: PhaseConfig, variables) -> keras.optimizers.Optimizer:
    """Adam with step decay, built in the strategy scope (needed before the first step)."""
    lr = phase.learning_rate
    if phase.lr_decay_epochs:
        every = max(1, int(phase.lr_decay_epochs * ctx.steps_per_epoch))
        lr = keras.optimizers.schedules.ExponentialDecay(
            lr, every, phase.lr_decay_rate, staircase=True
        )
    with ctx.run.strategy.scope():
        optimizer = keras.optimizers.Adam(lr, name=f"{phase.name}_adam")
        optimizer.build(variables)
    return optimizer


def current_lr(optimizer: keras.optimizers.Optimizer) -> float:
    lr = optimizer.learning_rate
    return float(lr(optimizer.iterations) if callable(lr) else lr)


def xe_phase(
    ctx: Context, phase: PhaseConfig, config: xe.XEConfig, ss: ScheduledSampling, loss_multiplier
) -> list[Phase]:
    """Cross-entropy with teacher forcing (and scheduled sampling)."""
    run, model = ctx.run, ctx.run.model
    optimizer = make_optimizer(ctx, phase, model.trainable_variables)
    run.restore(xe_optimizer=optimizer)
    update = xe.make_xe_step(
        run.strategy, model, optimizer, config, loss_multiplier=loss_multiplier
    )

    def step_fn(batch, step):
        epoch = step // ctx.steps_per_epoch
        prob = xe.scheduled_sampling_prob(epoch, ss.start, ss.every, ss.increase, ss.maximum)
        loss, norm = update(batch, prob, tf.constant([ctx.seed, step], tf.int64))
        return {
            "skipped": float(step_skipped(loss, norm)),
            "loss": float(loss),
            "lr": current_lr(optimizer),
            "grad_norm": float(norm),
            "sample_prob": prob,
        }

    return [_phase(ctx, phase, "xe", step_fn)]


def scst_phase(
    ctx: Context, phase: PhaseConfig, policy: scst.SCSTConfig, reward: str, loss_multiplier
) -> list[Phase]:
    """Self-critical training on the evaluator's reward."""
    run, model = ctx.run, ctx.run.model
    optimizer = make_optimizer(ctx, phase, model.trainable_variables)
    run.restore(scst_optimizer=optimizer)
    reward_fn = scst.evaluator_reward(scst.evaluator(reward, lambda: train_cider(ctx)))
    update = scst.make_policy_step(
        run.strategy, model, optimizer, reward_fn, policy, loss_multiplier
    )

    def step_fn(batch, step):
        out = {
            k: float(v)
            for k, v in update(batch, tf.constant([ctx.seed + 1, step], tf.int64)).items()
        }
        skipped = float(step_skipped(out["loss"], out["grad_norm"]))
        return {**out, "lr": current_lr(optimizer), "skipped": skipped}

    return [_phase(ctx, phase, "scst", step_fn)]


def gan_phases(
    ctx: Context, phase: PhaseConfig, policy: scst.SCSTConfig, cfg: gan.GanConfig, loss_multiplier
) -> list[Phase]:
    """The discriminator's pre-training, then alternating D and generator updates."""
    run, model, strategy = ctx.run, ctx.run.model, ctx.run.strategy
    d = gan.build_discriminator(strategy, ctx.meta, model.max_len, cfg)
    if run.chief:
        gan.write_discriminator_json(run.model_dir, d, ctx.meta["feature_dim"])
    with strategy.scope():
        d_opt = keras.optimizers.Adam(cfg.d_learning_rate, name="d_adam")
        d_opt.build(d.trainable_variables)
    g_opt = make_optimizer(ctx, phase, model.trainable_variables)
    run.restore(gan_optimizer=g_opt, discriminator=d, d_optimizer=d_opt)
    d_config = dstep.DConfig(fake_weight=cfg.d_fake_weight, wrong_weight=cfg.d_wrong_weight)
    d_update = dstep.make_d_step(
        strategy, d, d_opt, d_config, ctx.seq_per_img, loss_multiplier=loss_multiplier
    )
    sample = gan.make_fake_sampler(strategy, model, ctx.seq_per_img, policy.temperature)
    d_train = gan.make_d_train(sample, d_update, ctx.seed + 2)
    evaluator = scst.evaluator(cfg.evaluator, lambda: train_cider(ctx))
    reward = gan.gan_reward(d, evaluator, cfg.alpha, cfg.reward_scale)
    update = scst.make_policy_step(strategy, model, g_opt, reward, policy, loss_multiplier)
    step_fn = gan.make_gan_step(
        d_train, update, cfg.d_steps, ctx.seed + 3, lambda: current_lr(g_opt)
    )
    pretrain = Phase(
        name="gan_d_pretrain",
        counter="gan_d",
        total_steps=cfg.d_pretrain_steps,
        step_fn=d_train,
        input_seed_offset=INPUT_OFFSETS["gan_d"],
        global_steps=False,
        validate=False,
    )

    def d_val():
        images = ctx.val_images or None
        return gan.discriminator_accuracy(d, model, ctx.data_dir, "val", images)

    main = dataclasses.replace(_phase(ctx, phase, "gan", step_fn), extra_validation=d_val)
    return [pretrain, main]


def _phase(ctx: Context, phase: PhaseConfig, name: str, step_fn) -> Phase:
    return Phase(
        name=name,
        counter=name,
        total_steps=phase.total_steps(ctx.steps_per_epoch),
        step_fn=step_fn,
        input_seed_offset=INPUT_OFFSETS[name],
        checkpoint_every=ctx.checkpoint_every,
    )


def train_cider(ctx: Context) -> cider.CiderD:
    """CIDEr-D with the train references' document frequencies (the dataset's file;
    with `ctx.cider_eos`, the one counted over references ending in `<eos>`)."""
    from tfcap.data import pipeline, vocab

    key = "cider_df_eos" if ctx.cider_eos else "cider_df"
    name = ctx.meta.get(key)
    if not name:
        raise errors.BadInput(
            f"{ctx.data_dir}/dataset.json names no {key}: prepare the dataset again with "
            "this tfcap to train with this CIDEr-D reward"
        )
    words = pipeline.load_vocab(ctx.data_dir, ctx.meta).words
    path = os.path.join(ctx.data_dir, name)
    return cider.CiderD.from_json(
        path, vocabulary=words, eos_id=vocab.EOS_ID, count_eos=ctx.cider_eos
    )


def check_not_extended(run: RunState, name: str, total_steps: int) -> None:
    """Refuses to train more steps of a phase that ended before a later one began."""
    done, later = run.counter(name), run.later_phases_started(name)
    if done < total_steps and later:
        raise errors.BadInput(
            f"{run.model_dir}: {name} ended at {done} steps and {', '.join(later)} has begun "
            f"since; it cannot be extended to {total_steps} steps (give its original budget, "
            f"see {run.model_dir}/flags.txt, or train in a new --model_dir)"
        )


def scores_path(model_dir: str, phase: str) -> str:
    return os.path.join(model_dir, f"scores_{phase}_val.json")


def end_phase(
    run: RunState, validator: Validator, phase: str, ran: bool, final_metrics: bool
) -> dict | None:
    """Keeps the model at the end of `phase` and its val scores, unless already kept.

    `ran`: the phase ran steps in this call, so it has just ended and its
    snapshot and scores are new. Otherwise they are written only when a run was
    stopped after the phase's last checkpoint and before them (the weights are
    still the phase's end as no later phase has begun); what exists is left
    alone. Returns the scores (pycocoevalcap's names), or None without
    `final_metrics`.
    """
    end = run.phase_end_step(phase)
    have = run.snapshot_step(phase)
    moved_on = bool(run.later_phases_started(phase))
    if ran or (have != end and not moved_on):
        run.save_snapshot(phase)
        have = end
    elif have != end:
        logging.warning(
            "%s ended at global step %d but %s/phase_%s holds step %s, and a later phase "
            "has begun since: the end-of-%s model cannot be kept any more",
            phase,
            end,
            run.model_dir,
            phase,
            have,
            phase,
        )
        return None
    if not final_metrics:
        return None
    path = scores_path(run.model_dir, phase)
    if os.path.exists(path) and not ran:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        if saved.get("step") == end:
            return {k: v for k, v in saved.items() if k != "step"}
    if moved_on:  # the weights are a later phase's: score the snapshot
        snapshot = checkpoints.checkpoint_path(run.model_dir, phase)
        validator = Validator(
            checkpoints.model_at(snapshot),
            validator.data_dir,
            batch_size=validator.batch_size,
            beam_size=validator.beam_size,
        )
    scores = validator.final_scores()
    if run.chief:
        write_json(path, {**scores, "step": end})
    return scores
