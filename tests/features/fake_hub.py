"""Tiny local SavedModels for feature-extraction tests (no network).

Not the public detectors' signature (detector_models.py builds those): `FakeDetector` has no
raw proposals, and its `detection_features` variants stand for the one case where a detector
really exports box features (a self-made OD API export with `output_final_box_features`). Use
it for that path, for padding rows (`num_detections`) and the signature-only case. Called with
uint8 `[1, height, width, 3]`, it returns a dict of

- `detection_boxes`: float32 `[1, detections, 4]`, normalised (ymin, xmin, ymax, xmax): y first;
- `detection_scores`: float32 `[1, detections]`, descending;
- `detection_classes`: float32 `[1, detections]`, 1-based class ids;
- `num_detections`: float32 `[1]`, how many rows are real (the rest are zero padding);
- optionally `detection_features`: float32 `[1, detections, dim]` or `[1, detections, h, w, dim]`.

Its boxes are a fixed set of anchors at four scales; each anchor's score is a fixed random
projection of the colours sampled inside it, so the ranking depends on the image and the
scores straddle 0.5 (the adaptive policy gets different counts on different photos).

`FakeBackbone` maps float32 images in [0, 1] `[1, height, width, 3]` to a feature map
`[1, height / 8, width / 8, channels]` (average pooling and a fixed random 3x3 convolution).

`build_models(root)` saves every variant once under `root` (reused when already there).
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import tensorflow as tf


def _anchors() -> np.ndarray:
    """float32 `[anchors, 4]` (ymin, xmin, ymax, xmax): overlapping boxes at four scales."""
    boxes = []
    for size, steps in ((0.2, 8), (0.35, 6), (0.55, 4), (0.8, 3)):
        starts = np.linspace(0.0, 1.0 - size, steps)
        for y, x in itertools.product(starts, starts):
            boxes.append((y, x, y + size * 0.9, x + size))
    return np.asarray(boxes, np.float32)  # 64 + 36 + 16 + 9 = 125


class FakeDetector(tf.Module):
    """A TF Hub object-detector look-alike (see the module docstring).

    Args:
        max_detections: rows of every output (real ones first, then zero padding).
        num_valid: how many rows are real (`num_detections`); default all.
        feature_dim: also output `detection_features` of this width.
        feature_grid: with `feature_dim`, output them as `[1, N, grid, grid, dim]`.
        seed: the random projections.
    """

    def __init__(
        self,
        max_detections: int = 100,
        num_valid: int | None = None,
        feature_dim: int | None = None,
        feature_grid: int | None = None,
        seed: int = 0,
    ):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.anchors = tf.constant(_anchors())
        self.max_detections = max_detections
        self.num_valid = max_detections if num_valid is None else num_valid
        self.score_w = tf.constant(rng.normal(0, 3.0, [48, 1]), tf.float32)
        self.class_w = tf.constant(rng.normal(0, 1.0, [48, 90]), tf.float32)
        self.feature_dim, self.feature_grid = feature_dim, feature_grid
        if feature_dim:
            cells = (feature_grid or 1) ** 2
            self.feature_w = tf.constant(rng.normal(0, 1.0, [48, cells * feature_dim]), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8)])
    def __call__(self, images):
        x = tf.cast(images, tf.float32) / 255.0
        count = tf.shape(self.anchors)[0]
        crops = tf.image.crop_and_resize(x, self.anchors, tf.zeros([count], tf.int32), [4, 4])
        colours = tf.reshape(crops, [count, 48]) - 0.45  # [anchors, 48]
        scores = tf.sigmoid(tf.matmul(colours, self.score_w)[:, 0] / 4.0)  # [anchors]
        top = tf.math.top_k(scores, k=self.max_detections)
        valid = tf.cast(tf.range(self.max_detections) < self.num_valid, tf.float32)
        picked = tf.gather(colours, top.indices)  # [detections, 48]
        outputs = {
            "detection_boxes": (tf.gather(self.anchors, top.indices) * valid[:, None])[None],
            "detection_scores": (top.values * valid)[None],
            "detection_classes": (
                tf.cast(tf.argmax(tf.matmul(picked, self.class_w), axis=1) + 1, tf.float32) * valid
            )[None],
            "num_detections": tf.constant([self.num_valid], tf.float32),
        }
        if self.feature_dim:
            feats = tf.nn.relu(tf.matmul(picked, self.feature_w))
            shape = [1, self.max_detections, self.feature_dim]
            if self.feature_grid:
                shape = [1, self.max_detections, self.feature_grid, self.feature_grid, -1]
            outputs["detection_features"] = tf.reshape(feats, shape)
        return outputs


class FakeBackbone(tf.Module):
    """float32 `[1, height, width, 3]` in [0, 1] -> float32 `[1, height/8, width/8, channels]`."""

    def __init__(self, channels: int = 16, seed: int = 1):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.kernel = tf.constant(rng.normal(0, 1.0, [3, 3, 3, channels]), tf.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
    def __call__(self, images):
        pooled = tf.nn.avg_pool2d(images, 8, 8, "SAME")
        return tf.nn.relu(tf.nn.conv2d(pooled - 0.45, self.kernel, 1, "SAME"))


class SignatureOnlyDetector(tf.Module):
    """A detector saved only as a `serving_default` signature with input `input_tensor`
    (some exported models are called that way)."""

    def __init__(self):
        super().__init__()
        self.inner = FakeDetector()

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.uint8, name="input_tensor")])
    def detect(self, input_tensor):
        return self.inner(input_tensor)


MODELS = {
    "detector": lambda: FakeDetector(),
    "detector_padded": lambda: FakeDetector(num_valid=20),
    "detector_features": lambda: FakeDetector(feature_dim=16),
    "detector_grid_features": lambda: FakeDetector(feature_dim=8, feature_grid=2),
    "backbone": lambda: FakeBackbone(channels=16),
}


def build_models(root: str | os.PathLike) -> dict[str, str]:
    """Saves every model of `MODELS` (and the signature-only detector) under `root`.

    Returns:
        name -> SavedModel directory; directories already there are reused.
    """
    paths = {}
    for name, make in {**MODELS, "detector_signature": SignatureOnlyDetector}.items():
        path = os.path.join(root, name)
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            module = make()
            signatures = (
                {"serving_default": module.detect} if name == "detector_signature" else None
            )
            tmp = f"{path}.tmp{os.getpid()}"
            tf.saved_model.save(module, tmp, signatures=signatures)
            os.replace(tmp, path)
        paths[name] = path
    return paths
