"""XE training: the step, the loss falling, distributed equality, checkpoints and resume."""

import json
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_script_json, run_train

from tfcap import checkpoints, losses
from tfcap.data import pipeline
from tfcap.model.captioner import Captioner
from tfcap.training import updates, xe


def _model(meta, seed=0, **kw):
    keras.utils.set_random_seed(seed)
    sizes = dict(rnn_size=32, embed_dim=16, att_hidden=16, dropout=0.0, max_len=16)
    model = Captioner(meta["vocab_size"], **{**sizes, **kw})
    model.build((None, None, meta["feature_dim"]))
    return model


def test_label_smoothing_matches_the_definition():
    logits = tf.random.stateless_normal([2, 3, 5], seed=[1, 2])
    targets = tf.constant([[1, 2, 0], [4, 4, 3]])
    mask = tf.constant([[True, True, False], [True, True, True]])
    got = losses.token_cross_entropy(logits, targets, mask, label_smoothing=0.1).numpy()
    log_p = tf.nn.log_softmax(logits).numpy()
    want = -(
        0.9 * np.take_along_axis(log_p, targets.numpy()[..., None], -1)[..., 0]
        + 0.1 * log_p.mean(-1)
    )
    np.testing.assert_allclose(got, np.where(mask, want, 0), rtol=1e-6)


def test_clip_gradients_by_value_and_norm():
    grads = [tf.constant([3.0, -0.05]), tf.constant([4.0])]
    by_value = updates.clip_gradients(grads, 0.1, "value")
    np.testing.assert_allclose(by_value[0].numpy(), [0.1, -0.05])
    by_norm = updates.clip_gradients(grads, 1.0, "norm")
    assert abs(float(tf.linalg.global_norm(by_norm)) - 1.0) < 1e-6
    with pytest.raises(ValueError, match="grad_clip_mode"):
        updates.clip_gradients(grads, 1.0, "other")


def test_loss_falls_on_shapes_data(shapes_dir):
    meta = pipeline.load_metadata(str(shapes_dir))
    model = _model(meta)
    optimizer = keras.optimizers.Adam(3e-3)
    optimizer.build(model.trainable_variables)
    strategy = tf.distribute.get_strategy()
    step = xe.make_xe_step(strategy, model, optimizer, xe.XEConfig(grad_clip=1.0))
    ds = pipeline.make_dataset(str(shapes_dir), "train", 8, shuffle=True, repeat=True, seed=0)
    it = iter(ds)
    seed = tf.constant([0, 0], tf.int64)
    first = float(step(next(it), tf.constant(0.0), seed)[0])
    for _ in range(200):
        last = float(step(next(it), tf.constant(0.0), seed)[0])
    assert first > 3.0  # about log(vocab) at the start
    assert last < 0.6 * first


MIRRORED = textwrap.dedent(
    """
    import json, sys
    from tfcap import distribute
    strategy = distribute.make_strategy("mirrored", 2)
    import keras, numpy as np, tensorflow as tf
    from tfcap.data import pipeline
    from tfcap.model.captioner import Captioner
    from tfcap.training import xe
    data_dir = sys.argv[1]
    meta = pipeline.load_metadata(data_dir)
    batch = next(iter(pipeline.make_dataset(data_dir, "train", 8, drop_remainder=True)))

    def run(strat):
        with strat.scope():
            keras.utils.set_random_seed(0)
            model = Captioner(meta["vocab_size"], rnn_size=32, embed_dim=16, att_hidden=16,
                              dropout=0.0, max_len=16)
            model.build((None, None, meta["feature_dim"]))
            # SGD and several steps: an update off by the replica count would show
            opt = keras.optimizers.SGD(1.0)
            opt.build(model.trainable_variables)
        start = [v.numpy() for v in model.trainable_variables]
        step = xe.make_xe_step(strat, model, opt, xe.XEConfig(grad_clip=0.05))
        dist = strat.experimental_distribute_dataset(
            tf.data.Dataset.from_tensors(batch)).__iter__().__next__()
        for _ in range(3):
            loss, norm = step(dist, tf.constant(0.0), tf.constant([0, 0], tf.int64))
        end = [v.numpy() for v in model.trainable_variables]
        moved = max(float(np.max(np.abs(a - b))) for a, b in zip(start, end))
        return float(loss), float(norm), end, moved

    one = run(tf.distribute.get_strategy())
    two = run(strategy)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(one[2], two[2]))
    print(json.dumps({"replicas": strategy.num_replicas_in_sync, "loss": [one[0], two[0]],
                      "norm": [one[1], two[1]], "max_weight_diff": diff,
                      "max_weight_move": one[3]}))
    """
)


def test_mirrored_two_replicas_equal_one_device(shapes_dir):
    result = run_script_json(MIRRORED, shapes_dir)
    assert result["replicas"] == 2
    assert abs(result["loss"][0] - result["loss"][1]) < 1e-5
    assert abs(result["norm"][0] - result["norm"][1]) < 1e-4
    assert result["max_weight_move"] > 1e-2  # the steps did move the weights
    assert result["max_weight_diff"] < 1e-5


def _weights(model_dir, which="latest"):
    model, _, _ = checkpoints.load_model(str(model_dir), which)
    return [v.numpy() for v in model.weights]


def test_train_writes_model_dir_and_resumes_exactly(shapes_dir, tmp_path):
    run_train(shapes_dir, tmp_path / "whole", train_steps=6)
    run_train(shapes_dir, tmp_path / "split", train_steps=3)
    run_train(shapes_dir, tmp_path / "split", train_steps=6)  # same command, longer: resumes
    run = tmp_path / "split"
    for name in ("flags.txt", "model.json", "vocab.txt", "best.json"):
        assert (run / name).exists(), name
    assert "--train_steps=6" in (run / "flags.txt").read_text()
    assert tf.train.latest_checkpoint(str(run / "ckpt")).endswith("ckpt-6")
    for a, b in zip(_weights(tmp_path / "whole"), _weights(run), strict=True):
        np.testing.assert_array_equal(a, b)
    _assert_best_is_the_best_validation(run, shapes_dir)


def _assert_best_is_the_best_validation(run, data_dir):
    """best.json names the validation with the highest CIDEr-D (TensorBoard's record),
    and best/ holds weights that score exactly that."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tfcap.training.validation import Validator

    events = EventAccumulator(str(run / "val")).Reload().Tensors("xe/CIDEr")
    logged = {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in events}
    best = json.loads((run / "best.json").read_text())
    assert set(logged) == {3, 6}
    assert best["step"] == max(logged, key=logged.get)
    assert best["CIDEr"] == pytest.approx(logged[best["step"]], rel=1e-6)
    model, _, _ = checkpoints.load_model(str(run), "best")
    score, _ = Validator(model, str(data_dir), images=best["val_images"], batch_size=10).cider()
    assert score == pytest.approx(best["CIDEr"], rel=1e-5)


def test_checkpoint_round_trip_gives_identical_decoding(shapes_dir, tmp_path):
    run_train(shapes_dir, tmp_path / "run", train_steps=3)
    model, words, info = checkpoints.load_model(str(tmp_path / "run"), "latest")
    again, _, _ = checkpoints.load_model(str(tmp_path / "run"), "latest")
    batch = next(iter(pipeline.make_dataset(str(shapes_dir), "test", 4)))
    a = model.generate(batch["features"], batch["region_mask"])[0].numpy()
    b = again.generate(batch["features"], batch["region_mask"])[0].numpy()
    np.testing.assert_array_equal(a, b)
    assert info["data"]["feature_dim"] == 16 and len(words) == info["data"]["vocab_size"]


def test_resume_refuses_a_different_model(shapes_dir, tmp_path):
    from absl import app

    run_train(shapes_dir, tmp_path / "run", train_steps=3)
    with pytest.raises(app.UsageError, match="different model"):
        run_train(shapes_dir, tmp_path / "run", train_steps=3, text_attention="true")


def test_resume_takes_another_weight_init(shapes_dir, tmp_path):
    """weight_init only draws fresh weights, which a resume restores: not a different model."""
    run_train(shapes_dir, tmp_path / "run", train_steps=3, weight_init="keras")
    run_train(shapes_dir, tmp_path / "run", train_steps=5, weight_init="torch")
    assert tf.train.latest_checkpoint(str(tmp_path / "run" / "ckpt")).endswith("ckpt-5")


def test_tensorboard_logs_training_and_validation(shapes_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_train(shapes_dir, tmp_path / "run", train_steps=4, eval_every=2, log_every=2)
    train = EventAccumulator(str(tmp_path / "run" / "train")).Reload().Tags()
    val = EventAccumulator(str(tmp_path / "run" / "val"), size_guidance={"images": 0}).Reload()
    # TF2 summaries are stored as tensors
    assert {"xe/loss", "xe/lr", "xe/grad_norm", "xe/examples_per_s"} <= set(train["tensors"])
    tags = val.Tags()
    assert {"xe/CIDEr", "samples", "attention"} <= set(tags["tensors"])
    picture = val.Tensors("attention")[-1]
    assert picture.step == 4
    png = tf.make_ndarray(picture.tensor_proto)[2]  # [width, height, encoded png]
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def _train_process(data_dir, model_dir, *flags):
    """`python -m tfcap.train` in a fresh process (the CPU split into 2 devices)."""
    import subprocess
    import sys

    from conftest import REPO

    argv = [
        sys.executable,
        "-m",
        "tfcap.train",
        f"--flagfile={REPO / 'configs' / 'smoke.flags'}",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        "--deterministic",
        "--strategy=mirrored",
        "--num_devices=2",
        "--eval_every=100",
        *flags,
    ]
    out = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]


@pytest.mark.slow
def test_mirrored_resume_mid_epoch_is_exact(shapes_dir, tmp_path):
    """Two replicas take two batches of their pipeline per step: a resumed run skips
    twice the steps done (40 images, batch 4: 10 steps an epoch, resumed at 3)."""
    _train_process(shapes_dir, tmp_path / "whole", "--train_steps=6")
    _train_process(shapes_dir, tmp_path / "split", "--train_steps=3")
    _train_process(shapes_dir, tmp_path / "split", "--train_steps=6")
    for a, b in zip(_weights(tmp_path / "whole"), _weights(tmp_path / "split"), strict=True):
        np.testing.assert_array_equal(a, b)
