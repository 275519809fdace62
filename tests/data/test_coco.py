"""Tests for tfcap.data.coco on the real Karpathy val5k references and COCO samples."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from conftest import shared_data_dir

from tfcap.data import coco, errors
from tfcap.data.records import ImageRecord

bad_input = pytest.mark.bad_input("data prep")

DATA = str(shared_data_dir())
needs_data = pytest.mark.skipif(
    not os.path.isdir(DATA), reason=f"real test data not found at {DATA} (set TFCAP_SHARED_DATA)"
)
VAL5K = os.path.join(DATA, "karpathy", "captions_val5k.json")
SAMPLES = os.path.join(DATA, "coco_val2014_samples")
SAMPLE_SPLITS = {"karpathy_test5k": "test", "karpathy_val5k": "val"}  # Else restval.


def _samples() -> tuple[dict, dict]:
    with open(os.path.join(SAMPLES, "captions.json")) as f:
        captions = json.load(f)
    with open(os.path.join(SAMPLES, "sources.json")) as f:
        sources = json.load(f)
    return captions, sources


def _dump(path, data) -> str:
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def _karpathy_from_samples(path) -> str:
    """A small dataset_coco.json made of the 15 real samples and their Karpathy splits."""
    captions, sources = _samples()
    images = []
    for name, source in sources.items():
        sentences = [{"raw": c, "tokens": c.lower().split()} for c in captions[name]]
        split = SAMPLE_SPLITS.get(source["karpathy_split"], "restval")
        images.append(
            {
                "split": split,
                "cocoid": source["coco_image_id"],
                "filepath": "val2014",
                "filename": name,
                "sentences": sentences,
            }
        )
    return _dump(path, {"images": images, "dataset": "coco"})


@needs_data
def test_read_karpathy_maps_restval_to_train(tmp_path):
    captions, sources = _samples()
    splits = coco.read_karpathy(_karpathy_from_samples(tmp_path / "dataset_coco.json"))

    assert {k: len(v) for k, v in splits.items()} == {"train": 4, "val": 1, "test": 10}
    (val,) = splits["val"]
    assert val == coco.CaptionedImage(
        397427, "val2014/COCO_val2014_000000397427.jpg", tuple(captions[val.file_name[8:]])
    )
    restval = {s["coco_image_id"] for s in sources.values() if "restval" in s["karpathy_split"]}
    assert {image.image_id for image in splits["train"]} == restval


@needs_data
@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("images"), r"top level is missing key\(s\) 'images'"),
        (
            lambda d: d["images"][3].pop("sentences"),
            r"images\[3\] is missing key\(s\) 'sentences'",
        ),
        (
            lambda d: d["images"][2].update(split="dev"),
            r"images\[2\] \(cocoid \d+\): unknown split 'dev'",
        ),
        (
            lambda d: d["images"][1]["sentences"][0].pop("raw"),
            r"images\[1\] \(cocoid \d+\) sentences\[0\] is missing key\(s\) 'raw'",
        ),
        (
            lambda d: d["images"][4].update(cocoid=d["images"][0]["cocoid"]),
            r"images\[4\] \(cocoid \d+\): cocoid appears twice",
        ),
        (lambda d: d.update(images={"a": 1}), r'"images" must be a JSON list, got dict'),
        (
            lambda d: d["images"][0].update(sentences="a dog"),
            r"images\[0\] \(cocoid \d+\) sentences must be a JSON list, got str",
        ),
        (
            lambda d: d["images"][1]["sentences"][0].update(raw=None),
            r"images\[1\] \(cocoid \d+\) sentences\[0\]: raw is not a string: None",
        ),
        (
            lambda d: d["images"][0].update(cocoid="12"),
            r"images\[0\] \(cocoid 12\): cocoid must be an integer",
        ),
        (lambda d: d["images"].__setitem__(2, "x"), r"images\[2\] must be a JSON object, got str"),
    ],
    ids=[
        "images",
        "sentences",
        "split",
        "raw",
        "duplicate",
        "images_not_list",
        "sentences_not_list",
        "raw_not_string",
        "cocoid_string",
        "image_not_object",
    ],
)
@bad_input
def test_read_karpathy_errors_name_the_file(tmp_path, mutate, message):
    path = _karpathy_from_samples(tmp_path / "dataset_coco.json")
    with open(path) as f:
        data = json.load(f)
    mutate(data)
    _dump(path, data)
    with pytest.raises(ValueError, match=re.escape(path) + ": " + message):
        coco.read_karpathy(path)


@needs_data
def test_read_coco_annotations_on_karpathy_val5k():
    images = coco.read_coco_annotations(VAL5K)

    assert len(images) == 5000
    assert sum(len(image.captions) for image in images) == 25010
    assert sorted({len(image.captions) for image in images}) == [5, 6]
    by_id = {image.image_id: image for image in images}
    captions, _ = _samples()
    sample = by_id[397427]  # The one sample image in Karpathy val.
    assert sample.file_name == "COCO_val2014_000000397427.jpg"
    assert sample.captions == tuple(captions[sample.file_name])


def _small_annotations() -> dict:
    return {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": 2, "file_name": "b.jpg"}],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "a cat"},
            {"id": 11, "image_id": 99, "caption": "a ghost"},
            {"id": 12, "image_id": 2, "caption": "a dog"},
            {"id": 13, "image_id": 1},
            {"id": 14, "image_id": 1, "caption": "another cat"},
        ],
    }


@bad_input
def test_unknown_image_id_names_file_annotation_and_image(tmp_path):
    path = _dump(tmp_path / "captions.json", _small_annotations())
    want = f"{path}: annotation 11 (annotations[1]): image_id not in images: 99"
    with pytest.raises(ValueError, match=re.escape(want)):
        coco.read_coco_annotations(path)


@bad_input
def test_skip_bad_annotations_counts_them(tmp_path):
    path = _dump(tmp_path / "captions.json", _small_annotations())
    want = [
        coco.CaptionedImage(1, "a.jpg", ("a cat", "another cat")),
        coco.CaptionedImage(2, "b.jpg", ("a dog",)),
    ]
    assert coco.read_coco_annotations(path, skip_bad=True) == want

    bad = errors.BadRecords()
    assert coco.read_coco_annotations(path, skip_bad=bad) == want
    assert bad.count == 2
    assert bad.by_reason == {"image_id not in images": 1, "missing key(s)": 1}
    assert bad.examples[1] == f"{path}: annotation 13 (annotations[3]): missing key(s): caption"


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not a JSON file"),
        ('{"images": []}', "top level is missing key(s) 'annotations'"),
        ("[1, 2]", "top level must be a JSON object"),
        (
            '{"images": [{"file_name": "a.jpg"}], "annotations": []}',
            "images[0] is missing key(s) 'id'",
        ),
        ('{"images": {}, "annotations": []}', '"images" must be a JSON list, got dict'),
        ('{"images": [], "annotations": 5}', '"annotations" must be a JSON list, got int'),
        ('{"images": [{"id": "1"}], "annotations": []}', "images[0]: id is not an integer: '1'"),
        ('{"images": [{"id": 1}, {"id": 1}], "annotations": []}', "images[1]: image id 1 appears"),
        (
            '{"images": [{"id": 1}], "annotations": [{"id": 3, "image_id": [1], "caption": "x"}]}',
            "annotation 3 (annotations[0]): image_id is not an integer: [1]",
        ),
        (
            '{"images": [{"id": 1}], "annotations": [{"id": 3, "image_id": 1, "caption": 7}]}',
            "annotation 3 (annotations[0]): caption is not a string: 7",
        ),
        (
            '{"images": [{"id": 1}], "annotations": ["a cat"]}',
            "annotations[0]: annotation is not a JSON object",
        ),
        (b'{"images": [], "annotations": ["\xff"]}', "not a JSON file"),
    ],
)
@bad_input
def test_malformed_annotation_files_name_the_file(tmp_path, content, message):
    path = tmp_path / "captions.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
        coco.read_coco_annotations(str(path))


@needs_data
def test_write_coco_annotations_loads_in_pycocotools_and_round_trips(tmp_path):
    from pycocotools.coco import COCO

    images = coco.read_coco_annotations(VAL5K)[:50]
    path = str(tmp_path / "refs" / "val50.json")
    coco.write_coco_annotations(path, images)
    coco.write_coco_annotations(path, images)  # Replaces the file in place.

    assert os.listdir(tmp_path / "refs") == ["val50.json"]
    api = COCO(path)
    assert sorted(api.getImgIds()) == sorted(image.image_id for image in images)
    first = images[0]
    assert [a["caption"] for a in api.imgToAnns[first.image_id]] == list(first.captions)
    assert len(api.getAnnIds()) == sum(len(image.captions) for image in images)
    with open(path) as f:
        assert json.load(f)["type"] == "captions"
    reread = coco.read_coco_annotations(path)
    assert all(image.file_name == "" for image in reread)
    assert [(i.image_id, i.captions) for i in reread] == [(i.image_id, i.captions) for i in images]


@bad_input
def test_write_coco_annotations_accepts_image_records_and_rejects_duplicates(tmp_path):
    record = ImageRecord(5, 10, 10, np.zeros((1, 4)), np.zeros((1, 2)), ["one", "two"])
    path = str(tmp_path / "refs.json")
    coco.write_coco_annotations(path, [record])
    with open(path) as f:
        data = json.load(f)
    assert data["images"] == [{"id": 5}]
    assert [a["caption"] for a in data["annotations"]] == ["one", "two"]
    with pytest.raises(ValueError, match="image id 5 appears twice"):
        coco.write_coco_annotations(str(tmp_path / "dup.json"), [record, record])
    assert os.listdir(tmp_path) == ["refs.json"]


@needs_data
def test_written_references_work_with_pycocoevalcap(tmp_path):
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocotools.coco import COCO

    splits = coco.read_karpathy(_karpathy_from_samples(tmp_path / "dataset_coco.json"))
    images = [image for split in splits.values() for image in split]
    path = str(tmp_path / "refs.json")
    coco.write_coco_annotations(path, images)
    api = COCO(path)

    # One Java call: references and candidates (each image's first reference) together.
    both = {("gts", i): api.imgToAnns[i] for i in api.getImgIds()}
    both |= {("res", i): [{"caption": api.imgToAnns[i][0]["caption"]}] for i in api.getImgIds()}
    tokens = PTBTokenizer().tokenize(both)
    gts = {i: tokens[("gts", i)] for i in api.getImgIds()}
    res = {i: tokens[("res", i)] for i in api.getImgIds()}
    score, per_image = Cider().compute_score(gts, res)

    assert len(per_image) == len(images) == 15
    assert gts[397427][0] == "a cat that is sitting between two computers"
    assert score > 1.0  # A copy of a reference scores high against its own references.
