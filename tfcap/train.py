r"""Trains a captioner: phases xe (cross-entropy), scst (self-critical), gan (adversarial).

  python -m tfcap.train --flagfile=configs/demo.flags
  python -m tfcap.train --data_dir=DATA --model_dir=RUN --preset=updown --epochs=30

Running the same command again resumes from MODEL_DIR/ckpt. MODEL_DIR/flags.txt
replays a run: --flagfile=MODEL_DIR/flags.txt.
"""

from __future__ import annotations

import inspect
import json
import os

from absl import app, flags, logging

from tfcap import cli, cli_flags, distribute

PHASES = ("xe", "scst", "gan")

_PHASES = flags.DEFINE_list("phases", ["xe"], f"Training phases to run in order, of {PHASES}.")
_PRESET = cli_flags.PRESET
_MIXED_PRECISION = flags.DEFINE_bool(
    "mixed_precision",
    False,
    "Compute in bfloat16 with float32 weights and checkpoints (Keras mixed_bfloat16): "
    "faster steps on CPUs with bfloat16 instructions (see tfcap.bench). Evaluation and "
    "export rebuild the model in float32.",
)
_TEXT_ATTENTION = flags.DEFINE_bool(
    "text_attention", None, "Override the preset: the seed paper's attention over past states."
)
_DROPOUT = flags.DEFINE_float("dropout", None, "Override the preset's dropout.", lower_bound=0)
_FEATURE_EMBED = flags.DEFINE_bool(
    "feature_embed",
    None,
    "Override the preset: embed regions and their mean (Dense + ReLU + dropout into the "
    "rnn width) before the LSTMs.",
)
_WORD_RELU = flags.DEFINE_bool(
    "word_relu",
    None,
    "Override the preset: ReLU on the word embeddings (before their dropout), as the "
    "reference Up-Down implementation embeds words.",
)
_WEIGHT_INIT = flags.DEFINE_enum(
    "weight_init",
    None,
    ["keras", "torch"],
    "Override the preset's weight initialisation: keras (Glorot kernels, zero biases, "
    "embeddings uniform +-0.05) or torch (PyTorch's layer defaults, as the reference "
    "implementation starts: embeddings N(0, 1), kernels and biases uniform +-1/sqrt(fan_in)).",
)
_STRATEGY = flags.DEFINE_enum(
    "strategy", "default", list(distribute.STRATEGIES), "tf.distribute strategy."
)
_NUM_DEVICES = flags.DEFINE_integer(
    "num_devices",
    1,
    "Replicas for --strategy=mirrored (logical CPU devices without GPUs).",
    lower_bound=1,
)
_SEQ_PER_IMG = flags.DEFINE_integer(
    "seq_per_img", 5, "Captions per image in a batch.", lower_bound=1
)
_EPOCHS = flags.DEFINE_float(
    "epochs", 30, "XE epochs (ignored when --train_steps > 0).", lower_bound=0
)
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", 0, "XE steps; 0: use --epochs.", lower_bound=0)
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 5e-4, "XE Adam learning rate.", lower_bound=0)
_LR_DECAY_EPOCHS = flags.DEFINE_float(
    "lr_decay_epochs", 3, "Decay the learning rate every this many epochs.", lower_bound=0
)
_LR_DECAY_RATE = flags.DEFINE_float(
    "lr_decay_rate", 0.8, "Learning-rate decay factor.", lower_bound=0
)
_GRAD_CLIP = flags.DEFINE_float(
    "grad_clip", 0.1, "Gradient clip threshold (0: off).", lower_bound=0
)
_GRAD_CLIP_MODE = flags.DEFINE_enum(
    "grad_clip_mode", "value", ["value", "norm"], "Clip element-wise or by global norm."
)
_LABEL_SMOOTHING = flags.DEFINE_float(
    "label_smoothing", 0.0, "XE label smoothing.", lower_bound=0, upper_bound=0.99
)
_SS_START = flags.DEFINE_integer(
    "scheduled_sampling_start", 0, "Epoch scheduled sampling starts (-1: off).", lower_bound=-1
)
_SS_EVERY = flags.DEFINE_integer(
    "scheduled_sampling_every",
    5,
    "Raise the sampling probability every this many epochs.",
    lower_bound=1,
)
_SS_INCREASE = flags.DEFINE_float(
    "scheduled_sampling_increase", 0.05, "Raise it by this much.", lower_bound=0
)
_SS_MAX = flags.DEFINE_float(
    "scheduled_sampling_max", 0.25, "Up to this probability.", lower_bound=0, upper_bound=1
)
_LOG_EVERY = flags.DEFINE_integer("log_every", 50, "Steps between progress lines.", lower_bound=1)
_EVAL_EVERY = flags.DEFINE_integer(
    "eval_every", 500, "Steps between validations (CIDEr-D on val).", lower_bound=1
)
_CKPT_EVERY = flags.DEFINE_integer(
    "checkpoint_every", 500, "Steps between checkpoints.", lower_bound=1
)
_KEEP = flags.DEFINE_integer("keep_checkpoints", 3, "Latest checkpoints kept.", lower_bound=1)
_VAL_IMAGES = flags.DEFINE_integer(
    "val_images", 500, "Val images decoded per validation (0: all).", lower_bound=0
)
_VAL_BATCH = flags.DEFINE_integer(
    "val_batch_size", 50, "Images per validation batch.", lower_bound=1
)
_VAL_BEAM = flags.DEFINE_integer(
    "val_beam_size", 1, "Beam size of validation decoding (1: greedy).", lower_bound=1
)
_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic", False, "Deterministic ops and input order (slower)."
)
_MAX_NONFINITE = flags.DEFINE_integer(
    "max_consecutive_nonfinite",
    10,
    "Steps with a NaN/Inf loss or gradient are skipped and counted; stop after this "
    "many in a row (without saving).",
    lower_bound=1,
)
_INJECT_NONFINITE = flags.DEFINE_list(
    "inject_nonfinite_steps",
    [],
    "Testing aid: global steps (1-based) whose loss is multiplied by NaN, or by Inf "
    "with STEP:inf, to exercise the non-finite guard.",
)
_FINAL_METRICS = flags.DEFINE_bool(
    "final_metrics", True, "Full pycocoevalcap scores on val at the end of each phase."
)


_SCST_STEPS = flags.DEFINE_integer(
    "scst_steps", 0, "SCST steps; 0: use --scst_epochs.", lower_bound=0
)
_SCST_EPOCHS = flags.DEFINE_float("scst_epochs", 0, "SCST epochs.", lower_bound=0)
_SCST_LR = flags.DEFINE_float(
    "scst_learning_rate",
    2e-4,
    "SCST Adam learning rate (2e-4: 2.117 ± 0.037 test CIDEr after 300 demo steps vs "
    "2.036 ± 0.036 at the reference's 5e-5, 3 seeds, README Caption quality; the COCO "
    "configs keep 5e-5 for their 30-epoch schedule).",
    lower_bound=0,
)
_NUM_SAMPLES = flags.DEFINE_integer(
    "num_samples", 5, "Sampled captions per image (scst, gan).", lower_bound=1
)
_BASELINE = flags.DEFINE_enum(
    "baseline",
    "mean",
    ["greedy", "mean"],
    "SCST baseline: the greedy caption's reward, or the mean of the other samples' "
    "(the default: 2.036 ± 0.036 vs 2.005 ± 0.042 test CIDEr, 3 seeds, README Caption quality).",
)
_TEMPERATURE = flags.DEFINE_float(
    "sample_temperature", 1.0, "Sampling temperature (scst, gan).", lower_bound=1e-3
)
_SCST_REWARD = flags.DEFINE_enum(
    "scst_reward", "cider", ["cider", "bleu"], "SCST evaluator: CIDEr-D (train df) or BLEU-4."
)
_CIDER_EOS = flags.DEFINE_bool(
    "cider_eos",
    True,
    "The CIDEr-D reward (scst, gan) counts <eos> as a word, in the samples and in the train "
    "document frequencies, so captions cut short ('... next to a') lose the end n-grams.",
)
_ALL_REFERENCES = flags.DEFINE_bool(
    "reward_all_references",
    True,
    "The scst/gan evaluator scores each sample against every reference of its image, not "
    "only the --seq_per_img captions of the batch.",
)
_GAN_STEPS = flags.DEFINE_integer(
    "gan_steps", 0, "GAN generator steps; 0: use --gan_epochs.", lower_bound=0
)
_GAN_EPOCHS = flags.DEFINE_float("gan_epochs", 0, "GAN epochs.", lower_bound=0)
_GAN_LR = flags.DEFINE_float(
    "gan_learning_rate", 5e-5, "Generator learning rate in the gan phase.", lower_bound=0
)
_GAN_ALPHA = flags.DEFINE_float(
    "gan_alpha",
    0.3,
    "Reward r = alpha * D's p(human) + (1 - alpha) * evaluator. The default is the alpha "
    "table's pick (README, Caption quality: 0, 0.1, 0.3, 0.5, 0.7 with spread scaling).",
    lower_bound=0,
    upper_bound=1,
)
_GAN_REWARD_SCALE = flags.DEFINE_enum(
    "gan_reward_scale",
    "spread",
    ["none", "spread"],
    "spread: divide d and e by their within-image spread over the batch's samples before "
    "mixing them (terms on one scale; needs --baseline=mean); none: the raw terms.",
)
_GAN_EVALUATOR = flags.DEFINE_enum(
    "gan_evaluator", "cider", ["cider", "bleu"], "Evaluator e of the gan reward."
)
_D_ENCODER = flags.DEFINE_enum(
    "d_encoder", "lstm", ["lstm", "cnn"], "Discriminator caption encoder."
)
_D_HIDDEN = flags.DEFINE_integer("d_hidden", 256, "Discriminator width.", lower_bound=8)
_D_LR = flags.DEFINE_float(
    "d_learning_rate", 1e-3, "Discriminator Adam learning rate.", lower_bound=0
)
_D_STEPS = flags.DEFINE_integer(
    "d_steps", 1, "Discriminator updates per generator update.", lower_bound=0
)
_D_FAKE_WEIGHT = flags.DEFINE_float(
    "d_fake_weight",
    0.5,
    "Discriminator loss weight of (image, generated caption) pairs.",
    lower_bound=0,
)
_D_WRONG_WEIGHT = flags.DEFINE_float(
    "d_wrong_weight",
    0.5,
    "Discriminator loss weight of (image, another image's caption) pairs.",
    lower_bound=0,
)
_D_PRETRAIN = flags.DEFINE_integer(
    "d_pretrain_steps",
    200,
    "Discriminator steps before the first generator step of the gan phase.",
    lower_bound=0,
)

for _name in ("data_dir", "model_dir", "batch_size", "seed", "skip_bad_records", "preset"):
    flags.declare_key_flag(_name)  # shared flags (tfcap.cli_flags) in --helpshort


def parse_injections(values: list[str]) -> dict[int, float]:
    """`--inject_nonfinite_steps` -> {global step: loss multiplier}.

    >>> parse_injections(["3", "5:inf"])
    {3: nan, 5: inf}
    """
    out = {}
    for value in values:
        step, _, kind = value.partition(":")
        if not step.isdigit() or int(step) < 1 or kind not in ("", "nan", "inf"):
            raise ValueError(f"--inject_nonfinite_steps: expected STEP or STEP:inf, got {value!r}")
        out[int(step)] = float(kind or "nan")
    return out


@flags.validator("inject_nonfinite_steps", message="expected steps N or N:inf (N >= 1)")
def _check_injections(values):
    try:
        parse_injections(values)
    except ValueError:
        return False
    return True


@flags.validator("phases", message=f"--phases must be a list of {PHASES}")
def _check_phases(values):
    return bool(values) and all(v in PHASES for v in values)


def _build_model(trainer_meta):
    from tfcap.model.captioner import Captioner

    overrides = {"max_len": trainer_meta["max_caption_len"]}
    if _TEXT_ATTENTION.value is not None:
        overrides["text_attention"] = _TEXT_ATTENTION.value
    if _DROPOUT.value is not None:
        overrides["dropout"] = _DROPOUT.value
    if _FEATURE_EMBED.value is not None:
        overrides["feature_embed"] = _FEATURE_EMBED.value
    if _WORD_RELU.value is not None:
        overrides["word_relu"] = _WORD_RELU.value
    if _WEIGHT_INIT.value is not None:
        overrides["weight_init"] = _WEIGHT_INIT.value
    if _MIXED_PRECISION.value:
        overrides["dtype"] = "mixed_bfloat16"
    model = Captioner.from_preset(_PRESET.value, trainer_meta["vocab_size"], **overrides)
    model.build((None, None, trainer_meta["feature_dim"]))
    return model


def _write_flags(model_dir: str) -> None:
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "flags.txt"), "w", encoding="utf-8") as f:
        f.write(flags.FLAGS.flags_into_string())


def _check_model_dir(model_dir: str, model) -> None:
    """Refuses to resume a model dir trained with a different model config."""
    from tfcap import checkpoints

    path = os.path.join(model_dir, checkpoints.MODEL_JSON)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)["captioner"]
        new = model.get_config()
        defaults = {  # a config written before an argument existed holds its default
            k: p.default for k, p in inspect.signature(type(model)).parameters.items()
        }
        diff = {
            k: (old.get(k, defaults.get(k)), new.get(k))
            for k in set(old) | set(new)
            # weight_init only draws fresh weights: a resume restores them all
            if k not in ("name", "trainable", "dtype", "weight_init")
            and old.get(k, defaults.get(k)) != new.get(k)
        }
        if diff:
            raise app.UsageError(
                f"{path}: this model dir holds a different model ({diff}); "
                f"use a new --model_dir or the original flags (--flagfile={model_dir}/flags.txt)"
            )


def _configs():
    from tfcap.training import gan, phases, scst, xe

    policy = scst.SCSTConfig(
        _NUM_SAMPLES.value,
        _BASELINE.value,
        _TEMPERATURE.value,
        _GRAD_CLIP.value,
        _GRAD_CLIP_MODE.value,
    )
    return {
        "xe": (
            phases.PhaseConfig(
                "xe",
                _TRAIN_STEPS.value,
                _EPOCHS.value,
                _LEARNING_RATE.value,
                _LR_DECAY_EPOCHS.value,
                _LR_DECAY_RATE.value,
            ),
            xe.XEConfig(_LABEL_SMOOTHING.value, _GRAD_CLIP.value, _GRAD_CLIP_MODE.value),
            phases.ScheduledSampling(
                _SS_START.value, _SS_EVERY.value, _SS_INCREASE.value, _SS_MAX.value
            ),
        ),
        "scst": (
            phases.PhaseConfig("scst", _SCST_STEPS.value, _SCST_EPOCHS.value, _SCST_LR.value),
            policy,
            _SCST_REWARD.value,
        ),
        "gan": (
            phases.PhaseConfig("gan", _GAN_STEPS.value, _GAN_EPOCHS.value, _GAN_LR.value),
            policy,
            gan.GanConfig(
                alpha=_GAN_ALPHA.value,
                evaluator=_GAN_EVALUATOR.value,
                reward_scale=_GAN_REWARD_SCALE.value,
                d_encoder=_D_ENCODER.value,
                d_hidden=_D_HIDDEN.value,
                d_learning_rate=_D_LR.value,
                d_steps=_D_STEPS.value,
                d_pretrain_steps=_D_PRETRAIN.value,
                d_fake_weight=_D_FAKE_WEIGHT.value,
                d_wrong_weight=_D_WRONG_WEIGHT.value,
            ),
        ),
    }


def train(strategy, model, meta) -> None:
    """Runs --phases in order; each phase's end leaves its snapshot and val scores."""
    from tfcap.data import pipeline
    from tfcap.training import guard, input, logs, loop, phases, state, validation

    run = state.RunState(strategy, model, cli_flags.MODEL_DIR.value, _KEEP.value)
    inputs = input.InputConfig(
        cli_flags.DATA_DIR.value,
        cli_flags.BATCH_SIZE.value,
        _SEQ_PER_IMG.value,
        cli_flags.SEED.value,
        _DETERMINISTIC.value,
        cli_flags.SKIP_BAD_RECORDS.value,
        all_references=pipeline.max_references(meta, "train") if _ALL_REFERENCES.value else 0,
    )
    spe = input.steps_per_epoch(inputs)
    faults = guard.FaultInjector(parse_injections(_INJECT_NONFINITE.value))
    hooks = loop.Hooks(
        logs=logs.Logs(run.dir, inputs.batch_size, spe),
        validator=validation.Validator(
            model, inputs.data_dir, _VAL_IMAGES.value, _VAL_BATCH.value, _VAL_BEAM.value
        ),
        guard=guard.NonFiniteGuard(run.skipped_steps, _MAX_NONFINITE.value),
        faults=faults,
        inputs=inputs,
        log_every=_LOG_EVERY.value,
        eval_every=_EVAL_EVERY.value,
    )
    ctx = phases.Context(
        run,
        cli_flags.SEED.value,
        spe,
        _CKPT_EVERY.value,
        _SEQ_PER_IMG.value,
        meta,
        inputs.data_dir,
        _CIDER_EOS.value,
        _VAL_IMAGES.value,
    )
    builders = {"xe": phases.xe_phase, "scst": phases.scst_phase, "gan": phases.gan_phases}
    configs = _configs()
    run.restore()  # the counters: which phases are done
    for name in _PHASES.value:
        phases.check_not_extended(run, name, configs[name][0].total_steps(spe))
        ran = False
        for phase in builders[name](ctx, *configs[name], faults.multiplier):
            ran = loop.run_phase(run, phase, hooks) or ran
        scores = phases.end_phase(run, hooks.validator, name, ran, _FINAL_METRICS.value)
        if scores is not None:
            print(json.dumps({"phase": name, "split": "val", **scores}), flush=True)
    run.finish()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    for holder in (cli_flags.DATA_DIR, cli_flags.MODEL_DIR):
        if not holder.value:
            raise app.UsageError(f"--{holder.name} is required")
    if _BASELINE.value == "mean" and _NUM_SAMPLES.value < 2:
        raise app.UsageError("--baseline=mean needs --num_samples >= 2 (the other samples' mean)")
    if _GAN_REWARD_SCALE.value == "spread" and _BASELINE.value != "mean" and "gan" in _PHASES.value:
        raise app.UsageError(
            "--gan_reward_scale=spread needs --baseline=mean (the greedy baseline's single "
            "caption per image has no spread to scale by)"
        )
    strategy = distribute.make_strategy(_STRATEGY.value, _NUM_DEVICES.value)  # before any TF op
    import keras
    import tensorflow as tf

    from tfcap import checkpoints
    from tfcap.data import pipeline

    tf.get_logger().setLevel("WARNING")  # TF's own INFO lines (checkpoint sharding, ...)
    if _DETERMINISTIC.value:
        keras.utils.set_random_seed(cli_flags.SEED.value)
        tf.config.experimental.enable_op_determinism()
    meta = pipeline.load_metadata(cli_flags.DATA_DIR.value)
    pipeline.steps_per_epoch(meta, "train", cli_flags.BATCH_SIZE.value)  # a batch it can fill
    with strategy.scope():
        model = _build_model(meta)
    model_dir = cli_flags.MODEL_DIR.value
    _check_model_dir(model_dir, model)
    if distribute.is_chief(strategy):
        _write_flags(model_dir)
        checkpoints.write_model_files(model_dir, model, cli_flags.DATA_DIR.value)
    logging.info(
        "model: %s, %d parameters, %d replicas",
        _PRESET.value,
        model.count_params(),
        strategy.num_replicas_in_sync,
    )
    with distribute.explain_lost_workers(strategy, model_dir):
        train(strategy, model, meta)


if __name__ == "__main__":
    cli.run(main)
