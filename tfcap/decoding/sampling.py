"""Sampling several captions per image, in-graph and seeded (stateless RNG).

The step-function contract is in `tfcap.decoding.greedy`. For SCST the
returned per-token log-probabilities are differentiable when `sample` runs
under a `tf.GradientTape` (gradients flow back through the `tf.while_loop`);
trainers that want dropout-on scores or to avoid backprop through the loop
re-score `ids` with teacher forcing instead
(`tfcap.model.captioner.Captioner.sequence_log_probs`).
"""

from typing import NamedTuple

import tensorflow as tf

from tfcap.decoding.greedy import StepFn, decode_loop


class Samples(NamedTuple):
    """Output of `sample`. Rows are image-major: row `i * num_samples + j` is
    sample `j` of image `i`; `samples` below is `batch * num_samples`.

    Attributes:
        ids: int32 `[samples, max_len]`, 0 after `eos_id`.
        log_probs: float32 `[samples]`, sum of `token_log_probs`.
        attention: float32 `[samples, max_len, regions]`, 0 after `eos_id`.
        token_log_probs: float32 `[samples, max_len]`, log-probability of each
            token under the distribution it was drawn from,
            `log_softmax(logits / temperature)`; 0 where `mask` is False.
        mask: bool `[samples, max_len]`, True on tokens up to and incl. `eos_id`.
    """

    ids: tf.Tensor
    log_probs: tf.Tensor
    attention: tf.Tensor
    token_log_probs: tf.Tensor
    mask: tf.Tensor


def sample(
    step_fn: StepFn,
    cache: dict,
    batch_size: int | tf.Tensor,
    max_len: int,
    num_samples: int = 1,
    temperature: float = 1.0,
    seed: int | tf.Tensor | None = None,
    bos_id: int = 1,
    eos_id: int = 2,
) -> Samples:
    """Draws `num_samples` captions per image from `softmax(logits / temperature)`.

    Args:
        step_fn: `(ids, step, cache) -> (logits, cache)`, see `tfcap.decoding.greedy`.
        cache: the initial cache for `batch_size` images, batch-major; every
            entry is repeated `num_samples` times (image-major) here.
        batch_size: int or int32 scalar tensor, number of images.
        max_len: int, number of tokens to produce at most (incl. `eos_id`).
        num_samples: int, samples per image.
        temperature: float or float32 scalar, > 0.
        seed: int, or int32/int64 `[2]` tensor for the stateless RNG; the same
            seed gives the same samples. None draws one from the global RNG.
        bos_id, eos_id: int, first input token and end token.

    Returns:
        `Samples`, see its docstring.

    >>> logits = tf.math.log([[.1, .1, .4, .4]])
    >>> step_fn = lambda ids, step, cache: (tf.tile(logits, [tf.size(ids), 1]), cache)
    >>> out = sample(step_fn, {}, batch_size=2, max_len=3, num_samples=2, seed=7)
    >>> out.ids.shape, out.mask.shape
    (TensorShape([4, 3]), TensorShape([4, 3]))
    """
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive int, got {num_samples!r}")
    if isinstance(temperature, float | int) and temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    seed = as_seed(seed)
    cache = tf.nest.map_structure(lambda x: tf.repeat(x, num_samples, axis=0), cache)
    temperature = tf.cast(temperature, tf.float32)

    def select(logits, running, step):
        del running
        log_probs = tf.nn.log_softmax(logits / temperature)
        step_seed = tf.random.experimental.stateless_fold_in(seed, step)
        ids = tf.random.stateless_categorical(log_probs, 1, step_seed, dtype=tf.int32)
        return ids[:, 0], log_probs

    out = decode_loop(step_fn, cache, batch_size * num_samples, max_len, select, bos_id, eos_id)
    return Samples(**out)


def as_seed(seed):
    """A `[2]` int seed tensor from an int, a tensor, or None (random)."""
    if seed is None:
        return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
    if isinstance(seed, int):
        return tf.constant([seed, 0], tf.int32)
    seed = tf.convert_to_tensor(seed)
    if seed.shape != [2] or seed.dtype not in (tf.int32, tf.int64):
        raise ValueError(f"seed must be an int or an int [2] tensor, got {seed!r}")
    return seed
