"""tfcap.evaluate: decoding a split, results file, and scores equal to pycocoevalcap's."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, run_train

from tfcap import evaluate

bad_input = pytest.mark.bad_input("evaluation")


@pytest.fixture(scope="module")
def trained(shapes_dir, tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("eval") / "run"
    run_train(shapes_dir, model_dir, train_steps=30, eval_every=30, checkpoint_every=30)
    return model_dir


def _pycocoevalcap_direct(annotations, results):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    from pycocotools.coco import COCO

    coco = COCO(str(annotations))
    res = coco.loadRes(str(results))
    ids = res.getImgIds()
    tok = PTBTokenizer()
    gts = tok.tokenize({i: coco.imgToAnns[i] for i in ids})
    cands = tok.tokenize({i: res.imgToAnns[i] for i in ids})
    bleu, _ = Bleu(4).compute_score(gts, cands, verbose=0)
    scores = {f"Bleu_{n + 1}": b for n, b in enumerate(bleu)}
    scores["ROUGE_L"] = Rouge().compute_score(gts, cands)[0]
    scores["CIDEr"] = Cider().compute_score(gts, cands)[0]
    return scores


def test_evaluate_writes_results_and_matches_pycocoevalcap(trained, shapes_dir, tmp_path):
    results = tmp_path / "results.json"
    scores, decoded, refs = evaluate.evaluate(
        str(trained),
        str(shapes_dir),
        "test",
        beam_size=2,
        scorers=["bleu", "rouge", "cider"],
        swap_control=True,
        results_json=str(results),
    )
    written = json.loads(results.read_text())
    assert sorted(r["image_id"] for r in written) == sorted(refs)
    assert len(written) == 10 and all(isinstance(r["caption"], str) for r in written)
    direct = _pycocoevalcap_direct(shapes_dir / "annotations_test.json", results)
    for key, value in direct.items():
        assert scores[key] == pytest.approx(value, abs=1e-9), key
    assert "swapped_CIDEr" in scores and scores["images"] == 10
    table = evaluate.report(scores, decoded, refs, 2)
    assert "CIDEr" in table.splitlines()[0]
    assert decoded.captions[0] in table


def test_cli_prints_one_json_line(trained, shapes_dir, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tfcap.evaluate",
            f"--model_dir={trained}",
            "--split=val",
            "--beam_size=1",
            "--eval_scorers=bleu,cider",
            "--max_images=5",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    scores = json.loads(lines[0])
    assert scores["images"] == 5 and set(scores) >= {"Bleu_4", "CIDEr", "split"}


@bad_input
def test_missing_model_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.json not found"):
        evaluate.evaluate(str(tmp_path), None, "test")


@bad_input
def test_unwritable_results_json_is_refused_before_decoding(tmp_path):
    # No model dir at all: the results path is checked first, so no decoding is wasted.
    with pytest.raises(FileNotFoundError, match=r"results json .*r.json: directory .* not exist"):
        evaluate.evaluate(str(tmp_path), None, "test", results_json=str(tmp_path / "no" / "r.json"))
    with pytest.raises(IsADirectoryError, match="is a directory"):
        evaluate.evaluate(str(tmp_path), None, "test", results_json=str(tmp_path))


@bad_input
def test_unknown_split_and_missing_data_dir_are_named(trained, shapes_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no shards for split 'dev'"):
        evaluate.evaluate(str(trained), str(shapes_dir), "dev")
    with pytest.raises(FileNotFoundError, match=f"dataset.json not found.*{tmp_path}|{tmp_path}"):
        evaluate.evaluate(str(trained), str(tmp_path), "test")
    assert not list(tmp_path.iterdir())  # nothing written
