"""tfcap.metrics against pycocoevalcap called directly, on 100 real val5k images; bad input."""

import json
import pathlib
import re
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
from pycocotools.coco import COCO

from tfcap import errors, metrics

bad_input = pytest.mark.bad_input("evaluation")

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(shared_data, tmp_path_factory):
    """100 val5k images: annotations = all captions but the first, results = the first."""
    data = json.loads((shared_data / "karpathy" / "captions_val5k.json").read_text())
    keep = sorted({a["image_id"] for a in data["annotations"]})[:100]
    anns = [a for a in data["annotations"] if a["image_id"] in set(keep)]
    first = {}
    for ann in anns:
        first.setdefault(ann["image_id"], ann)
    out = tmp_path_factory.mktemp("metrics")
    annotations = {
        "info": data.get("info", {}),
        "images": [img for img in data["images"] if img["id"] in set(keep)],
        "annotations": [a for a in anns if first[a["image_id"]] is not a],
    }
    results = [{"image_id": a["image_id"], "caption": a["caption"]} for a in first.values()]
    (out / "ann.json").write_text(json.dumps(annotations))
    (out / "res.json").write_text(json.dumps(results))
    return out / "ann.json", out / "res.json", results


def _pycocoevalcap(annotations, results) -> dict:
    """COCOEvalCap.evaluate without SPICE: COCO + loadRes, PTBTokenizer, the four scorers."""
    coco = COCO(str(annotations))
    coco_res = coco.loadRes(str(results))
    ids = coco.getImgIds()
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: coco.imgToAnns[i] for i in ids})
    res = tokenizer.tokenize({i: coco_res.imgToAnns[i] for i in ids})
    out = dict(
        zip([f"Bleu_{k}" for k in range(1, 5)], Bleu(4).compute_score(gts, res)[0], strict=True)
    )
    out["METEOR"] = Meteor().compute_score(gts, res)[0]
    out["ROUGE_L"] = Rouge().compute_score(gts, res)[0]
    out["CIDEr"] = Cider().compute_score(gts, res)[0]
    return out


def test_score_files_equals_pycocoevalcap(files):
    annotations, results, _ = files
    want = _pycocoevalcap(annotations, results)
    got = metrics.score_files(str(annotations), str(results))
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=0, abs=1e-9), key
    assert 0.05 < got["Bleu_4"] < got["Bleu_1"] < 1 and got["CIDEr"] > 0.3


def test_tfcap_cider_backend_equals_pycocoevalcap(files):
    annotations, results, _ = files
    coco = metrics.score_files(str(annotations), str(results), ["cider", "rouge"])
    ours = metrics.score_files(str(annotations), str(results), ["cider"], cider_backend="tfcap")
    assert set(ours) == {"CIDEr"}
    assert abs(ours["CIDEr"] - coco["CIDEr"]) < 1e-6


def test_cli_prints_one_json_line(files):
    annotations, results, _ = files
    proc = subprocess.run(
        [sys.executable, "-m", "tfcap.metrics", f"--annotations={annotations}",
         f"--results={results}", "--scorers=bleu,cider"],
        cwd=REPO, capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, proc.stdout
    scores = json.loads(lines[0])
    assert set(scores) == {"Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "CIDEr"}
    assert all(isinstance(v, float) for v in scores.values())


@bad_input
def test_allow_missing_scores_the_subset(files, tmp_path):
    annotations, _, results = files
    subset = tmp_path / "subset.json"
    subset.write_text(json.dumps(results[:60]))
    with pytest.raises(ValueError, match=r"subset.json: covers 60 of the 100 images .*40 missing"):
        metrics.score_files(str(annotations), str(subset), ["bleu"])
    got = metrics.score_files(str(annotations), str(subset), ["bleu"], allow_missing=True)
    assert got["notes"] == ["scored 60 of 100 annotated images (allow_missing)"]
    refs = metrics.load_references(str(annotations))
    cands = {r["image_id"]: r["caption"] for r in results[:60]}
    want = metrics.score_captions({i: refs[i] for i in cands}, cands, ["bleu"])
    assert {k: v for k, v in got.items() if k != "notes"} == want


def test_spice_without_jars_is_skipped_with_a_note():
    if not metrics.spice_missing_jars():
        pytest.skip("SPICE's CoreNLP jars are installed here")
    got = metrics.score_captions(
        {1: ["a dog runs on the grass"]}, {1: "a dog is running"}, ["bleu", "spice"]
    )
    assert "SPICE" not in got and got["Bleu_1"] > 0
    assert "SPICE skipped" in got["notes"][0] and "stanford-corenlp-3.6.0.jar" in got["notes"][0]


def _write(tmp_path, name, data) -> str:
    path = tmp_path / name
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def _first_id(results):
    return results[0]["image_id"]


# name -> (results json content (given the good results), error text); scored against ann.json
BAD_RESULTS = {
    "not_list": (lambda r: {"image_id": 1, "caption": "x"}, r"results must be a JSON list"),
    "no_caption": (lambda r: [{"image_id": _first_id(r)}], r"entry 0 needs"),
    "str_id": (lambda r: [{"image_id": "7", "caption": "x"}], r"entry 0 needs"),
    "bool_id": (lambda r: [{"image_id": True, "caption": "x"}], r"entry 0 needs"),
    "number_caption": (lambda r: r[:1] + [{**r[1], "caption": 5}], r"entry 1 needs"),
    "null_caption": (lambda r: [{**r[0], "caption": None}], r"entry 0 needs"),
    "string_entry": (lambda r: ["a dog on a bed"], r"entry 0 needs"),
    "bad_json": (lambda r: "[{", r"not valid JSON"),
    "not_utf8": (lambda r: b'[{"image_id": 1, "caption": "\xff\xfe"}]', r"not valid JSON"),
    "unknown_ids": (lambda r: r + [{"image_id": i, "caption": "x"} for i in (1, 2)],
                    r"2 image ids are not annotated in .*ann.json \(1, 2\)"),
    "duplicate_ids": (lambda r: r + r[:3], r"3 image ids appear more than once"),
    "missing_images": (lambda r: r[:60], r"covers 60 of the 100 images .*40 missing"),
    "empty_allow_missing": (lambda r: [], r"covers 0 of the 100 images .*nothing to score"),
}  # fmt: skip
# name -> (annotations json content, error text); scored with the good results
BAD_ANNOTATIONS = {
    "not_coco": ([], r"not COCO caption annotations"),
    "no_annotations": ({"annotations": []}, r"no annotations"),
    "number_caption": ({"annotations": [{"image_id": 1, "caption": 3}]}, r"annotation 0 needs"),
    "bad_json": ('{"annotations": [', r"not valid JSON"),
}


@bad_input
@pytest.mark.parametrize("name", sorted(BAD_RESULTS))
def test_bad_results_file_is_named_with_the_fault(files, tmp_path, name):
    annotations, _, results = files
    make, message = BAD_RESULTS[name]
    path = _write(tmp_path, f"{name}.json", make(results))
    with pytest.raises(ValueError, match=re.escape(path) + ": " + message):
        metrics.score_files(str(annotations), path, ["bleu"], allow_missing="allow" in name)


@bad_input
@pytest.mark.parametrize("name", sorted(BAD_ANNOTATIONS))
def test_bad_annotations_file_is_named_with_the_fault(files, tmp_path, name):
    data, message = BAD_ANNOTATIONS[name]
    path = _write(tmp_path, f"{name}.json", data)
    with pytest.raises(ValueError, match=re.escape(path) + ": " + message):
        metrics.score_files(path, str(files[1]), ["bleu"])


@bad_input
def test_missing_files_and_bad_options(files, tmp_path):
    ann, res = str(files[0]), str(files[1])
    for args in ((ann, str(tmp_path / "absent.json")), (str(tmp_path / "absent.json"), res)):
        with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "absent.json"))):
            metrics.score_files(*args, ["bleu"])
    with pytest.raises(ValueError, match=r"unknown scorers \['spiced'\]"):
        metrics.score_files(ann, res, ["bleu", "spiced"])
    with pytest.raises(ValueError, match="cider_backend 'fast'"):
        metrics.score_captions({1: ["a"]}, {1: "a"}, ["cider"], cider_backend="fast")
    with pytest.raises(ValueError, match=r"only in cands: \[2\]"):
        metrics.score_captions({1: ["a"]}, {1: "a", 2: "b"}, ["bleu"])


@bad_input
def test_flags_validate_and_main_names_the_file(files, tmp_path):
    with flagsaver.flagsaver():
        with pytest.raises(flags.IllegalFlagValueError, match="--scorers takes"):
            flags.FLAGS.scorers = ["bleu", "nope"]
        with pytest.raises(flags.IllegalFlagValueError, match="pycocoevalcap"):
            flags.FLAGS["cider_backend"].parse("fast")
    bad = _write(tmp_path, "dup.json", files[2] + files[2][:1])
    with flagsaver.flagsaver(annotations=str(files[0]), results=bad, scorers=["bleu"]):
        with pytest.raises(errors.BadInput, match="dup.json: 1 image ids appear"):
            metrics.main(["metrics"])  # tfcap.cli.run prints it as one line
