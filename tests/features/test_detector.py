"""tfcap.features.detector against detectors with the public signatures (detector_models.py:
TF2 Detection Zoo `image_tensor` / `float_image_tensor`, TF1 Hub `default`), region choice as
bottom-up-attention's generate_tsv.py, and the in-graph extractor. fake_hub.py's detectors are
used only where a detector really exports box features (`detection_features`)."""

import detector_models
import fake_hub
import numpy as np
import pytest
import tensorflow as tf

from tfcap.features import detector, images, regions, serving, source

bad_input = pytest.mark.bad_input("feature extraction")
BUTD = detector.RegionPolicy("adaptive", min_regions=10, max_regions=100, threshold=0.2)


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    return detector_models.save_all(tmp_path_factory.getbasetemp() / "detector_models")


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return fake_hub.build_models(tmp_path_factory.getbasetemp() / "fake_hub")


@pytest.fixture(scope="session")
def photos(shared_data):
    paths = sorted((shared_data / "coco_val2014_samples").glob("*.jpg"))
    return [images.load_image(str(p)) for p in paths[:5]]


@pytest.fixture(scope="session")
def photo(photos):
    return photos[0]


def iou(a, b):
    x1, y1 = np.maximum(a[:2], b[:2])
    x2, y2 = np.minimum(a[2:], b[2:])
    inter = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def nms_reference(boxes, scores, thresh):
    """py_cpu_nms of bottom-up-attention (lib/nms), on normalised boxes (no +1 pixel)."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order, keep = scores.argsort()[::-1], []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]))
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return np.array(keep, np.int64)


def generate_tsv_reference(boxes, scores, conf_thresh=0.2, min_boxes=10, max_boxes=100):
    """bottom-up-attention tools/generate_tsv.py get_detections_from_im, line for line:
    `scores` `[proposals, 1 + classes]` with the background in column 0."""
    max_conf = np.zeros(len(boxes))
    for cls_ind in range(1, scores.shape[1]):
        cls_scores = scores[:, cls_ind]
        keep = nms_reference(boxes, cls_scores, 0.3)
        max_conf[keep] = np.where(
            cls_scores[keep] > max_conf[keep], cls_scores[keep], max_conf[keep]
        )
    keep_boxes = np.where(max_conf >= conf_thresh)[0]
    if len(keep_boxes) < min_boxes:
        keep_boxes = np.argsort(max_conf)[::-1][:min_boxes]
    elif len(keep_boxes) > max_boxes:
        keep_boxes = np.argsort(max_conf)[::-1][:max_boxes]
    return keep_boxes, max_conf


def raw_outputs(path, image):
    out = tf.saved_model.load(path)(tf.constant(image[None]))
    ymin, xmin, ymax, xmax = out["raw_detection_boxes"][0].numpy().T
    return np.stack([xmin, ymin, xmax, ymax], 1), out["raw_detection_scores"][0].numpy()


def test_test_detectors_have_the_published_signatures(zoo):
    for kind, dtype in (("zoo", tf.uint8), ("zoo_float", tf.float32)):
        loaded = tf.saved_model.load(zoo[kind])
        sig = loaded.signatures["serving_default"]
        assert callable(loaded)
        ((name, spec),) = sig.structured_input_signature[1].items()
        assert (name, spec.dtype, spec.shape.as_list()) == (
            "input_tensor",
            dtype,
            [1, None, None, 3],
        )
        shapes = {k: (v.dtype, v.shape.as_list()) for k, v in sig.structured_outputs.items()}
        assert shapes == {
            "num_detections": (tf.float32, [1]),
            "detection_boxes": (tf.float32, [1, 100, 4]),
            "detection_scores": (tf.float32, [1, 100]),
            "detection_classes": (tf.float32, [1, 100]),
            "detection_anchor_indices": (tf.float32, [1, 100]),
            "detection_multiclass_scores": (tf.float32, [1, 100, 91]),
            "raw_detection_boxes": (tf.float32, [1, 300, 4]),
            "raw_detection_scores": (tf.float32, [1, 300, 91]),
        }
    hub = tf.saved_model.load(zoo["tf1_hub"])
    assert not callable(hub) and list(hub.signatures) == ["default"]
    sig = hub.signatures["default"]
    ((name, spec),) = sig.structured_input_signature[1].items()
    assert (name, spec.dtype) == ("images", tf.float32)
    shapes = {k: (v.dtype, v.shape.as_list()) for k, v in sig.structured_outputs.items()}
    assert shapes == {
        "detection_boxes": (tf.float32, [100, 4]),
        "detection_scores": (tf.float32, [100]),
        "detection_class_labels": (tf.int64, [100]),
        "detection_class_entities": (tf.string, [100]),
        "detection_class_names": (tf.string, [100]),
    }


def test_zoo_detections_come_out_x_first_with_the_raw_proposals(zoo, photo):
    raw = tf.saved_model.load(zoo["zoo"])(tf.constant(photo[None]))
    det = detector.Detector(zoo["zoo"])
    dets = det(photo)
    n = int(raw["num_detections"][0])
    ymin, xmin, ymax, xmax = raw["detection_boxes"][0, :n].numpy().T
    np.testing.assert_allclose(dets.boxes, np.stack([xmin, ymin, xmax, ymax], 1))
    np.testing.assert_allclose(dets.scores, raw["detection_scores"][0, :n])
    assert dets.classes.dtype == np.int64 and dets.classes.min() >= 1 and dets.features is None
    parsed = det.outputs(tf.constant(photo))
    boxes, scores = raw_outputs(zoo["zoo"], photo)
    np.testing.assert_allclose(parsed["raw_boxes"], boxes)
    np.testing.assert_allclose(parsed["raw_scores"], scores[:, 1:])  # background dropped


def test_float_image_tensor_exports_get_pixel_values_not_divided_by_255(zoo, photo):
    want = detector.Detector(zoo["zoo"])(photo)
    got = detector.Detector(zoo["zoo_float"])(photo)
    np.testing.assert_array_equal(got.boxes, want.boxes)
    np.testing.assert_array_equal(got.scores, want.scores)
    scaled = detector.Detector(zoo["zoo_float"], float_input="0-1")(photo)  # the old behaviour
    assert not np.allclose(scaled.scores, want.scores)


def test_tf1_hub_default_signature_loads_with_unbatched_outputs(zoo, photo):
    det = detector.Detector(zoo["tf1_hub"])
    assert det.about == {"contract": "default", "input": "float32", "float_input": "0-1"}
    got, want = det(photo), detector.Detector(zoo["zoo"])(photo)
    assert got.boxes.shape == (len(want.scores), 4)  # every box, not the first one as a batch
    np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-6)
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-6)
    np.testing.assert_array_equal(got.classes, want.classes)  # detection_class_labels
    assert "raw_boxes" not in det.outputs(tf.constant(photo))
    regions = det.regions(photo, BUTD)  # final detections: class-agnostic NMS, no fill-up
    assert len(regions.scores) <= 100 and np.all(np.diff(regions.scores) <= 0)
    pairs = [(i, j) for i in range(len(regions.boxes)) for j in range(i)]
    assert all(iou(regions.boxes[i], regions.boxes[j]) <= 0.3 + 1e-6 for i, j in pairs)


@pytest.mark.parametrize("policy", ["adaptive", "fixed"])
def test_regions_from_proposals_are_generate_tsv_s(zoo, photos, policy):
    det = detector.Detector(zoo["zoo"])
    counts = []
    for image in photos:
        boxes, scores = raw_outputs(zoo["zoo"], image)
        if policy == "adaptive":
            keep, max_conf = generate_tsv_reference(boxes, scores)
            chosen = det.regions(image, BUTD)
        else:  # the 36-box features: MIN_BOXES = MAX_BOXES = 36
            keep, max_conf = generate_tsv_reference(boxes, scores, 0.2, 36, 36)
            chosen = det.regions(image, detector.RegionPolicy("fixed", k=36))
        keep = keep[max_conf[keep] > 0]  # BUTD fills up with suppressed proposals; tfcap does not
        rows = {tuple(b) for b in boxes[keep].round(6)}
        assert {tuple(b) for b in chosen.boxes.round(6)} == rows
        np.testing.assert_allclose(np.sort(chosen.scores), np.sort(max_conf[keep]), rtol=1e-6)
        assert np.all(np.diff(chosen.scores) <= 0)  # best first
        counts.append(len(chosen.scores))
    if policy == "adaptive":
        assert all(10 <= c <= 100 for c in counts) and len(set(counts)) > 1, counts
    else:
        assert counts == [36] * len(photos)


def test_few_surviving_proposals_give_fewer_rows_never_duplicates():
    boxes = np.array([[0.1, 0.1, 0.5, 0.5]] * 6 + [[0.6, 0.6, 0.9, 0.9]], np.float32)
    boxes[:6] += np.linspace(0, 0.01, 6)[:, None]  # six near-identical proposals
    scores = np.random.default_rng(0).uniform(0.3, 0.9, (7, 3)).astype(np.float32)
    parsed = {"raw_boxes": tf.constant(boxes), "raw_scores": tf.constant(scores)}
    parsed.update(boxes=parsed["raw_boxes"], scores=tf.reduce_max(scores, 1))
    for policy in (BUTD, detector.RegionPolicy("fixed", k=36)):
        out = regions.choose_regions(parsed, policy)
        chosen = out["boxes"].numpy()
        # per class one of the six survives (with the far box): at most 3 + 1 distinct rows
        assert 2 <= len(chosen) <= 4 and len({tuple(b) for b in chosen}) == len(chosen)
        assert bool(out["from_proposals"])


def test_select_regions_on_final_detections_never_fills_with_suppressed_boxes(zoo, photo):
    dets = detector.Detector(zoo["zoo"])(photo)
    chosen = regions.select_regions(dets.boxes, dets.scores, detector.RegionPolicy(k=100))
    kept = dets.boxes[chosen]
    assert len(set(chosen.tolist())) == len(chosen) < len(dets.scores)
    assert all(iou(kept[i], kept[j]) <= 0.3 + 1e-6 for i in range(len(kept)) for j in range(i))


def test_adaptive_policy_counts_confident_boxes_within_bounds():
    rng = np.random.default_rng(0)
    xy = np.stack(np.meshgrid(np.arange(15), np.arange(10)), -1).reshape(-1, 2) / 15
    boxes = np.concatenate([xy, xy + 0.05], 1)  # 150 disjoint boxes: NMS keeps all
    scores = np.sort(rng.random(150))[::-1]
    for threshold, expected in ((0.5, int(np.sum(scores >= 0.5))), (0.99, 10), (0.0, 100)):
        policy = detector.RegionPolicy("adaptive", threshold=threshold)
        chosen = regions.select_regions(boxes, scores, policy)
        np.testing.assert_array_equal(chosen, np.arange(expected))
    assert regions.select_regions(np.zeros((0, 4)), np.zeros(0), policy).shape == (0,)


def test_official_vision_outputs_are_normalised_by_image_info():
    info = tf.constant([[[100.0, 150.0], [128.0, 128.0], [0.85, 0.8533], [0.0, 0.0]]])
    pixels = tf.constant([[[17.0, 25.6, 51.0, 102.4]]])  # y, x in the resized input
    nms = {"detection_boxes": pixels, "detection_scores": tf.constant([[0.9]]),
           "detection_classes": tf.constant([[3]], tf.int32),
           "num_detections": tf.constant([1], tf.int32), "image_info": info}  # fmt: skip
    expected = [[25.6 / 0.8533 / 150, 0.2, 102.4 / 0.8533 / 150, 0.6]]  # x1, y1, x2, y2
    np.testing.assert_allclose(detector.parse_outputs(nms)["boxes"], expected, rtol=1e-5)
    normalised = {**nms, "detection_boxes": tf.constant([[[0.2, 0.1, 0.6, 0.5]]])}  # RetinaNet's
    np.testing.assert_allclose(detector.parse_outputs(normalised)["boxes"], [[0.1, 0.2, 0.5, 0.6]])
    per_class = tf.tile(pixels[:, :, None], [1, 1, 2, 1]) * tf.constant([1.0, 0.5])[:, None]
    raw = {"decoded_boxes": per_class, "image_info": info,
           "decoded_box_scores": tf.constant([[[0.1, 0.7]]])}  # fmt: skip
    parsed = detector.parse_outputs(raw)
    np.testing.assert_allclose(parsed["raw_boxes"], np.array(expected) * 0.5, rtol=1e-5)
    np.testing.assert_array_equal(parsed["classes"], [2])  # the best class's box stands for it


def test_padding_rows_past_num_detections_are_dropped(models, photo):
    dets = detector.Detector(models["detector_padded"])(photo)
    assert len(dets.scores) == 20 and np.all(dets.scores > 0)


@pytest.mark.parametrize("name, dim", [("detector_features", 16), ("detector_grid_features", 8)])
def test_detection_features_are_used(models, photo, name, dim):
    dets = detector.Detector(models[name])(photo)
    assert dets.features.shape == (100, dim)
    if name == "detector_grid_features":  # [1, N, 2, 2, dim] averaged over the grid
        raw = tf.saved_model.load(models[name])(tf.constant(photo[None]))["detection_features"]
        np.testing.assert_allclose(dets.features, raw[0].numpy().mean(axis=(1, 2)), rtol=1e-6)


@bad_input
def test_models_that_are_no_detector_are_refused(models, zoo, photo, tmp_path):
    with pytest.raises(ValueError, match="detection_boxes.*Object Detection API"):
        detector.Detector(models["backbone"])(photo)
    module = tf.Module()
    module.f = tf.function(lambda x: {"y": x}, input_signature=[tf.TensorSpec([1], tf.float32)])
    tf.saved_model.save(module, str(tmp_path / "other"), signatures={"predict": module.f})
    with pytest.raises(ValueError, match=r"other: .*no serving_default or default signature"):
        detector.Detector(str(tmp_path / "other"))
    with pytest.raises(ValueError, match="float input must be one of"):
        detector.Detector(zoo["zoo"], float_input="0-65535")


@pytest.mark.parametrize("bad", [dict(kind="all"), dict(k=0), dict(min_regions=20, max_regions=10)])
def test_bad_policies_are_refused(bad):
    with pytest.raises(ValueError):
        detector.RegionPolicy(**bad)


@pytest.mark.parametrize("policy", [detector.RegionPolicy(k=36), BUTD])
def test_region_extractor_matches_the_python_path_and_saves(zoo, models, photos, tmp_path, policy):
    config = source.ExtractorConfig(
        zoo["zoo"], models["backbone"], min_side=128, max_side=256, policy=policy
    )
    extractor = source.Extractor(config)
    module = serving.RegionExtractor(config)
    tf.saved_model.save(module, str(tmp_path / "extractor"))
    reloaded = tf.saved_model.load(str(tmp_path / "extractor"))
    for image in photos[:2]:
        dets = extractor.regions(image)
        (feats,) = extractor.features([image], [dets])
        n = len(dets.scores)
        for fn in (module, reloaded):
            out = fn(tf.constant(image))
            assert out["features"].shape == (policy.max_count, 16) and int(out["num_regions"]) == n
            np.testing.assert_allclose(out["boxes"][:n], dets.boxes, atol=1e-6)
            np.testing.assert_allclose(out["features"][:n], feats, atol=1e-5)
            assert np.all(out["boxes"][n:] == 0) and np.all(out["features"][n:] == 0)  # masked
    assert module.describe()["regions_from"] == "proposals"


def test_region_extractor_pads_and_takes_detection_features(models, photo):
    with pytest.raises(ValueError, match="no detection_features: a backbone"):
        detector.region_extractor(models["detector_padded"], 30)
    padded = detector.region_extractor(
        models["detector_padded"], 30, backbone_handle=models["backbone"]
    )
    out = padded(tf.constant(photo))
    count = int(out["num_regions"])
    assert count <= 20  # only 20 real detections, and NMS among them
    assert np.all(out["boxes"][count:] == 0) and np.all(out["features"][count:] == 0)
    direct = detector.region_extractor(models["detector_features"], 30)(tf.constant(photo))
    dets = detector.Detector(models["detector_features"])(photo)
    chosen = regions.select_regions(dets.boxes, dets.scores, detector.RegionPolicy(k=30))
    n = int(direct["num_regions"])
    assert n == len(chosen)
    np.testing.assert_allclose(direct["features"][:n], dets.features[chosen], rtol=1e-6)
