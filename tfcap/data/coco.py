"""Caption json readers and writer: Karpathy `dataset_coco.json` and COCO `captions_*.json`.

Both readers return `CaptionedImage`s: the image id, its file name and its raw
reference captions. The json files are small enough (<= ~150 MB) to load whole;
the region features that go with them are streamed by `butd_tsv`.

`write_coco_annotations` writes references in the COCO caption format that
pycocotools' `COCO(path)` and pycocoevalcap read.
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from absl import logging

from tfcap.data import errors
from tfcap.errors import BadInput, open_input

# Karpathy split name -> our split; "restval" (the 30k val2014 images not in
# val/test) joins train, giving the usual 113,287 / 5,000 / 5,000.
KARPATHY_SPLITS = {"train": "train", "restval": "train", "val": "val", "test": "test"}


@dataclasses.dataclass(frozen=True)
class CaptionedImage:
    """One image and its reference captions.

    Attributes:
        image_id: COCO image id.
        file_name: image path relative to the image root (Karpathy: `filepath/filename`,
            e.g. "val2014/COCO_val2014_000000391895.jpg"; COCO json: `file_name`).
        captions: the raw reference sentences, in file order.
    """

    image_id: int
    file_name: str
    captions: tuple[str, ...]


class HasCaptions(Protocol):
    """Anything with an integer `image_id` and a sequence of `captions` (e.g. `ImageRecord`)."""

    image_id: int
    captions: Sequence[str]


def load_json(path: str) -> Any:
    """The content of a json file the user named (`MissingInput`, `BadInput` naming it)."""
    with open_input(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadInput(f"{path}: not a JSON file ({err})") from err


def _require(obj: Any, keys: Sequence[str], path: str, what: str) -> None:
    """Raises BadInput naming `path` and `what` unless `obj` is a dict holding `keys`."""
    if not isinstance(obj, dict):
        raise BadInput(f"{path}: {what} must be a JSON object, got {type(obj).__name__}")
    missing = [k for k in keys if k not in obj]
    if missing:
        raise BadInput(f"{path}: {what} is missing key(s) {', '.join(map(repr, missing))}")


def _require_list(obj: Any, path: str, what: str) -> list:
    if not isinstance(obj, list):
        raise BadInput(f"{path}: {what} must be a JSON list, got {type(obj).__name__}")
    return obj


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def read_karpathy(path: str) -> dict[str, list[CaptionedImage]]:
    """Reads Karpathy's `dataset_coco.json`.

    Args:
        path: the json file: `{"images": [{"split", "cocoid", "filepath", "filename",
            "sentences": [{"raw", "tokens"}, ...]}, ...]}`.

    Returns:
        `{"train": [...], "val": [...], "test": [...]}` in file order, "restval"
        images counted as train.

    Raises:
        `tfcap.errors.MissingInput` when the file does not exist; `BadInput` (a
        ValueError) naming the file (and the image's index and id) when it is not
        JSON, a key is missing, a list is not a list, a split is unknown, a caption
        is not a string or an id repeats.
    """
    data = load_json(path)
    _require(data, ["images"], path, "top level")
    splits: dict[str, list[CaptionedImage]] = {name: [] for name in ("train", "val", "test")}
    seen: set[int] = set()
    for index, image in enumerate(_require_list(data["images"], path, '"images"')):
        what = f"images[{index}]"
        _require(image, ["split", "cocoid", "filename", "sentences"], path, what)
        image_id = image["cocoid"]
        what = f"images[{index}] (cocoid {image_id})"
        if not _is_int(image_id):
            raise BadInput(f"{path}: {what}: cocoid must be an integer")
        if image_id in seen:
            raise BadInput(f"{path}: {what}: cocoid appears twice")
        seen.add(image_id)
        if image["split"] not in KARPATHY_SPLITS:
            raise BadInput(
                f"{path}: {what}: unknown split {image['split']!r}, "
                f"expected one of {sorted(KARPATHY_SPLITS)}"
            )
        captions = []
        for j, sentence in enumerate(_require_list(image["sentences"], path, f"{what} sentences")):
            _require(sentence, ["raw"], path, f"{what} sentences[{j}]")
            if not isinstance(sentence["raw"], str):
                raise BadInput(
                    f"{path}: {what} sentences[{j}]: raw is not a string: {sentence['raw']!r:.80}"
                )
            captions.append(sentence["raw"])
        file_name = posixpath.join(image.get("filepath", ""), image["filename"])
        splits[KARPATHY_SPLITS[image["split"]]].append(
            CaptionedImage(image_id, file_name, tuple(captions))
        )
    logging.info("Read %s: %s", path, ", ".join(f"{k} {len(v)} images" for k, v in splits.items()))
    return splits


def read_coco_annotations(
    path: str, skip_bad: bool | errors.BadRecords = False
) -> list[CaptionedImage]:
    """Reads a COCO caption annotation file (`captions_train2014.json`, ...).

    Args:
        path: json with `images` (`id`, and `file_name`: "" when absent, as in
            files from `write_coco_annotations`) and `annotations` (`id`,
            `image_id`, `caption`).
        skip_bad: what to do with an annotation that is not an object, lacks a
            key, has a non-string caption or an `image_id` that is not an integer
            or not in `images` (see `errors`):
            False raises, True or a `BadRecords` skips and counts.

    Returns:
        One `CaptionedImage` per entry of `images`, in file order, with the
        captions of its annotations in file order (empty if it has none).

    Raises:
        `tfcap.errors.MissingInput` when the file does not exist; `BadInput` (a
        ValueError) naming the file (and the annotation's id and image id) for a
        file that is not JSON, missing top-level or image keys, `images` or
        `annotations` not a list, an image id that is not an integer or repeats,
        and (unless skipped) bad annotations.
    """
    bad, owned = errors.resolve(skip_bad)
    data = load_json(path)
    _require(data, ["images", "annotations"], path, "top level")
    names: dict[int, str] = {}
    for index, image in enumerate(_require_list(data["images"], path, '"images"')):
        _require(image, ["id"], path, f"images[{index}]")
        if not _is_int(image["id"]):
            raise BadInput(f"{path}: images[{index}]: id is not an integer: {image['id']!r:.80}")
        if image["id"] in names:
            raise BadInput(f"{path}: images[{index}]: image id {image['id']} appears twice")
        names[image["id"]] = image.get("file_name", "")
    captions: dict[int, list[str]] = {image_id: [] for image_id in names}
    for index, ann in enumerate(_require_list(data["annotations"], path, '"annotations"')):
        if not isinstance(ann, dict):
            bad.add(f"{path}: annotations[{index}]", "annotation is not a JSON object")
            continue
        where = f"{path}: annotation {ann.get('id', '?')} (annotations[{index}])"
        missing = [k for k in ("image_id", "caption") if k not in ann]
        if missing:
            bad.add(where, f"missing key(s): {', '.join(missing)}")
            continue
        if not _is_int(ann["image_id"]):
            bad.add(where, f"image_id is not an integer: {ann['image_id']!r:.80}")
            continue
        if ann["image_id"] not in captions:
            bad.add(where, f"image_id not in images: {ann['image_id']}")
            continue
        if not isinstance(ann["caption"], str):
            bad.add(where, f"caption is not a string: {ann['caption']!r}")
            continue
        captions[ann["image_id"]].append(ann["caption"])
    if owned:
        errors.log_summary(bad, path)
    images = [CaptionedImage(i, names[i], tuple(caps)) for i, caps in captions.items()]
    logging.info(
        "Read %s: %d images, %d captions", path, len(images), sum(len(c) for c in captions.values())
    )
    return images


def write_coco_annotations(
    path: str, images: Iterable[HasCaptions], description: str = "tfcap references"
) -> None:
    """Writes reference captions as a COCO caption annotation file, atomically.

    The result loads with `pycocotools.coco.COCO(path)` and serves as the
    ground truth for pycocoevalcap. Annotation ids run 1, 2, ... in order.

    Args:
        path: output json; its directory is created if needed. Written to a
            temporary file beside it and renamed into place.
        images: objects with `image_id` and `captions` (`CaptionedImage`,
            `ImageRecord`, ...). Images without captions are kept in `images`.
        description: goes into the `info` block.

    Raises:
        ValueError if an image id repeats or a caption is not a string.
    """
    image_entries, annotations = [], []
    seen: set[int] = set()
    for image in images:
        image_id = int(image.image_id)
        if image_id in seen:
            raise ValueError(f"writing {path}: image id {image_id} appears twice")
        seen.add(image_id)
        image_entries.append({"id": image_id})
        for caption in image.captions:
            if not isinstance(caption, str):
                raise ValueError(f"writing {path}: image {image_id}: caption {caption!r} not a str")
            ann_id = len(annotations) + 1
            annotations.append({"image_id": image_id, "id": ann_id, "caption": caption})
    data = {
        "info": {"description": description},
        "licenses": [],
        "type": "captions",
        "images": image_entries,
        "annotations": annotations,
    }
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    logging.info("Wrote %s: %d images, %d captions", path, len(image_entries), len(annotations))
