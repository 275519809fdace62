"""export.saved_model's serving_default is tfcap.features.extract's extractor: the same flags
(a detector of the TF2 Detection Zoo signature, `--backbone_app` with local weights, the
bottom-up-attention adaptive policy, sizes) build both; one EXIF-rotated photo through
serving_default gives the boxes, features and caption of extract + caption_features; the
configuration is recorded in assets.extra/extractor.json; a mismatched extractor is refused."""

from __future__ import annotations

import importlib.util
import io
import json
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver
from conftest import REPO, run_prepare, run_train
from PIL import Image

from export import saved_model
from tfcap.data import pipeline, records
from tfcap.features import extract, source

APP, CHANNELS = "MobileNetV3Small", 576  # include_top=False feature maps
EXTRACTOR_FLAGS = dict(
    backbone_app=APP,
    backbone_min_side="96",
    backbone_max_side="160",
    region_policy="adaptive",
    regions_min="10",
    regions_max="100",
    regions_threshold="0.2",
)


def _detector_models():
    if "detector_models" not in sys.modules:
        path = REPO / "tests" / "features" / "detector_models.py"
        spec = importlib.util.spec_from_file_location("detector_models", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["detector_models"] = module
    return sys.modules["detector_models"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
    """A smoke model on 576-d features, the zoo detector, the app's weights, a rotated photo."""
    import keras

    root = tmp_path_factory.mktemp("extractor_export")
    data = root / "data"
    run_prepare(
        data, source="shapes", shapes_sizes="train=16,val=4,test=4", shapes_feature_dim=CHANNELS,
        features_dtype="float32", num_shards=1, vocab_min_count=1,
    )  # fmt: skip
    run_train(data, root / "run")
    weights = str(root / "mobilenet_notop.weights.h5")
    keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(None, None, 3)
    ).save_weights(weights)
    photo = Image.open(shared_data / "coco_val2014_samples" / "COCO_val2014_000000397427.jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    out = io.BytesIO()
    photo.transpose(Image.Transpose.ROTATE_90).save(out, "JPEG", exif=exif, quality=92)
    (root / "images").mkdir()
    (root / "images" / "phone_1.jpg").write_bytes(out.getvalue())
    flags = {
        **EXTRACTOR_FLAGS,
        "detector_handle": _detector_models().save("zoo", root / "zoo"),
        "backbone_weights": weights,
    }
    return {"root": root, "model_dir": root / "run", "flags": flags}


def test_serving_default_equals_extract_then_caption_features(setup):
    root, flags = setup["root"], setup["flags"]
    image_path = root / "images" / "phone_1.jpg"
    with flagsaver.as_parsed(**flags):
        config = source.config_from_flags()  # what tfcap.features.extract builds
        with flagsaver.flagsaver(model_dir=str(setup["model_dir"]), export_base=str(root / "base")):
            saved_model.main(["saved_model"])
    extract.extract_images([str(image_path)], str(root / "feats"), config, features_dtype="float32")
    meta = pipeline.load_metadata(str(root / "feats"))
    (raw,) = list(tf.data.TFRecordDataset(pipeline.split_files(str(root / "feats"), "images")))
    ex = tf.io.parse_single_example(raw, records.FEATURE_SPEC)
    feats = np.frombuffer(ex["regions/features"].numpy(), np.float32).reshape(-1, CHANNELS)
    boxes = tf.sparse.to_dense(ex["regions/boxes"]).numpy().reshape(-1, 4)
    n = len(boxes)
    assert 10 <= n <= 100 and meta["extractor"]["backbone_app"] == APP
    assert (int(ex["image/width"]), int(ex["image/height"])) == (500, 375)  # stored 375 x 500

    loaded = tf.saved_model.load(str(root / "base" / "1"))
    data = tf.constant(image_path.read_bytes())
    regions = loaded.region_extractor.from_bytes(data)  # the export's own extractor
    assert int(regions["num_regions"]) == n and regions["features"].shape == (100, CHANNELS)
    np.testing.assert_allclose(regions["boxes"][:n], boxes, atol=1e-6)
    np.testing.assert_allclose(regions["features"][:n], feats, rtol=1e-4, atol=1e-4)

    served = loaded.signatures["serving_default"](image_bytes=data[None])
    offline = loaded.signatures["caption_features"](
        features=tf.constant(feats[None]),
        boxes=tf.constant(boxes[None]),
        num_regions=tf.constant([n], tf.int32),
    )
    np.testing.assert_array_equal(served["tokens"], offline["tokens"])
    assert served["caption"].numpy().tolist() == offline["caption"].numpy().tolist()
    np.testing.assert_allclose(served["score"], offline["score"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(served["boxes"][0, :n], boxes, atol=1e-6)

    record = json.loads((root / "base" / "1" / "assets.extra" / "extractor.json").read_text())
    assert record["extractor"] == config.to_json() == meta["extractor"]
    assert record["backbone_preprocessing"] == "none"  # MobileNetV3 rescales inside
    assert record["regions_from"] == "proposals" and record["feature_dim"] == CHANNELS
    assert record["detector"]["contract"] == "callable" and record["max_regions"] == 100


@pytest.mark.bad_input("serving")
def test_an_extractor_of_another_feature_dim_is_refused(setup, tmp_path):
    fake_hub = sys.modules.get("fake_hub")
    if fake_hub is None:
        from export_fixtures import fake_hub as load_fake_hub

        fake_hub = load_fake_hub()
    backbone = str(tmp_path / "backbone16")
    tf.saved_model.save(fake_hub.FakeBackbone(channels=16), backbone)
    flags = {**setup["flags"], "backbone_app": None, "backbone_weights": None}
    flags = {k: v for k, v in flags.items() if v is not None}
    with flagsaver.as_parsed(backbone_handle=backbone, **flags):
        with flagsaver.flagsaver(
            model_dir=str(setup["model_dir"]), export_base=str(tmp_path / "b")
        ):
            with pytest.raises(ValueError, match=r"16-d features .*--backbone_app.* takes 576-d"):
                saved_model.main(["saved_model"])
    assert not (tmp_path / "b" / "1").exists()
