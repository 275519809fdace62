r"""Writes a versioned SavedModel for TensorFlow Serving.

  python -m export.saved_model --model_dir=RUN --export_base=/models/tfcap \
      [--version=N] [--beam_size=3] [--length_penalty=0] [--checkpoint=best] \
      [--detector_handle=DIR --backbone_app=ResNet101 --backbone_weights=W.h5 ...]
      # adds serving_default: the same extractor flags tfcap.features.extract took

Layout (DESIGN.md, "SavedModel contract"): `EXPORT_BASE/<version>/` with
`saved_model.pb`, `variables/`, `assets/vocab.txt`,
`assets.extra/tf_serving_warmup_requests` and, with `serving_default`,
`assets.extra/extractor.json` (the extractor configuration, as `tfcap.features.extract`
records it in dataset.json, plus what was resolved: detector contract, preprocessing,
regions from proposals or final detections). The version is written to
`EXPORT_BASE/.tmp-<version>-<pid>/` and renamed into place, so a server
watching `EXPORT_BASE` never sees half a version; an existing version is never
overwritten. The default version is the largest existing one plus 1.

Signatures, both decoding in-graph with beam search (`--beam_size`):

- `caption_features`: `features` float32 `[batch, regions, dim]`, `boxes`
  float32 `[batch, regions, 4]`, `num_regions` int32 `[batch]` (regions at or
  after `num_regions` are padding).
- `serving_default` (only with a region extractor, `--detector_handle`):
  `image_bytes` string `[batch]`, JPEG/PNG/GIF/BMP, decoded in-graph as
  extraction decodes files (`tfcap.features.images.decode_in_graph`: EXIF
  orientation, alpha over white, Pillow's JPEG DCT), regions found and pooled by
  `tfcap.features.serving.RegionExtractor` built from the same
  `tfcap.features.source.ExtractorConfig` (`source.config_from_flags`, every
  extractor flag: detector, `--backbone_app`/`--backbone_handle`, preprocessing,
  sizes, region policy) as `tfcap.features.extract` builds. Give the values the
  training features were extracted with: when the model's training data records
  another extractor, the export warns and records both.

Outputs of both: `caption` string `[batch]`, `score` float32 `[batch]` (the
beam score: log-probability over `((5 + length) / 6) ** length_penalty`),
`tokens` int32 `[batch, max_len]` (0 after `<eos>`), `attention` float32
`[batch, max_len, regions]`, `boxes` float32 `[batch, regions, 4]`.

The graph holds core TensorFlow ops only: the vocabulary is an asset read by a
`tf.lookup` table and ids become text with `tfcap.data.vocab.decode_ids`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from tfcap import checkpoints, cli, cli_flags, errors
from tfcap.data import vocab as vocab_lib
from tfcap.features import images as images_lib
from tfcap.features import serving, source

FEATURES_SIGNATURE = "caption_features"
IMAGES_SIGNATURE = "serving_default"
WARMUP_FILE = "tf_serving_warmup_requests"
EXTRACTOR_FILE = "extractor.json"

# image uint8 [height, width, 3] -> {"features": float32 [regions, dim],
# "boxes": float32 [regions, 4] (x1, y1, x2, y2 in [0, 1]), "num_regions": int32 []},
# with a fixed `regions` (padding after num_regions), e.g.
# `tfcap.features.serving.RegionExtractor`. Must be trackable (a tf.Module) so
# that the models it uses are saved with the export.
RegionExtractor = Callable[[tf.Tensor], dict]


_EXPORT_BASE = flags.DEFINE_string(
    "export_base", None, "Model base path: versions are written to EXPORT_BASE/<version>/."
)
_VERSION = flags.DEFINE_integer(
    "version", None, "Version to write (default: largest existing + 1).", lower_bound=1
)


class CaptionModule(tf.Module):
    """The serving graph: a `Captioner`, its vocabulary and the two signatures.

    Args:
        model: a built `tfcap.model.captioner.Captioner`.
        vocab_path: the model's `vocab.txt` (becomes an asset).
        feature_dim: int, `dim` of the region features.
        beam_size: int; 1 decodes greedily (beam search with one beam is greedy).
        alpha: float, beam length-normalisation strength.
        region_extractor: optional `RegionExtractor`; enables `serving_default`.
    """

    def __init__(
        self,
        model,
        vocab_path: str,
        feature_dim: int,
        beam_size: int = 3,
        alpha: float = 0.0,
        region_extractor: RegionExtractor | None = None,
    ):
        super().__init__(name="tfcap")
        size = len(vocab_lib.Vocab.load(vocab_path))
        if size != model.vocab_size:
            raise errors.BadInput(f"{vocab_path} has {size} tokens, the model {model.vocab_size}")
        # The Keras model is not a SavedModel child (its traced default signature
        # would be saved too); its variables are, as the tf.Variables under the
        # Keras ones: tracking the Keras wrappers instead gives a SavedModel that
        # tf.saved_model.load restores but TF Serving's session-based loader (and
        # `saved_model_cli run`) does not ("Could not find variable ...").
        object.__setattr__(self, "model", model)
        self.model_variables = [v.value for v in model.variables]
        self.beam_size, self.alpha = beam_size, alpha
        self.words_table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocab_path,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
            ),
            default_value=vocab_lib.UNK,
        )
        self.caption_features = tf.function(
            self._caption_features,
            input_signature=[
                tf.TensorSpec([None, None, feature_dim], tf.float32, "features"),
                tf.TensorSpec([None, None, 4], tf.float32, "boxes"),
                tf.TensorSpec([None], tf.int32, "num_regions"),
            ],
        )
        self.region_extractor = region_extractor
        if region_extractor is not None:
            self.caption_images = tf.function(
                self._caption_images,
                input_signature=[tf.TensorSpec([None], tf.string, "image_bytes")],
            )

    def signatures(self) -> dict:
        """Signature name -> concrete function, for `tf.saved_model.save`."""
        out = {FEATURES_SIGNATURE: self.caption_features.get_concrete_function()}
        if self.region_extractor is not None:
            out[IMAGES_SIGNATURE] = self.caption_images.get_concrete_function()
        return out

    def _caption_features(self, features, boxes, num_regions):
        return self.caption(features, boxes, num_regions)

    def caption(self, features, boxes, num_regions) -> dict[str, tf.Tensor]:
        """Beam-search captions of padded region features (shapes: module docstring)."""
        batch, regions = tf.shape(features)[0], tf.shape(features)[1]
        checks = [
            tf.debugging.assert_positive(batch, message="empty batch: no images"),
            tf.debugging.assert_equal(
                tf.shape(boxes)[:2], tf.shape(features)[:2], message="boxes must be [B, N, 4]"
            ),
            tf.debugging.assert_equal(
                tf.shape(num_regions)[0], batch, message="num_regions must be [B]"
            ),
            tf.debugging.assert_non_negative(num_regions, message="num_regions < 0"),
            tf.debugging.assert_less_equal(
                num_regions, regions, message="num_regions exceeds the regions given"
            ),
        ]
        with tf.control_dependencies(checks):
            mask = tf.sequence_mask(num_regions, regions)  # [batch, regions]
        ids, score, attention = self.model.generate(
            features, mask, method="beam", beam_size=self.beam_size, alpha=self.alpha
        )
        words = self.words_table.lookup(tf.range(self.model.vocab_size, dtype=tf.int64))
        return {
            "caption": vocab_lib.decode_ids(ids, words),
            "score": tf.cast(score, tf.float32),
            "tokens": tf.cast(ids, tf.int32),
            "attention": tf.cast(attention, tf.float32),
            "boxes": boxes,
        }

    def _caption_images(self, image_bytes):
        def regions_of(data):
            out = self.region_extractor(images_lib.decode_in_graph(data))
            return out["features"], out["boxes"], tf.cast(out["num_regions"], tf.int32)

        features, boxes, count = tf.map_fn(
            regions_of,
            image_bytes,
            fn_output_signature=(tf.float32, tf.float32, tf.int32),
        )  # [batch, regions, dim], [batch, regions, 4], [batch]
        return self.caption(features, boxes, count)


def next_version(export_base: str) -> int:
    """Largest integer-named directory in `export_base` plus 1 (1 when none)."""
    if not os.path.isdir(export_base):
        return 1
    versions = [int(n) for n in os.listdir(export_base) if n.isdigit()]
    return max(versions, default=0) + 1


def warmup_requests(module: CaptionModule, feature_dim: int, regions: int) -> list:
    """PredictionLog records of real small requests, one per signature."""
    from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

    rng = np.random.default_rng(0)
    features = rng.normal(size=[1, regions, feature_dim]).astype(np.float32)
    inputs = {
        FEATURES_SIGNATURE: {
            "features": features,
            "boxes": grid_boxes(regions)[None],
            "num_regions": np.array([regions], np.int32),
        }
    }
    if module.region_extractor is not None:
        inputs[IMAGES_SIGNATURE] = {"image_bytes": np.array([sample_jpeg()], object)}
    logs = []
    for name, tensors in inputs.items():
        request = predict_pb2.PredictRequest()
        request.model_spec.signature_name = name
        for key, value in tensors.items():
            request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
        logs.append(
            prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request)
            )
        )
    return logs


def grid_boxes(regions: int) -> np.ndarray:
    """float32 `[regions, 4]`: normalised (x1, y1, x2, y2) boxes on a square grid."""
    side = int(np.ceil(np.sqrt(regions)))
    i = np.arange(regions)
    x, y = (i % side) / side, (i // side) / side
    return np.stack([x, y, x + 1 / side, y + 1 / side], axis=-1).astype(np.float32)


def sample_jpeg(height: int = 48, width: int = 64) -> bytes:
    """A small real JPEG (a colour gradient) for warmup requests and tests."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1)
    return tf.io.encode_jpeg(image.astype(np.uint8)).numpy()


def export(
    model_dir: str,
    export_base: str,
    *,
    version: int | None = None,
    beam_size: int = 3,
    alpha: float = 0.0,
    checkpoint: str = "best",
    region_extractor: RegionExtractor | None = None,
) -> str:
    """Writes `export_base/<version>/` atomically; returns its path.

    Raises:
        tfcap.errors.OutputExists (a FileExistsError): the version exists already, or
            `export_base` is not a directory.
        tfcap.errors.MissingInput: `model_dir` is not a training run's directory.
        tfcap.errors.BadInput (a ValueError): `beam_size` exceeds the vocabulary.
    """
    if os.path.exists(export_base) and not os.path.isdir(export_base):
        raise errors.OutputExists(f"export base {export_base} exists and is not a directory")
    given = os.path.join(export_base, str(version)) if version is not None else None
    if given and os.path.exists(given):  # refuse before loading the model
        raise errors.OutputExists(f"{given} exists: versions are never overwritten")
    model, words, info = checkpoints.load_model(model_dir, checkpoint)
    if not 1 <= beam_size <= len(words):
        raise errors.BadInput(f"beam_size must be in [1, {len(words)}], got {beam_size}")
    feature_dim, regions = info["data"]["feature_dim"], info["data"]["max_regions"]
    extractor_json = _extractor_record(region_extractor, info, feature_dim)
    module = CaptionModule(
        model,
        os.path.join(model_dir, checkpoints.VOCAB_FILE),
        feature_dim,
        beam_size,
        alpha,
        region_extractor,
    )
    os.makedirs(export_base, exist_ok=True)
    version = next_version(export_base) if version is None else version
    final = os.path.join(export_base, str(version))
    if os.path.exists(final):
        raise errors.OutputExists(f"{final} exists: versions are never overwritten")
    tmp = os.path.join(export_base, f".tmp-{version}-{os.getpid()}")
    try:
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        extra = os.path.join(tmp, "assets.extra")
        os.makedirs(extra, exist_ok=True)
        with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
            for log in warmup_requests(module, feature_dim, regions):
                writer.write(log.SerializeToString())
        if extractor_json is not None:
            with open(os.path.join(extra, EXTRACTOR_FILE), "w", encoding="utf-8") as f:
                json.dump(extractor_json, f, indent=1, sort_keys=True)
        if os.path.exists(final):  # another writer got there first
            raise errors.OutputExists(f"{final} exists: versions are never overwritten")
        os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logging.info("wrote %s (signatures: %s)", final, ", ".join(module.signatures()))
    return final


def _extractor_record(region_extractor, info: dict, feature_dim: int) -> dict | None:
    """extractor.json of the export; checks the extractor's feature dim against the model's."""
    if region_extractor is None:
        return None
    got = getattr(region_extractor, "feature_dim", feature_dim)
    if got != feature_dim:
        raise errors.BadInput(
            f"the region extractor gives {got}-d features (--detector_handle, --backbone_app or "
            f"--backbone_handle) but the model takes {feature_dim}-d: export with the extractor "
            "the training features came from"
        )
    record = region_extractor.describe() if hasattr(region_extractor, "describe") else {}
    data_json = os.path.join(info["data"].get("data_dir", ""), "dataset.json")
    if os.path.isfile(data_json):
        with open(data_json, encoding="utf-8") as f:
            trained = json.load(f).get("extractor")
        if trained is not None:
            record["training_data_extractor"] = trained
            ours = record.get("extractor", {})
            differ = sorted(k for k in set(trained) | set(ours) if trained.get(k) != ours.get(k))
            if differ:
                logging.warning(
                    "serving_default's extractor differs from the training data's (%s) in %s",
                    data_json,
                    ", ".join(differ),
                )
            record["differs_from_training_data"] = differ
    return record


def region_extractor_from_flags() -> RegionExtractor | None:
    """The images signature's extractor (`tfcap.features.serving.RegionExtractor`) from the
    feature-extraction flags of `tfcap.features.source`, exactly as `tfcap.features.extract`
    reads them (`source.config_from_flags`: detector, `--backbone_app`/`--backbone_weights` or
    `--backbone_handle`, preprocessing, sizes, pool size, region policy); None without
    `--detector_handle`. Give the values the training features were extracted with."""
    if not source.DETECTOR_HANDLE.value:
        return None
    return serving.RegionExtractor(source.config_from_flags())


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        extractor = region_extractor_from_flags()
    except errors.UserError:
        raise
    except ValueError as err:  # a region policy the flags make impossible
        raise app.UsageError(str(err)) from None
    path = export(
        cli_flags.MODEL_DIR.value,
        _EXPORT_BASE.value,
        version=_VERSION.value,
        beam_size=flags.FLAGS.beam_size,
        alpha=flags.FLAGS.length_penalty,
        checkpoint=flags.FLAGS.checkpoint,
        region_extractor=extractor,
    )
    print(path)


if __name__ == "__main__":
    flags.mark_flags_as_required(["model_dir", "export_base"])
    cli.run(main)
