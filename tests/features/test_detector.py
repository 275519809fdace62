"""tfcap.features.detector: the TF Hub detector contract, region policies, in-graph regions."""

import fake_hub
import numpy as np
import pytest
import tensorflow as tf

from tfcap.features import detector, images, source

bad_input = pytest.mark.bad_input("feature extraction")


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return fake_hub.build_models(tmp_path_factory.getbasetemp() / "fake_hub")


@pytest.fixture(scope="session")
def photo(shared_data):
    return images.load_image(
        str(shared_data / "coco_val2014_samples" / "COCO_val2014_000000397427.jpg")
    )  # 500 x 375


def iou(a, b):
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def test_boxes_come_out_x_first(models, photo):
    raw = tf.saved_model.load(models["detector"])(tf.constant(photo[None]))
    dets = detector.Detector(models["detector"])(photo)
    ymin, xmin, ymax, xmax = raw["detection_boxes"][0].numpy().T
    np.testing.assert_allclose(dets.boxes, np.stack([xmin, ymin, xmax, ymax], 1))
    np.testing.assert_allclose(dets.scores, raw["detection_scores"][0])
    assert dets.classes.dtype == np.int64 and dets.classes.min() >= 1
    assert dets.features is None
    assert np.all(dets.boxes[:, 2] > dets.boxes[:, 0]) and np.all(
        dets.boxes[:, 3] > dets.boxes[:, 1]
    )


def test_padding_rows_past_num_detections_are_dropped(models, photo):
    dets = detector.Detector(models["detector_padded"])(photo)
    assert len(dets.scores) == 20 and np.all(dets.scores > 0)


def test_signature_only_model_gives_the_same_detections(models, photo):
    a = detector.Detector(models["detector"])(photo)
    b = detector.Detector(models["detector_signature"])(photo)
    np.testing.assert_array_equal(a.boxes, b.boxes)
    np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.parametrize("name, dim", [("detector_features", 16), ("detector_grid_features", 8)])
def test_detection_features_are_used(models, photo, name, dim):
    dets = detector.Detector(models[name])(photo)
    assert dets.features.shape == (100, dim)
    if name == "detector_grid_features":  # [1, N, 2, 2, dim] averaged over the grid
        raw = tf.saved_model.load(models[name])(tf.constant(photo[None]))["detection_features"]
        np.testing.assert_allclose(dets.features, raw[0].numpy().mean(axis=(1, 2)), rtol=1e-6)


@bad_input
def test_a_model_without_detector_outputs_is_refused(models, photo):
    with pytest.raises(ValueError, match="detection_boxes.*Object Detection API"):
        detector.Detector(models["backbone"])(photo)


def test_fixed_policy_keeps_k_after_nms(models, photo):
    dets = detector.Detector(models["detector"])(photo)
    policy = detector.RegionPolicy("fixed", k=36, nms_iou=0.2)
    chosen = detector.select_regions(dets.boxes, dets.scores, policy)
    assert len(chosen) == 36 and len(set(chosen.tolist())) == 36
    survivors = int(detector.ranked_regions(dets.boxes, dets.scores, 0.2)[1])
    assert 0 < survivors < 36  # the fake's overlapping anchors: NMS leaves fewer than 36...
    kept = dets.boxes[chosen[:survivors]]
    assert all(iou(kept[i], kept[j]) <= 0.2 + 1e-6 for i in range(survivors) for j in range(i))
    assert np.all(np.diff(dets.scores[chosen[:survivors]]) <= 0)  # ...best first
    assert np.all(np.diff(dets.scores[chosen[survivors:]]) <= 0)  # then the suppressed by score


def test_adaptive_policy_counts_confident_boxes_within_bounds():
    rng = np.random.default_rng(0)
    xy = np.stack(np.meshgrid(np.arange(15), np.arange(10)), -1).reshape(-1, 2) / 15
    boxes = np.concatenate([xy, xy + 0.05], 1)  # 150 disjoint boxes: NMS keeps all
    scores = np.sort(rng.random(150))[::-1]
    for threshold, expected in ((0.5, int(np.sum(scores >= 0.5))), (0.99, 10), (0.0, 100)):
        policy = detector.RegionPolicy("adaptive", threshold=threshold)
        chosen = detector.select_regions(boxes, scores, policy)
        assert len(chosen) == expected
        np.testing.assert_array_equal(chosen, np.arange(expected))
    assert detector.select_regions(np.zeros((0, 4)), np.zeros(0), policy).shape == (0,)


def test_ranked_regions_in_graph_equals_eager():
    rng = np.random.default_rng(1)
    xy = rng.random((40, 2)) * 0.7
    boxes = np.concatenate([xy, xy + 0.3], 1).astype(np.float32)
    scores = rng.random(40).astype(np.float32)
    graph = tf.function(lambda b, s: detector.ranked_regions(b, s, 0.5))
    eager = detector.ranked_regions(boxes, scores, 0.5)
    for a, b in zip(eager, graph(boxes, scores), strict=True):
        np.testing.assert_array_equal(a, b)
    assert sorted(eager[0].numpy().tolist()) == list(range(40))


@pytest.mark.parametrize("bad", [dict(kind="all"), dict(k=0), dict(min_regions=20, max_regions=10)])
def test_bad_policies_are_refused(bad):
    with pytest.raises(ValueError):
        detector.RegionPolicy(**bad)


def test_region_extractor_matches_the_python_path_and_saves(models, photo, tmp_path):
    config = source.ExtractorConfig(
        models["detector"], models["backbone"], min_side=128, max_side=256
    )
    extractor = source.Extractor(config)
    dets = extractor.regions(photo)  # the fixed 36
    (feats,) = extractor.features([photo], [dets])
    module = detector.region_extractor(
        models["detector"], 40, backbone_handle=models["backbone"], min_side=128, max_side=256
    )
    tf.saved_model.save(module, str(tmp_path / "extractor"))
    for fn in (module, tf.saved_model.load(str(tmp_path / "extractor"))):
        out = fn(tf.constant(photo))
        assert out["features"].shape == (40, 16) and int(out["num_regions"]) == 40
        np.testing.assert_allclose(out["boxes"][:36], dets.boxes, atol=1e-6)
        np.testing.assert_allclose(out["features"][:36], feats, atol=1e-5)


def test_region_extractor_pads_and_takes_detection_features(models, photo):
    with pytest.raises(ValueError, match="no detection_features: a backbone"):
        detector.region_extractor(models["detector_padded"], 30)
    padded = detector.region_extractor(
        models["detector_padded"], 30, backbone_handle=models["backbone"]
    )
    out = padded(tf.constant(photo))
    assert int(out["num_regions"]) == 20  # only 20 real detections
    assert np.all(out["boxes"][20:] == 0) and np.all(out["features"][20:] == 0)
    direct = detector.region_extractor(models["detector_features"], 30)(tf.constant(photo))
    dets = detector.Detector(models["detector_features"])(photo)
    chosen = detector.select_regions(dets.boxes, dets.scores, detector.RegionPolicy(k=30))
    np.testing.assert_allclose(direct["features"], dets.features[chosen], rtol=1e-6)
