"""An object detector (TF Hub handle or local SavedModel), and which of its boxes to keep.

`load_detector` reads the three public detector contracts (as published; tests build
SavedModels with exactly these signatures, tests/features/detector_models.py):

- **TF2 Object Detection API** exports (the TF2 Detection Zoo, TF Hub
  `tensorflow/faster_rcnn/resnet101_v1_640x640/1` and kin): a callable (and `serving_default`,
  input `input_tensor`) taking `[1, height, width, 3]`: uint8 for `image_tensor` exports, float32
  **0-255** for `float_image_tensor` exports (the pixel values, not divided by 255). Out, all
  float32 and batched: `num_detections` `[1]`, `detection_boxes` `[1, 100, 4]` normalised
  (ymin, xmin, ymax, xmax), `detection_scores`, `detection_classes` (1-based) `[1, 100]`,
  `detection_multiclass_scores` `[1, 100, 91]`, `detection_anchor_indices` `[1, 100]`, and the
  second stage before NMS: `raw_detection_boxes` `[1, 300, 4]` (one box per proposal, refined
  for its best class, normalised and clipped) and `raw_detection_scores` `[1, 300, 91]` (softmax,
  column 0 the background). `detection_features` only from a self-made export with
  `output_final_box_features: true`: `[1, 100, dim]` or `[1, 100, h, w, dim]` (grids averaged).
- **TF1 Hub modules** (`google/faster_rcnn/openimages_v4/inception_resnet_v2/1`, the
  openimages SSD): not callable; `signatures["default"]` takes `images` float32
  `[1, height, width, 3]` in **[0, 1]** and returns *unbatched* `detection_boxes` `[n, 4]`,
  `detection_scores` `[n]`, `detection_class_labels` int64 `[n]`, `detection_class_entities` and
  `detection_class_names` strings `[n]`. No proposals before NMS.
- **official.vision** exports (tf-models-official `export_saved_model`, Faster R-CNN / RetinaNet):
  `serving_default` with `inputs` uint8 `[batch, height, width, 3]`; `detection_boxes` in pixels of
  the resized input, `image_info` `[batch, 4, 2]` (original size, resized size, scale, offset),
  int32 `num_detections` and `detection_classes`; exported with `apply_nms=False` instead
  `decoded_boxes` `[batch, proposals, classes, 4]` and `decoded_box_scores`
  `[batch, proposals, classes]` (background removed). Boxes whose largest value is at most 1
  are taken as normalised already (RetinaNet's `output_normalized_coordinates`).

`parse_outputs` turns any of them into one image's rows, boxes as the dataset schema has them:
(x1, y1, x2, y2) normalised and clipped to the image.

`choose_regions` (tfcap/features/regions.py) picks the regions of `parse_outputs`' rows by a
`RegionPolicy`: from the proposals before NMS when the detector has them, else from its final
detections.
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
from tfcap.features.regions import RegionPolicy, choose_regions

FLOAT_INPUTS = ("auto", "0-255", "0-1")
# Signature names tried, in order, on a SavedModel that is not callable.
SIGNATURES = ("serving_default", "default")


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


def load_detector(
    handle: str, float_input: str = "auto"
) -> tuple[Any, Callable[[tf.Tensor], dict], dict[str, str]]:
    """`hub.load(handle)` and a function uint8 `[1, height, width, 3]` -> its output dict.

    Args:
        handle: TF Hub URL or local SavedModel directory.
        float_input: for a model whose input is float: "0-255" feeds the pixel values (TF2 OD
            API `float_image_tensor`, official.vision), "0-1" divides by 255 (TF1 Hub modules);
            "auto" is "0-1" for a `default` signature (the TF1 Hub convention), else "0-255".

    Returns:
        the loaded object (keep it: it owns the variables), the function (eager or inside
        `tf.function`), and a description: `contract` (callable / signature name), `input` dtype
        and `float_input` as used.
    """
    if float_input not in FLOAT_INPUTS:
        raise BadInput(f"detector float input must be one of {FLOAT_INPUTS}, got {float_input!r}")
    model = handles.load(handle, "detector")
    signatures = getattr(model, "signatures", {})
    if callable(model):
        fn, name, spec, contract = model, None, _input_spec(model.__call__), "callable"
    else:
        found = [s for s in SIGNATURES if s in signatures]
        if not found:
            raise BadInput(
                f"{handle}: the detector SavedModel is not callable and has no "
                f"{' or '.join(SIGNATURES)} signature (it has {sorted(signatures) or 'none'})"
            )
        contract = found[0]
        fn = signatures[contract]
        inputs = fn.structured_input_signature[1]
        if len(inputs) != 1:
            raise BadInput(
                f"{handle}: signature {contract} must take one image input, got {inputs}"
            )
        ((name, spec),) = inputs.items()
    is_float = spec is not None and spec.dtype.is_floating
    if float_input == "auto":
        float_input = "0-1" if contract == "default" else "0-255"
    dtype = spec.dtype if spec is not None else tf.uint8

    def detect(images: tf.Tensor) -> dict:
        x = images
        if is_float:
            x = tf.cast(images, dtype)
            if float_input == "0-1":
                x = x / 255.0
        out = fn(**{name: x}) if name else fn(x)
        if not isinstance(out, dict) or not (
            {"detection_boxes", "detection_scores"} <= out.keys()
            or {"decoded_boxes", "decoded_box_scores"} <= out.keys()
        ):
            raise BadInput(
                f"{handle}: detector outputs lack detection_boxes and detection_scores (has "
                f"{sorted(out) if isinstance(out, dict) else 'one tensor'}); a TF2 Object "
                "Detection API, TF1 Hub detector or official.vision export is needed"
            )
        return out

    about = {
        "contract": contract,
        "input": dtype.name,
        "float_input": float_input if is_float else "n/a",
    }
    logging.info("Loaded detector %s (%s)", handle, about)
    return model, detect, about


def _first(t: tf.Tensor, batched: bool) -> tf.Tensor:
    return t[0] if batched else t


def _xyxy(yx_boxes: tf.Tensor) -> tf.Tensor:
    """(ymin, xmin, ymax, xmax) `[..., 4]` -> (x1, y1, x2, y2) clipped to [0, 1], ordered."""
    ymin, xmin, ymax, xmax = tf.unstack(tf.clip_by_value(yx_boxes, 0.0, 1.0), axis=-1)
    return tf.stack(
        [
            tf.minimum(xmin, xmax),
            tf.minimum(ymin, ymax),
            tf.maximum(xmin, xmax),
            tf.maximum(ymin, ymax),
        ],
        axis=-1,
    )


def parse_outputs(out: dict) -> dict[str, tf.Tensor]:
    """One image's rows of a detector's outputs (any contract of the module docstring).

    Pure TensorFlow (eager or in graphs).

    Returns:
        final detections, when the detector gives them: `boxes` float32 `[n, 4]` (x1, y1, x2, y2)
        in [0, 1], `scores` float32 `[n]`, `classes` int64 `[n]`, and `features` float32
        `[n, dim]` (grids averaged); rows past `num_detections` and rows with non-finite numbers
        are dropped. Proposals before NMS, when it gives them: `raw_boxes` float32 `[r, 4]` and
        `raw_scores` float32 `[r, classes]` (no background column), non-finite rows dropped.
    """
    parsed: dict[str, tf.Tensor] = {}
    to_unit = None
    if "image_info" in out:  # official.vision: pixels of the resized input
        info = tf.cast(out["image_info"][0], tf.float32)  # [4, 2]
        scale = tf.tile(info[2], [2]) * tf.tile(info[0], [2])  # y, x, y, x

        def to_unit(b):  # RetinaNet's output_normalized_coordinates are in [0, 1] already
            largest = tf.reduce_max(tf.concat([tf.reshape(b, [-1]), [0.0]], 0))
            return tf.cond(largest > 1.0, lambda: b / scale, lambda: b)

    if "detection_boxes" in out:
        batched = out["detection_boxes"].shape.rank == 3
        boxes = tf.cast(_first(out["detection_boxes"], batched), tf.float32)
        if to_unit is not None:
            boxes = to_unit(boxes)
        scores = tf.cast(_first(out["detection_scores"], batched), tf.float32)
        n = tf.shape(scores)[0]
        if "num_detections" in out:
            n = tf.minimum(n, tf.cast(tf.reshape(out["num_detections"], [-1])[0], tf.int32))
        classes = out.get("detection_classes", out.get("detection_class_labels"))
        rows = {
            "boxes": _xyxy(boxes[:n]),
            "scores": scores[:n],
            "classes": (
                tf.zeros([n], tf.int64)
                if classes is None
                else tf.cast(_first(classes, batched)[:n], tf.int64)
            ),
        }
        if "detection_features" in out:
            feats = tf.cast(_first(out["detection_features"], batched)[:n], tf.float32)
            if feats.shape.rank == 4:  # [n, h, w, dim] grids: average over the grid
                feats = tf.reduce_mean(feats, axis=[1, 2])
            if feats.shape.rank != 2:
                raise ValueError(
                    "detection_features must be [1, n, dim] or [1, n, h, w, dim], got "
                    f"{feats.shape}"
                )
            rows["features"] = feats
        good = tf.reduce_all(tf.math.is_finite(rows["boxes"]), axis=1) & tf.math.is_finite(
            rows["scores"]
        )
        parsed.update({k: tf.boolean_mask(v, good) for k, v in rows.items()})
    raw = None
    if "raw_detection_boxes" in out and "raw_detection_scores" in out:  # TF2 OD API
        raw_scores = tf.cast(out["raw_detection_scores"][0], tf.float32)[:, 1:]  # no background
        raw = (tf.cast(out["raw_detection_boxes"][0], tf.float32), raw_scores)
    elif "decoded_boxes" in out:  # official.vision with apply_nms=False
        per_class = tf.cast(out["decoded_boxes"][0], tf.float32)  # [r, classes or 1, 4]
        raw_scores = tf.cast(out["decoded_box_scores"][0], tf.float32)  # [r, classes]
        best = tf.argmax(raw_scores, axis=1) if per_class.shape[1] != 1 else None
        boxes = per_class[:, 0] if best is None else tf.gather(per_class, best, batch_dims=1)
        raw = (to_unit(boxes) if to_unit is not None else boxes, raw_scores)
    if raw is not None:
        boxes, scores = _xyxy(raw[0]), raw[1]
        good = tf.reduce_all(tf.math.is_finite(boxes), axis=1) & tf.reduce_all(
            tf.math.is_finite(scores), axis=1
        )
        parsed["raw_boxes"] = tf.boolean_mask(boxes, good)
        parsed["raw_scores"] = tf.boolean_mask(scores, good)
        if "boxes" not in parsed:  # only proposals: each one's best class stands for it
            parsed["boxes"] = parsed["raw_boxes"]
            parsed["scores"] = tf.reduce_max(parsed["raw_scores"], axis=1)
            parsed["classes"] = tf.argmax(parsed["raw_scores"], axis=1) + 1
    return parsed


class Detector:
    """A detector of any contract in the module docstring.

    Args:
        handle: e.g. "https://tfhub.dev/tensorflow/faster_rcnn/resnet101_v1_1024x1024/1" or
            a local directory holding `saved_model.pb`.
        float_input: see `load_detector`.

    Call arguments:
        image: uint8 `[height, width, 3]`.

    Returns:
        `Detections`: every final detection (proposals' best classes when the detector gives
        only proposals), boxes as (x1, y1, x2, y2) clipped to the image. `regions` gives the
        chosen ones.
    """

    def __init__(self, handle: str, float_input: str = "auto"):
        self.handle = handle
        self.model, self._detect, self.about = load_detector(handle, float_input)
        self._regions_fns: dict[RegionPolicy, Any] = {}

    def outputs(self, image: tf.Tensor) -> dict[str, tf.Tensor]:
        """`parse_outputs` of uint8 `[height, width, 3]` (TensorFlow ops: graphs too)."""
        return parse_outputs(self._detect(image[None]))

    def regions_graph(self, image: tf.Tensor, policy: RegionPolicy) -> dict[str, tf.Tensor]:
        """`choose_regions` of uint8 `[height, width, 3]` (TensorFlow ops: graphs too)."""
        return choose_regions(self.outputs(image), policy)

    def __call__(self, image: np.ndarray) -> Detections:
        parsed = {k: v.numpy() for k, v in self.outputs(tf.constant(_checked(image))).items()}
        return Detections(
            parsed["boxes"], parsed["scores"], parsed["classes"], parsed.get("features")
        )

    def regions(self, image: np.ndarray, policy: RegionPolicy) -> Detections:
        """The chosen regions of one image (`choose_regions`), best first."""
        if policy not in self._regions_fns:
            self._regions_fns[policy] = tf.function(
                lambda x: self.regions_graph(x, policy),
                input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)],
            )
        out = {
            k: v.numpy() for k, v in self._regions_fns[policy](tf.constant(_checked(image))).items()
        }
        return Detections(out["boxes"], out["scores"], out["classes"], out.get("features"))


def _checked(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [height, width, 3], got {image.dtype} {image.shape}")
    return image


def _input_spec(fn) -> tf.TensorSpec | None:
    """The image input's TensorSpec of a restored function, if it can be read."""
    try:
        args = fn.concrete_functions[0].structured_input_signature[0]
        return args[0] if args and isinstance(args[0], tf.TensorSpec) else None
    except (AttributeError, IndexError):
        return None


def region_extractor(handle: str, max_regions: int = 36, **kwargs):
    """A fixed-`max_regions` `tfcap.features.serving.RegionExtractor` of `handle`; `kwargs` are
    `tfcap.features.source.ExtractorConfig` fields (`backbone_handle`, `min_side`, ...)."""
    from tfcap.features import serving, source

    nms_iou = kwargs.pop("nms_iou", 0.3)
    policy = RegionPolicy("fixed", k=max_regions, nms_iou=nms_iou)
    return serving.RegionExtractor(source.ExtractorConfig(handle, policy=policy, **kwargs))
