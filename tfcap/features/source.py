"""Image files -> `ImageRecord`s of detected regions: the extractor and the prepare source.

`Extractor` chains the parts: decode (`images`, in threads), detect (`detector`, one image
at a time: TF Hub detectors take a batch of one), choose regions (`regions.choose_regions`:
bottom-up-attention's rule over the proposals when the detector has them), and
take each region's feature from the detector's `detection_features` or ROI-pool it from the
backbone's feature map (`pooling`, one op per batch of images). Errors are per file: a file
that cannot be decoded or gets no regions comes back as an `ImageError` in its place and the
batch goes on.

`ImagesSource` is the picklable source `tfcap.data.prepare --source=images` hands to its
writer processes; `captioned_images` reads the captions (COCO or Karpathy json) that go with
an image directory.

The flags below configure an extractor and are shared by the entry points that build one
(`tfcap.features.extract`, `tfcap.caption`, `tfcap.data.prepare --source=images`); like
`tfcap.cli_flags`, they are defined once here and read only by entry points
(`config_from_flags`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import tensorflow as tf
from absl import flags, logging

from tfcap.data import coco, errors, records
from tfcap.errors import BadInput
from tfcap.features import detector as detector_lib
from tfcap.features import images as images_lib
from tfcap.features import pooling

IMAGES = flags.DEFINE_list(
    "images", [], "Image files: directories, globs or paths (prepare: the image root directory)."
)
DETECTOR_HANDLE = flags.DEFINE_string(
    "detector_handle", None, "TF Hub object detector: URL or local SavedModel directory."
)
BACKBONE_HANDLE = flags.DEFINE_string(
    "backbone_handle", None, "Feature-map backbone: TF Hub URL or local SavedModel directory."
)
BACKBONE_APP = flags.DEFINE_string(
    "backbone_app", None, "Or a keras.applications name (e.g. ResNet101) with --backbone_weights."
)
BACKBONE_WEIGHTS = flags.DEFINE_string(
    "backbone_weights", None, "Local weights file of --backbone_app (include_top=False)."
)
BACKBONE_PREPROCESSING = flags.DEFINE_enum(
    "backbone_preprocessing",
    "auto",
    list(pooling.PREPROCESSING),
    "Backbone input convention: auto = the --backbone_app's own preprocess_input, or [0, 1] "
    "(unit) for a --backbone_handle; caffe/tf/torch as keras.applications; none = 0-255. A "
    "Keras ResNet saved as a SavedModel and given as --backbone_handle needs caffe.",
)
BACKBONE_SIGNATURE = flags.DEFINE_string(
    "backbone_signature", None, "Signature of --backbone_handle to call (default: it, if callable)."
)
BACKBONE_OUTPUT = flags.DEFINE_string(
    "backbone_output", None, "Key of the spatial [1, h, w, C] output among a dict of outputs."
)
DETECTOR_FLOAT_INPUT = flags.DEFINE_enum(
    "detector_float_input",
    "auto",
    list(detector_lib.FLOAT_INPUTS),
    "Pixel range for a float-input detector: auto = 0-1 for a TF1 Hub 'default' signature, "
    "else 0-255 (TF2 OD API float_image_tensor exports).",
)
BACKBONE_MIN_SIDE = flags.DEFINE_integer(
    "backbone_min_side", 600, "Backbone input: shorter image side (pixels).", lower_bound=8
)
BACKBONE_MAX_SIDE = flags.DEFINE_integer(
    "backbone_max_side", 1000, "Backbone input: longest image side at most.", lower_bound=8
)
ROI_POOL_SIZE = flags.DEFINE_integer(
    "roi_pool_size", 7, "ROI crop-and-resize grid per region, averaged.", lower_bound=1
)
REGION_POLICY = flags.DEFINE_enum(
    "region_policy", "fixed", ["fixed", "adaptive"], "Regions per image: fixed K or adaptive."
)
REGIONS_FIXED = flags.DEFINE_integer(
    "regions_fixed", 36, "K of --region_policy=fixed.", lower_bound=1
)
REGIONS_MIN = flags.DEFINE_integer("regions_min", 10, "Adaptive: fewest regions.", lower_bound=1)
REGIONS_MAX = flags.DEFINE_integer("regions_max", 100, "Adaptive: most regions.", lower_bound=1)
REGIONS_THRESHOLD = flags.DEFINE_float(
    "regions_threshold", 0.2, "Adaptive: detection score a region needs."
)
REGIONS_NMS_IOU = flags.DEFINE_float(
    "regions_nms_iou",
    0.3,
    "NMS IoU threshold: per class over the detector's proposals (bottom-up-attention), or "
    "class-agnostic over its final detections when it has no proposals.",
    lower_bound=0.01,
    upper_bound=1,
)
DECODE_THREADS = flags.DEFINE_integer(
    "decode_threads", 4, "Threads decoding image files ahead of the detector.", lower_bound=1
)


@dataclasses.dataclass(frozen=True)
class ExtractorConfig:
    """Everything that determines the features (plain values: picklable, json-able)."""

    detector_handle: str
    backbone_handle: str | None = None
    backbone_app: str | None = None
    backbone_weights: str | None = None
    min_side: int = 600
    max_side: int = 1000
    pool_size: int = 7
    policy: detector_lib.RegionPolicy = detector_lib.RegionPolicy()
    backbone_preprocessing: str = "auto"
    backbone_signature: str | None = None
    backbone_output: str | None = None
    detector_float_input: str = "auto"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def config_from_flags() -> ExtractorConfig:
    """The `ExtractorConfig` of the flags above (for entry points)."""
    if not DETECTOR_HANDLE.value:
        raise ValueError("--detector_handle is needed to find regions in images")
    policy = detector_lib.RegionPolicy(
        REGION_POLICY.value,
        REGIONS_FIXED.value,
        REGIONS_MIN.value,
        REGIONS_MAX.value,
        REGIONS_THRESHOLD.value,
        REGIONS_NMS_IOU.value,
    )
    return ExtractorConfig(
        DETECTOR_HANDLE.value,
        BACKBONE_HANDLE.value,
        BACKBONE_APP.value,
        BACKBONE_WEIGHTS.value,
        BACKBONE_MIN_SIDE.value,
        BACKBONE_MAX_SIDE.value,
        ROI_POOL_SIZE.value,
        policy,
        BACKBONE_PREPROCESSING.value,
        BACKBONE_SIGNATURE.value,
        BACKBONE_OUTPUT.value,
        DETECTOR_FLOAT_INPUT.value,
    )


class Extractor:
    """Image files -> `ImageRecord`s (see the module docstring).

    Args:
        config: the models and the region policy.
        batch_size: images pooled together (memory: regions x pool_size^2 x channels floats).
        threads: decoding threads.
    """

    def __init__(self, config: ExtractorConfig, batch_size: int = 4, threads: int = 4):
        self.config, self.batch_size, self.threads = config, batch_size, threads
        self.detector = detector_lib.Detector(config.detector_handle, config.detector_float_input)
        self.backbone = backbone_of(config)

    def regions(self, image: np.ndarray) -> detector_lib.Detections:
        """The chosen regions of one uint8 `[height, width, 3]` image (may raise ImageError)."""
        dets = self.detector.regions(image, self.config.policy)
        if not len(dets.scores):
            raise images_lib.ImageError("no regions: the detector found no boxes")
        if dets.features is None and self.backbone is None:
            raise BadInput(
                f"{self.config.detector_handle} gives no detection_features: a backbone "
                "(--backbone_handle or --backbone_app) is needed to pool region features"
            )
        return dets

    def features(self, images: list[np.ndarray], dets: list[detector_lib.Detections]):
        """float32 `[regions_i, dim]` per image: detection_features, or pooled from the backbone."""
        if all(d.features is not None for d in dets):
            return [d.features for d in dets]
        maps = [self.backbone(image) for image in images]
        return pooling.pool_regions(maps, [d.boxes for d in dets], self.config.pool_size)

    def records(
        self, paths: Sequence[str], ids: Sequence[int]
    ) -> Iterator[tuple[str, records.ImageRecord | images_lib.ImageError]]:
        """`(path, record or ImageError)` per file, in order; captions empty."""
        decoded = images_lib.decode_in_order(paths, self.threads, window=2 * self.batch_size)
        batch: list[tuple[str, int, np.ndarray | images_lib.ImageError]] = []
        for (path, image), image_id in zip(decoded, ids, strict=True):
            batch.append((path, image_id, image))
            if len(batch) == self.batch_size:
                yield from self._batch(batch)
                batch = []
        yield from self._batch(batch)

    def _batch(self, batch):
        results: dict[int, records.ImageRecord | images_lib.ImageError] = {}
        good, dets = [], []
        for i, (_, _, image) in enumerate(batch):
            if isinstance(image, images_lib.ImageError):
                results[i] = image
                continue
            try:
                dets.append(self.regions(image))
                good.append(i)
            except images_lib.ImageError as err:
                results[i] = err
            except tf.errors.OpError as err:  # e.g. an image too large for the detector
                results[i] = images_lib.ImageError(f"detector failed: {err.message}")
        feats = self.features([batch[i][2] for i in good], dets) if good else []
        for i, d, f in zip(good, dets, feats, strict=True):
            path, image_id, image = batch[i]
            height, width = image.shape[:2]
            rec = records.ImageRecord(image_id, width, height, d.boxes, np.asarray(f, np.float32))
            problem = rec.problem()
            results[i] = images_lib.ImageError(problem) if problem else rec
        for i, (path, _, _) in enumerate(batch):
            yield path, results[i]


def backbone_of(config: ExtractorConfig) -> pooling.Backbone | None:
    """The config's `pooling.Backbone`, or None when it names none."""
    if not (config.backbone_handle or config.backbone_app):
        return None
    return pooling.Backbone(
        config.backbone_handle,
        config.backbone_app,
        config.backbone_weights,
        config.min_side,
        config.max_side,
        config.backbone_preprocessing,
        config.backbone_signature,
        config.backbone_output,
    )


@dataclasses.dataclass(frozen=True)
class ImagesSource:
    """A `tfcap.data.writer` source: regions of image files, found by a detector.

    Args:
        images_dir: root the file names are relative to.
        files: `(image_id, file_name)` pairs (from `captioned_images`).
        config: the extractor.
        batch_size, threads: as in `Extractor`.

    Call arguments (the writer's): `wanted` image ids and a `BadRecords`, where a file that
    is missing or cannot be used is reported as `"PATH (image ID)", "reason: detail"`.
    """

    images_dir: str
    files: tuple[tuple[int, str], ...]
    config: ExtractorConfig
    batch_size: int = 4
    threads: int = 4

    def __call__(self, wanted: set[int], bad: errors.BadRecords) -> Iterator[records.ImageRecord]:
        todo = [(i, resolve_path(self.images_dir, f)) for i, f in self.files if i in wanted]
        if not todo:
            return
        extractor = Extractor(self.config, self.batch_size, self.threads)
        ids = {path: image_id for image_id, path in todo}
        for path, rec in extractor.records([p for _, p in todo], [i for i, _ in todo]):
            if isinstance(rec, images_lib.ImageError):
                bad.add(f"{path} (image {ids[path]})", str(rec))
            else:
                yield rec


def resolve_path(images_dir: str, file_name: str) -> str:
    """`images_dir/file_name`, or `images_dir/basename` when only that exists (Karpathy's
    `val2014/NAME.jpg` names against a flat directory)."""
    path = os.path.join(images_dir, file_name)
    flat = os.path.join(images_dir, os.path.basename(file_name))
    return path if os.path.exists(path) or not os.path.exists(flat) else flat


def captioned_images(
    captions_json: str | Mapping[str, str], images_dir: str
) -> dict[str, list[coco.CaptionedImage]]:
    """The images (with captions) of each split, for the files in `images_dir`.

    Args:
        captions_json: a Karpathy `dataset_coco.json` (its own splits), or `{split: path}` of
            COCO caption annotation files (`images` need `file_name`), or one COCO file
            (all of it the "train" split).
        images_dir: where the files are; every named file must exist.

    Raises:
        `tfcap.errors.BadInput` (a ValueError) naming the json and the image when a
        `file_name` is missing or the file is not found under `images_dir`; the json
        readers' errors (`tfcap.data.coco`).
    """
    if isinstance(captions_json, Mapping):
        splits = {s: coco.read_coco_annotations(p) for s, p in captions_json.items()}
    elif _is_karpathy(captions_json):
        splits = {s: ims for s, ims in coco.read_karpathy(captions_json).items() if ims}
    else:
        splits = {"train": coco.read_coco_annotations(captions_json)}
    for split, ims in splits.items():
        for im in ims:
            if not im.file_name:
                raise BadInput(f"{captions_json}: image {im.image_id} ({split}) has no file_name")
            if not os.path.exists(resolve_path(images_dir, im.file_name)):
                raise BadInput(
                    f"{captions_json}: image {im.image_id} ({split}): file {im.file_name!r} "
                    f"not found in {images_dir}"
                )
    logging.info("Captioned images: %s", {s: len(v) for s, v in splits.items()})
    return splits


def file_pairs(splits: Mapping[str, list[coco.CaptionedImage]]) -> tuple[tuple[int, str], ...]:
    """`ImagesSource.files` for the output of `captioned_images`."""
    return tuple((im.image_id, im.file_name) for ims in splits.values() for im in ims)


def _is_karpathy(path: str) -> bool:
    data = coco.load_json(path)
    if not isinstance(data, dict) or "annotations" in data:
        return False  # COCO (or not captions: read_coco_annotations says what is wrong)
    images = data.get("images")
    first = images[0] if isinstance(images, list) and images else None
    return isinstance(first, dict) and "split" in first
