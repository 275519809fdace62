"""The adversarial step: the reward mix r = alpha * d + (1 - alpha) * e, the
discriminator trained on the generator's own samples, and the order of updates."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfcap.data import pipeline
from tfcap.model.captioner import Captioner
from tfcap.model.discriminator import Discriminator
from tfcap.training import discriminator_step as dstep
from tfcap.training import gan

K = 2  # captions per image


@pytest.fixture(scope="module")
def parts(shapes_dir):
    meta = pipeline.load_metadata(str(shapes_dir))
    batch = next(iter(pipeline.make_dataset(str(shapes_dir), "train", 4, seq_per_img=K)))
    keras.utils.set_random_seed(0)
    model = Captioner(meta["vocab_size"], rnn_size=16, embed_dim=8, att_hidden=8, max_len=6)
    model.build((None, None, meta["feature_dim"]))
    d = Discriminator(meta["vocab_size"], embed_dim=8, hidden=16, dropout=0.0, max_len=7)
    d.build((None, None, meta["feature_dim"]))
    return batch, model, d


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_gan_reward_is_alpha_d_plus_one_minus_alpha_e(parts, alpha):
    batch, model, d = parts
    ids = model.generate(batch["features"], batch["region_mask"], "sample", num_samples=K, seed=1)
    ids = ids.ids

    def evaluator(sample_ids, index, refs, replica=0):  # distinct per row, on the host
        return (np.arange(len(sample_ids)) + 10.0 * index).astype(np.float32)

    got = gan.gan_reward(d, evaluator, alpha)(batch, ids, K).numpy()
    p = tf.sigmoid(d.score(batch["features"], batch["region_mask"], ids)).numpy()
    e = evaluator(ids.numpy(), np.repeat(np.arange(4), K), None)
    np.testing.assert_allclose(got, alpha * p + (1 - alpha) * e, rtol=1e-6, atol=1e-6)
    assert np.all((p > 0) & (p < 1))


def test_discriminator_learns_from_the_generators_own_samples(parts):
    """The fakes of a D update are the captions the generator samples at that
    update's seed: its loss is D's loss on exactly those (and not on others)."""
    batch, model, d = parts
    optimizer = keras.optimizers.SGD(0.0)  # the metrics are computed before the update
    optimizer.build(d.trainable_variables)
    strategy = tf.distribute.get_strategy()
    d_update = dstep.make_d_step(strategy, d, optimizer, seq_per_img=K)
    sample = gan.make_fake_sampler(strategy, model, K, 1.0)
    out = gan.make_d_train(sample, d_update, seed=7)(batch, 5)

    def loss_with(fakes):
        pairs = dstep.make_pairs(batch, fakes, K)
        logits = d.score(batch["features"], batch["region_mask"], pairs.ids, training=True)
        return float(dstep.d_loss(logits, pairs)[0])

    seed = tf.random.experimental.stateless_fold_in(tf.constant([7, 5], tf.int64), 0)
    own = model.generate(
        batch["features"], batch["region_mask"], "sample", num_samples=K, seed=seed
    ).ids
    assert out["d_loss"] == pytest.approx(loss_with(own), rel=1e-5)
    other_seed = model.generate(
        batch["features"], batch["region_mask"], "sample", num_samples=K, seed=[7, 6]
    ).ids
    humans = tf.reshape(dstep.human_ids(batch["captions"], own.shape[1]), [-1, own.shape[1]])
    for fakes in (other_seed, humans):
        assert abs(out["d_loss"] - loss_with(fakes)) > 1e-4
    assert out["skipped"] == 0.0


def test_gan_step_runs_d_steps_discriminator_updates_then_the_generator():
    calls = []

    def d_train(batch, n):
        calls.append(("d", n))
        return {"d_loss": 0.5, "skipped": 0.0}

    def policy_step(batch, seed):
        calls.append(("g", tuple(seed.numpy())))
        return {"loss": tf.constant(1.0), "grad_norm": tf.constant(float("nan"))}

    step = gan.make_gan_step(d_train, policy_step, d_steps=2, seed=9, lr=lambda: 0.1)
    out = step(None, 3)
    assert calls == [("d", 6), ("d", 7), ("g", (9, 3))]
    assert out["skipped"] == 1.0 and out["d_loss"] == 0.5 and out["lr"] == 0.1


def test_spread_scaled_reward_puts_both_terms_on_one_scale(parts):
    """scale="spread": r = alpha * d / spread(d) + (1 - alpha) * e / spread(e), with
    spread the root mean square deviation from each image's mean."""
    batch, model, d = parts
    ids = model.generate(batch["features"], batch["region_mask"], "sample", num_samples=K, seed=1)
    ids = ids.ids

    def evaluator(sample_ids, index, refs, replica=0):  # spread 50 within each image
        return (100.0 * (np.arange(len(sample_ids)) % K) + 10.0 * index).astype(np.float32)

    alpha = 0.3
    got = gan.gan_reward(d, evaluator, alpha, scale="spread")(batch, ids, K).numpy()
    p = tf.sigmoid(d.score(batch["features"], batch["region_mask"], ids)).numpy()
    e = evaluator(ids.numpy(), np.repeat(np.arange(4), K), None)

    def rms_dev(x):
        x = x.reshape(-1, K)
        return max(np.sqrt(np.mean((x - x.mean(1, keepdims=True)) ** 2)), gan.SPREAD_FLOOR)

    assert rms_dev(e) == pytest.approx(50.0)
    want = alpha * p / rms_dev(p) + (1 - alpha) * e / rms_dev(e)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    # Without scaling the evaluator's units dominate: D's part is a rounding error.
    raw = gan.gan_reward(d, evaluator, alpha)(batch, ids, K).numpy()
    np.testing.assert_allclose(raw, alpha * p + (1 - alpha) * e, rtol=1e-6)
    with pytest.raises(ValueError, match="2 samples per image"):
        gan.gan_reward(d, evaluator, alpha, scale="spread")(batch, ids[::K], 1)
    with pytest.raises(ValueError, match="scale must be one of"):
        gan.gan_reward(d, evaluator, alpha, scale="rank")
