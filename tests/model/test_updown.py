"""Tests for tfcap.model.updown (the step API of the Up-Down core)."""

import numpy as np
import pytest
import tensorflow as tf

from tfcap.model.updown import LSTMCell, UpDownCore

SIZES = dict(vocab_size=9, rnn_size=6, embed_dim=5, att_hidden=4, dropout=0.0, max_len=4)
MASK = tf.constant([[True, True, True, False], [True, True, True, True]])


def _features(seed=0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=[2, 4, 3]).astype("float32")
    features[0, 3] = 0.0  # padding
    return tf.constant(features)


def _run(core, words, static, state=None):
    state = state or core.initial_state(2)
    outputs = []
    for word in words:
        logits, state, weights = core.step(tf.constant([word, word]), state, static)
        outputs.append((logits, weights))
    return outputs, state


def test_lstm_cell_matches_reference_math():
    cell = LSTMCell(3, forget_bias=1.0)
    x, h, c = tf.ones([2, 4]), tf.fill([2, 3], 0.5), tf.fill([2, 3], -0.5)
    new_h, new_c = cell(x, h, c)
    gates = tf.concat([x, h], -1) @ cell.gates.kernel + cell.gates.bias
    i, f, g, o = tf.split(gates, 4, -1)
    want_c = tf.sigmoid(f + 1.0) * c + tf.sigmoid(i) * tf.tanh(g)
    np.testing.assert_allclose(new_c, want_c, rtol=1e-6)
    np.testing.assert_allclose(new_h, tf.sigmoid(o) * tf.tanh(want_c), rtol=1e-6)
    assert LSTMCell.from_config(cell.get_config()).get_config() == cell.get_config()


def test_precompute_masked_mean_and_keys():
    core = UpDownCore(**SIZES)
    features = _features()
    static = core.precompute(features, MASK)
    np.testing.assert_allclose(static["mean"][0], tf.reduce_mean(features[0, :3], 0), rtol=1e-6)
    np.testing.assert_allclose(static["mean"][1], tf.reduce_mean(features[1], 0), rtol=1e-6)
    assert static["keys"].shape == [2, 4, 4]
    with pytest.raises(ValueError, match="batch, regions, dim"):
        core.precompute(tf.zeros([2, 3]))


@pytest.mark.parametrize("text_attention", [False, True])
def test_step_shapes_and_zero_weight_on_padding(text_attention):
    core = UpDownCore(**SIZES, text_attention=text_attention)
    static = core.precompute(_features(), MASK)
    outputs, state = _run(core, [1, 5, 6], static)
    for logits, weights in outputs:
        assert logits.shape == [2, 9] and logits.dtype == tf.float32
        assert np.all(logits.numpy()[:, :2] == -1e9)  # <pad>, <bos> never predicted
        assert weights.shape == [2, 4] and weights.numpy()[0, 3] == 0.0
    keys = {"h_att", "c_att", "h_lang", "c_lang"}
    if text_attention:
        keys |= {"history", "history_keys", "step"}
        assert state["history"].shape == [2, 4, 6] and state["step"].numpy().tolist() == [3, 3]
    assert set(state) == keys


def test_history_records_language_states_in_order():
    core = UpDownCore(**SIZES, text_attention=True)
    static = core.precompute(_features(), MASK)
    state = core.initial_state(2)
    hs = []
    for word in [1, 5, 6]:
        _, state, _ = core.step(tf.constant([word, word]), state, static)
        hs.append(state["h_lang"])
    np.testing.assert_array_equal(state["history"][:, :3], tf.stack(hs, 1))
    assert np.all(state["history"].numpy()[:, 3] == 0.0)
    keys = core.history_attention.project(tf.stack(hs, 1))
    np.testing.assert_allclose(state["history_keys"][:, :3], keys, rtol=1e-5, atol=1e-6)


def test_text_attention_only_sees_past_steps():
    core = UpDownCore(**SIZES, text_attention=True)
    static = core.precompute(_features(), MASK)
    state = core.initial_state(2)
    noisy = dict(state, history=state["history"] + 3.0, history_keys=state["history_keys"] + 3.0)
    # Step 0: nothing recorded yet, the buffer's content must not matter.
    np.testing.assert_array_equal(
        core.step(tf.constant([1, 1]), state, static)[0],
        core.step(tf.constant([1, 1]), noisy, static)[0],
    )
    _, state, _ = core.step(tf.constant([1, 1]), state, static)
    noisy = dict(state, history=state["history"] + 3.0, history_keys=state["history_keys"] + 3.0)
    a = core.step(tf.constant([5, 5]), state, static)[0]
    b = core.step(tf.constant([5, 5]), noisy, static)[0]
    assert np.abs(a - b).max() > 1e-6


def test_config_round_trip():
    core = UpDownCore(**SIZES, text_attention=True, name="core")
    static = core.precompute(_features(), MASK)
    clone = UpDownCore.from_config(core.get_config())
    assert clone.get_config() == core.get_config()
    clone.precompute(_features(), MASK)
    clone.set_weights(core.get_weights())
    want, _ = _run(core, [1, 4], static)
    got, _ = _run(clone, [1, 4], clone.precompute(_features(), MASK))
    for (a, _), (b, _) in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_mixed_precision_step():
    core = UpDownCore(**SIZES, text_attention=True, dtype="mixed_float16")
    static = core.precompute(_features(), MASK)
    assert static["keys"].dtype == tf.float16
    outputs, state = _run(core, [1, 5], static)
    logits, weights = outputs[-1]
    assert logits.dtype == tf.float32 and np.all(np.isfinite(logits.numpy()))
    assert state["h_lang"].dtype == tf.float16 and weights.numpy()[0, 3] == 0.0


def test_word_relu_zeroes_negative_embedding_components():
    """With word_relu a word whose embedding is all negative acts as a zero vector;
    without it the same embedding changes the step."""
    outputs = {}
    for relu in (False, True):
        core = UpDownCore(**SIZES, word_relu=relu, name="core")
        static = core.precompute(_features(), MASK)
        table = core.embedding.embeddings.numpy()
        table[5] = -np.abs(table[5]) - 0.5  # word 5: every component negative
        core.embedding.embeddings.assign(table)
        state = core.initial_state(2)
        by_id, _ = core.advance(tf.constant([5, 5]), state, static)
        zero, _ = core.advance(None, state, static, word_vectors=tf.zeros([2, 5]))
        outputs[relu] = (by_id["h_lang"].numpy(), zero["h_lang"].numpy())
        assert UpDownCore.from_config(core.get_config()).word_relu is relu
    np.testing.assert_allclose(*outputs[True], rtol=1e-6, atol=1e-7)
    assert np.abs(outputs[False][0] - outputs[False][1]).max() > 1e-4


def test_weight_init_torch_draws_pytorch_layer_defaults():
    """weight_init=torch: embeddings N(0, 1), LSTM weights within +-1/sqrt(units), other
    Dense kernels and biases within +-1/sqrt(fan_in) and filling that range; keras keeps
    Keras' defaults (embeddings within +-0.05, zero biases)."""
    sizes = {**SIZES, "vocab_size": 400, "rnn_size": 64, "embed_dim": 50, "att_hidden": 32}
    tf.random.set_seed(3)
    cores = {}
    for init in ("keras", "torch"):
        core = UpDownCore(**sizes, feature_embed=True, weight_init=init, name="core")
        core.build((None, None, 30))
        cores[init] = core
        assert UpDownCore.from_config(core.get_config()).weight_init == init
    keras_core, torch_core = cores["keras"], cores["torch"]
    assert np.abs(keras_core.embedding.embeddings.numpy()).max() <= 0.05
    assert not keras_core.logits.bias.numpy().any()
    emb = torch_core.embedding.embeddings.numpy()
    assert abs(emb.std() - 1.0) < 0.05 and abs(emb.mean()) < 0.05
    for cell in (torch_core.att_lstm, torch_core.lang_lstm):
        limit = 1.0 / np.sqrt(cell.units)
        weights = [cell.gates.kernel, cell.gates.bias]
        weights += [cell.static_gates.kernel] if cell.static_input else []
        for weight in weights:
            values = np.abs(weight.numpy())
            assert limit * 0.9 < values.max() <= limit, weight.path
    for dense, fan_in in ((torch_core.logits, 64), (torch_core.region_embed, 30)):
        limit = 1.0 / np.sqrt(fan_in)
        for weight in (dense.kernel, dense.bias):
            assert limit * 0.9 < np.abs(weight.numpy()).max() <= limit, weight.path
    with pytest.raises(ValueError, match="weight_init"):
        UpDownCore(**sizes, weight_init="xavier")
