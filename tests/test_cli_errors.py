"""Entry points tell a user mistake in one line on stderr and exit non-zero; bugs keep
their traceback (`tfcap.cli`).

Each case runs `python -m MODULE ...` in a fresh process from the repository root, with
TensorFlow's C++ logging off (`TF_CPP_MIN_LOG_LEVEL=3`: its `cuInit` start-up line is
not ours), so stderr must be exactly the one `python -m MODULE: error: ...` line.
"""

import os
import subprocess
import sys

import pytest
from absl import app
from conftest import REPO

from tfcap import cli, errors

bad_input = pytest.mark.bad_input


# (module, arguments, text the error line must hold, exit status). In arguments and text,
# {data} is a prepared dataset (a foreign directory where a model dir is expected) and
# {tmp} a fresh directory holding `full/` (not empty) and `features.tsv`.
CASES = [
    pytest.param(
        "tfcap.train",
        ["--data_dir={tmp}/nonexistent", "--model_dir={tmp}/run"],
        "{tmp}/nonexistent/dataset.json not found",
        1,
        marks=bad_input("training input"),
        id="train-missing-data-dir",
    ),
    pytest.param(
        "tfcap.train",
        ["--data_dir={data}", "--model_dir={tmp}/run", "--batch_size=1000"],
        "--batch_size=1000 exceeds the 40 train images",
        1,
        marks=bad_input("training input"),
        id="train-batch-over-split",
    ),
    pytest.param(
        "tfcap.train",
        ["--data_dir={data}", "--model_dir={tmp}/run", "--baseline=mean", "--num_samples=1"],
        "--baseline=mean needs --num_samples >= 2",
        2,
        marks=bad_input("training input"),
        id="train-inconsistent-flags",
    ),
    pytest.param(
        "tfcap.train",
        [
            "--data_dir={data}",
            "--model_dir={tmp}/run",
            "--gan_reward_scale=spread",
            "--baseline=greedy",
            "--phases=xe,scst,gan",
        ],
        "--gan_reward_scale=spread needs --baseline=mean",
        2,
        marks=bad_input("training input"),
        id="train-spread-reward-with-greedy-baseline",
    ),
    pytest.param(
        "tfcap.train",
        ["--data_dir={data}"],
        "--model_dir is required",
        2,
        marks=bad_input("training input"),
        id="train-no-model-dir",
    ),
    pytest.param(
        "tfcap.evaluate",
        ["--model_dir={tmp}/nonexistent"],
        "{tmp}/nonexistent/model.json not found",
        1,
        marks=bad_input("evaluation"),
        id="evaluate-missing-model-dir",
    ),
    pytest.param(
        "tfcap.evaluate",
        ["--model_dir={data}"],
        "{data}/model.json not found",
        1,
        marks=bad_input("evaluation"),
        id="evaluate-dataset-as-model-dir",
    ),
    pytest.param(
        "tfcap.metrics",
        ["--annotations={data}/annotations_test.json", "--results={tmp}/results.json"],
        "{tmp}/results.json: no such file",
        1,
        marks=bad_input("evaluation"),
        id="metrics-missing-results",
    ),
    pytest.param(
        "tfcap.metrics",
        ["--annotations={data}/annotations_test.json", "--results={data}/dataset.json"],
        "{data}/dataset.json: results must be a JSON list",
        1,
        marks=bad_input("evaluation"),
        id="metrics-foreign-results",
    ),
    pytest.param(
        "tfcap.caption",
        ["--model_dir={tmp}/nonexistent", "--features_dir={data}"],
        "{tmp}/nonexistent/model.json not found",
        1,
        marks=bad_input("captioning"),
        id="caption-missing-model-dir",
    ),
    pytest.param(
        "tfcap.data.prepare",
        ["--output_dir={tmp}/full"],
        "{tmp}/full is not empty; pass --overwrite",
        1,
        marks=bad_input("data prep"),
        id="prepare-non-empty-output",
    ),
    pytest.param(
        "tfcap.data.prepare",
        [
            "--output_dir={tmp}/out",
            "--source=coco",
            "--coco_annotations=train={tmp}/captions.json",
            "--butd_tsv={tmp}/features.tsv",
        ],
        "{tmp}/captions.json: no such file",
        1,
        marks=bad_input("data prep"),
        id="prepare-missing-annotations",
    ),
    pytest.param(
        "tfcap.features.extract",
        ["--images={tmp}/none/*.jpg", "--output_dir={tmp}/out", "--detector_handle={tmp}/det"],
        "{tmp}/none/*.jpg: no image files found",
        2,
        marks=bad_input("feature extraction"),
        id="extract-no-images",
    ),
    pytest.param(
        "tfcap.bench",
        ["--only=peak,nope"],
        "--only: unknown benchmarks ['nope']",
        2,
        id="bench-unknown-benchmark",
    ),
    pytest.param(
        "export.saved_model",
        ["--model_dir={tmp}/nonexistent", "--export_base={tmp}/export"],
        "{tmp}/nonexistent/model.json not found",
        1,
        marks=bad_input("serving"),
        id="saved-model-missing-model-dir",
    ),
    pytest.param(
        "export.tflite",
        ["--model_dir={data}", "--output_dir={tmp}/tflite"],
        "{data}/model.json not found",
        1,
        marks=bad_input("serving"),
        id="tflite-dataset-as-model-dir",
    ),
    pytest.param(
        "export.client",
        ["features", "{tmp}/regions.npz"],
        "{tmp}/regions.npz: no such file",
        1,
        marks=bad_input("serving"),
        id="client-missing-npz",
    ),
    pytest.param(
        "export.client",
        ["--serving_url=http://127.0.0.1:1", "frobnicate", "x.jpg"],
        "got ['frobnicate', 'x.jpg']; commands: status",
        2,
        marks=bad_input("serving"),
        id="client-unknown-command",
    ),
]


@pytest.mark.parametrize("module, args, named, status", CASES)
def test_a_user_mistake_is_one_line_without_traceback(
    module, args, named, status, shapes_dir, tmp_path
):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.txt").write_text("keep me\n")
    (tmp_path / "features.tsv").write_text("")
    fill = {"data": str(shapes_dir), "tmp": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", module, *(a.format(**fill) for a in args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
        check=False,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]  # nothing else from Python
    assert lines[0].startswith(f"python -m {module}: error: "), lines[0]
    assert named.format(**fill) in lines[0]
    assert proc.returncode == status, proc.stderr
    assert (tmp_path / "full" / "old.txt").read_text() == "keep me\n"


def _main_raising(error):
    def main(argv):
        raise error

    return main


def test_a_user_error_inside_guarded_is_one_line_and_status_1(capsys):
    main = cli.guarded(_main_raising(errors.BadInput("a.json:\n  line 3: bad")), "prog")
    with pytest.raises(SystemExit) as exit_:
        main(["prog"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "prog: error: a.json: line 3: bad\n"
    with pytest.raises(SystemExit) as exit_:
        cli.guarded(_main_raising(app.UsageError("--x and --y clash")), "prog")(["prog"])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "prog: error: --x and --y clash (--helpshort lists the flags)\n"
    )


@pytest.mark.parametrize(
    "bug", [KeyError("vocab_size"), AssertionError("shapes"), FileNotFoundError(2, "gone")]
)
def test_a_bug_keeps_its_traceback(bug, capsys):
    """Anything but a UserError or UsageError propagates, a plain FileNotFoundError too
    (the code meant to name a missing input would have raised MissingInput)."""
    with pytest.raises(type(bug)) as raised:
        cli.guarded(_main_raising(bug), "prog")(["prog"])
    assert raised.value is bug
    assert capsys.readouterr().err == ""
