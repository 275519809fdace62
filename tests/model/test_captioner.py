"""Tests for tfcap.model.captioner (teacher forcing, scheduled sampling, saving)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcap.model.captioner import Captioner
from tfcap.model.grad_taps import GradTaps
from tfcap.model.presets import PRESETS

SIZES = dict(vocab_size=11, rnn_size=8, embed_dim=6, att_hidden=5, dropout=0.2, max_len=5)


def _batch(seed=0, batch=2, seq_per_img=2):
    rng = np.random.default_rng(seed)
    mask = np.ones([batch, 4], bool)
    mask[0, 2:] = False
    features = rng.normal(size=[batch, 4, 3]).astype("float32") * mask[..., None]
    words = rng.integers(4, 11, size=[batch, seq_per_img, 5])
    captions = np.zeros([batch, seq_per_img, 7], np.int32)  # <bos> w.. <eos> 0: max_len 5
    captions[..., 0], captions[..., 1:5], captions[..., 5] = 1, words[..., :4], 2
    captions[0, 0, 3:] = [2, 0, 0, 0]  # a short caption
    return {
        "features": tf.constant(features),
        "boxes": tf.zeros([batch, 4, 4]),
        "region_mask": tf.constant(mask),
        "image_id": tf.range(batch, dtype=tf.int64),
        "captions": tf.constant(captions),
    }


def _model(**overrides):
    model = Captioner(**{**SIZES, **overrides})
    model(_batch())
    return model


def _xe_loss(logits, captions):
    targets = tf.reshape(captions, [-1, captions.shape[-1]])[:, 1:]
    losses = keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True)
    weights = tf.cast(targets > 0, tf.float32)
    return tf.reduce_sum(losses * weights) / tf.reduce_sum(weights)


@pytest.mark.parametrize("text_attention", [False, True])
def test_call_shapes_and_zero_attention_on_padding(text_attention):
    model = _model(text_attention=text_attention)
    logits, attention = model(_batch())
    assert logits.shape == [4, 6, 11] and attention.shape == [4, 6, 4]
    assert np.all(attention.numpy()[:2, :, 2:] == 0.0)  # image 0's padded regions, both captions
    flat = dict(_batch(), captions=tf.reshape(_batch()["captions"], [4, 7]))
    np.testing.assert_array_equal(model(flat)[0], logits)


def test_dynamic_shapes_match_eager():
    model = _model(text_attention=True)
    batch = _batch()
    args = batch["features"], batch["region_mask"], batch["captions"]
    spec = [
        tf.TensorSpec([None, None, 3]),
        tf.TensorSpec([None, None], tf.bool),
        tf.TensorSpec([None, None, None], tf.int32),
    ]
    run = tf.function(lambda *a: model.teacher_forcing(*a), input_signature=spec)
    for got, want in zip(run(*args), model.teacher_forcing(*args), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_features_are_tiled_per_caption():
    model = _model()
    batch = _batch()
    logits, _ = model(batch)
    # Caption j of image i only depends on image i.
    single = dict(
        features=batch["features"][1:],
        region_mask=batch["region_mask"][1:],
        captions=batch["captions"][1:],
    )
    np.testing.assert_allclose(model(single)[0], logits[2:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("text_attention", [False, True])
def test_gradients_reach_every_variable(text_attention):
    model = _model(text_attention=text_attention)
    batch = _batch()
    with tf.GradientTape() as tape:
        logits, _ = model(batch, training=True)
        loss = _xe_loss(logits, batch["captions"])
    grads = tape.gradient(loss, model.trainable_variables)
    assert len(grads) == (18 if text_attention else 13)
    for var, grad in zip(model.trainable_variables, grads, strict=True):
        assert grad is not None, var.path
        assert np.abs(tf.convert_to_tensor(grad).numpy()).max() > 0, var.path


def test_text_attention_changes_outputs():
    keras.utils.set_random_seed(1)
    plain = _model()
    keras.utils.set_random_seed(1)
    text = _model(text_attention=True)
    a, b = plain(_batch())[0], text(_batch())[0]
    assert np.abs(a - b).max() > 1e-4


def test_config_round_trip_and_keras_file(tmp_path):
    model = _model(text_attention=True)
    config = model.get_config()
    clone = Captioner.from_config(config)
    assert clone.get_config() == config
    path = str(tmp_path / "captioner.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Captioner) and loaded.core.text_attention
    for a, b in zip(model(_batch()), loaded(_batch()), strict=True):
        np.testing.assert_array_equal(a, b)
    features, mask = _batch()["features"], _batch()["region_mask"]
    np.testing.assert_array_equal(
        model.generate(features, mask, method="beam")[0],
        loaded.generate(features, mask, method="beam")[0],
    )


def test_same_seed_same_weights():
    weights = []
    for _ in range(2):
        keras.utils.set_random_seed(3)
        weights.append(_model().get_weights())
    for a, b in zip(*weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_scheduled_sampling():
    model = _model(dropout=0.0)
    batch = _batch()
    args = batch["features"], batch["region_mask"], batch["captions"]
    plain, _ = model.teacher_forcing(*args)
    none, _ = model.teacher_forcing(*args, sample_prob=tf.constant(0.0), seed=1)
    np.testing.assert_allclose(none, plain, rtol=1e-6)
    all_a, _ = model.teacher_forcing(*args, sample_prob=1.0, seed=5)
    all_b, _ = model.teacher_forcing(*args, sample_prob=1.0, seed=5)
    np.testing.assert_array_equal(all_a, all_b)
    np.testing.assert_array_equal(all_a[:, 0], plain[:, 0])  # step 0 always reads <bos>
    assert np.abs(all_a[:, 1:] - plain[:, 1:]).max() > 1e-4
    with tf.GradientTape() as tape:
        logits, _ = model.teacher_forcing(*args, training=True, sample_prob=0.5, seed=2)
        loss = _xe_loss(logits, batch["captions"])
    assert all(g is not None for g in tape.gradient(loss, model.trainable_variables))


def test_sequence_log_probs_rescore_greedy():
    model = _model()
    features, mask = _batch()["features"], _batch()["region_mask"]
    ids, log_probs, _ = model.generate(features, mask)
    token_log_probs, token_mask = model.sequence_log_probs(features, mask, ids)
    assert token_log_probs.shape == ids.shape
    np.testing.assert_allclose(tf.reduce_sum(token_log_probs, 1), log_probs, rtol=1e-5)
    assert np.all(token_mask.numpy() == (np.cumsum(ids.numpy() == 2, 1) - (ids.numpy() == 2) == 0))


def test_history_bound_is_enforced():
    model = _model(text_attention=True)
    with pytest.raises(ValueError, match="text-attention history"):
        model.generate(_batch()["features"], max_len=7)
    long = tf.ones([2, 1, 8], tf.int32)
    with pytest.raises(ValueError, match="text-attention history"):
        model.teacher_forcing(_batch()["features"], None, long)


def test_presets():
    assert PRESETS["updown"]["rnn_size"] == 1000 and PRESETS["updown"]["att_hidden"] == 512
    assert PRESETS["multiatt"]["text_attention"]
    model = Captioner.from_preset("demo", vocab_size=20, rnn_size=8, embed_dim=8, att_hidden=4)
    assert model.get_config()["dropout"] == PRESETS["demo"]["dropout"]
    with pytest.raises(ValueError, match="method"):
        model.generate(tf.zeros([1, 2, 3]), method="nucleus")


@pytest.mark.parametrize("text_attention", [False, True])
def test_speed_switches_change_no_result(text_attention):
    """Hoisted mean gates and logits after the loop compute the same model."""
    model = _model(text_attention=text_attention)
    batch = _batch(seed=3)
    args = batch["features"], batch["region_mask"], batch["captions"]

    def run():
        with tf.GradientTape() as tape:
            logits, attention = model.teacher_forcing(*args)
            loss = _xe_loss(logits, batch["captions"])
        grads = tape.gradient(loss, model.trainable_variables)
        beam = model.generate(batch["features"], batch["region_mask"], method="beam")
        return logits, attention, grads, beam

    fast = run()
    model.hoist_mean_gates = model.logits_after_loop = False
    slow = run()
    np.testing.assert_allclose(fast[0], slow[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fast[1], slow[1], rtol=1e-5, atol=1e-6)
    for a, b in zip(fast[2], slow[2], strict=True):
        np.testing.assert_allclose(tf.convert_to_tensor(a), tf.convert_to_tensor(b), atol=1e-6)
    np.testing.assert_array_equal(fast[3][0], slow[3][0])


@pytest.mark.parametrize("text_attention", [False, True])
def test_batched_weight_gradients_equal_the_tape(text_attention):
    """Gradient taps (recurrent kernels' gradients as one product after the loop) give the
    tape's gradients of every variable."""
    model = _model(text_attention=text_attention)
    batch = _batch(seed=5)
    args = batch["features"], batch["region_mask"], batch["captions"]
    variables = model.trainable_variables

    def run(tapped):
        with tf.GradientTape() as tape:
            taps = GradTaps(tape) if tapped else None
            logits, _ = model.teacher_forcing(*args, taps=taps)
            loss = _xe_loss(logits, batch["captions"])
        grads = taps.gradients(loss, variables) if tapped else tape.gradient(loss, variables)
        return logits, grads, taps

    plain, (logits, grads, taps) = run(False), run(True)
    np.testing.assert_array_equal(plain[0], logits)
    kernels = {id(layer.kernel) for layer in model.core.tapped_layers().values()}
    assert len(kernels) == 3 and set(taps.inputs) == set(taps.zeros)
    for v, a, b in zip(variables, plain[1], grads, strict=True):
        a, b = tf.convert_to_tensor(a), tf.convert_to_tensor(b)
        assert float(tf.reduce_max(tf.abs(a))) > 0, v.path  # every kernel gets a gradient
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7, err_msg=v.path)
    with pytest.raises(ValueError, match="taps need sample_prob 0"):
        with tf.GradientTape() as tape:
            model.teacher_forcing(*args, sample_prob=0.5, seed=1, taps=GradTaps(tape))


def test_xe_step_with_batched_weight_gradients_is_the_same_update():
    """Two XE training steps (clip, Adam) with and without gradient taps: same weights."""
    from tfcap.training import xe

    batch = _batch(seed=6)
    after = []
    for tapped in (True, False):
        keras.utils.set_random_seed(0)
        model = _model()
        model.batched_weight_grads = tapped
        optimizer = keras.optimizers.Adam(1e-2)
        step = xe.make_xe_step(tf.distribute.get_strategy(), model, optimizer, xe.XEConfig())
        for _ in range(2):
            step(batch, 0.0, tf.constant([0, 0], tf.int64))
        after.append([v.numpy() for v in model.trainable_variables])
    for a, b in zip(*after, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
