"""tfcap.features.extract (+ images, source) on the 15 real COCO JPEGs, with a detector of the
TF2 Detection Zoo signature (detector_models.py) and a small feature-map backbone (fake_hub.py);
fake_hub's detector_features detector only where box features come from the detector."""

import json
import os
import pickle
import shutil

import detector_models
import fake_hub
import numpy as np
import pytest
import tensorflow as tf
from absl.testing import flagsaver
from PIL import Image

from tfcap.data import errors, pipeline, records
from tfcap.features import detector, extract, images, regions, source

bad_input = pytest.mark.bad_input("feature extraction")

SIZES = dict(min_side=96, max_side=160)  # small backbone inputs: fast


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return fake_hub.build_models(tmp_path_factory.getbasetemp() / "fake_hub")


@pytest.fixture(scope="session")
def samples(shared_data):
    return shared_data / "coco_val2014_samples"


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    return detector_models.save_all(tmp_path_factory.getbasetemp() / "detector_models")


@pytest.fixture(scope="session")
def config(models, zoo):
    return source.ExtractorConfig(zoo["zoo"], models["backbone"], **SIZES)


@pytest.fixture(scope="session")
def extracted(samples, config, tmp_path_factory):
    """The 15 photos, fixed 36 regions, float32, 3 shards: (output dir, result)."""
    out = tmp_path_factory.mktemp("extract") / "fixed"
    paths = images.list_images([str(samples)])
    result = extract.extract_images(
        paths, str(out), config, num_shards=3, features_dtype="float32", batch_size=4
    )
    return out, result


def read_records(out):
    """image id -> (width, height, boxes [n, 4], features [n, dim]) of every shard."""
    meta = pipeline.load_metadata(str(out))
    dtype, dim = np.dtype(meta["features_dtype"]), meta["feature_dim"]
    found = {}
    for path in pipeline.split_files(str(out), extract.SPLIT):
        for raw in tf.data.TFRecordDataset(path):
            ex = tf.io.parse_single_example(raw, records.FEATURE_SPEC)
            feats = np.frombuffer(ex["regions/features"].numpy(), dtype).reshape(-1, dim)
            boxes = tf.sparse.to_dense(ex["regions/boxes"]).numpy().reshape(-1, 4)
            assert int(ex["regions/count"]) == len(boxes) == len(feats)
            found[int(ex["image/id"])] = (
                int(ex["image/width"]),
                int(ex["image/height"]),
                boxes,
                feats,
            )
    return found


def test_all_photos_fixed_regions_inside_and_finite(extracted, samples):
    out, result = extracted
    sources = json.load(open(samples / "sources.json"))
    assert result["images"] == 15 and not result["failures"] and len(result["written"]) == 3
    found = read_records(out)
    assert sorted(found) == sorted(s["coco_image_id"] for s in sources.values())
    for s in sources.values():
        width, height, boxes, feats = found[s["coco_image_id"]]
        assert (width, height) == (s["width"], s["height"])
        assert boxes.shape == (36, 4) and feats.shape == (36, 16)
        assert np.all((boxes >= 0) & (boxes <= 1))
        assert np.all(boxes[:, 2] > boxes[:, 0]) and np.all(boxes[:, 3] > boxes[:, 1])
        assert np.all(np.isfinite(feats)) and feats.std() > 0
    meta = result["meta"]
    assert (meta["min_regions"], meta["max_regions"], meta["feature_dim"]) == (36, 36, 16)
    assert meta["splits"] == {"images": {"images": 15, "captions": 0, "shards": 3}}


def test_output_parses_with_the_training_input_parser(extracted):
    out, _ = extracted
    meta = pipeline.load_metadata(str(out))
    parse = pipeline.parser(meta, meta["max_regions"])
    path = pipeline.split_files(str(out), "images")[0]
    raw = next(iter(tf.data.TFRecordDataset(path)))
    ex = parse(tf.constant(path), tf.constant(0, tf.int64), raw)
    assert ex["features"].shape == (36, 16) and bool(tf.reduce_all(ex["region_mask"]))
    assert ex["caption_ids"].nrows() == 0  # no captions
    assert pipeline.load_vocab(str(out)).words == ["<pad>", "<bos>", "<eos>", "<unk>"]


def test_same_inputs_give_identical_shards_and_resume_redoes_only_missing(
    extracted, samples, config, tmp_path
):
    first, _ = extracted
    paths = images.list_images([str(samples)])
    kwargs = dict(num_shards=3, features_dtype="float32", batch_size=4)

    def stop(name):
        raise KeyboardInterrupt(f"stopped after {name}")

    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        extract.extract_images(paths, str(out), config, on_shard_done=stop, **kwargs)
    assert not (out / "dataset.json").exists()  # an interrupted run is not a dataset
    done = out / "images-00000-of-00003.tfrecord"
    stamp = done.stat().st_mtime_ns
    result = extract.extract_images(paths, str(out), config, **kwargs)
    assert result["skipped"] == [done.name]
    assert result["written"] == ["images-00001-of-00003.tfrecord", "images-00002-of-00003.tfrecord"]
    assert done.stat().st_mtime_ns == stamp and result["images"] == 15
    for name in sorted(os.listdir(first)):
        if name.endswith(".tfrecord"):  # deterministic: the same bytes as the straight run
            assert (out / name).read_bytes() == (first / name).read_bytes(), name
    (out / "images-00002-of-00003.tfrecord").unlink()  # a lost shard is made again
    again = extract.extract_images(paths, str(out), config, **kwargs)
    assert again["written"] == ["images-00002-of-00003.tfrecord"] and len(again["skipped"]) == 2


@bad_input
def test_other_settings_need_overwrite(extracted, samples, config, tmp_path):
    out = tmp_path / "o"
    paths = images.list_images([str(samples)])[:2]
    extract.extract_images(paths, str(out), config, num_shards=1)
    with pytest.raises(FileExistsError, match="other settings"):
        extract.extract_images(paths, str(out), config, num_shards=2)
    result = extract.extract_images(paths, str(out), config, num_shards=2, overwrite=True)
    assert len(result["written"]) == 2 and sorted(os.listdir(out)).count("dataset.json") == 1
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        extract.extract_images(paths, str(tmp_path / "full"), config)


def test_adaptive_policy_counts(samples, models, zoo, tmp_path):
    policy = detector.RegionPolicy("adaptive", min_regions=10, max_regions=100, threshold=0.2)
    config = source.ExtractorConfig(zoo["zoo"], models["backbone"], policy=policy, **SIZES)
    paths = images.list_images([str(samples)])
    ids = images.image_ids(paths)
    found = _extract(paths, config, tmp_path)
    counts = {i: len(b) for i, (_, _, b, _) in found.items()}
    assert all(10 <= c <= 100 for c in counts.values()) and len(set(counts.values())) > 3
    det = detector.Detector(zoo["zoo"])
    for path, image_id in list(zip(paths, ids, strict=True))[:3]:  # the rule, by hand
        parsed = det.outputs(tf.constant(images.load_image(path)))
        conf, _ = regions.proposal_confidence(parsed["raw_boxes"], parsed["raw_scores"], 0.3)
        conf = conf.numpy()
        assert counts[image_id] == np.clip(np.sum(conf >= 0.2), 10, 100)
        boxes = found[image_id][2]  # distinct proposals, none twice
        assert len({tuple(b) for b in boxes.round(6)}) == len(boxes)


def _extract(paths, config, tmp_path, name="x"):
    extract.extract_images(paths, str(tmp_path / name), config, features_dtype="float32")
    return read_records(tmp_path / name)


def test_detection_features_skip_the_backbone(samples, models, zoo, tmp_path):
    paths = images.list_images([str(samples / "COCO_val2014_000000397427.jpg")])
    config = source.ExtractorConfig(models["detector_features"])  # no backbone at all
    ((_, _, boxes, feats),) = _extract(paths, config, tmp_path).values()
    dets = detector.Detector(models["detector_features"])(images.load_image(paths[0]))
    chosen = regions.select_regions(dets.boxes, dets.scores, config.policy)
    np.testing.assert_allclose(feats, dets.features[chosen], rtol=1e-6)
    np.testing.assert_allclose(boxes, dets.boxes[chosen])
    with pytest.raises(ValueError, match="no detection_features: a backbone"):
        _extract(paths, source.ExtractorConfig(zoo["zoo"]), tmp_path, "y")  # a real one: none


@bad_input
def test_bad_files_are_listed_and_the_rest_written(samples, config, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted(samples.glob("*.jpg"))[:3]
    for p in good:
        shutil.copy(p, folder)
    (folder / "garbage.jpg").write_bytes(b"\x00not a jpeg at all" * 50)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "half.jpg").write_bytes(good[0].read_bytes()[:3000])
    Image.new("RGB", (20, 20), "red").save(folder / "anim.gif")
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    with flagsaver.as_parsed(
        images=str(folder / "*"),
        output_dir=str(out),
        detector_handle=config.detector_handle,
        backbone_handle=config.backbone_handle,
        backbone_min_side="96",
        backbone_max_side="160",
        num_shards="2",
    ):
        status = extract.main(["extract"])
    assert status == 1
    errors_by_file = {
        os.path.basename(line.split(": ", 1)[0][len("FAILED ") :]): line.split(": ", 1)[1]
        for line in capsys.readouterr().err.splitlines()
        if line.startswith("FAILED ")
    }
    assert errors_by_file.keys() == {
        "garbage.jpg",
        "empty.jpg",
        "half.jpg",
        "anim.gif",
        "notes.txt",
    }
    assert errors_by_file["empty.jpg"].startswith("empty file")
    assert errors_by_file["anim.gif"].startswith("unsupported format: GIF")
    assert errors_by_file["garbage.jpg"].startswith("cannot decode")
    assert errors_by_file["notes.txt"].startswith("cannot decode")
    assert errors_by_file["half.jpg"].startswith("cannot decode")  # truncated
    listed = json.load(open(out / "images.json"))
    assert len(listed["images"]) == 3 and len(listed["failures"]) == 5
    assert pipeline.load_metadata(str(out))["splits"]["images"]["images"] == 3


def test_grayscale_rgba_and_exif_rotated_images(samples, config, tmp_path):
    photo = images.load_image(str(samples / "COCO_val2014_000000397427.jpg"))  # 500 x 375
    folder = tmp_path / "variants"
    folder.mkdir()
    Image.fromarray(photo).save(folder / "plain_1.png")
    rotated = Image.fromarray(photo).transpose(Image.Transpose.ROTATE_90)  # stored 375 x 500
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 clockwise to display
    rotated.save(folder / "exif_2.png", exif=exif)
    rotated.save(folder / "exif_3.jpg", exif=exif, quality=95)
    Image.fromarray(photo).convert("L").save(folder / "gray_4.jpg")
    rgba = Image.fromarray(photo).convert("RGBA")
    rgba.putalpha(Image.new("L", rgba.size, 128))
    rgba.save(folder / "rgba_5.png")
    assert images.load_image(str(folder / "exif_2.png")).tobytes() == photo.tobytes()
    gray = images.load_image(str(folder / "gray_4.jpg"))
    assert gray.shape == (375, 500, 3) and np.all(gray[..., 0] == gray[..., 2])
    found = _extract(images.list_images([str(folder)]), config, tmp_path)
    assert sorted(found) == [1, 2, 3, 4, 5]
    for image_id, (width, height, boxes, feats) in found.items():
        assert (width, height) == (500, 375), image_id  # EXIF: the upright size
        assert boxes.shape == (36, 4) and np.all(np.isfinite(feats))
    np.testing.assert_array_equal(found[2][2], found[1][2])  # lossless EXIF copy: same regions
    np.testing.assert_array_equal(found[2][3], found[1][3])


@bad_input
def test_list_images_and_ids(samples, tmp_path):
    assert len(images.list_images([str(samples)])) == 15  # the json files are not images
    with pytest.raises(FileNotFoundError, match="no such file"):
        images.list_images([str(tmp_path / "nope.jpg")])
    with pytest.raises(FileNotFoundError, match="no image files"):
        images.list_images([str(tmp_path / "*.png")])
    assert images.image_ids(["a/1.jpg", "b/1.png", "c.jpg"]) == [10**12, 10**12 + 1, 10**12 + 2]


def coco_files(samples, tmp_path):
    """COCO caption files for the samples: train (10 images) and val (5)."""
    caps = json.load(open(samples / "captions.json"))
    meta = json.load(open(samples / "sources.json"))
    out = {}
    for split, names in (("train", sorted(caps)[:10]), ("val", sorted(caps)[10:])):
        data = {
            "images": [{"id": meta[n]["coco_image_id"], "file_name": n} for n in names],
            "annotations": [
                {"id": k, "image_id": meta[n]["coco_image_id"], "caption": c}
                for n in names
                for k, c in enumerate(caps[n])
            ],
        }
        out[split] = str(tmp_path / f"captions_{split}.json")
        json.dump(data, open(out[split], "w"))
    return out


@bad_input
def test_images_source_for_prepare(samples, config, tmp_path):
    splits = source.captioned_images(coco_files(samples, tmp_path), str(samples))
    assert {k: len(v) for k, v in splits.items()} == {"train": 10, "val": 5}
    assert all(len(im.captions) == 5 for ims in splits.values() for im in ims)
    pairs = source.file_pairs(splits) + ((7, "missing.jpg"),)
    src = pickle.loads(pickle.dumps(source.ImagesSource(str(samples), pairs, config)))
    wanted = {splits["val"][0].image_id, splits["train"][3].image_id, 7}
    bad = errors.BadRecords()
    recs = list(src(wanted, bad))
    assert sorted(r.image_id for r in recs) == sorted(wanted - {7})
    assert all(r.boxes.shape == (36, 4) and r.problem() is None for r in recs)
    assert bad.count == 1 and "missing.jpg (image 7): cannot read: no such file" in bad.examples[0]
    with pytest.raises(ValueError, match="not found in"):
        source.captioned_images(coco_files(samples, tmp_path)["val"], str(tmp_path))
