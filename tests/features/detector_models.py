"""Small detectors with the public signatures, random weights, built and saved by the tests.

One two-stage network (`TwoStage`: a strided convolution, 300 proposals ranked by an
objectness head over a fixed anchor grid, a second stage that crop-and-resizes each proposal
and predicts 91-way softmax scores and per-class box refinements, then per-class NMS at 0.6 and
the best 100, as a Faster R-CNN of the TF2 Object Detection API does) behind the contracts of
`tfcap/features/detector.py`, exactly as the exporters publish them:

- `ZooDetector`: the TF2 Detection Zoo / `exporter_lib_v2.DetectionFromImageModule` export:
  callable and `serving_default`, input `input_tensor` uint8 `[1, None, None, 3]`
  (`float_image_tensor`: float32, 0-255); outputs, all float32: `num_detections` `[1]`,
  `detection_boxes` `[1, 100, 4]`, `detection_scores`, `detection_classes`,
  `detection_anchor_indices` `[1, 100]`, `detection_multiclass_scores` `[1, 100, 91]`,
  `raw_detection_boxes` `[1, 300, 4]`, `raw_detection_scores` `[1, 300, 91]`. No
  `detection_features`.
- `Tf1HubDetector`: the TF1 Hub `default` signature of
  `google/faster_rcnn/openimages_v4/inception_resnet_v2`: not callable, input `images` float32
  `[1, None, None, 3]` in [0, 1]; unbatched `detection_boxes` `[100, 4]`, `detection_scores`,
  `detection_class_labels` int64, `detection_class_entities` and `detection_class_names`
  strings `[100]`.

Both run the same network on the same pixels, so their detections must agree. `save(kind, path)`
writes one (`KINDS`).
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import tensorflow as tf

PROPOSALS = 300
CLASSES = 90  # + background = 91 score columns
DETECTIONS = 100
SECOND_STAGE_NMS = 0.6  # the OD API Faster R-CNN configs' second-stage iou_threshold


def _anchors() -> np.ndarray:
    """float32 `[anchors, 4]` (ymin, xmin, ymax, xmax): a grid at four sizes and two shapes."""
    boxes = []
    for size, steps in ((0.15, 12), (0.3, 9), (0.5, 6), (0.75, 4)):
        for aspect in (0.7, 1.4):
            h, w = size * np.sqrt(aspect), size / np.sqrt(aspect)
            for cy, cx in itertools.product(np.linspace(0.1, 0.9, steps), repeat=2):
                boxes.append((cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2))
    return np.clip(np.asarray(boxes, np.float32), 0.0, 1.0)  # 2 * (144 + 81 + 36 + 16) = 554


def _decode(boxes, deltas):
    """Faster R-CNN's box coder: centre/size offsets per class, clipped to the image."""
    cy, cx = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    h, w = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    dy, dx, dh, dw = tf.unstack(tf.tanh(deltas) * [0.1, 0.1, 0.2, 0.2], axis=-1)  # [300, 90]
    cy, cx = cy[:, None] + dy * h[:, None], cx[:, None] + dx * w[:, None]
    h, w = h[:, None] * tf.exp(dh), w[:, None] * tf.exp(dw)
    corners = tf.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], axis=-1)
    return tf.clip_by_value(corners, 0.0, 1.0)


class TwoStage(tf.Module):
    """float32 0-255 `[1, h, w, 3]` -> the OD API Faster R-CNN output dict (module docstring)."""

    def __init__(self, seed: int = 0, channels: int = 12):
        super().__init__()
        rng = np.random.default_rng(seed)

        def var(shape, scale):
            return tf.Variable(rng.normal(0, scale, shape).astype(np.float32))

        self.anchors = tf.constant(_anchors())
        self.conv = var([3, 3, 3, channels], 0.5)
        self.objectness = var([channels * 4], 1.0)
        self.cls = var([channels * 4, CLASSES + 1], 0.2)  # best scores ~0.03-0.4
        self.box = var([channels * 4, CLASSES * 4], 0.5)

    def _features(self, images):
        x = tf.image.resize(images / 127.5 - 1.0, [96, 96])  # [1, 96, 96, 3]
        return tf.nn.relu(tf.nn.conv2d(x, self.conv, 4, "SAME"))  # [1, 24, 24, channels]

    def _pooled(self, fmap, boxes):
        crops = tf.image.crop_and_resize(
            fmap, boxes, tf.zeros([tf.shape(boxes)[0]], tf.int32), [2, 2]
        )
        return tf.reshape(crops, [tf.shape(boxes)[0], -1])  # [boxes, channels * 4]

    def __call__(self, images):
        fmap = self._features(tf.cast(images, tf.float32))
        anchor_feats = self._pooled(fmap, self.anchors)
        objectness = tf.linalg.matvec(anchor_feats, self.objectness)
        proposals = tf.gather(self.anchors, tf.math.top_k(objectness, PROPOSALS).indices)
        feats = self._pooled(fmap, proposals)  # [300, channels * 4]
        scores = tf.nn.softmax(tf.matmul(feats, self.cls))  # [300, 91], column 0 background
        deltas = tf.reshape(tf.matmul(feats, self.box), [PROPOSALS, CLASSES, 4])
        refined = _decode(proposals, deltas)  # [300, 90, 4]
        best = tf.argmax(scores[:, 1:], axis=1)
        raw_boxes = tf.gather(refined, best, batch_dims=1)  # [300, 4]

        def per_class(c):
            kept = tf.image.non_max_suppression_padded(
                refined[:, c], scores[:, c + 1], DETECTIONS, SECOND_STAGE_NMS,
                pad_to_max_output_size=True,
            )  # fmt: skip
            idx, valid = kept
            real = tf.range(DETECTIONS) < valid
            return tf.where(real, idx, -1)

        kept = tf.map_fn(per_class, tf.range(CLASSES), fn_output_signature=tf.int32)  # [90, 100]
        cls_of = tf.repeat(tf.range(CLASSES), DETECTIONS)
        idx = tf.reshape(kept, [-1])
        cand = tf.where(
            idx >= 0, tf.gather_nd(scores, tf.stack([tf.maximum(idx, 0), cls_of + 1], 1)), -1.0
        )
        top = tf.math.top_k(cand, DETECTIONS)
        valid = top.values >= 0
        rows, classes = tf.gather(tf.maximum(idx, 0), top.indices), tf.gather(cls_of, top.indices)
        mask = tf.cast(valid, tf.float32)
        boxes = tf.gather_nd(refined, tf.stack([rows, classes], 1)) * mask[:, None]
        return {
            "num_detections": tf.reduce_sum(mask)[None],
            "detection_boxes": boxes[None],
            "detection_scores": (tf.maximum(top.values, 0.0) * mask)[None],
            "detection_classes": ((tf.cast(classes, tf.float32) + 1.0) * mask)[None],
            "detection_anchor_indices": (tf.cast(rows, tf.float32) * mask)[None],
            "detection_multiclass_scores": (tf.gather(scores, rows) * mask[:, None])[None],
            "raw_detection_boxes": raw_boxes[None],
            "raw_detection_scores": scores[None],
        }


class ZooDetector(tf.Module):
    """`exporter_lib_v2`'s `image_tensor` (uint8) or `float_image_tensor` (float32 0-255) export."""

    def __init__(self, float_input: bool = False, seed: int = 0):
        super().__init__()
        self.net = TwoStage(seed)
        dtype = tf.float32 if float_input else tf.uint8
        self.__call__ = tf.function(
            self._run, input_signature=[tf.TensorSpec([1, None, None, 3], dtype)]
        )

    def _run(self, input_tensor):
        return self.net(tf.cast(input_tensor, tf.float32))


class Tf1HubDetector(tf.Module):
    """The TF1 Hub openimages `default` signature: float [0, 1] in, unbatched out."""

    def __init__(self, seed: int = 0):
        super().__init__()
        self.net = TwoStage(seed)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 3], tf.float32, name="images")])
    def default(self, images):
        out = self.net(tf.round(images * 255.0))  # the same pixels as the uint8 export sees
        labels = tf.cast(out["detection_classes"][0], tf.int64)
        entities = tf.strings.join(["/m/", tf.strings.as_string(labels)])
        return {
            "detection_boxes": out["detection_boxes"][0],
            "detection_scores": out["detection_scores"][0],
            "detection_class_labels": labels,
            "detection_class_entities": entities,
            "detection_class_names": tf.strings.join(["class ", tf.strings.as_string(labels)]),
        }


KINDS = ("zoo", "zoo_float", "tf1_hub")


def save(kind: str, path: str | os.PathLike) -> str:
    """Saves detector `kind` (`KINDS`) at `path` with its published signatures (reused if there)."""
    path = str(path)
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    if kind == "tf1_hub":
        module = Tf1HubDetector()
        signatures = {"default": module.default.get_concrete_function()}
    else:
        module = ZooDetector(float_input=kind == "zoo_float")
        signatures = {"serving_default": module.__call__.get_concrete_function()}
    tmp = f"{path}.tmp{os.getpid()}"
    tf.saved_model.save(module, tmp, signatures=signatures)
    os.replace(tmp, path)
    return path


def save_all(root: str | os.PathLike) -> dict[str, str]:
    return {kind: save(kind, os.path.join(root, kind)) for kind in KINDS}
