"""--mixed_precision: bfloat16 compute in training, float32 weights, float32 inference."""

import json

import numpy as np
import tensorflow as tf
from conftest import run_train

from tfcap import checkpoints
from tfcap.data import pipeline


def _update(run, step):
    """Per-weight change made by training step `step` (checkpoints step-1 and step)."""
    before = checkpoints.model_at(str(run / "ckpt" / f"ckpt-{step - 1}")).weights
    after = checkpoints.model_at(str(run / "ckpt" / f"ckpt-{step}")).weights
    return np.concatenate(
        [(b.numpy() - a.numpy()).ravel() for a, b in zip(before, after, strict=True)]
    )


def test_mixed_precision_trains_close_to_float32_and_loads_back_in_float32(shapes_dir, tmp_path):
    budget = dict(train_steps=3, checkpoint_every=1, keep_checkpoints=5)
    run_train(shapes_dir, tmp_path / "f32", **budget)
    run_train(shapes_dir, tmp_path / "bf16", mixed_precision=True, **budget)
    config = json.loads((tmp_path / "bf16" / "model.json").read_text())["captioner"]
    assert "bfloat16" in json.dumps(config["dtype"])
    a, _, _ = checkpoints.load_model(str(tmp_path / "f32"), "latest")
    b, _, _ = checkpoints.load_model(str(tmp_path / "bf16"), "latest")
    assert b.compute_dtype == "float32" and all(v.dtype == tf.float32 for v in b.weights)
    # Same data and seed: the updates of steps 2 and 3 (Adam, past its sign-like first
    # step) point the same way and have the same size, to bfloat16 rounding...
    for step in (2, 3):
        u32, u16 = _update(tmp_path / "f32", step), _update(tmp_path / "bf16", step)
        cosine = float(u32 @ u16 / np.linalg.norm(u32) / np.linalg.norm(u16))
        ratio = float(np.linalg.norm(u16) / np.linalg.norm(u32))
        print(f"step {step}: cosine {cosine:.4f}, norm ratio {ratio:.4f}")
        assert cosine > 0.99 and 0.95 < ratio < 1.05, (step, cosine, ratio)
    # ...but they did compute differently: not bit-identical.
    assert any(
        not np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.weights, b.weights, strict=True)
    )
    batch = next(iter(pipeline.make_dataset(str(shapes_dir), "test", 4)))
    _, log_probs, _ = b.generate(batch["features"], batch["region_mask"])
    assert log_probs.dtype == tf.float32 and np.all(np.isfinite(log_probs))
