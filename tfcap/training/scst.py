"""Self-critical policy-gradient steps (SCST, Rennie et al. 2017) and their rewards.

Per image the generator samples `num_samples` captions; each gets a sequence
reward r (an evaluator such as CIDEr-D, or the adversarial mix of
`tfcap.rewards.gan`); the baseline b is the reward of the greedy caption
("greedy") or the mean reward of the image's other samples ("mean"). The loss
is -sum_t (r - b) log p(w_t) over every generated token up to and including
`<eos>`, divided by the global token count, so every replica computes its
share of one global step.

Reward functions run on the host (`tf.numpy_function`) and take token ids:

    reward_fn(sample_ids int32 [rows, max_len], image_index int32 [rows],
              reference_ids int32 [batch, seq_per_img, length], replica int) -> float32 [rows]

`reference_ids` are the batch's `captions` without the leading `<bos>`;
`replica` is the calling replica's id, so a function that keeps state between
calls (the encoded references of `cider_reward`) keeps one per replica, and
replicas calling at once cannot disturb each other.

Gradients. The policy is the distribution the captions are sampled from,
`softmax(logits / temperature)`, so the gradient is on-policy at every
temperature. The step differentiates the token log-probabilities the sampler
computed, through the sampling loop (one forward pass); with `rescore=True` it
scores the samples again by teacher forcing at the same temperature (a second
forward pass) and differentiates that. Both give the same gradient up to float
rounding.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from tfcap.data import vocab
from tfcap.model.captioner import Captioner
from tfcap.model.grad_taps import GradTaps
from tfcap.rewards import bleu, cider
from tfcap.training.updates import apply_if_finite, reduce_gradients

RewardFn = Callable[..., np.ndarray]  # (ids, index, refs, replica=0) -> float32 [rows]
BASELINES = ("greedy", "mean")


@dataclasses.dataclass(frozen=True)
class SCSTConfig:
    """Knobs of the SCST step.

    Attributes:
        num_samples: captions sampled per image.
        baseline: "greedy" or "mean" (module docstring).
        temperature: sampling temperature; the policy differentiated is the one
            sampled from, `softmax(logits / temperature)`.
        grad_clip, grad_clip_mode: as in `tfcap.training.xe.XEConfig`.
        rescore: score the samples by a second, teacher-forced pass (module
            docstring), whose recurrent kernels' gradients are batched after its
            loop (`tfcap.model.grad_taps`). Measured 2026-12-01 (AVX2, 2 cores):
            3.54 vs 3.72 s per `updown` step (within run-to-run noise), 0.40 vs
            0.35 s per `demo` step; so off by default.
    """

    num_samples: int = 5
    baseline: str = "greedy"
    temperature: float = 1.0
    grad_clip: float = 0.1
    grad_clip_mode: str = "value"
    rescore: bool = False


def cider_reward(scorer: cider.CiderD) -> RewardFn:
    """CIDEr-D of each sample against its image's references (scorer's df).

    Each replica's last references are kept encoded: a step's sample and
    greedy rewards share them.
    """
    last: dict[int, tuple[bytes, cider.References]] = {}  # replica -> (key, encoded)
    lock = threading.Lock()

    def reward(ids, index, refs, replica=0):
        refs = np.ascontiguousarray(refs)
        key = refs.tobytes() + repr((refs.shape, refs.dtype.str)).encode()
        with lock:
            kept = last.get(int(replica))
        if kept is None or kept[0] != key:
            kept = (key, scorer.encode_references(_nonempty(refs)))
            with lock:
                last[int(replica)] = kept
        scores = scorer.score_ids(np.asarray(ids), np.asarray(index), kept[1])[1]
        return scores.astype(np.float32)

    return reward


def _nonempty(refs: np.ndarray):
    """`[images, refs, time]` ids, or per image its non-empty rows when some are empty
    (images with fewer references than rows); an image with none keeps one empty row."""
    full = np.any(refs != 0, axis=-1)  # [images, refs]
    if full.all():
        return refs
    return [
        [r for r, f in zip(image, ok, strict=True) if f] or [image[0]]
        for image, ok in zip(refs, full, strict=True)
    ]


def bleu_reward() -> RewardFn:
    """Sentence BLEU-4 of each sample against its image's references."""

    def reward(ids, index, refs, replica=0):
        del replica
        return bleu.bleu_ids(ids, index, refs, eos_id=vocab.EOS_ID)

    return reward


def evaluator(name: str, train_cider: Callable[[], cider.CiderD]) -> RewardFn:
    """The evaluator reward `name`: "cider" (CIDEr-D with the train split's document
    frequencies, `train_cider()`) or "bleu" (sentence BLEU-4)."""
    if name == "cider":
        return cider_reward(train_cider())
    if name == "bleu":
        return bleu_reward()
    raise ValueError(f"evaluator must be cider or bleu, got {name!r}")


def host_reward(fn: RewardFn, ids, index, refs) -> tf.Tensor:
    """Calls a host reward function from the graph (replica context): float32 `[rows]`."""
    replica = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.int32)
    out = tf.numpy_function(fn, [ids, index, refs, replica], tf.float32, stateful=False)
    return tf.ensure_shape(out, [None])


def baseline_of(
    rewards: tf.Tensor, num_samples: int, kind: str, greedy_rewards: tf.Tensor | None = None
) -> tf.Tensor:
    """The baseline of each sample: float32 `[batch * num_samples]`.

    >>> r = tf.constant([1.0, 2.0, 3.0, 10.0, 10.0, 10.0])
    >>> baseline_of(r, 3, "mean").numpy().tolist()
    [2.5, 2.0, 1.5, 10.0, 10.0, 10.0]
    """
    if kind == "greedy":
        return tf.repeat(greedy_rewards, num_samples)
    if kind == "mean":
        if num_samples < 2:
            raise ValueError("the 'mean' baseline needs num_samples >= 2")
        per_image = tf.reshape(rewards, [-1, num_samples])
        others = (tf.reduce_sum(per_image, 1, keepdims=True) - per_image) / (num_samples - 1)
        return tf.reshape(others, [-1])
    raise ValueError(f"baseline must be one of {BASELINES}, got {kind!r}")


def sampled_policy_loss(samples, advantages, tokens):
    """`policy_loss` from the sampler's own token log-probabilities (at its temperature).

    The entropy is estimated by the mean of -log p(token) over the sampled
    tokens (its expectation is the policy's mean entropy per step).
    """
    weights = tf.cast(generated_mask(samples.ids), tf.float32)
    token_lp = samples.token_log_probs  # [rows, max_len], differentiable
    loss = -tf.reduce_sum(tf.stop_gradient(advantages)[:, None] * token_lp * weights) / tokens
    entropy = -tf.reduce_sum(tf.stop_gradient(token_lp) * weights) / tf.maximum(
        tf.reduce_sum(weights), 1.0
    )
    return loss, entropy


def policy_loss(
    model: Captioner,
    features,
    region_mask,
    ids,
    advantages,
    tokens,
    temperature=1.0,
    taps: GradTaps | None = None,
):
    """-sum(advantage * log p(token)) / tokens, and the policy's mean entropy, where
    p = softmax(logits / temperature) is the distribution the samples were drawn from.

    Args:
        ids: int32 `[rows, max_len]` samples (no `<bos>`, 0 after `<eos>`).
        advantages: float32 `[rows]`, treated as constants.
        tokens: float32 scalar, the global number of generated tokens.
        temperature: the sampling temperature.
        taps: optional `GradTaps` of the teacher-forced pass (`tfcap.model.grad_taps`).
    """
    bos = tf.fill([tf.shape(ids)[0], 1], vocab.BOS_ID)
    captions = tf.concat([bos, ids], 1)
    logits, _ = model.teacher_forcing(features, region_mask, captions, taps=taps)
    log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32) / temperature)  # [rows, len, vocab]
    token_lp = tf.gather(log_probs, ids, batch_dims=2)  # [rows, max_len]
    mask = generated_mask(ids)
    weights = tf.cast(mask, tf.float32)
    loss = -tf.reduce_sum(tf.stop_gradient(advantages)[:, None] * token_lp * weights) / tokens
    entropy = -tf.reduce_sum(tf.exp(log_probs) * log_probs, -1)  # [rows, max_len]
    mean_entropy = tf.reduce_sum(tf.stop_gradient(entropy) * weights) / tf.maximum(
        tf.reduce_sum(weights), 1.0
    )
    return loss, mean_entropy


def generated_mask(ids: tf.Tensor) -> tf.Tensor:
    """bool `[rows, max_len]`: True up to and including the first `<eos>`, and not on padding."""
    ended = tf.cumsum(tf.cast(tf.equal(ids, vocab.EOS_ID), tf.int32), axis=1, exclusive=True)
    return tf.equal(ended, 0) & tf.not_equal(ids, vocab.PAD_ID)


RewardGraphFn = Callable[[dict, tf.Tensor, int], tf.Tensor]


def make_policy_step(
    strategy: tf.distribute.Strategy,
    model: Captioner,
    optimizer: keras.optimizers.Optimizer,
    reward: RewardGraphFn,
    config: SCSTConfig,
    loss_multiplier: tf.Variable | None = None,
):
    """A tf.function `(distributed batch, seed [2]) -> dict of scalars`.

    `reward(batch, ids, per_image)` gives float32 `[rows]` for `ids` `[rows, max_len]`
    holding `per_image` captions of each image of `batch` (image-major). A step
    whose `loss` or `grad_norm` is not finite made no update
    (`tfcap.training.updates.step_skipped`). `loss_multiplier`: a testing aid as in
    `tfcap.training.xe.make_xe_step`.
    """
    k = config.num_samples
    rescore = config.rescore
    # The teacher-forced rescoring takes the recurrent kernels' gradients after its loop.
    tapped = rescore and model.takes_grad_taps

    def replica_step(batch, seed):
        ctx = tf.distribute.get_replica_context()
        feats, mask = batch["features"], batch["region_mask"]
        seed = tf.random.experimental.stateless_fold_in(seed, ctx.replica_id_in_sync_group)
        greedy_ids = None
        if config.baseline == "greedy":
            greedy_ids = model.generate(feats, mask, method="greedy")[0]
        variables = model.trainable_variables
        with tf.GradientTape() as tape:
            taps = GradTaps(tape) if tapped else None
            # Recorded only when its log-probabilities are the ones differentiated.
            with tape.stop_recording() if rescore else contextlib.nullcontext():
                samples = model.generate(
                    feats,
                    mask,
                    method="sample",
                    num_samples=k,
                    temperature=config.temperature,
                    seed=seed,
                )
            ids = tf.stop_gradient(samples.ids)
            rewards = reward(batch, ids, k)
            greedy_rewards = None if greedy_ids is None else reward(batch, greedy_ids, 1)
            baseline = baseline_of(rewards, k, config.baseline, greedy_rewards)
            advantages = rewards - baseline
            gen_mask = generated_mask(ids)
            local_tokens = tf.reduce_sum(tf.cast(gen_mask, tf.float32))
            tokens = tf.maximum(ctx.all_reduce(tf.distribute.ReduceOp.SUM, local_tokens), 1.0)
            if rescore:
                loss, entropy = policy_loss(
                    model, feats, mask, ids, advantages, tokens, config.temperature, taps
                )
            else:
                loss, entropy = sampled_policy_loss(samples, advantages, tokens)
            if loss_multiplier is not None:
                loss = loss * loss_multiplier
        grads = taps.gradients(loss, variables) if tapped else tape.gradient(loss, variables)
        grads, norm, finite = reduce_gradients(grads, loss)
        rows = tf.cast(tf.shape(ids)[0], tf.float32)
        return (
            grads,
            finite,
            {
                "loss": loss,
                "reward": tf.reduce_mean(rewards),
                "baseline": tf.reduce_mean(baseline),
                "advantage": tf.reduce_mean(advantages),
                "entropy": entropy,
                "length": local_tokens / rows,
                "grad_norm": norm,
            },
        )

    @tf.function
    def step(dist_batch, seed):
        grads, finite, out = strategy.run(replica_step, args=(dist_batch, seed))
        variables = model.trainable_variables
        clip, mode = config.grad_clip, config.grad_clip_mode
        apply_if_finite(strategy, optimizer, variables, grads, finite, clip, mode)
        summed = {"loss"}
        return {
            key: strategy.reduce(
                tf.distribute.ReduceOp.SUM if key in summed else tf.distribute.ReduceOp.MEAN,
                value,
                axis=None,
            )
            for key, value in out.items()
        }

    return step


def evaluator_reward(fn: RewardFn) -> RewardGraphFn:
    """The in-graph reward of SCST: the host evaluator `fn` against every reference of
    each image (`references`, when the batch has them) or else the batch's captions."""

    def reward(batch, ids, per_image):
        batch_size = tf.shape(batch["captions"])[0]
        index = tf.repeat(tf.range(batch_size), per_image)
        refs = batch["references"] if "references" in batch else batch["captions"][:, :, 1:]
        return host_reward(fn, ids, index, refs)

    return reward
