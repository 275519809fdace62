"""tfcap.caption end to end: real COCO photos, fake hub detector + backbone, a tiny model."""

import json
import math
import os
import shutil

import numpy as np
import pytest
from absl import app
from absl.testing import flagsaver
from conftest import run_train
from features import fake_hub
from PIL import Image

from tfcap import caption, viz
from tfcap.features import detector, extract, images, source

bad_input = pytest.mark.bad_input("captioning")

SIDES = {"backbone_min_side": "96", "backbone_max_side": "160"}


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return fake_hub.build_models(tmp_path_factory.getbasetemp() / "fake_hub")


@pytest.fixture(scope="session")
def model_dir(shapes_dir, tmp_path_factory):
    """A smoke-trained captioner on 16-d shapes features (the fake backbone has 16 channels)."""
    out = tmp_path_factory.mktemp("caption") / "model"
    run_train(shapes_dir, out, train_steps=30, eval_every=1000, checkpoint_every=1000)
    return out  # 30 steps: its captions on photos are words ("a a a ..."), not empty


@pytest.fixture(scope="session")
def photos(shared_data, tmp_path_factory):
    """Five of the real COCO photos (a batch of five: one beam-search trace per run)."""
    out = tmp_path_factory.mktemp("photos")
    names = sorted(p.name for p in (shared_data / "coco_val2014_samples").glob("*.jpg"))
    for name in names[::3]:
        shutil.copy(shared_data / "coco_val2014_samples" / name, out)
    shutil.copy(shared_data / "coco_val2014_samples" / "sources.json", out)
    return out


def run(capsys, **flag_values):
    """`python -m tfcap.caption` in-process: (exit status, stdout lines, stderr)."""
    capsys.readouterr()
    with flagsaver.as_parsed(**{k: str(v) for k, v in flag_values.items()}):
        status = caption.main(["caption"])
    out = capsys.readouterr()
    return status, out.out.splitlines(), out.err


def image_flags(models, **extra):
    return {
        "detector_handle": models["detector"],
        "backbone_handle": models["backbone"],
        "batch_size": 5,
        **SIDES,
        **extra,
    }


def expected_size(width, height, words, panel_width=224, columns=4):
    """viz.attention_grid's documented layout, with a title strip: (grid width, grid height)."""
    panel_height = round(panel_width * height / width)
    strip = max(14, panel_width // 8)
    cols = min(columns, 1 + words)
    rows = math.ceil((1 + words) / cols)
    return cols * panel_width + (cols + 1) * viz.GAP, strip + rows * (panel_height + strip) + (
        rows + 1
    ) * viz.GAP


def test_photos_json_and_attention_pictures(models, model_dir, photos, tmp_path, capsys):
    pictures = tmp_path / "att"
    status, lines, _ = run(
        capsys,
        model_dir=model_dir,
        images=photos,
        attention_png=pictures,
        json="true",
        **image_flags(models),
    )
    assert status == 0 and len(lines) == 5
    sources = json.load(open(photos / "sources.json"))
    for line in lines:
        obj = json.loads(line)
        name = os.path.basename(obj["image"])
        assert (obj["width"], obj["height"]) == (sources[name]["width"], sources[name]["height"])
        assert obj["image_id"] == sources[name]["coco_image_id"]
        assert obj["caption"] == " ".join(obj["words"]) and obj["words"]
        assert obj["score"] <= 0
        boxes, att = np.array(obj["boxes"]), np.array(obj["attention"])
        assert boxes.shape == (36, 4) and np.all((boxes >= 0) & (boxes <= 1))
        assert att.shape == (len(obj["words"]), 36)
        np.testing.assert_allclose(att.sum(axis=1), 1.0, atol=1e-3)  # softmax over regions
        with Image.open(pictures / name.replace(".jpg", ".png")) as png:
            assert png.format == "PNG"
            assert png.size == expected_size(obj["width"], obj["height"], len(obj["words"]))
            png.load()
    assert len(os.listdir(pictures)) == 5


def test_tab_lines_and_features_dir_agree(models, model_dir, photos, tmp_path, capsys):
    status, lines, _ = run(capsys, model_dir=model_dir, images=photos, **image_flags(models))
    assert status == 0 and len(lines) == 5
    rows = [line.split("\t") for line in lines]
    assert all(len(r) == 3 and r[0].endswith(".jpg") and float(r[2]) <= 0 for r in rows)
    config = source.ExtractorConfig(
        models["detector"], models["backbone"], min_side=96, max_side=160
    )
    feats = tmp_path / "feats"
    extract.extract_images(
        images.list_images([str(photos)]),
        str(feats),
        config,
        batch_size=5,
        features_dtype="float32",
    )
    status, lines, _ = run(capsys, model_dir=model_dir, features_dir=feats, batch_size=5)
    again = [line.split("\t") for line in lines]
    assert status == 0 and sorted(r[:2] for r in again) == sorted(r[:2] for r in rows)
    np.testing.assert_allclose(
        sorted(float(r[2]) for r in again), sorted(float(r[2]) for r in rows), atol=1e-4
    )


def test_saved_model_gives_the_model_dir_captions(models, model_dir, photos, tmp_path, capsys):
    saved_model = pytest.importorskip("export.saved_model")
    extractor = detector.region_extractor(
        models["detector"], 36, backbone_handle=models["backbone"], min_side=96, max_side=160
    )
    path = saved_model.export(
        str(model_dir), str(tmp_path / "export"), beam_size=3, region_extractor=extractor
    )
    _, ours, _ = run(capsys, model_dir=model_dir, images=photos, **image_flags(models))
    status, features_signature, _ = run(
        capsys, saved_model=path, images=photos, **image_flags(models)
    )  # our detector, then the export's caption_features
    assert status == 0
    status, images_signature, _ = run(capsys, saved_model=path, images=photos, batch_size=5)
    assert status == 0  # the export's own detector: serving_default
    for theirs in (features_signature, images_signature):
        for a, b in zip(ours, theirs, strict=True):
            assert a.split("\t")[:2] == b.split("\t")[:2]
            assert abs(float(a.split("\t")[2]) - float(b.split("\t")[2])) < 1e-3


@bad_input
def test_bad_files_are_listed_and_the_rest_captioned(models, model_dir, photos, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for p in sorted(photos.glob("*.jpg"))[:2]:
        shutil.copy(p, folder)
    (folder / "broken.jpg").write_bytes(b"garbage" * 20)
    status, lines, err = run(capsys, model_dir=model_dir, images=folder, **image_flags(models))
    assert status == 1 and len(lines) == 2
    assert f"FAILED {folder / 'broken.jpg'}: cannot decode" in err


@bad_input
def test_wrong_feature_dim_and_usage_errors(models, model_dir, photos, tmp_path, capsys):
    one = str(sorted(photos.glob("*.jpg"))[0])
    with pytest.raises(ValueError, match="dim 8, the model was trained on 16-d"):
        run(
            capsys,
            model_dir=model_dir,
            images=one,
            detector_handle=models["detector_grid_features"],
        )
    with pytest.raises(app.UsageError, match="one of --model_dir and --saved_model"):
        run(capsys, images=one, **image_flags(models))
    with pytest.raises(app.UsageError, match="one of --images and --features_dir"):
        run(capsys, model_dir=model_dir, images=one, features_dir=tmp_path)
    with pytest.raises(app.UsageError, match="--detector_handle is needed"):
        run(capsys, model_dir=model_dir, images=one)


@bad_input
def test_missing_images_and_inputs_that_are_not_ours(
    models, model_dir, shapes_dir, tmp_path, capsys
):
    with pytest.raises(app.UsageError, match=f"{tmp_path / 'nope.jpg'}: no such file"):
        run(capsys, model_dir=model_dir, images=tmp_path / "nope.jpg", **image_flags(models))
    with pytest.raises(app.UsageError, match=r"\*.png: no image files found"):
        run(capsys, model_dir=model_dir, images=tmp_path / "*.png", **image_flags(models))
    with pytest.raises(app.UsageError, match="no saved_model.pb there .*EXPORT_BASE/N"):
        run(capsys, saved_model=tmp_path, images=tmp_path)
    with pytest.raises(ValueError, match="not a tfcap.features.extract output"):
        run(capsys, model_dir=model_dir, features_dir=shapes_dir)
    with pytest.raises(FileNotFoundError, match="dataset.json"):
        run(capsys, model_dir=model_dir, features_dir=tmp_path)
