"""Numerical faults: a NaN/Inf loss or gradient is detected, the update skipped and
counted, training stops after K in a row, and the last good checkpoint is kept.

Faults are injected with `--inject_nonfinite_steps` (the loss of those global
steps is multiplied by NaN or Inf inside the step, before the gradient), so the
real guard in `tfcap.training.updates.apply_if_finite` sees them.
"""

import os
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_script_json, run_train

from tfcap import checkpoints
from tfcap.training import gan, updates
from tfcap.training.guard import NonFiniteError


def _guarded_update(strategy, loss_scale, grad_scale):
    """One guarded update of two variables; returns (skipped, weights, Adam state)."""
    with strategy.scope():
        v = tf.Variable([1.0, 2.0])
        w = tf.Variable([[3.0]])
        opt = keras.optimizers.Adam(0.1)
        opt.build([v, w])

    def replica():
        with tf.GradientTape() as tape:
            loss = (tf.reduce_sum(v * grad_scale) + tf.reduce_sum(w)) * loss_scale
        grads, _, finite = updates.reduce_gradients(tape.gradient(loss, [v, w]), loss)
        return grads, finite

    @tf.function
    def step():
        grads, finite = strategy.run(replica)
        return updates.apply_if_finite(strategy, opt, [v, w], grads, finite, 0.0, "value")

    skipped = bool(step())
    return skipped, [v.numpy(), w.numpy()], [x.numpy() for x in opt.variables]


@pytest.mark.parametrize(
    "loss_scale, grad_scale, skip",
    [(1.0, 1.0, False), (float("nan"), 1.0, True), (1.0, float("inf"), True)],
    ids=["finite", "nan_loss", "inf_gradient"],
)
def test_guard_skips_nonfinite_updates_entirely(loss_scale, grad_scale, skip):
    skipped, weights, state = _guarded_update(tf.distribute.get_strategy(), loss_scale, grad_scale)
    assert skipped == skip
    unchanged = np.array_equal(weights[0], [1.0, 2.0]) and np.array_equal(weights[1], [[3.0]])
    assert unchanged == skip
    iterations = int(state[0])
    assert iterations == (0 if skip else 1)  # no optimizer step either: slots stay zero
    if skip:
        assert all(not np.any(s) for s in state[2:])


MIRRORED = textwrap.dedent(
    """
    import json, sys
    from tfcap import distribute
    strategy = distribute.make_strategy("mirrored", 2)
    import keras, numpy as np, tensorflow as tf
    from tfcap.data import pipeline
    from tfcap.model.captioner import Captioner
    from tfcap.training import updates, xe
    data_dir = sys.argv[1]
    meta = pipeline.load_metadata(data_dir)
    batch = next(iter(pipeline.make_dataset(data_dir, "train", 8, drop_remainder=True)))
    # NaN features in the second half of the batch: only replica 1's loss is NaN.
    poisoned = np.array(batch["features"])
    poisoned[4:] = np.nan
    batch = {**batch, "features": tf.constant(poisoned)}
    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = Captioner(meta["vocab_size"], rnn_size=16, embed_dim=8, att_hidden=8,
                          dropout=0.0, max_len=16)
        model.build((None, None, meta["feature_dim"]))
        opt = keras.optimizers.Adam(1e-2)
        opt.build(model.trainable_variables)
    before = [v.numpy() for v in model.trainable_variables]
    step = xe.make_xe_step(strategy, model, opt, xe.XEConfig(grad_clip=0.1))
    dist = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch)))
    loss, norm = step(next(dist), tf.constant(0.0), tf.constant([0, 0], tf.int64))
    changed = [int(np.any(a != v.numpy())) for a, v in zip(before, model.trainable_variables)]
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": float(loss),
                      "skipped": updates.step_skipped(loss, norm), "changed": sum(changed),
                      "iterations": int(opt.iterations.numpy())}))
    """
)


def test_replicas_skip_together_when_one_replica_is_nonfinite(shapes_dir):
    result = run_script_json(MIRRORED, shapes_dir)
    assert result["replicas"] == 2
    assert result["skipped"] and not np.isfinite(result["loss"])
    assert result["changed"] == 0 and result["iterations"] == 0


def _state(path):
    """Model weights, xe optimizer iterations and the skip counter of checkpoint `path`."""
    reader = tf.train.load_checkpoint(path)
    return (
        [v.numpy() for v in checkpoints.model_at(path).weights],
        int(reader.get_tensor("xe_optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")),
        int(reader.get_tensor("skipped_steps/.ATTRIBUTES/VARIABLE_VALUE")),
    )


def _discriminator(path):
    """The discriminator's weights in gan checkpoint `path`."""
    d = gan.load_discriminator(os.path.dirname(os.path.dirname(path)))
    tf.train.Checkpoint(discriminator=d).restore(path).expect_partial()
    return [v.numpy() for v in d.weights]


def test_injected_faults_are_skipped_counted_and_logged(shapes_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    budget = dict(train_steps=5, checkpoint_every=1, keep_checkpoints=10, eval_every=100)
    run_train(shapes_dir, run, inject_nonfinite_steps="2,3:inf", log_every=1, **budget)
    ckpt = {n: _state(str(run / "ckpt" / f"ckpt-{n}")) for n in range(1, 6)}
    for n in (2, 3):  # the faulty steps changed nothing but the counters
        for a, b in zip(ckpt[1][0], ckpt[n][0], strict=True):
            np.testing.assert_array_equal(a, b)
        assert ckpt[n][1] == ckpt[1][1]
    assert [ckpt[n][2] for n in range(1, 6)] == [0, 1, 2, 2, 2]
    assert ckpt[4][1] == ckpt[1][1] + 1
    assert any(np.any(a != b) for a, b in zip(ckpt[3][0], ckpt[4][0], strict=True))
    assert all(np.all(np.isfinite(w)) for w in ckpt[5][0])
    tags = EventAccumulator(str(run / "train")).Reload()
    skipped = [int(tf.make_ndarray(e.tensor_proto)) for e in tags.Tensors("xe/skipped_steps")]
    assert skipped[-1] == 2


def test_consecutive_faults_stop_the_run_and_keep_the_last_good_checkpoint(shapes_dir, tmp_path):
    run = tmp_path / "run"
    budget = dict(train_steps=6, checkpoint_every=2, keep_checkpoints=10, eval_every=100)
    with pytest.raises(NonFiniteError, match=r"3 steps in a row \(global steps 3..5\)") as err:
        run_train(
            shapes_dir, run, inject_nonfinite_steps="3,4,5", max_consecutive_nonfinite=3, **budget
        )
    assert "ckpt-4" in str(err.value)  # the last checkpoint, named in the message
    assert tf.train.latest_checkpoint(str(run / "ckpt")).endswith("ckpt-4")
    good, bad_streak = _state(str(run / "ckpt" / "ckpt-2")), _state(str(run / "ckpt" / "ckpt-4"))
    for a, b in zip(good[0], bad_streak[0], strict=True):  # step 3, 4: skipped
        np.testing.assert_array_equal(a, b)
    assert bad_streak[2] == 2
    # The same command without the fault resumes from ckpt-4 and finishes.
    run_train(shapes_dir, run, **budget)
    assert tf.train.latest_checkpoint(str(run / "ckpt")).endswith("ckpt-6")
    assert all(np.all(np.isfinite(w)) for w in _state(str(run / "ckpt" / "ckpt-6"))[0])


@pytest.mark.slow
def test_policy_and_discriminator_steps_skip_faults(shapes_dir, tmp_path):
    budget = dict(
        train_steps=2,
        scst_steps=2,
        gan_steps=2,
        d_pretrain_steps=1,
        num_samples=2,
        eval_every=100,
        checkpoint_every=1,
        keep_checkpoints=10,
    )
    run = tmp_path / "run"
    # global steps: xe 1-2, scst 3-4, gan 5-6 (each gan step: a D and a generator update)
    run_train(shapes_dir, run, phases="xe,scst,gan", inject_nonfinite_steps="3,5:inf", **budget)
    path = {n: str(run / "ckpt" / f"ckpt-{n}") for n in range(2, 7)}
    model = {n: _state(path[n]) for n in range(2, 7)}
    assert model[6][2] == 2
    for a, b in zip(model[2][0], model[3][0], strict=True):
        np.testing.assert_array_equal(a, b)  # scst step 3 skipped
    for a, b in zip(model[4][0], model[5][0], strict=True):
        np.testing.assert_array_equal(a, b)  # gan step 5 skipped
    assert any(np.any(a != b) for a, b in zip(model[3][0], model[4][0], strict=True))
    d4, d5, d6 = (_discriminator(path[n]) for n in (4, 5, 6))
    for a, b in zip(d4, d5, strict=True):
        np.testing.assert_array_equal(a, b)  # and its D update
    assert any(np.any(a != b) for a, b in zip(d5, d6, strict=True))
