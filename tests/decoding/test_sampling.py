"""Tests for tfcap.decoding.sampling."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcap.decoding.sampling import sample
from tfcap.model.captioner import Captioner


def image_step(ids, step, cache):
    """Image `i` (cache["static"]["image"]) emits token 4 + i, then <eos>."""
    image = cache["static"]["image"]
    token = tf.where(ids == 1, 4 + image, 2)
    logits = tf.one_hot(token, 8, on_value=20.0, off_value=-20.0)
    return logits, {**cache, "attention": tf.one_hot(image, 3)}


def fixed_step(probs):
    def step_fn(ids, step, cache):
        logits = tf.math.log(tf.constant([probs], tf.float32))
        return tf.tile(logits, [tf.size(ids), 1]), cache

    return step_fn


def test_rows_are_image_major():
    cache = {"static": {"image": tf.constant([0, 1, 2])}, "attention": tf.zeros([3, 3])}
    out = sample(image_step, cache, batch_size=3, max_len=3, num_samples=2, seed=0)
    assert out.ids.numpy().tolist() == [[4, 2, 0]] * 2 + [[5, 2, 0]] * 2 + [[6, 2, 0]] * 2
    assert out.mask.numpy().tolist() == [[True, True, False]] * 6
    assert out.attention.shape == [6, 3, 3]
    np.testing.assert_array_equal(out.attention[:, 0], tf.repeat(tf.eye(3), 2, axis=0))
    assert np.all(out.attention.numpy()[:, 2] == 0.0)


def test_log_probs_and_mask():
    probs = [0.0, 0.0, 0.3, 0.2, 0.5]
    out = sample(fixed_step(probs), {}, batch_size=4, max_len=5, num_samples=3, seed=1)
    ids, lp, mask = out.ids.numpy(), out.token_log_probs.numpy(), out.mask.numpy()
    np.testing.assert_allclose(lp[mask], np.log(np.array(probs)[ids[mask]]), rtol=1e-5)
    assert np.all(lp[~mask] == 0.0) and np.all(ids[~mask] == 0)
    np.testing.assert_allclose(out.log_probs, lp.sum(1), rtol=1e-6)
    ended = np.cumsum(ids == 2, 1) - (ids == 2)
    np.testing.assert_array_equal(mask, ended == 0)


def test_seeded_determinism_and_frequencies():
    probs = [0.0, 0.0, 0.0, 0.25, 0.75]
    step_fn = fixed_step(probs)
    a = sample(step_fn, {}, batch_size=50, max_len=4, num_samples=10, seed=3)
    b = sample(step_fn, {}, batch_size=50, max_len=4, num_samples=10, seed=tf.constant([3, 0]))
    c = sample(step_fn, {}, batch_size=50, max_len=4, num_samples=10, seed=4)
    np.testing.assert_array_equal(a.ids, b.ids)
    assert np.any(a.ids.numpy() != c.ids.numpy())
    assert abs(np.mean(a.ids.numpy() == 4) - 0.75) < 0.05
    with pytest.raises(ValueError, match="seed"):
        sample(step_fn, {}, batch_size=1, max_len=2, seed=tf.constant([1, 2, 3]))
    with pytest.raises(ValueError, match="temperature"):
        sample(step_fn, {}, batch_size=1, max_len=2, temperature=0.0)


def test_low_temperature_is_greedy():
    keras.utils.set_random_seed(0)
    model = Captioner(vocab_size=11, rnn_size=8, embed_dim=6, att_hidden=5, max_len=6)
    features = tf.random.normal([2, 4, 3])
    out = model.generate(features, method="sample", temperature=1e-4, num_samples=2, seed=0)
    ids, _, _ = model.generate(features, method="greedy")
    np.testing.assert_array_equal(out.ids, tf.repeat(ids, 2, axis=0))


def test_token_log_probs_are_differentiable_and_dynamic_batch():
    keras.utils.set_random_seed(0)
    model = Captioner(vocab_size=11, rnn_size=8, embed_dim=6, att_hidden=5, max_len=6)
    features = tf.random.normal([2, 4, 3])
    with tf.GradientTape() as tape:
        out = model.generate(features, method="sample", num_samples=3, seed=5)
        loss = -tf.reduce_sum(out.token_log_probs)
    assert out.ids.shape == [6, 6] and out.token_log_probs.shape == [6, 6]
    grads = tape.gradient(loss, model.trainable_variables)
    assert all(g is not None for g in grads)
    # Re-scoring the samples with teacher forcing gives the same log-probs.
    rescored, mask = model.sequence_log_probs(features, None, out.ids)
    np.testing.assert_allclose(rescored, out.token_log_probs, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(mask, out.mask)

    @tf.function(input_signature=[tf.TensorSpec([None, 4, 3])])
    def run(features):
        return model.generate(features, method="sample", num_samples=3, seed=5)

    np.testing.assert_array_equal(run(features).ids, out.ids)
