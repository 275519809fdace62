"""Region features: a backbone's feature map, ROI-pooled over each box and averaged.

`Backbone` runs one image through a convolutional network and returns its feature map:
either a TF Hub / local SavedModel (float32 `[1, height, width, 3]` in [0, 1] in, the TF Hub
image convention; `[1, h, w, channels]` out) or a Keras application built from a local
weights file (no download). The image is first resized so its shorter side is `min_side`
and its longer side at most `max_side` pixels, as Faster R-CNN does.

`pool_regions` crops every box out of its image's feature map with bilinear sampling on a
`pool_size x pool_size` grid (`tf.image.crop_and_resize`, the ROI "crop and resize" of the
TF Object Detection API) and averages the grid: one `channels`-d vector per region, like the
2048-d mean-pooled ROI features of bottom-up attention. The maps of a batch are padded to one
size and all boxes go through one op.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import tensorflow as tf
from absl import logging

from tfcap.errors import BadInput, MissingInput
from tfcap.features import handles


def resized_shape(height, width, min_side: int, max_side: int) -> tf.Tensor:
    """int32 `[2]`: `(height, width)` scaled so the shorter side is `min_side` and the longer
    at most `max_side` (TensorFlow ops: works on dynamic shapes in graphs).

    >>> resized_shape(480, 640, 600, 1000).numpy().tolist()
    [600, 800]
    >>> resized_shape(100, 1000, 600, 1000).numpy().tolist()
    [100, 1000]
    """
    size = tf.cast(tf.stack([height, width]), tf.float64)
    scale = tf.minimum(min_side / tf.reduce_min(size), max_side / tf.reduce_max(size))
    return tf.maximum(tf.cast(tf.round(size * scale), tf.int32), 1)


class Backbone:
    """Image -> feature map, from a SavedModel handle or a Keras application.

    Args:
        handle: TF Hub URL or local SavedModel directory; called with float32
            `[1, height, width, 3]` in [0, 1], returns `[1, h, w, channels]` (or a dict
            holding exactly one rank-4 tensor).
        app: instead, a `keras.applications` name such as "ResNet101" or "ResNet50",
            built with `include_top=False` and the weights of...
        weights: ...this local file (`.weights.h5`); required with `app`.
        min_side, max_side: the resize before the network (pixels).

    Call arguments:
        image: uint8 `[height, width, 3]` (TensorFlow ops only: also inside `tf.function`).

    Returns:
        float32 `[h, w, channels]`.
    """

    def __init__(
        self,
        handle: str | None = None,
        app: str | None = None,
        weights: str | None = None,
        min_side: int = 600,
        max_side: int = 1000,
    ):
        if (handle is None) == (app is None):
            raise BadInput("give exactly one of a backbone handle and a Keras application")
        self.min_side, self.max_side = min_side, max_side
        self.name = handle or app
        if handle is not None:
            self.model = handles.load(handle, "backbone")
            self._fn = self.model if callable(self.model) else self._signature(handle)
            self._preprocess = lambda x: x / 255.0
        else:
            self._fn, self._preprocess = _keras_app(app, weights)
            self.model = self._fn.model
        logging.info("Loaded backbone %s", self.name)

    def _signature(self, handle: str):
        signature = self.model.signatures.get("serving_default")
        if signature is None:
            raise BadInput(f"{handle}: the SavedModel is neither callable nor has serving_default")
        (name,) = signature.structured_input_signature[1]
        return lambda x: signature(**{name: x})

    def __call__(self, image) -> tf.Tensor:
        image = tf.convert_to_tensor(image, tf.uint8)
        size = resized_shape(tf.shape(image)[0], tf.shape(image)[1], self.min_side, self.max_side)
        x = tf.image.resize(tf.cast(image[None], tf.float32), size, antialias=True)
        out = self._fn(self._preprocess(tf.clip_by_value(x, 0.0, 255.0)))
        if isinstance(out, dict):
            maps = [v for v in out.values() if v.shape.rank == 4]
            if len(maps) != 1:
                raise BadInput(f"{self.name}: expected one rank-4 output, got {out}")
            out = maps[0]
        if out.shape.rank != 4 or out.shape[0] not in (1, None):
            raise BadInput(
                f"{self.name}: backbone must return [1, h, w, channels], got {out.shape}"
            )
        return tf.cast(out[0], tf.float32)


def _keras_app(name: str, weights: str | None):
    """A Keras application's feature extractor (a tf.function) and its preprocessing."""
    import keras

    if not weights:
        raise BadInput(f"--backbone_app={name} needs a local weights file (no downloads here)")
    if not os.path.isfile(weights):
        raise MissingInput(f"backbone weights {weights}: no such file")
    constructor = getattr(keras.applications, name, None)
    if constructor is None or not callable(constructor):
        raise BadInput(f"keras.applications has no model {name!r}")
    model = constructor(include_top=False, weights=weights, input_shape=(None, None, 3))
    preprocess = importlib.import_module(constructor.__module__).preprocess_input

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
    def features(images):
        return model(images, training=False)

    features.model = model  # keeps the weights alive with the function
    return features, preprocess


def pool_regions(
    feature_maps: list[tf.Tensor], boxes: list[np.ndarray], pool_size: int = 7, chunk: int = 1024
) -> list[np.ndarray]:
    """Mean of a `pool_size x pool_size` bilinear crop of each box, for a batch of images.

    Args:
        feature_maps: per image, float `[h_i, w_i, channels]` (sizes may differ).
        boxes: per image, float `[regions_i, 4]`, (x1, y1, x2, y2) normalised to the image.
        pool_size: sampling grid per box.
        chunk: boxes per op call (memory: `chunk * pool_size^2 * channels` floats).

    Returns:
        per image, float32 `[regions_i, channels]`.

    >>> ramp = tf.reshape(tf.range(5.0), [1, 5, 1]) * tf.ones([3, 1, 2])  # value = x
    >>> [f.tolist() for f in pool_regions([ramp], [np.array([[0.0, 0, 1, 1], [0, 0, 0.5, 1]])])]
    [[[2.0, 2.0], [1.0, 1.0]]]
    """
    if len(feature_maps) != len(boxes):
        raise ValueError(f"{len(feature_maps)} feature maps but {len(boxes)} box arrays")
    if not feature_maps:
        return []
    maps = [tf.convert_to_tensor(m, tf.float32) for m in feature_maps]
    if any(m.shape.rank != 3 for m in maps):
        raise ValueError(f"feature maps must be [h, w, channels], got {[m.shape for m in maps]}")
    top_h = max(int(m.shape[0]) for m in maps)
    top_w = max(int(m.shape[1]) for m in maps)
    padded = tf.stack(
        [tf.pad(m, [[0, top_h - m.shape[0]], [0, top_w - m.shape[1]], [0, 0]]) for m in maps]
    )  # [batch, top_h, top_w, channels]
    crop_boxes, indices = [], []
    for i, (m, b) in enumerate(zip(maps, boxes, strict=True)):
        b = np.asarray(b, np.float32).reshape(-1, 4)
        # crop_and_resize maps y in [0, 1] to [0, top_h - 1]: rescale to this map's own extent
        sy = (int(m.shape[0]) - 1) / max(top_h - 1, 1)
        sx = (int(m.shape[1]) - 1) / max(top_w - 1, 1)
        crop_boxes.append(b[:, [1, 0, 3, 2]] * np.array([sy, sx, sy, sx], np.float32))
        indices.append(np.full([len(b)], i, np.int32))
    all_boxes, all_indices = np.concatenate(crop_boxes), np.concatenate(indices)
    parts = []
    for start in range(0, len(all_boxes), chunk):
        crops = tf.image.crop_and_resize(
            padded,
            all_boxes[start : start + chunk],
            all_indices[start : start + chunk],
            [pool_size, pool_size],
        )  # [chunk, pool_size, pool_size, channels]
        parts.append(tf.reduce_mean(crops, axis=[1, 2]).numpy())  # [chunk, channels]
    pooled = np.concatenate(parts) if parts else np.zeros([0, padded.shape[-1]], np.float32)
    splits = np.cumsum([len(i) for i in indices])[:-1]
    return [p.astype(np.float32) for p in np.split(pooled, splits)]
