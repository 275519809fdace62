"""tfcap.data.prepare end to end: TSV/COCO/Karpathy/shapes -> shards -> tf.data, and bad input."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_prepare

from tfcap.data import butd_tsv, pipeline, records, vocab

bad_input = pytest.mark.bad_input("data prep")


def _sample_images(shared_data):
    """The 15 real COCO samples: [(image_id, width, height, captions)]."""
    root = shared_data / "coco_val2014_samples"
    sources = json.load(open(root / "sources.json"))
    captions = json.load(open(root / "captions.json"))
    return [
        (s["coco_image_id"], s["width"], s["height"], captions[name])
        for name, s in sorted(sources.items())
    ]


def _write_inputs(tmp_path, images, dim=2048, seed=0):
    """A bottom-up TSV with random features for `images`, and COCO annotation files."""
    rng = np.random.default_rng(seed)
    recs = []
    for image_id, w, h, caps in images:
        n = int(rng.integers(10, 101))  # adaptive 10-100 regions
        xy = rng.random((n, 2)) * [w - 2, h - 2]
        wh = rng.random((n, 2)) * ([w, h] - xy)
        boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
        feats = (rng.random((n, dim)) * 10).astype(np.float32)
        recs.append(records.ImageRecord(image_id, w, h, boxes, feats, list(caps)))
    tsv = tmp_path / "feats.tsv"
    butd_tsv.write_tsv(str(tsv), recs, pixel_boxes=True)
    ann = {}
    for split, part in (("train", images[:10]), ("val", images[10:13]), ("test", images[13:])):
        path = tmp_path / f"captions_{split}.json"
        anns = [{"image_id": i, "id": 100 * i + k, "caption": c}
                for i, _, _, caps in part for k, c in enumerate(caps)]  # fmt: skip
        imgs = [{"id": i, "width": w, "height": h, "file_name": f"{i}.jpg"} for i, w, h, _ in part]
        json.dump({"images": imgs, "annotations": anns}, open(path, "w"))
        ann[split] = path
    return tsv, ann


def _coco_flags(tsv, ann, **extra):
    return {
        "source": "coco",
        "butd_tsv": str(tsv),
        "coco_annotations": ",".join(f"{s}={p}" for s, p in ann.items()),
        "vocab_min_count": "0",
        "num_shards": "2",
        **extra,
    }


def _read_split(out, split):
    ds = pipeline.make_dataset(str(out), split, 4)
    got = {}
    for b in ds:
        for i in range(len(b["image_id"])):
            mask = b["region_mask"][i].numpy()
            got[int(b["image_id"][i])] = (
                b["boxes"][i].numpy()[mask],
                b["features"][i].numpy()[mask],
            )
    return got


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_tsv_to_records_to_tf_data_round_trip(shared_data, tmp_path, dtype):
    images = _sample_images(shared_data)
    tsv, ann = _write_inputs(tmp_path, images)
    out = tmp_path / "out"
    meta = run_prepare(out, **_coco_flags(tsv, ann, features_dtype=dtype))
    assert meta["max_regions"] <= 100 and meta["feature_dim"] == 2048
    want = {r.image_id: r for r in butd_tsv.read_tsv(str(tsv))}
    got = {}
    for split in ("train", "val", "test"):
        got.update(_read_split(out, split))
    assert set(got) == set(want)
    for image_id, (boxes, feats) in got.items():
        np.testing.assert_array_equal(boxes, want[image_id].boxes)  # float32 boxes: exact
        if dtype == "float32":
            np.testing.assert_array_equal(feats, want[image_id].features)
        else:
            np.testing.assert_array_equal(feats, want[image_id].features.astype(np.float16))
            np.testing.assert_allclose(feats, want[image_id].features, rtol=2**-11, atol=2**-24)


def test_outputs_and_references_accepted_by_pycocoevalcap(shapes_dir):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocotools.coco import COCO

    names = sorted(os.listdir(shapes_dir))
    assert "vocab.txt" in names and "dataset.json" in names
    assert [n for n in names if n.endswith(".tfrecord")] == [
        "test-00000-of-00001.tfrecord",
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
        "val-00000-of-00001.tfrecord",
    ]
    coco = COCO(str(shapes_dir / "annotations_test.json"))
    ids = coco.getImgIds()
    assert len(ids) == 10
    # candidate: each image's first reference; references: the other four
    results = [{"image_id": i, "caption": coco.imgToAnns[i][0]["caption"]} for i in ids]
    res = coco.loadRes(results)
    gts = {i: coco.imgToAnns[i][1:] for i in ids}
    tok = PTBTokenizer()
    gts, cands = tok.tokenize(gts), tok.tokenize({i: res.imgToAnns[i] for i in ids})
    cider, _ = Cider().compute_score(gts, cands)
    bleu, _ = Bleu(4).compute_score(gts, cands, verbose=0)
    assert 0.1 < cider < 10 and 0 < bleu[0] <= 1


def test_dataset_json_describes_the_shards(shapes_dir):
    meta = pipeline.load_metadata(str(shapes_dir))
    train = meta["splits"]["train"]
    assert train == {
        "images": 40,
        "captions": 200,
        "shards": 2,
        "shard_images": [20, 20],
        "max_captions_per_image": 5,
    }
    files = pipeline.split_files(str(shapes_dir), "train")
    assert [pipeline.check_shards([f]) for f in files] == train["shard_images"]
    assert meta["features_dtype"] == "float32" and meta["feature_dim"] == 16
    assert meta["vocab_size"] == len(pipeline.load_vocab(str(shapes_dir)))
    assert pipeline.check_shards(pipeline.split_files(str(shapes_dir), "train")) == 40


def test_two_workers_write_the_same_records(tmp_path):
    flags = dict(source="shapes", shapes_sizes="train=12,val=4,test=4", shapes_feature_dim=8,
                 num_shards=4, vocab_min_count=0)  # fmt: skip
    run_prepare(tmp_path / "one", **flags)
    run_prepare(tmp_path / "two", **{**flags, "num_workers": "2"})
    for name in sorted(os.listdir(tmp_path / "one")):
        if name.endswith(".tfrecord"):
            one, two = (
                [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(path)]
                for path in (str(tmp_path / "one" / name), str(tmp_path / "two" / name))
            )
            assert one == two, name  # protos compare by content (map order may differ)


@bad_input
def test_refuses_non_empty_output_and_overwrite_keeps_old_on_failure(tmp_path, shared_data):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    flags = dict(source="shapes", shapes_sizes="train=8,val=2,test=2", shapes_feature_dim=8)
    with pytest.raises(FileExistsError, match="--overwrite"):
        run_prepare(out, **flags)
    # an --overwrite run that fails half way leaves the old content and no staging dirs
    tsv, ann = _write_inputs(tmp_path, _sample_images(shared_data))
    lines = tsv.read_bytes().split(b"\n")
    lines[3] = b"\t".join(lines[3].split(b"\t")[:5])  # drop the features field
    tsv.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=r"feats\.tsv:4 .*field"):
        run_prepare(out, overwrite="true", **_coco_flags(tsv, ann))
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == sorted(["out", "feats.tsv"] + [
        f"captions_{s}.json" for s in ("train", "val", "test")])  # fmt: skip
    run_prepare(out, overwrite="true", **flags)
    assert not (out / "keep.txt").exists() and (out / "dataset.json").exists()


@bad_input
def test_bad_tsv_lines_are_skipped_and_counted(tmp_path, shared_data):
    images = _sample_images(shared_data)
    tsv, ann = _write_inputs(tmp_path, images)
    lines = tsv.read_bytes().split(b"\n")
    fields = lines[0].split(b"\t")
    fields[5] = fields[5][:-8]  # features: wrong byte length
    lines[0] = b"\t".join(fields)
    tsv.write_bytes(b"\n".join(lines))
    with pytest.raises(ValueError, match=r"feats\.tsv:1 \(image \d+\)"):
        run_prepare(tmp_path / "strict", **_coco_flags(tsv, ann))
    meta = run_prepare(tmp_path / "lenient", skip_bad_records="true", **_coco_flags(tsv, ann))
    # the bad line, and its image then lacking features
    assert meta["bad_records_skipped"] == 2
    assert sum(s["images"] for s in meta["splits"].values()) == len(images) - 1


@bad_input
def test_feature_dim_flag_must_match_the_tsv(tmp_path, shared_data):
    tsv, ann = _write_inputs(tmp_path, _sample_images(shared_data), dim=64)
    with pytest.raises(ValueError, match=r"feats\.tsv:1 .*2048"):
        run_prepare(tmp_path / "out", feature_dim="2048", **_coco_flags(tsv, ann))


@bad_input
def test_caption_for_unknown_image_is_named_or_skipped(tmp_path, shared_data):
    tsv, ann = _write_inputs(tmp_path, _sample_images(shared_data))
    data = json.load(open(ann["val"]))
    data["annotations"].append({"image_id": 424242, "id": 7, "caption": "a ghost"})
    json.dump(data, open(ann["val"], "w"))
    with pytest.raises(ValueError, match=r"captions_val\.json: annotation 7 .*424242"):
        run_prepare(tmp_path / "strict", **_coco_flags(tsv, ann))
    meta = run_prepare(tmp_path / "lenient", skip_bad_records="true", **_coco_flags(tsv, ann))
    assert meta["splits"]["val"]["captions"] == 15


@bad_input
def test_empty_split_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="split 'test' has no images"):
        run_prepare(tmp_path / "out", source="shapes", shapes_sizes="train=4,val=2,test=0")
    assert not (tmp_path / "out").exists()


def test_karpathy_source(tmp_path, shared_data):
    images = _sample_images(shared_data)
    tsv, _ = _write_inputs(tmp_path, images)
    split_of = ["train"] * 8 + ["restval"] * 2 + ["val"] * 3 + ["test"] * 2
    kj = {"images": [
        {"cocoid": i, "split": s, "filepath": "val2014", "filename": f"{i}.jpg",
         "sentences": [{"raw": c, "tokens": []} for c in caps]}
        for (i, _, _, caps), s in zip(images, split_of, strict=True)]}  # fmt: skip
    json.dump(kj, open(tmp_path / "dataset_coco.json", "w"))
    meta = run_prepare(
        tmp_path / "out", source="karpathy", karpathy_json=str(tmp_path / "dataset_coco.json"),
        butd_tsv=str(tsv), vocab_min_count="1", max_caption_len="5",
    )  # fmt: skip
    assert {s: v["images"] for s, v in meta["splits"].items()} == {"train": 10, "val": 3, "test": 2}
    v = pipeline.load_vocab(str(tmp_path / "out"))
    train_tokens = vocab.tokenize_py([c for i, _, _, caps in images[:10] for c in caps])
    counts = {}
    for t in (t for toks in train_tokens for t in toks):
        counts[t] = counts.get(t, 0) + 1
    assert set(v.words[4:]) == {w for w, c in counts.items() if c > 1}
    b = next(iter(pipeline.make_dataset(str(tmp_path / "out"), "train", 10)))
    lengths = (b["captions"].numpy() > vocab.EOS_ID).sum(-1)
    assert lengths.max() == 5  # cut at --max_caption_len
