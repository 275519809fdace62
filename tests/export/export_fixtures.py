"""Shared fixtures of the export tests (a conftest.py here would clash with tests/conftest.py).

Test modules load this file as a plugin, `pytest_plugins = ["export_fixtures"]`, so its
session fixtures (a trained model dir, a fake detector, the export) are built once per
session whichever module asks first; helpers are imported as usual (so the module is
imported before pytest could rewrite its asserts: PYTEST_DONT_REWRITE; it has none).
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, run_train

from export import saved_model
from tfcap import checkpoints
from tfcap.data import pipeline

MODEL_NAME = "tfcap"
BEAM_SIZE = 3
SERVING_REGIONS = 36
_MODELS: dict[str, tuple] = {}


def fake_hub():
    """tests/features/fake_hub.py (TF Hub look-alike detectors), imported by path."""
    if "fake_hub" not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            "fake_hub", REPO / "tests" / "features" / "fake_hub.py"
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["fake_hub"] = module
    return sys.modules["fake_hub"]


@pytest.fixture(scope="session")
def model_dir(shapes_dir, tmp_path_factory) -> pathlib.Path:
    """A smoke-trained model dir (6 steps, text attention on: the largest step state)."""

    out = tmp_path_factory.mktemp("export_model") / "run"
    run_train(shapes_dir, out, text_attention="true")
    return out


@pytest.fixture(scope="session")
def detector_handle(tmp_path_factory) -> str:
    """A local detector SavedModel whose `detection_features` are 16-d, like the shapes data."""

    path = str(tmp_path_factory.mktemp("hub") / "detector_features")
    tf.saved_model.save(fake_hub().FakeDetector(feature_dim=16), path)
    return path


@pytest.fixture(scope="session")
def export_base(model_dir, detector_handle, tmp_path_factory) -> pathlib.Path:
    """EXPORT_BASE with version 1: both signatures, beam size `BEAM_SIZE`."""

    from tfcap.features import detector

    base = tmp_path_factory.mktemp("exports") / MODEL_NAME
    extractor = detector.region_extractor(detector_handle, SERVING_REGIONS)
    saved_model.export(str(model_dir), str(base), beam_size=BEAM_SIZE, region_extractor=extractor)
    return base


@pytest.fixture(scope="session")
def test_batch(shapes_dir) -> dict[str, np.ndarray]:
    """Four test scenes: `features`, `boxes`, `num_regions` as the signature takes them."""
    batch = next(iter(pipeline.make_dataset(str(shapes_dir), "test", 4, deterministic=True)))
    return {
        "features": batch["features"].numpy(),
        "boxes": batch["boxes"].numpy(),
        "num_regions": batch["region_mask"].numpy().sum(axis=1).astype(np.int32),
    }


def checkpoint_decode(model_dir, features, num_regions) -> dict[str, np.ndarray]:
    """What the checkpoint itself decodes (beam `BEAM_SIZE`): `tokens`, `score`, `caption`."""

    if str(model_dir) not in _MODELS:
        _MODELS[str(model_dir)] = checkpoints.load_model(str(model_dir))
    model, words, _ = _MODELS[str(model_dir)]
    features = tf.constant(features, tf.float32)
    mask = tf.sequence_mask(num_regions, features.shape[1])
    ids, score, _ = model.generate(features, mask, method="beam", beam_size=BEAM_SIZE)
    ids = ids.numpy()
    return {
        "tokens": ids,
        "score": score.numpy(),
        "caption": [words.decode(row) for row in ids],
    }


def sample_images(shared_data_dir: pathlib.Path, count: int = 2) -> list[bytes]:
    """Real COCO JPEGs from the shared data when present, else generated ones."""
    photos = sorted((shared_data_dir / "coco_val2014_samples").glob("*.jpg"))[:count]
    if len(photos) == count:
        return [p.read_bytes() for p in photos]
    return [saved_model.sample_jpeg(40 + 8 * i, 56) for i in range(count)]
