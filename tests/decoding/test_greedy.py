"""Tests for tfcap.decoding.greedy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcap.decoding.greedy import greedy, write_step
from tfcap.model.captioner import Captioner

# Next-token probabilities by previous token (0 pad, 1 bos, 2 eos, 3 A, 4 B).
TABLE = np.array(
    [
        [0.2, 0.2, 0.2, 0.2, 0.2],
        [0.0, 0.0, 0.1, 0.5, 0.4],  # bos -> A
        [0.2, 0.2, 0.2, 0.2, 0.2],
        [0.0, 0.0, 0.3, 0.1, 0.6],  # A -> B
        [0.0, 0.0, 0.7, 0.2, 0.1],  # B -> eos
    ]
)


def table_step(ids, step, cache):
    """Markov step function; attention = one-hot of the step over 6 'regions'."""
    logits = tf.gather(tf.math.log(tf.constant(TABLE, tf.float32) + 1e-12), ids)
    attention = tf.one_hot(tf.fill(tf.shape(ids), step), 6)
    return logits, {**cache, "attention": attention}


def small_captioner(text_attention=False, seed=0):
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
    features = tf.random.normal([3, 4, 3])
    mask = tf.constant([[True, True, False, False], [True] * 4, [True, True, True, False]])
    model.generate(features, mask)  # builds
    # Sharpen the near-uniform initial outputs so that <eos> competes early.
    model.core.logits.kernel.assign(tf.random.normal([8, 11], stddev=3.0))
    model.core.embedding.embeddings.assign(tf.random.normal([11, 6], stddev=2.0))
    return model, features, mask


def test_hand_computed_sequence_and_score():
    cache = {"attention": tf.zeros([2, 6])}
    ids, log_probs, attention = greedy(table_step, cache, batch_size=2, max_len=5)
    assert ids.numpy().tolist() == [[3, 4, 2, 0, 0]] * 2
    np.testing.assert_allclose(log_probs, [np.log(0.5 * 0.6 * 0.7)] * 2, rtol=1e-5)
    want = np.zeros([5, 6])
    want[[0, 1, 2], [0, 1, 2]] = 1.0  # steps up to and incl. <eos>, zero after
    np.testing.assert_array_equal(attention[0], want)


def test_max_len_cuts_and_no_attention_key():
    step_fn = lambda ids, step, cache: (table_step(ids, step, cache)[0], cache)  # noqa: E731
    ids, log_probs, attention = greedy(step_fn, {}, batch_size=1, max_len=2)
    assert ids.numpy().tolist() == [[3, 4]] and attention.shape == [1, 2, 0]
    np.testing.assert_allclose(log_probs, [np.log(0.5 * 0.6)], rtol=1e-5)
    with pytest.raises(ValueError, match="max_len"):
        greedy(step_fn, {}, batch_size=1, max_len=0)


def test_write_step():
    buffer = tf.zeros([2, 3, 2])
    out = write_step(buffer, tf.constant(1), tf.ones([2, 2]))
    assert out.numpy()[:, 1].tolist() == [[1, 1], [1, 1]] and out.numpy().sum() == 4


def test_padded_regions_get_zero_attention_and_ids_padded():
    model, features, mask = small_captioner()
    ids, log_probs, attention = model.generate(features, mask, method="greedy")
    assert ids.shape == [3, 6] and log_probs.shape == [3] and attention.shape == [3, 6, 4]
    assert np.all(attention.numpy()[0, :, 2:] == 0.0) and np.all(attention.numpy()[2, :, 3] == 0)
    assert not np.any(ids.numpy() == 1)  # <bos> is never produced
    for row, att in zip(ids.numpy(), attention.numpy(), strict=True):
        assert 0 not in row or np.all(row[list(row).index(0) :] == 0)  # <pad> only at the end
        if 2 in row:
            end = list(row).index(2)
            assert np.all(row[end + 1 :] == 0) and np.all(att[end + 1 :] == 0)
            np.testing.assert_allclose(att[: end + 1].sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("text_attention", [False, True])
def test_xla_and_dynamic_batch_match_eager(text_attention):
    model, features, mask = small_captioner(text_attention)
    want = model.generate(features, mask)

    def run(features, mask):
        return model.generate(features, mask, method="greedy")

    xla = tf.function(run, jit_compile=True)(features, mask)
    spec = [tf.TensorSpec([None, 4, 3]), tf.TensorSpec([None, 4], tf.bool)]
    dynamic = tf.function(run, input_signature=spec)
    assert dynamic.get_concrete_function().structured_outputs[0].shape.as_list() == [None, 6]
    for got in xla, dynamic(features, mask):
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], rtol=1e-4)
        np.testing.assert_allclose(got[2], want[2], atol=1e-5)
