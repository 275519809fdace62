"""An object detector from TF Hub (or a local SavedModel), and which of its boxes to keep.

`Detector` wraps `hub.load(handle)` for the TF2 Object Detection API SavedModel contract
that the TF Hub detectors (Faster R-CNN, SSD, CenterNet, EfficientDet) follow: uint8
`[1, height, width, 3]` in; a dict out with

- `detection_boxes`: float `[1, detections, 4]`, normalised **(ymin, xmin, ymax, xmax)**;
- `detection_scores`: float `[1, detections]`;
- `detection_classes`: float `[1, detections]` (optional here);
- `num_detections`: float `[1]`, the real rows (optional; default all rows);
- `detection_features`: float `[1, detections, dim]` or `[1, detections, h, w, dim]`
  (optional; few hub models have it; when present the regions' features come from it and
  no backbone is needed, `[h, w]` grids are averaged).

A model saved with only a `serving_default` signature (one image input) works too.
Boxes leave here as the dataset schema has them: (x1, y1, x2, y2) normalised, clipped to
the image.

`RegionPolicy` + `select_regions` pick the regions, as the bottom-up-attention features
did: class-agnostic non-maximum suppression, then a fixed K (36) or an adaptive count (the
boxes scoring at least a threshold, at least 10 and at most 100).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from absl import logging

from tfcap.errors import BadInput
from tfcap.features import handles

REQUIRED_OUTPUTS = ("detection_boxes", "detection_scores")


@dataclasses.dataclass(frozen=True)
class RegionPolicy:
    """How many regions an image gets.

    Attributes:
        kind: "fixed" (exactly `k` regions when the detector has that many boxes) or
            "adaptive" (the boxes scoring >= `threshold` after NMS, clamped to
            [`min_regions`, `max_regions`]).
        k: regions per image of the fixed policy.
        min_regions, max_regions: bounds of the adaptive policy.
        threshold: score a box needs to count for the adaptive policy.
        nms_iou: boxes overlapping a better one by more than this IoU are suppressed
            (class-agnostic); they only fill up when too few boxes survive.
    """

    kind: str = "fixed"
    k: int = 36
    min_regions: int = 10
    max_regions: int = 100
    threshold: float = 0.2
    nms_iou: float = 0.3

    def __post_init__(self):
        if self.kind not in ("fixed", "adaptive"):
            raise ValueError(f"region policy must be 'fixed' or 'adaptive', got {self.kind!r}")
        if self.k < 1 or not 1 <= self.min_regions <= self.max_regions:
            raise ValueError(
                f"need k >= 1 and 1 <= min_regions <= max_regions, got k={self.k}, "
                f"min={self.min_regions}, max={self.max_regions}"
            )
        if not 0.0 < self.nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {self.nms_iou}")

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"fixed {self.k}"
        return f"adaptive {self.min_regions}-{self.max_regions} (score >= {self.threshold})"


def select_regions(boxes: np.ndarray, scores: np.ndarray, policy: RegionPolicy) -> np.ndarray:
    """Indices of the regions to keep, best first.

    Args:
        boxes: float `[detections, 4]`, (x1, y1, x2, y2).
        scores: float `[detections]`.
        policy: the count rule.

    Returns:
        int64 `[regions]`: the NMS survivors by descending score, then (only if the policy
        needs more) the suppressed boxes by descending score.

    >>> boxes = np.array([[0, 0, 1, 1], [0, 0, 0.9, 1], [0, 0, 0.2, 0.2], [0.5, 0.5, 1, 1]])
    >>> scores = np.array([0.9, 0.8, 0.7, 0.1])
    >>> select_regions(boxes, scores, RegionPolicy("fixed", k=2)).tolist()
    [0, 2]
    >>> select_regions(boxes, scores, RegionPolicy("fixed", k=4)).tolist()
    [0, 2, 3, 1]
    >>> policy = RegionPolicy("adaptive", min_regions=1, max_regions=3, threshold=0.5)
    >>> select_regions(boxes, scores, policy).tolist()
    [0, 2]
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    if boxes.ndim != 2 or boxes.shape[1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"need boxes [n, 4] and scores [n], got {boxes.shape}, {scores.shape}")
    if not len(scores):
        return np.zeros([0], np.int64)
    ranked, survivors = ranked_regions(boxes, scores, policy.nms_iou)
    ranked = ranked.numpy().astype(np.int64)
    if policy.kind == "fixed":
        return ranked[: policy.k]
    confident = int(np.sum(scores[ranked[: int(survivors)]] >= policy.threshold))
    return ranked[: int(np.clip(confident, policy.min_regions, policy.max_regions))]


def ranked_regions(boxes, scores, nms_iou: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Class-agnostic NMS order: survivors by descending score, then the suppressed boxes.

    Pure TensorFlow (runs eagerly and in graphs).

    Args:
        boxes: float32 `[n, 4]`, (x1, y1, x2, y2).
        scores: float32 `[n]`.
        nms_iou: IoU above which a box is suppressed by a better one.

    Returns:
        int32 `[n]`, every index once, and the int32 number of NMS survivors (which come first).
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    n = tf.shape(scores)[0]
    kept = tf.image.non_max_suppression(
        tf.gather(boxes, [1, 0, 3, 2], axis=1), scores, max_output_size=n, iou_threshold=nms_iou
    )  # [survivors], by descending score
    is_kept = tf.scatter_nd(kept[:, None], tf.ones_like(kept), [n]) > 0  # [n]
    by_score = tf.argsort(-scores, stable=True)
    rest = tf.boolean_mask(by_score, ~tf.gather(is_kept, by_score))
    return tf.concat([kept, rest], axis=0), tf.size(kept)


@dataclasses.dataclass
class Detections:
    """One image's detections (padding rows removed).

    Attributes:
        boxes: float32 `[detections, 4]`, (x1, y1, x2, y2) in [0, 1].
        scores: float32 `[detections]`.
        classes: int64 `[detections]` (0 when the detector gives none).
        features: float32 `[detections, dim]` from `detection_features`, or None.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    features: np.ndarray | None = None

    def take(self, indices: np.ndarray) -> Detections:
        feats = None if self.features is None else self.features[indices]
        return Detections(self.boxes[indices], self.scores[indices], self.classes[indices], feats)


def load_detector(handle: str) -> tuple[Any, Callable[[tf.Tensor], dict]]:
    """`hub.load(handle)` and a function uint8 `[1, height, width, 3]` -> its output dict.

    The function works eagerly and inside `tf.function`; it converts the image to float32 in
    [0, 1] for models whose input is float, and calls a `serving_default` signature when the
    model itself is not callable.
    """
    model = handles.load(handle, "detector")
    if callable(model):
        fn, name, spec = model, None, _input_spec(model.__call__)
    elif "serving_default" in getattr(model, "signatures", {}):
        fn = model.signatures["serving_default"]
        inputs = fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise BadInput(f"{handle}: serving_default must take one image input, got {inputs}")
        ((name, spec),) = inputs.items()
    else:
        raise BadInput(f"{handle}: the SavedModel is neither callable nor has serving_default")
    float_input = spec is not None and spec.dtype.is_floating

    def detect(images: tf.Tensor) -> dict:
        x = tf.cast(images, tf.float32) / 255.0 if float_input else images
        out = fn(**{name: x}) if name else fn(x)
        missing = [k for k in REQUIRED_OUTPUTS if not isinstance(out, dict) or k not in out]
        if missing:
            raise BadInput(
                f"{handle}: detector outputs lack {missing} (has "
                f"{sorted(out) if isinstance(out, dict) else 'one tensor'}); a TF2 "
                "Object Detection API model is needed"
            )
        return out

    logging.info("Loaded detector %s (%s input)", handle, "float" if float_input else "uint8")
    return model, detect


def parse_outputs(out: dict) -> dict[str, tf.Tensor]:
    """The real rows of one image's detector outputs, boxes as (x1, y1, x2, y2).

    Pure TensorFlow (eager or in graphs).

    Args:
        out: the detector's dict for a batch of one (module docstring).

    Returns:
        `boxes` float32 `[n, 4]` clipped to [0, 1], `scores` float32 `[n]`, `classes` int64
        `[n]`, and `features` float32 `[n, dim]` when the detector gives them (grids averaged);
        rows past `num_detections` and rows with non-finite numbers are dropped.
    """
    boxes = tf.cast(out["detection_boxes"][0], tf.float32)  # [n, 4] ymin, xmin, ymax, xmax
    scores = tf.cast(out["detection_scores"][0], tf.float32)
    n = tf.shape(scores)[0]
    if "num_detections" in out:
        n = tf.minimum(n, tf.cast(tf.reshape(out["num_detections"], [-1])[0], tf.int32))
    boxes, scores = boxes[:n], scores[:n]
    good = tf.reduce_all(tf.math.is_finite(boxes), axis=1) & tf.math.is_finite(scores)
    ymin, xmin, ymax, xmax = tf.unstack(tf.clip_by_value(boxes, 0.0, 1.0), axis=1)
    xyxy = tf.stack(
        [
            tf.minimum(xmin, xmax),
            tf.minimum(ymin, ymax),
            tf.maximum(xmin, xmax),
            tf.maximum(ymin, ymax),
        ],
        axis=1,
    )
    parsed = {"boxes": xyxy, "scores": scores}
    classes = out.get("detection_classes")
    parsed["classes"] = (
        tf.zeros([n], tf.int64)
        if classes is None
        else tf.cast(tf.reshape(classes, [-1])[:n], tf.int64)
    )
    if "detection_features" in out:
        feats = tf.cast(out["detection_features"][0, :n], tf.float32)
        if feats.shape.rank == 4:  # [n, h, w, dim] grids: average over the grid
            feats = tf.reduce_mean(feats, axis=[1, 2])
        if feats.shape.rank != 2:
            raise ValueError(
                f"detection_features must be [1, n, dim] or [1, n, h, w, dim], got {feats.shape}"
            )
        parsed["features"] = feats
    return {k: tf.boolean_mask(v, good) for k, v in parsed.items()}


class Detector:
    """A TF Hub object detector (`hub.load`: a URL or a local SavedModel directory).

    Args:
        handle: e.g. "https://tfhub.dev/tensorflow/faster_rcnn/resnet101_v1_1024x1024/1" or
            a local directory holding `saved_model.pb`.

    Call arguments:
        image: uint8 `[height, width, 3]`.

    Returns:
        `Detections`, boxes converted to (x1, y1, x2, y2) and clipped to the image.
    """

    def __init__(self, handle: str):
        self.handle = handle
        self._model, self._detect = load_detector(handle)  # the model keeps its variables alive

    def __call__(self, image: np.ndarray) -> Detections:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"image must be uint8 [height, width, 3], got {image.dtype} {image.shape}"
            )
        parsed = {
            k: v.numpy() for k, v in parse_outputs(self._detect(tf.constant(image[None]))).items()
        }
        return Detections(
            parsed["boxes"], parsed["scores"], parsed["classes"], parsed.get("features")
        )


def _input_spec(fn) -> tf.TensorSpec | None:
    """The image input's TensorSpec of a restored function, if it can be read."""
    try:
        args = fn.concrete_functions[0].structured_input_signature[0]
        return args[0] if args and isinstance(args[0], tf.TensorSpec) else None
    except (AttributeError, IndexError):
        return None


class RegionExtractor(tf.Module):
    """One image's regions in-graph, with a fixed count: for serving graphs (`export/`).

    The fixed policy of `tfcap.features.source.Extractor` as TensorFlow ops with static
    output shapes: the detector, class-agnostic NMS order (`ranked_regions`), the first
    `max_regions`, and their features from `detection_features` or ROI-pooled from a SavedModel
    backbone (`pooling.Backbone`; Keras applications are not supported here). The loaded
    models are tracked, so saving the module saves them. Images are decoded by the caller
    (no EXIF orientation in a serving graph).

    Call arguments:
        image: uint8 `[height, width, 3]`.

    Returns:
        `features` float32 `[max_regions, dim]`, `boxes` float32 `[max_regions, 4]`
        (x1, y1, x2, y2 in [0, 1]), `num_regions` int32 `[]`; rows past `num_regions` are 0.
    """

    def __init__(
        self,
        handle: str,
        max_regions: int = 36,
        backbone_handle: str | None = None,
        min_side: int = 600,
        max_side: int = 1000,
        pool_size: int = 7,
        nms_iou: float = 0.3,
    ):
        from tfcap.features import pooling

        super().__init__(name="region_extractor")
        self.detector_model, self._detect = load_detector(handle)
        self.max_regions, self.pool_size, self.nms_iou = max_regions, pool_size, nms_iou
        probe = tf.zeros([32, 32, 3], tf.uint8)
        parsed = parse_outputs(self._detect(probe[None]))
        self._backbone = None
        if "features" in parsed:
            self.feature_dim = int(parsed["features"].shape[-1])
        elif backbone_handle:
            self._backbone = pooling.Backbone(backbone_handle, min_side=min_side, max_side=max_side)
            self.backbone_model = self._backbone.model  # tracked: saved with the module
            self.feature_dim = int(self._backbone(probe).shape[-1])
        else:
            raise BadInput(f"{handle} gives no detection_features: a backbone handle is needed")

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def __call__(self, image):
        parsed = parse_outputs(self._detect(image[None]))
        ranked, _ = ranked_regions(parsed["boxes"], parsed["scores"], self.nms_iou)
        chosen = ranked[: self.max_regions]
        count = tf.size(chosen)
        boxes = tf.gather(parsed["boxes"], chosen)  # [count, 4]
        if self._backbone is None:
            feats = tf.gather(parsed["features"], chosen)
        else:
            feature_map = self._backbone(image)[None]  # [1, h, w, channels]
            crops = tf.image.crop_and_resize(
                feature_map,
                tf.gather(boxes, [1, 0, 3, 2], axis=1),
                tf.zeros([count], tf.int32),
                [self.pool_size, self.pool_size],
            )
            feats = tf.reduce_mean(crops, axis=[1, 2])  # [count, channels]
        pad = [[0, self.max_regions - count], [0, 0]]
        return {
            "features": tf.ensure_shape(tf.pad(feats, pad), [self.max_regions, self.feature_dim]),
            "boxes": tf.ensure_shape(tf.pad(boxes, pad), [self.max_regions, 4]),
            "num_regions": tf.cast(count, tf.int32),
        }


def region_extractor(handle: str, max_regions: int = 36, **kwargs) -> RegionExtractor:
    """A `RegionExtractor` (the hook `export.saved_model` calls for `serving_default`)."""
    return RegionExtractor(handle, max_regions, **kwargs)
