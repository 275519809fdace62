"""Which of a detector's boxes become regions, and how many.

`choose_regions` picks the regions (`RegionPolicy`):

- **From the proposals before NMS** (`raw_detection_*`, `decoded_box*`), as bottom-up-attention's
  `generate_tsv.py` does: for every class, NMS at `nms_iou` (0.3) over the proposals with that
  class's scores; a proposal's confidence is its best score among the classes whose NMS it
  survives (0 when it survives none); adaptive keeps the proposals with confidence >=
  `threshold` (0.2), clamped to [`min_regions`, `max_regions`] (10-100), fixed the best `k` (36).
  Rows are proposals, each at most once, best first. Two differences from the Caffe code: the box
  of a row is the detector's raw box (the OD API refines each proposal for its best class; BUTD
  kept the unrefined proposal), and when fewer proposals than the minimum survive any class's
  NMS, fewer rows come out (BUTD filled up with proposals suppressed in every class).
- **From the final detections** when the detector has no proposals before NMS (TF1 Hub modules,
  official.vision with NMS, SSDs without raw outputs) or when its `detection_features` are used
  (they exist for final detections only): the detector's own per-class NMS has run and the same
  object can appear once per class, so class-agnostic NMS at `nms_iou` collapses those rows; the
  survivors rank by score and the same fixed/adaptive count applies.

Never a duplicate or suppressed row: when too few boxes qualify, fewer rows come out, and fixed-
shape consumers (`RegionExtractor`) pad by masking (`num_regions`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class RegionPolicy:
    """How many regions an image gets (module docstring: which ones).

    Attributes:
        kind: "fixed" (the best `k`) or "adaptive" (confidence >= `threshold`, clamped to
            [`min_regions`, `max_regions`]).
        k: regions per image of the fixed policy.
        min_regions, max_regions: bounds of the adaptive policy.
        threshold: confidence a region needs to count for the adaptive policy.
        nms_iou: NMS IoU threshold: per class over the proposals, or class-agnostic over final
            detections.
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

    @property
    def max_count(self) -> int:
        """The most regions an image can get."""
        return self.k if self.kind == "fixed" else self.max_regions

    def describe(self) -> str:
        if self.kind == "fixed":
            return f"fixed {self.k}"
        return f"adaptive {self.min_regions}-{self.max_regions} (score >= {self.threshold})"


def _best_first(conf, candidate, policy: RegionPolicy) -> tf.Tensor:
    """int32 `[count]`: candidates by descending `conf`, as many as `policy` wants."""
    ranked = tf.where(candidate, conf, -np.inf)
    order = tf.argsort(-ranked, stable=True)
    available = tf.reduce_sum(tf.cast(candidate, tf.int32))
    if policy.kind == "fixed":
        count = tf.minimum(policy.k, available)
    else:
        confident = tf.reduce_sum(tf.cast(candidate & (conf >= policy.threshold), tf.int32))
        count = tf.minimum(
            tf.clip_by_value(confident, policy.min_regions, policy.max_regions), available
        )
    return order[:count]


def class_agnostic_survivors(boxes, scores, nms_iou: float) -> tf.Tensor:
    """bool `[n]`: the boxes that survive class-agnostic NMS (boxes (x1, y1, x2, y2))."""
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    scores = tf.convert_to_tensor(scores, tf.float32)
    n = tf.shape(scores)[0]
    kept = tf.image.non_max_suppression(
        tf.gather(boxes, [1, 0, 3, 2], axis=1), scores, max_output_size=n, iou_threshold=nms_iou
    )
    return tf.scatter_nd(kept[:, None], tf.ones_like(kept), [n]) > 0


def proposal_confidence(boxes, class_scores, nms_iou: float) -> tuple[tf.Tensor, tf.Tensor]:
    """Bottom-up-attention's `max_conf`: per proposal, its best score among the classes whose
    NMS it survives.

    Pure TensorFlow (eager or in graphs).

    Args:
        boxes: float32 `[proposals, 4]`, (x1, y1, x2, y2).
        class_scores: float32 `[proposals, classes]`, no background column.
        nms_iou: the per-class NMS threshold.

    Returns:
        float32 `[proposals]` confidence (0 where the proposal survives no class) and int64
        `[proposals]` the column giving it.
    """
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    by_class = tf.transpose(tf.convert_to_tensor(class_scores, tf.float32))  # [classes, proposals]
    yx = tf.gather(boxes, [1, 0, 3, 2], axis=1)
    n = tf.shape(boxes)[0]

    def survivors(scores):
        kept = tf.image.non_max_suppression(yx, scores, max_output_size=n, iou_threshold=nms_iou)
        return tf.scatter_nd(kept[:, None], tf.ones_like(kept), [n]) > 0

    kept = tf.map_fn(survivors, by_class, fn_output_signature=tf.TensorSpec([None], tf.bool))
    conf = tf.where(kept, by_class, 0.0)  # [classes, proposals]
    return tf.reduce_max(conf, axis=0), tf.argmax(conf, axis=0)


def choose_regions(parsed: dict[str, tf.Tensor], policy: RegionPolicy) -> dict[str, tf.Tensor]:
    """The regions of one image (module docstring), best first. Pure TensorFlow.

    Args:
        parsed: `parse_outputs` of the image.
        policy: the count rule.

    Returns:
        `boxes` float32 `[regions, 4]`, `scores` float32 `[regions]` (the confidence), `classes`
        int64 `[regions]` (1-based), `features` float32 `[regions, dim]` when the detector gave
        them, and `from_proposals` bool `[]`.
    """
    if "raw_boxes" in parsed and "features" not in parsed:
        conf, column = proposal_confidence(
            parsed["raw_boxes"], parsed["raw_scores"], policy.nms_iou
        )
        chosen = _best_first(conf, conf > 0, policy)
        return {
            "boxes": tf.gather(parsed["raw_boxes"], chosen),
            "scores": tf.gather(conf, chosen),
            "classes": tf.gather(column, chosen) + 1,
            "from_proposals": tf.constant(True),
        }
    survivors = class_agnostic_survivors(parsed["boxes"], parsed["scores"], policy.nms_iou)
    chosen = _best_first(parsed["scores"], survivors, policy)
    out = {
        k: tf.gather(parsed[k], chosen)
        for k in ("boxes", "scores", "classes", "features")
        if k in parsed
    }
    out["from_proposals"] = tf.constant(False)
    return out


def select_regions(boxes: np.ndarray, scores: np.ndarray, policy: RegionPolicy) -> np.ndarray:
    """Indices of the final detections `choose_regions` keeps (no proposals), best first.

    Args:
        boxes: float `[detections, 4]`, (x1, y1, x2, y2).
        scores: float `[detections]`.
        policy: the count rule.

    Returns:
        int64 `[regions]`: class-agnostic NMS survivors by descending score; never a suppressed box.

    >>> boxes = np.array([[0, 0, 1, 1], [0, 0, 0.9, 1], [0, 0, 0.2, 0.2], [0.5, 0.5, 1, 1]])
    >>> scores = np.array([0.9, 0.8, 0.7, 0.1])
    >>> select_regions(boxes, scores, RegionPolicy("fixed", k=2)).tolist()
    [0, 2]
    >>> select_regions(boxes, scores, RegionPolicy("fixed", k=4)).tolist()  # 1 is suppressed
    [0, 2, 3]
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
    survivors = class_agnostic_survivors(boxes, scores, policy.nms_iou)
    return _best_first(tf.constant(scores), survivors, policy).numpy().astype(np.int64)
