"""Region features: a backbone's feature map, ROI-pooled over each box and averaged.

`Backbone` runs one image through a convolutional network and returns its feature map:
either a TF Hub / local SavedModel (float32 `[1, height, width, 3]` in, by default in [0, 1] as
the TF Hub image convention has it; `[1, h, w, channels]` out) or a Keras application built
from a local weights file (no download) and fed as its own `preprocess_input` wants (caffe for
ResNet). `preprocess` names each input convention, so the same network saved either way gets the
same input. Pooled feature vectors (`[1, channels]`) are refused: ROI pooling needs the map.
The image is first resized so its shorter side is `min_side` and its longer side at most
`max_side` pixels, as Faster R-CNN does.

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


# How a backbone wants its float32 0-255 RGB input: keras.applications' modes and two more.
PREPROCESSING = ("auto", "unit", "caffe", "tf", "torch", "none")


def preprocess(images: tf.Tensor, mode: str) -> tf.Tensor:
    """float32 RGB 0-255 `[..., 3]` -> the backbone's input (TensorFlow ops).

    Modes: "unit" x / 255 (the TF Hub image convention), "none" unchanged (Keras models that
    rescale inside: MobileNetV3, EfficientNet, ConvNeXt), and keras.applications'
    `imagenet_utils.preprocess_input` modes "caffe" (BGR, ImageNet means subtracted: ResNet,
    VGG), "tf" (x / 127.5 - 1: ResNetV2, Inception) and "torch" (x / 255, ImageNet mean/std).

    >>> preprocess(tf.constant([[0.0, 127.5, 255.0]]), "tf").numpy().tolist()
    [[-1.0, 0.0, 1.0]]
    >>> preprocess(tf.constant([[10.0, 20.0, 30.0]]), "caffe").numpy().astype(int).tolist()  # BGR
    [[-73, -96, -113]]
    """
    if mode == "unit":
        return images / 255.0
    if mode == "none":
        return images
    if mode in ("caffe", "tf", "torch"):
        from keras.applications import imagenet_utils

        return imagenet_utils.preprocess_input(images, data_format="channels_last", mode=mode)
    raise BadInput(f"backbone preprocessing must be one of {PREPROCESSING[1:]}, got {mode!r}")


class Backbone:
    """Image -> feature map, from a SavedModel handle or a Keras application.

    Args:
        handle: TF Hub URL or local SavedModel directory, called (or its `signature`) with
            float32 `[1, height, width, 3]`; returns `[1, h, w, channels]`, or a dict of outputs
            of which `output` (or the only rank-4 one) is the map.
        app: instead, a `keras.applications` name such as "ResNet101" or "ResNet50",
            built with `include_top=False` and the weights of...
        weights: ...this local file (`.weights.h5`); required with `app`.
        min_side, max_side: the resize before the network (pixels).
        preprocessing: a `PREPROCESSING` mode; "auto" is the application's own
            `preprocess_input` with `app` and "unit" ([0, 1]) with a handle. A Keras
            application saved as a SavedModel and given as a handle needs its mode named here
            ("caffe" for ResNet50/101/152 and VGG), or it gets different features.
        signature: with a handle, the signature to call (default: the model itself if
            callable, else "serving_default", "image_feature_vector", "default").
        output: with a handle whose outputs are a dict, the key of the spatial map (e.g. a TF1
            Hub image module's "resnet_v2_101/block4" in its `image_feature_vector` signature).

    Call arguments:
        image: uint8 `[height, width, 3]` (TensorFlow ops only: also inside `tf.function`).

    Returns:
        float32 `[h, w, channels]`.

    Attributes:
        preprocessing: the mode used (never "auto").
        variables: the weights the calls read, for a `tf.Module` to track when it is saved.
    """

    SIGNATURES = ("serving_default", "image_feature_vector", "default")

    def __init__(
        self,
        handle: str | None = None,
        app: str | None = None,
        weights: str | None = None,
        min_side: int = 600,
        max_side: int = 1000,
        preprocessing: str = "auto",
        signature: str | None = None,
        output: str | None = None,
    ):
        if (handle is None) == (app is None):
            raise BadInput("give exactly one of a backbone handle and a Keras application")
        if preprocessing not in PREPROCESSING:
            raise BadInput(
                f"--backbone_preprocessing must be one of {PREPROCESSING}, got {preprocessing!r}"
            )
        if app is not None and (signature or output):
            raise BadInput("--backbone_signature/--backbone_output apply to --backbone_handle only")
        self.min_side, self.max_side = min_side, max_side
        self.name, self.output = handle or app, output
        if handle is not None:
            self.model = handles.load(handle, "backbone")
            self._fn = self._callable(handle, signature)
            self.preprocessing = "unit" if preprocessing == "auto" else preprocessing
            self.variables = self.model  # a loaded SavedModel: tracks its own variables
        else:
            self._fn, own_mode = _keras_app(app, weights)
            self.preprocessing = own_mode if preprocessing == "auto" else preprocessing
            self.model = self._fn.model
            self.variables = [v.value for v in self.model.variables]  # tf.Variables, not Keras'
        logging.info("Loaded backbone %s (preprocessing %s)", self.name, self.preprocessing)

    def _callable(self, handle: str, signature: str | None):
        signatures = getattr(self.model, "signatures", {})
        if signature is None and callable(self.model):
            return self.model
        names = [signature] if signature else [s for s in self.SIGNATURES if s in signatures]
        if not names or names[0] not in signatures:
            raise BadInput(
                f"backbone {handle}: "
                + (
                    f"no signature {signature!r}"
                    if signature
                    else f"not callable and no signature of {self.SIGNATURES}"
                )
                + f" (it has {sorted(signatures) or 'none'}; --backbone_signature picks one)"
            )
        fn = signatures[names[0]]
        inputs = fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise BadInput(
                f"backbone {handle}: signature {names[0]} must take one image, got {inputs}"
            )
        (name,) = inputs
        return lambda x: fn(**{name: x})

    def __call__(self, image) -> tf.Tensor:
        image = tf.convert_to_tensor(image, tf.uint8)
        size = resized_shape(tf.shape(image)[0], tf.shape(image)[1], self.min_side, self.max_side)
        x = tf.image.resize(tf.cast(image[None], tf.float32), size, antialias=True)
        out = self._fn(preprocess(tf.clip_by_value(x, 0.0, 255.0), self.preprocessing))
        if isinstance(out, dict):
            out = self._pick(out)
        if out.shape.rank == 2:
            raise BadInput(
                f"backbone {self.name}: gives a pooled feature vector {out.shape} (a TF Hub "
                "image feature_vector model); region features need a spatial map [1, h, w, "
                "channels]: name a rank-4 output with --backbone_output (TF1 Hub image modules "
                "have them in their image_feature_vector signature), or use a feature-map "
                "model or --backbone_app"
            )
        if out.shape.rank != 4 or out.shape[0] not in (1, None):
            raise BadInput(
                f"backbone {self.name}: must return [1, h, w, channels], got {out.shape}"
            )
        return tf.cast(out[0], tf.float32)

    def _pick(self, out: dict) -> tf.Tensor:
        maps = sorted(k for k, v in out.items() if v.shape.rank == 4)
        if self.output is not None:
            if self.output not in out:
                raise BadInput(
                    f"backbone {self.name}: no output {self.output!r} (--backbone_output); "
                    f"it has {sorted(out)}"
                )
            return out[self.output]
        if len(maps) == 1:
            return out[maps[0]]
        if not maps and len(out) == 1:
            return next(iter(out.values()))  # a rank-2 vector is refused by the caller
        if not maps:
            raise BadInput(f"backbone {self.name}: no rank-4 output among {sorted(out)}")
        raise BadInput(
            f"backbone {self.name}: several spatial outputs {maps}: pick one with --backbone_output"
        )


def _keras_app(name: str, weights: str | None):
    """A Keras application's feature extractor (a tf.function) and its preprocessing mode."""
    import keras

    if not weights:
        raise BadInput(f"--backbone_app={name} needs a local weights file (no downloads here)")
    if not os.path.isfile(weights):
        raise MissingInput(f"backbone weights {weights}: no such file")
    constructor = getattr(keras.applications, name, None)
    if constructor is None or not callable(constructor):
        raise BadInput(f"keras.applications has no model {name!r}")
    try:
        model = constructor(include_top=False, weights=weights, input_shape=(None, None, 3))
    except ValueError as err:
        raise BadInput(
            f"--backbone_weights={weights} do not fit {name} (include_top=False): {err}"
        ) from None
    own = importlib.import_module(constructor.__module__).preprocess_input

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32)])
    def features(images):
        return model(images, training=False)

    features.model = model  # keeps the weights alive with the function
    return features, _mode_of(own, name)


def _mode_of(fn, name: str) -> str:
    """Which `PREPROCESSING` mode a keras.applications `preprocess_input` is (by probing)."""
    probe = np.array([[[[0.0, 100.0, 255.0], [30.0, 60.0, 90.0]]]], np.float32)
    got = np.asarray(fn(probe.copy()))
    for mode in PREPROCESSING[1:]:
        if np.allclose(got, preprocess(tf.constant(probe), mode).numpy(), atol=1e-4):
            return mode
    raise BadInput(f"{name}: its preprocess_input is none of {PREPROCESSING[1:]}")


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
