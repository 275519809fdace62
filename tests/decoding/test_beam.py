"""Tests for tfcap.decoding.beam."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcap.decoding.beam import beam_search, length_normalization
from tfcap.decoding.greedy import greedy
from tfcap.model.captioner import Captioner

# Next-token probabilities by previous token (0 pad, 1 bos, 2 eos, 3 A, 4 B).
# Greedy: A (.6) then eos (.5) = .30. Best: B (.4) then eos (1.) = .40.
TRAP = [
    [0.2, 0.2, 0.2, 0.2, 0.2],
    [0.0, 0.0, 0.0, 0.6, 0.4],
    [0.2, 0.2, 0.2, 0.2, 0.2],
    [0.0, 0.0, 0.5, 0.25, 0.25],
    [0.0, 0.0, 1.0, 0.0, 0.0],
]
# Short [eos] (.5) beats long [A, B, eos] (.45) unless lengths are normalised.
SHORT_LONG = [
    [0.2, 0.2, 0.2, 0.2, 0.2],
    [0.0, 0.0, 0.5, 0.45, 0.05],
    [0.2, 0.2, 0.2, 0.2, 0.2],
    [0.0, 0.0, 0.0, 0.0, 1.0],
    [0.0, 0.0, 1.0, 0.0, 0.0],
]


def markov_step(tables):
    """Image `i` follows `tables[i]`; attention = one-hot of the previous token."""
    log_tables = tf.math.log(tf.constant(tables, tf.float32) + 1e-12)  # [images, 5, 5]

    def step_fn(ids, step, cache):
        logits = tf.gather_nd(log_tables, tf.stack([cache["static"]["image"], ids], 1))
        return logits, {**cache, "attention": tf.one_hot(ids, 5)}

    return step_fn


def cache_for(images):
    return {"static": {"image": tf.constant(images)}, "attention": tf.zeros([len(images), 5])}


def test_beam_finds_the_best_sequence_greedy_misses():
    step_fn, cache = markov_step([TRAP, SHORT_LONG]), cache_for([0, 1])
    greedy_ids, greedy_lp, _ = greedy(step_fn, cache, batch_size=2, max_len=4)
    assert greedy_ids.numpy()[0].tolist() == [3, 2, 0, 0]
    ids, score, attention = beam_search(step_fn, cache, 2, beam_size=2, max_len=4, vocab_size=5)
    assert ids.numpy().tolist() == [[4, 2, 0, 0], [2, 0, 0, 0]]
    np.testing.assert_allclose(tf.exp(score), [0.4, 0.5], rtol=1e-5)
    assert float(score[0]) > float(greedy_lp[0])
    # The best beam's attention: one-hot of its previous token, zero after <eos>.
    want = np.zeros([4, 5])
    want[0, 1], want[1, 4] = 1.0, 1.0  # <bos>, then B
    np.testing.assert_array_equal(attention[0], want)


def test_length_normalization():
    step_fn, cache = markov_step([SHORT_LONG]), cache_for([0])
    ids, score, _ = beam_search(step_fn, cache, 1, beam_size=2, max_len=4, vocab_size=5, alpha=1.0)
    assert ids.numpy().tolist() == [[3, 4, 2, 0]]
    want = np.log(0.45) / length_normalization(1.0, 3)
    np.testing.assert_allclose(score, [want], rtol=1e-5)
    np.testing.assert_allclose(length_normalization(0.6, tf.constant([1, 7])), [1.0, 2**0.6])


def test_argument_checks():
    step_fn, cache = markov_step([TRAP]), cache_for([0])
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(step_fn, cache, 1, beam_size=6, max_len=3, vocab_size=5)
    with pytest.raises(ValueError, match="max_len"):
        beam_search(step_fn, cache, 1, beam_size=2, max_len=0, vocab_size=5)


def _captioner(text_attention, seed):
    keras.utils.set_random_seed(seed)
    model = Captioner(
        vocab_size=11,
        rnn_size=8,
        embed_dim=6,
        att_hidden=5,
        dropout=0.0,
        max_len=6,
        text_attention=text_attention,
    )
    features = tf.random.normal([4, 4, 3])
    mask = tf.sequence_mask([2, 4, 3, 1], 4)
    model.generate(features, mask)  # builds
    # Sharpen the near-uniform initial outputs so that <eos> competes early.
    model.core.logits.kernel.assign(tf.random.normal([8, 11], stddev=3.0))
    model.core.embedding.embeddings.assign(tf.random.normal([11, 6], stddev=2.0))
    return model, features, mask


@pytest.mark.parametrize("text_attention,seed", [(False, 3), (True, 2)])
def test_beam_one_is_exactly_greedy(text_attention, seed):
    model, features, mask = _captioner(text_attention, seed)
    greedy_out = model.generate(features, mask, method="greedy")
    beam_out = model.generate(features, mask, method="beam", beam_size=1, alpha=0.0)
    assert np.any(greedy_out[0].numpy() == 2)  # some rows stop early
    for a, b in zip(greedy_out, beam_out, strict=True):
        np.testing.assert_array_equal(a, b)


def test_xla_and_dynamic_batch_match_eager():
    model, features, mask = _captioner(True, 3)
    want = model.generate(features, mask, method="beam", beam_size=3, alpha=0.7)
    assert np.all(want[2].numpy()[0, :, 2:] == 0.0)  # padded regions, best beam

    def run(features, mask):
        return model.generate(features, mask, method="beam", beam_size=3, alpha=0.7)

    xla = tf.function(run, jit_compile=True)(features, mask)
    spec = [tf.TensorSpec([None, 4, 3]), tf.TensorSpec([None, 4], tf.bool)]
    dynamic = tf.function(run, input_signature=spec)
    assert dynamic.get_concrete_function().structured_outputs[2].shape.as_list() == [None, 6, 4]
    for got in xla, dynamic(features, mask):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-4)
        np.testing.assert_allclose(got[2], want[2], atol=1e-5)
