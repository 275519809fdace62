"""In-graph beam search with per-beam attention history.

The step-function contract is in `tfcap.decoding.greedy`. The cache is tiled
to `[batch * beam_size, ...]` (beam-minor: row `i * beam_size + k` is beam `k`
of image `i`) and reordered after every step by each surviving beam's parent,
except `cache["static"]`, which is only tiled. The attention of every step is
kept in a `[batch, beam, max_len, regions]` buffer reordered the same way, so
the best beam's attention comes out with its tokens.

Scoring. A hypothesis' score is `log_prob / ((5 + length) / 6) ** alpha`
(GNMT length normalisation, as in
`official.nlp.modeling.ops.beam_search.sequence_beam_search`), `length`
counting produced tokens incl. `eos_id`. Each step keeps the `beam_size` best
of all `beam * vocab` extensions by score; a beam that has emitted `eos_id` is
frozen: it extends only by `<pad>` (id 0) at no cost, so it stays in the beam
with its final score until better hypotheses push it out.

Why not `sequence_beam_search`: it grows `2 * beam_size` candidates and keeps
finished hypotheses apart from alive ones, so with `beam_size=1` it is not
greedy (an `<eos>` ranked second at some step becomes a finished hypothesis
that can win, and it stops early once it does); it requires every cache tensor
to have the score dtype (no bool region mask, no int step counter); and its
static-shape mode (`padded_decode`) needs a static batch size. This search is
exactly greedy for `beam_size=1, alpha=0` and has static shapes for any batch.
"""

import tensorflow as tf

from tfcap.decoding.greedy import StepFn, write_step

# Log-probability of impossible extensions; finite so that sums stay ordered.
_NEG = -1e9


def length_normalization(alpha: float | tf.Tensor, length: tf.Tensor) -> tf.Tensor:
    """GNMT length penalty `((5 + length) / 6) ** alpha`, float32 like `length`."""
    return tf.pow((5.0 + tf.cast(length, tf.float32)) / 6.0, alpha)


def beam_search(
    step_fn: StepFn,
    cache: dict,
    batch_size: int | tf.Tensor,
    beam_size: int,
    max_len: int,
    vocab_size: int,
    alpha: float = 0.0,
    bos_id: int = 1,
    eos_id: int = 2,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Best-scoring caption per image by beam search.

    Args:
        step_fn: `(ids, step, cache) -> (logits, cache)`, see `tfcap.decoding.greedy`.
        cache: the initial cache for `batch_size` images, batch-major.
        batch_size: int or int32 scalar tensor, number of images.
        beam_size: int, hypotheses kept per image (at most `vocab_size`).
        max_len: int, number of tokens to produce at most (incl. `eos_id`).
        vocab_size: int, width of the logits.
        alpha: float, length-normalisation strength (0: plain log-probability).
        bos_id, eos_id: int, first input token and end token.

    Returns:
        ids int32 `[batch, max_len]`, 0 after `eos_id`; score float32 `[batch]`
        (the length-normalised log-probability above); attention float32
        `[batch, max_len, regions]`, 0 after `eos_id`.

    >>> table = tf.math.log([[.2, .2, .2, .2, .2], [0, 0, 0, .6, .4],
    ...     [.2, .2, .2, .2, .2], [0, 0, .5, .25, .25], [0, 0, 1., 0, 0]])
    >>> step_fn = lambda ids, step, cache: (tf.gather(table, ids), cache)
    >>> ids, score, _ = beam_search(step_fn, {}, 1, beam_size=2, max_len=3, vocab_size=5)
    >>> ids.numpy().tolist(), round(float(tf.exp(score[0])), 4)
    ([[4, 2, 0]], 0.4)
    """
    _check(beam_size, max_len, vocab_size)
    k = beam_size
    state = _initial_state(cache, batch_size, k, max_len, bos_id)

    def body(s):
        logits, cache = step_fn(tf.reshape(s["prev"], [-1]), s["step"], s["cache"])
        log_probs = tf.nn.log_softmax(tf.cast(_split(logits, k), tf.float32))  # [b, k, vocab]
        frozen = tf.one_hot(0, vocab_size, on_value=0.0, off_value=_NEG)  # [vocab]
        log_probs = tf.where(s["done"][..., None], frozen, log_probs)
        totals = s["log_prob"][..., None] + log_probs  # [b, k, vocab]
        lengths = tf.where(s["done"], s["length"], s["step"] + 1)  # [b, k]
        scores = totals / length_normalization(alpha, lengths)[..., None]
        _, best = tf.math.top_k(tf.reshape(scores, [-1, k * vocab_size]), k)  # [b, k]
        parent, token = best // vocab_size, best % vocab_size
        regather = _gatherer(parent)
        new = {
            "step": s["step"] + 1,
            "prev": token,
            "log_prob": tf.gather(tf.reshape(totals, [-1, k * vocab_size]), best, batch_dims=1),
            "length": regather(lengths),
            "done": regather(s["done"]) | tf.equal(token, eos_id),
            "ids": _write_step_beam(regather(s["ids"]), s["step"], token),
            "attention": s["attention"],
            "cache": _reorder_cache(cache, regather, k),
        }
        if "attention" in cache:
            weights = regather(tf.cast(_split(cache["attention"], k), tf.float32))
            weights = tf.where(regather(s["done"])[..., None], 0.0, weights)
            new["attention"] = _write_step_beam(regather(s["attention"]), s["step"], weights)
        return (new,)

    def cond(s):
        return (s["step"] < max_len) & ~tf.reduce_all(s["done"])

    (final,) = tf.while_loop(cond, body, (state,), maximum_iterations=max_len)
    scores = final["log_prob"] / length_normalization(alpha, final["length"])  # [b, k]
    top = tf.argmax(scores, axis=1, output_type=tf.int32)  # [b]
    pick = lambda x: tf.gather(x, top, batch_dims=1)  # noqa: E731
    return pick(final["ids"]), pick(scores), pick(final["attention"])


def _check(beam_size, max_len, vocab_size):
    for name, value in ("beam_size", beam_size), ("max_len", max_len), ("vocab_size", vocab_size):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if beam_size > vocab_size:
        raise ValueError(f"beam_size {beam_size} exceeds vocab_size {vocab_size}")


def _initial_state(cache, batch_size, k, max_len, bos_id):
    """Loop state; every per-hypothesis entry is `[batch, beam, ...]`."""
    cache = tf.nest.map_structure(lambda x: tf.repeat(x, k, axis=0), cache)
    if "attention" in cache:
        attention = tf.zeros_like(_split(cache["attention"], k), tf.float32)  # [b, k, regions]
    else:
        attention = tf.zeros([batch_size, k, 0])
    # Only beam 0 is live at first: the k copies of <bos> are the same hypothesis.
    first = tf.constant([0.0] + [_NEG] * (k - 1))
    return {
        "step": tf.constant(0),
        "prev": tf.fill([batch_size, k], tf.constant(bos_id, tf.int32)),
        "log_prob": tf.tile(first[None, :], [batch_size, 1]),
        "length": tf.zeros([batch_size, k], tf.int32),
        "done": tf.zeros([batch_size, k], tf.bool),
        "ids": tf.zeros([batch_size, k, max_len], tf.int32),
        "attention": tf.tile(attention[:, :, None, :], [1, 1, max_len, 1]),
        "cache": cache,
    }


def _split(x, k):
    """`[batch * k, ...]` -> `[batch, k, ...]`, keeping static dims."""
    tail = [d if d is not None else tf.shape(x)[i + 1] for i, d in enumerate(x.shape[1:])]
    return tf.reshape(x, [-1, k] + tail)


def _merge(x):
    """`[batch, k, ...]` -> `[batch * k, ...]`, keeping static dims."""
    tail = [d if d is not None else tf.shape(x)[i + 2] for i, d in enumerate(x.shape[2:])]
    return tf.reshape(x, [-1] + tail)


def _gatherer(parent):
    """Function reordering `[batch, k, ...]` tensors by `parent` `[batch, k]`."""
    return lambda x: tf.gather(x, parent, batch_dims=1)


def _reorder_cache(cache, regather, k):
    """Reorders every cache entry but `cache["static"]` by beam parent."""
    reorder = lambda x: _merge(regather(_split(x, k)))  # noqa: E731
    return {
        key: value if key == "static" else tf.nest.map_structure(reorder, value)
        for key, value in cache.items()
    }


def _write_step_beam(buffer, step, value):
    """`buffer[:, :, step] = value` for buffer `[batch, k, time, ...]`."""
    merged = write_step(_merge(buffer), step, _merge(value))
    return _split(merged, buffer.shape[1])
