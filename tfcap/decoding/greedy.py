"""Greedy decoding, and the token-by-token loop it shares with sampling.

Every decoder in `tfcap.decoding` is a pure-TF function of a step function

    step_fn(ids, step, cache) -> (logits, cache)

- `ids`: int32 `[batch]`, the previous tokens: `bos_id` at step 0; rows that
  have finished are fed 0 (`<pad>`) and their outputs are ignored.
- `step`: int32 scalar, 0-based index of the token being produced.
- `cache`: nested dict of tensors, every entry batch-major `[batch, ...]`. The
  function returns it with the same structure, shapes and dtypes. Keys the
  decoders read:
  - `"attention"` (optional): float `[batch, regions]`, the attention weights
    of the step just run; stacked into the `[batch, max_len, regions]` output.
    Without it the attention output is `[batch, max_len, 0]`.
  - `"static"` (optional): a subtree constant across steps. Sampling and beam
    search tile it with the rest; beam search never reorders it.
- `logits`: float `[batch, vocab]` (any float dtype; decoders use float32).

Loops are `tf.while_loop`s over preallocated, 0-initialised buffers with
static shapes where the inputs have them, stopping after `max_len` steps or
when every row has emitted `eos_id`: they run eagerly, in a `tf.function` with
static or dynamic batch size, and under XLA (`jit_compile=True`).
"""

from collections.abc import Callable

import tensorflow as tf

StepFn = Callable[[tf.Tensor, tf.Tensor, dict], tuple[tf.Tensor, dict]]
# (logits float32 [batch, vocab], running log-prob [batch], step) -> (ids, log_probs [batch, vocab])
SelectFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tuple[tf.Tensor, tf.Tensor]]


def greedy(
    step_fn: StepFn,
    cache: dict,
    batch_size: int | tf.Tensor,
    max_len: int,
    bos_id: int = 1,
    eos_id: int = 2,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Most likely token at every step.

    Args:
        step_fn: `(ids, step, cache) -> (logits, cache)`, see the module docstring.
        cache: the initial cache, batch-major `[batch_size, ...]`.
        batch_size: int or int32 scalar tensor.
        max_len: int, number of tokens to produce at most (incl. `eos_id`).
        bos_id, eos_id: int, first input token and end token.

    Returns:
        ids int32 `[batch, max_len]`, 0 after `eos_id`; log_probs float32
        `[batch]`, the sum of the chosen tokens' log-probabilities incl. `eos_id`;
        attention float32 `[batch, max_len, regions]`, 0 after `eos_id`.

    >>> table = tf.math.log([[.1, .1, .1, .7], [.1, .1, .1, .7], [.1, .1, .7, .1],
    ...                      [.1, .1, .7, .1]])
    >>> step_fn = lambda ids, step, cache: (tf.gather(table, ids), cache)
    >>> ids, log_probs, _ = greedy(step_fn, {}, batch_size=1, max_len=4)
    >>> ids.numpy().tolist(), round(float(log_probs[0]), 4)
    ([[3, 2, 0, 0]], -0.7133)
    """

    def select(logits, running, step):
        del step
        log_probs = tf.nn.log_softmax(logits)
        # argmax(running + log_probs) == argmax(log_probs); scoring the same sums
        # beam search scores makes beam_size=1 reproduce greedy bit for bit.
        ids = tf.argmax(running[:, None] + log_probs, axis=-1, output_type=tf.int32)
        return ids, log_probs

    out = decode_loop(step_fn, cache, batch_size, max_len, select, bos_id, eos_id)
    return out["ids"], out["log_probs"], out["attention"]


def decode_loop(
    step_fn: StepFn,
    cache: dict,
    batch_size: int | tf.Tensor,
    max_len: int,
    select_fn: SelectFn,
    bos_id: int = 1,
    eos_id: int = 2,
) -> dict[str, tf.Tensor]:
    """Runs `step_fn` token by token, choosing each token with `select_fn`.

    Args:
        step_fn, cache, batch_size, max_len, bos_id, eos_id: as in `greedy`.
        select_fn: `(logits, running, step) -> (ids, log_probs)`: logits float32
            `[batch, vocab]`, running float32 `[batch]` (sum so far), step int32
            scalar; returns ids int `[batch]` and float32 `[batch, vocab]`, the
            log-distribution the ids were chosen from.

    Returns:
        dict: `ids` int32 `[batch, max_len]`; `log_probs` float32 `[batch]`;
        `attention` float32 `[batch, max_len, regions]`; `token_log_probs`
        float32 `[batch, max_len]`; `mask` bool `[batch, max_len]`, True on
        produced tokens up to and incl. `eos_id`. Outputs after `eos_id` are 0.
        Gradients flow to `token_log_probs` and `log_probs` (not to `ids`).
    """
    if not isinstance(max_len, int) or max_len < 1:
        raise ValueError(f"max_len must be a positive int, got {max_len!r}")
    has_attention = "attention" in cache
    attention = cache["attention"] if has_attention else tf.zeros([batch_size, 0])
    attention = tf.zeros_like(attention, tf.float32)[:, None, :]  # [batch, 1, regions]
    loop_vars = dict(
        step=tf.constant(0),
        prev=tf.fill([batch_size], tf.constant(bos_id, tf.int32)),
        finished=tf.zeros([batch_size], tf.bool),
        running=tf.zeros([batch_size], tf.float32),
        ids=tf.zeros([batch_size, max_len], tf.int32),
        token_log_probs=tf.zeros([batch_size, max_len], tf.float32),
        attention=tf.tile(attention, [1, max_len, 1]),
        cache=cache,
    )

    def body(v):
        logits, new_cache = step_fn(v["prev"], v["step"], v["cache"])
        ids, log_probs = select_fn(tf.cast(logits, tf.float32), v["running"], v["step"])
        ids = tf.where(v["finished"], 0, tf.cast(ids, tf.int32))
        chosen = tf.gather(log_probs, ids, batch_dims=1)
        chosen = tf.where(v["finished"], 0.0, chosen)
        out = dict(
            step=v["step"] + 1,
            prev=ids,
            finished=v["finished"] | tf.equal(ids, eos_id),
            running=v["running"] + chosen,
            ids=write_step(v["ids"], v["step"], ids),
            token_log_probs=write_step(v["token_log_probs"], v["step"], chosen),
            attention=v["attention"],
            cache=new_cache,
        )
        if has_attention:
            weights = tf.cast(new_cache["attention"], tf.float32)
            weights = tf.where(v["finished"][:, None], 0.0, weights)
            out["attention"] = write_step(v["attention"], v["step"], weights)
        return (out,)

    def cond(v):
        return (v["step"] < max_len) & ~tf.reduce_all(v["finished"])

    (final,) = tf.while_loop(cond, body, (loop_vars,), maximum_iterations=max_len)
    ended = tf.cumsum(tf.cast(tf.equal(final["ids"], eos_id), tf.int32), axis=1, exclusive=True)
    return {
        "ids": final["ids"],
        "log_probs": final["running"],
        "attention": final["attention"],
        "token_log_probs": final["token_log_probs"],
        "mask": tf.equal(ended, 0),
    }


def write_step(buffer: tf.Tensor, step: tf.Tensor, value: tf.Tensor) -> tf.Tensor:
    """`buffer[:, step] = value` for buffer `[batch, time, ...]`, value `[batch, ...]`."""
    hit = tf.equal(tf.range(tf.shape(buffer)[1]), step)  # [time]
    hit = tf.reshape(hit, [1, -1] + [1] * (buffer.shape.rank - 2))
    return tf.where(hit, tf.expand_dims(value, 1), buffer)
