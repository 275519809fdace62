"""Tests for tfcap.model.attention."""

import keras
import numpy as np
import tensorflow as tf

from tfcap.model.attention import RegionAttention

MASK = tf.constant([[True, True, False, False, False], [True, True, True, True, True]])


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    query = tf.constant(rng.normal(size=[2, 4]), tf.float32)
    regions = tf.constant(rng.normal(size=[2, 5, 6]), tf.float32)
    return query, regions


def test_output_shapes_and_weights_sum_to_one():
    query, regions = _inputs()
    context, weights = RegionAttention(hidden_dim=8)(query, regions, MASK)
    assert context.shape == [2, 6] and weights.shape == [2, 5]
    np.testing.assert_allclose(tf.reduce_sum(weights, -1), [1.0, 1.0], rtol=1e-6)


def test_padded_regions_get_exactly_zero_weight():
    query, regions = _inputs()
    # Huge padded features must not leak into the context either.
    regions = tf.where(MASK[..., None], regions, 1e6)
    context, weights = RegionAttention(hidden_dim=8)(query, regions, MASK)
    assert np.all(weights.numpy()[0, 2:] == 0.0)
    assert np.all(weights.numpy()[0, :2] > 0.0)
    assert np.all(np.abs(context.numpy()) < 10.0)


def test_all_padding_row_gives_zero_context():
    query, regions = _inputs()
    mask = tf.constant([[False] * 5, [True] * 5])
    context, weights = RegionAttention(hidden_dim=8)(query, regions, mask)
    assert np.all(weights.numpy()[0] == 0.0) and np.all(context.numpy()[0] == 0.0)


def test_precomputed_keys_match():
    query, regions = _inputs()
    layer = RegionAttention(hidden_dim=8)
    context, weights = layer(query, regions, MASK)
    context_k, weights_k = layer(query, regions, MASK, keys=layer.project(regions))
    np.testing.assert_array_equal(context, context_k)
    np.testing.assert_array_equal(weights, weights_k)


def test_config_round_trip():
    query, regions = _inputs()
    layer = RegionAttention(hidden_dim=8, name="att")
    expected = layer(query, regions, MASK)
    clone = RegionAttention.from_config(layer.get_config())
    clone(query, regions, MASK)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    for a, b in zip(expected, clone(query, regions, MASK), strict=True):
        np.testing.assert_array_equal(a, b)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, RegionAttention) and restored.hidden_dim == 8


def test_mixed_precision_call():
    query, regions = _inputs()
    layer = RegionAttention(hidden_dim=8, dtype="mixed_float16")
    context, weights = layer(query, regions * 100.0, MASK)
    assert context.dtype == tf.float16 and weights.dtype == tf.float16
    assert layer.query_proj.kernel.dtype == "float32"
    assert np.all(np.isfinite(context.numpy())) and np.all(np.isfinite(weights.numpy()))
    assert np.all(weights.numpy()[0, 2:] == 0.0)
    np.testing.assert_allclose(tf.reduce_sum(tf.cast(weights, tf.float32), -1), 1.0, atol=2e-3)
