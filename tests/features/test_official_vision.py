"""A real architecture: tf-models-official's official.vision Faster R-CNN (ResNet-18 FPN, random
weights, 128 x 128 input), exported by its own export module (`export_saved_model_lib`), with
and without NMS, read by tfcap.features.detector and used by the extractor."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from test_detector import generate_tsv_reference

from tfcap.features import detector, images, source

pytestmark = pytest.mark.slow  # two exports: about a minute each on 2 CPU cores
BUTD = detector.RegionPolicy("adaptive", min_regions=10, max_regions=100, threshold=0.2)


def export_faster_rcnn(path: str, apply_nms: bool) -> str:
    from official.core import exp_factory
    from official.vision.serving import export_saved_model_lib

    params = exp_factory.get_exp_config("fasterrcnn_resnetfpn_coco")
    model = params.task.model
    model.backbone.resnet.model_id = 18
    model.num_classes = 91
    model.input_size = [128, 128, 3]
    model.min_level, model.max_level = 3, 5
    model.anchor.num_scales = 1
    model.rpn_head.num_filters = 32
    model.decoder.fpn.num_filters = 32
    model.detection_head.num_fcs = 1
    model.detection_head.fc_dims = 64
    model.roi_generator.test_num_proposals = 300
    model.detection_generator.apply_nms = apply_nms
    model.detection_generator.pre_nms_score_threshold = 0.0  # random weights score ~1/91
    model.include_mask = False
    params.task.init_checkpoint = None
    export_saved_model_lib.export_inference_graph(
        "image_tensor", 1, [128, 128], params, None, path
    )  # random weights: no checkpoint
    return path


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A feature-map backbone (the detector exports no box features), saved before the exports."""
    import fake_hub

    path = str(tmp_path_factory.mktemp("official_vision_backbone") / "backbone")
    tf.saved_model.save(fake_hub.FakeBackbone(channels=16), path)
    return path


@pytest.fixture(scope="module")
def exports(backbone, tmp_path_factory):
    pytest.importorskip("official.vision")
    root = tmp_path_factory.mktemp("official_vision")
    return {
        "nms": export_faster_rcnn(str(root / "nms"), True),
        "raw": export_faster_rcnn(str(root / "raw"), False),
    }


@pytest.fixture(scope="module")
def photo(shared_data):
    return images.load_image(
        str(shared_data / "coco_val2014_samples" / "COCO_val2014_000000397427.jpg")
    )


def test_official_vision_detections_are_normalised_to_the_image(exports, photo):
    det = detector.Detector(exports["nms"])
    assert det.about["contract"] == "serving_default" and det.about["input"] == "uint8"
    raw = tf.saved_model.load(exports["nms"]).signatures["serving_default"](
        inputs=tf.constant(photo[None])
    )
    info = raw["image_info"][0].numpy()  # original, resized, scale, offset
    n = int(raw["num_detections"][0])
    pixels = raw["detection_boxes"][0, :n].numpy()  # y, x in the resized input
    unit = np.clip(pixels / np.tile(info[2], 2) / np.tile(info[0], 2), 0, 1)
    dets = det(photo)
    np.testing.assert_allclose(dets.boxes, unit[:, [1, 0, 3, 2]], rtol=1e-5, atol=1e-6)
    assert len(dets.scores) == n > 0 and np.all((dets.boxes >= 0) & (dets.boxes <= 1))
    chosen = det.regions(photo, BUTD)  # no proposals: final detections, class-agnostic NMS
    assert 0 < len(chosen.scores) <= min(n, 100)


def test_official_vision_proposals_give_generate_tsv_s_regions(exports, backbone, photo):
    det = detector.Detector(exports["raw"])
    raw = tf.saved_model.load(exports["raw"]).signatures["serving_default"](
        inputs=tf.constant(photo[None])
    )
    assert raw["decoded_boxes"].shape[1:] == [300, 90, 4]
    assert raw["decoded_box_scores"].shape[1:] == [300, 90]
    parsed = det.outputs(tf.constant(photo))
    scores = np.concatenate([np.zeros([300, 1]), raw["decoded_box_scores"][0].numpy()], 1)
    keep, max_conf = generate_tsv_reference(parsed["raw_boxes"].numpy(), scores)
    keep = keep[max_conf[keep] > 0]
    chosen = det.regions(photo, BUTD)
    np.testing.assert_allclose(np.sort(chosen.scores), np.sort(max_conf[keep]), rtol=1e-5)
    assert len({tuple(b) for b in chosen.boxes.round(6)}) == len(chosen.boxes)

    config = source.ExtractorConfig(
        exports["raw"], backbone, min_side=96, max_side=160, policy=BUTD
    )
    extractor = source.Extractor(config)
    dets = extractor.regions(photo)
    (feats,) = extractor.features([photo], [dets])
    assert feats.shape == (len(dets.scores), 16) and np.all(np.isfinite(feats))
