"""--mixed_precision: bfloat16 compute in training, float32 weights, float32 inference."""

import json

import numpy as np
import tensorflow as tf
from conftest import run_train

from tfcap import checkpoints
from tfcap.data import pipeline


def test_mixed_precision_trains_close_to_float32_and_loads_back_in_float32(shapes_dir, tmp_path):
    run_train(shapes_dir, tmp_path / "f32", train_steps=2)
    run_train(shapes_dir, tmp_path / "bf16", train_steps=2, mixed_precision=True)
    config = json.loads((tmp_path / "bf16" / "model.json").read_text())["captioner"]
    assert "bfloat16" in json.dumps(config["dtype"])
    a, _, _ = checkpoints.load_model(str(tmp_path / "f32"), "latest")
    b, _, _ = checkpoints.load_model(str(tmp_path / "bf16"), "latest")
    assert b.compute_dtype == "float32" and all(v.dtype == tf.float32 for v in b.weights)
    # Same data and seed: bfloat16 products change the weights by rounding only...
    for x, y in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(x.numpy(), y.numpy(), atol=0.02)
    # ...but they did compute differently: not bit-identical.
    assert any(
        not np.array_equal(x.numpy(), y.numpy()) for x, y in zip(a.weights, b.weights, strict=True)
    )
    batch = next(iter(pipeline.make_dataset(str(shapes_dir), "test", 4)))
    _, log_probs, _ = b.generate(batch["features"], batch["region_mask"])
    assert log_probs.dtype == tf.float32 and np.all(np.isfinite(log_probs))
