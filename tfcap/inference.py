"""Decoding a whole split, and the references to score it against."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from tfcap import errors
from tfcap.data import pipeline, vocab
from tfcap.model.captioner import Captioner


@dataclasses.dataclass
class Decoded:
    """Captions of a split, row i for `image_ids[i]`.

    Attributes:
        image_ids: int64 `[images]`.
        captions: the decoded texts.
        ids: int32 `[images, max_len]`, 0 after `<eos>`.
        scores: float32 `[images]`, sequence log-probability (beam: length-normalised score).
        attention: float32 `[images, max_len, regions]`.
        boxes: float32 `[images, regions, 4]`; region_mask: bool `[images, regions]`.
    """

    image_ids: np.ndarray
    captions: list[str]
    ids: np.ndarray
    scores: np.ndarray
    attention: np.ndarray
    boxes: np.ndarray
    region_mask: np.ndarray

    def results(self) -> list[dict]:
        """COCO results format."""
        return [
            {"image_id": int(i), "caption": c}
            for i, c in zip(self.image_ids, self.captions, strict=True)
        ]

    def swapped(self) -> list[dict]:
        """Results as if each image had had the next image's features: a control
        showing how much the captions depend on the image."""
        shifted = self.captions[1:] + self.captions[:1]
        return [
            {"image_id": int(i), "caption": c} for i, c in zip(self.image_ids, shifted, strict=True)
        ]


def make_generate_fn(model: Captioner, method: str, beam_size: int, alpha: float, max_len: int):
    """A tf.function `(features, region_mask) -> (ids, scores, attention)`."""
    if method not in ("greedy", "beam"):
        raise ValueError(f"method must be greedy or beam, got {method!r}")

    @tf.function(reduce_retracing=True)
    def generate(features, region_mask):
        if method == "beam" and beam_size > 1:
            return model.generate(
                features,
                region_mask,
                method="beam",
                beam_size=beam_size,
                alpha=alpha,
                max_len=max_len,
            )
        return model.generate(features, region_mask, method="greedy", max_len=max_len)

    return generate


def decode_split(
    model: Captioner,
    words: vocab.Vocab,
    data_dir: str,
    split: str,
    *,
    batch_size: int = 50,
    beam_size: int = 1,
    alpha: float = 0.0,
    max_images: int | None = None,
    generate_fn=None,
) -> Decoded:
    """Decodes the first `max_images` images (all by default) of `split`."""
    max_len = model.max_len
    generate = generate_fn or make_generate_fn(
        model, "beam" if beam_size > 1 else "greedy", beam_size, alpha, max_len
    )
    ds = pipeline.make_dataset(data_dir, split, batch_size, deterministic=True)
    if max_images:
        ds = ds.unbatch().take(max_images).batch(batch_size)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("image_ids", "ids", "scores", "att")}
    parts.update(boxes=[], mask=[])
    for batch in ds:
        ids, scores, att = generate(batch["features"], batch["region_mask"])
        parts["image_ids"].append(batch["image_id"].numpy())
        parts["ids"].append(ids.numpy())
        parts["scores"].append(scores.numpy())
        parts["att"].append(tf.cast(att, tf.float32).numpy())
        parts["boxes"].append(batch["boxes"].numpy())
        parts["mask"].append(batch["region_mask"].numpy())
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    return Decoded(
        image_ids=cat["image_ids"],
        captions=vocab.decode_ids_np(cat["ids"], words),
        ids=cat["ids"],
        scores=cat["scores"],
        attention=cat["att"],
        boxes=cat["boxes"],
        region_mask=cat["mask"],
    )


def references(data_dir: str, split: str) -> dict[int, list[str]]:
    """image id -> reference captions, from the dataset's annotations_SPLIT.json."""
    path = os.path.join(data_dir, f"annotations_{split}.json")
    if not os.path.exists(path):
        raise errors.MissingInput(
            f"{path} not found: is {data_dir!r} a dataset written by tfcap.data.prepare?"
        )
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise errors.BadInput(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("annotations"), list):
        raise errors.BadInput(f'{path}: not COCO caption annotations (no "annotations" list)')
    refs: dict[int, list[str]] = {}
    for a in data["annotations"]:
        refs.setdefault(int(a["image_id"]), []).append(a["caption"])
    return refs
