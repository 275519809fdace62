"""The extractor of `tfcap.features.extract` as one `tf.Module`, for serving graphs (`export/`).

`RegionExtractor(config)` takes the same `source.ExtractorConfig` as `source.Extractor` and
builds the same parts: the detector (`detector.Detector`, any contract, the same float-input
rule), region choice (`regions.choose_regions`, the same policy), the backbone
(`pooling.Backbone`: handle or Keras application, the same preprocessing, sizes, signature and
output) and ROI pooling (`crop_and_resize` on a `pool_size` grid, averaged). Images come in as
encoded bytes and are decoded by `images.decode_in_graph` (EXIF orientation, alpha over white,
Pillow's JPEG DCT), so one image gives the regions and features offline extraction gives it.
Output shapes are static: `policy.max_count` rows, padding after `num_regions` (zeros).

`describe()` is the json recorded with an export (`assets.extra/extractor.json`).
"""

from __future__ import annotations

import tensorflow as tf

from tfcap.errors import BadInput
from tfcap.features import detector as detector_lib
from tfcap.features import images, source


class RegionExtractor(tf.Module):
    """One image's regions in-graph, with a fixed row count (module docstring).

    Args:
        config: the extractor, as `tfcap.features.extract` takes it.

    Call arguments:
        image: uint8 `[height, width, 3]` (already decoded; `from_bytes` decodes first).

    Returns:
        `features` float32 `[rows, dim]`, `boxes` float32 `[rows, 4]` (x1, y1, x2, y2 in [0, 1]),
        `num_regions` int32 `[]`; rows past `num_regions` are 0. `rows` is `max_regions`.
    """

    def __init__(self, config: source.ExtractorConfig):
        super().__init__(name="region_extractor")
        self.config = config
        self.max_regions = config.policy.max_count
        self._detector = detector_lib.Detector(config.detector_handle, config.detector_float_input)
        self.detector_model = self._detector.model  # tracked: saved with the module
        self._backbone = source.backbone_of(config)
        probe = tf.zeros([32, 32, 3], tf.uint8)
        parsed = self._detector.outputs(probe)
        if "features" in parsed:
            self.feature_dim = int(parsed["features"].shape[-1])
            self._backbone = None  # detection_features win, as in source.Extractor
        elif self._backbone is not None:
            self.backbone_variables = self._backbone.variables  # tracked: saved with the module
            self.feature_dim = int(self._backbone(probe).shape[-1])
        else:
            raise BadInput(
                f"{config.detector_handle} gives no detection_features: a backbone "
                "(--backbone_handle or --backbone_app) is needed to pool region features"
            )
        self.from_proposals = "raw_boxes" in parsed and "features" not in parsed

    def describe(self) -> dict:
        """The configuration as json: what `tfcap.features.extract` records, and what it
        resolved to (detector contract, preprocessing, where regions come from)."""
        return {
            "extractor": self.config.to_json(),
            "region_policy": self.config.policy.describe(),
            "detector": self._detector.about,
            "regions_from": "proposals" if self.from_proposals else "final detections",
            "backbone_preprocessing": None
            if self._backbone is None
            else self._backbone.preprocessing,
            "features": "detection_features" if self._backbone is None else "roi_pool",
            "feature_dim": self.feature_dim,
            "max_regions": self.max_regions,
            "decode": "tfcap.features.images.decode_in_graph (EXIF orientation applied)",
        }

    @tf.function(input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    def __call__(self, image):
        chosen = self._detector.regions_graph(image, self.config.policy)
        boxes = chosen["boxes"]  # [count, 4]
        count = tf.shape(boxes)[0]
        if self._backbone is None:
            feats = chosen["features"]
        else:
            feature_map = self._backbone(image)[None]  # [1, h, w, channels]
            size = self.config.pool_size
            crops = tf.image.crop_and_resize(
                feature_map,
                tf.gather(boxes, [1, 0, 3, 2], axis=1),
                tf.zeros([count], tf.int32),
                [size, size],
            )  # [count, size, size, channels]
            feats = tf.reduce_mean(crops, axis=[1, 2])  # [count, channels]
        pad = [[0, self.max_regions - count], [0, 0]]
        return {
            "features": tf.ensure_shape(tf.pad(feats, pad), [self.max_regions, self.feature_dim]),
            "boxes": tf.ensure_shape(tf.pad(boxes, pad), [self.max_regions, 4]),
            "num_regions": tf.cast(count, tf.int32),
        }

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def from_bytes(self, data):
        """The same for encoded JPEG/PNG/GIF/BMP bytes, decoded as extraction decodes files."""
        return self(images.decode_in_graph(data))
