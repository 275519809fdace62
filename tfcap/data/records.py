"""The TFRecord schema: one `tf.train.Example` per image.

Keys (DESIGN.md, "TFRecord schema"):

- `image/id`, `image/width`, `image/height`: int64.
- `regions/count`: int64 N.
- `regions/boxes`: N*4 floats, (x1, y1, x2, y2) normalised to [0, 1].
- `regions/features`: one bytes value, the raw N*D array in the dataset's
  feature dtype (float16 or float32, little-endian; recorded in dataset.json).
- `caption/text`: bytes list, every reference caption as written.
- `caption/ids`: flattened int64 token ids of every caption (no <bos>/<eos>).
- `caption/lengths`: int64 token count of each caption, so `caption/ids`
  splits back into the captions.

`ImageRecord` is the in-memory form every reader (shapes, bottom-up TSV,
detector) produces and `to_example` serializes.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 1
FEATURE_DTYPES = ("float16", "float32")


@dataclasses.dataclass
class ImageRecord:
    """One image with its regions and captions.

    Attributes:
        image_id: COCO-style integer id.
        width, height: image size in pixels.
        boxes: float32 `[regions, 4]`, (x1, y1, x2, y2) normalised to [0, 1].
        features: float `[regions, dim]`.
        captions: reference captions as written (may be empty).
    """

    image_id: int
    width: int
    height: int
    boxes: np.ndarray
    features: np.ndarray
    captions: list[str] = dataclasses.field(default_factory=list)

    def problem(self) -> str | None:
        """What is wrong with the arrays ("reason: detail"), or None."""
        boxes, feats = np.asarray(self.boxes), np.asarray(self.features)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            return f"bad boxes: must be [regions, 4], got shape {boxes.shape}"
        if feats.ndim != 2 or feats.shape[0] != boxes.shape[0]:
            return (
                f"bad features: must be [regions, dim] with {boxes.shape[0]} regions, "
                f"got shape {feats.shape}"
            )
        if boxes.shape[0] == 0:
            return "no regions: an image needs at least one region"
        if not np.all(np.isfinite(feats)):
            return "non-finite features: NaN or Inf"
        return None

    def validate(self) -> None:
        """Raises ValueError naming the image when the arrays disagree."""
        problem = self.problem()
        if problem:
            raise ValueError(f"image {self.image_id}: {problem}")


def _int64(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(values)))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=list(values)))


def _bytes(values) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=list(values)))


def to_example(
    record: ImageRecord, caption_ids: list[list[int]], features_dtype: str
) -> tf.train.Example:
    """Serializes one image.

    Args:
        record: the image.
        caption_ids: token ids of each of `record.captions`, without <bos>/<eos>.
        features_dtype: "float16" or "float32", the storage dtype.
    """
    if features_dtype not in FEATURE_DTYPES:
        raise ValueError(f"features_dtype must be one of {FEATURE_DTYPES}, got {features_dtype!r}")
    if len(caption_ids) != len(record.captions):
        raise ValueError(
            f"image {record.image_id}: {len(record.captions)} captions but "
            f"{len(caption_ids)} token lists"
        )
    boxes = np.asarray(record.boxes, np.float32)
    feats = np.ascontiguousarray(record.features, dtype=np.dtype(features_dtype).newbyteorder("<"))
    flat_ids = [i for ids in caption_ids for i in ids]
    feature = {
        "image/id": _int64([record.image_id]),
        "image/width": _int64([record.width]),
        "image/height": _int64([record.height]),
        "regions/count": _int64([boxes.shape[0]]),
        "regions/boxes": _floats(boxes.reshape(-1)),
        "regions/features": _bytes([feats.tobytes()]),
        "caption/text": _bytes(c.encode("utf-8") for c in record.captions),
        "caption/ids": _int64(flat_ids),
        "caption/lengths": _int64(len(ids) for ids in caption_ids),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature))


FEATURE_SPEC = {
    "image/id": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "regions/count": tf.io.FixedLenFeature([], tf.int64),
    "regions/boxes": tf.io.VarLenFeature(tf.float32),
    "regions/features": tf.io.FixedLenFeature([], tf.string),
    "caption/text": tf.io.VarLenFeature(tf.string),
    "caption/ids": tf.io.VarLenFeature(tf.int64),
    "caption/lengths": tf.io.VarLenFeature(tf.int64),
}
