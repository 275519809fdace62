"""Shared fixtures: paths to the real data, and small prepared datasets."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver

import tfcap  # noqa: F401  (quiets TensorFlow's start-up logging before it loads)

flags.FLAGS.mark_as_parsed()

REPO = pathlib.Path(__file__).resolve().parents[1]

# The bad-input inventory: every malformed-input test carries `@pytest.mark.bad_input(AREA)`.
# `pytest -m bad_input --collect-only -q` lists them and prints the count per area.
BAD_INPUT_AREAS = (
    "data prep",
    "feature extraction",
    "training input",
    "evaluation",
    "captioning",
    "serving",
    "benchmarks",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        for mark in item.iter_markers("bad_input"):
            if len(mark.args) != 1 or mark.args[0] not in BAD_INPUT_AREAS:
                raise pytest.UsageError(
                    f"{item.nodeid}: bad_input takes one area from {BAD_INPUT_AREAS}, "
                    f"got {mark.args}"
                )


def pytest_report_collectionfinish(config, start_path, items):
    """With `-m ...bad_input...`: one line, the selected bad-input tests per area."""
    if "bad_input" not in (config.option.markexpr or ""):
        return []
    counts = dict.fromkeys(BAD_INPUT_AREAS, 0)
    for item in items:
        mark = item.get_closest_marker("bad_input")
        if mark is not None:
            counts[mark.args[0]] += 1
    per_area = ", ".join(f"{area} {n}" for area, n in counts.items())
    return [f"bad_input inventory: {sum(counts.values())} tests ({per_area})"]


# The real photos and captions the tests use, kept in the repository (sources and
# licences in tests/assets/README.md and LICENSES.md).
ASSETS = REPO / "tests" / "assets"


def shared_data_dir() -> pathlib.Path:
    """The real test data: $TFCAP_SHARED_DATA when set and not empty, else tests/assets."""
    env = os.environ.get("TFCAP_SHARED_DATA")
    return pathlib.Path(env) if env else ASSETS


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    path = shared_data_dir()
    if not (path / "coco_val2014_samples").is_dir():
        raise FileNotFoundError(
            f"real test data not found at {path}/coco_val2014_samples "
            "($TFCAP_SHARED_DATA names a directory without it; unset it to use tests/assets)"
        )
    return path


def run_prepare(output_dir, **flag_values) -> dict:
    """Runs tfcap.data.prepare in-process with these flags (strings, as on a command line)."""
    from tfcap.data import prepare

    values = {"output_dir": str(output_dir), "num_workers": "1", **flag_values}
    with flagsaver.as_parsed(**{k: str(v) for k, v in values.items()}):
        return prepare.prepare()


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> pathlib.Path:
    """A tiny shapes dataset: 40/10/10 scenes, 16-d float32 features, 2 train shards."""
    return prepare_shapes(tmp_path_factory.mktemp("data") / "shapes", "train=40,val=10,test=10")


def prepare_shapes(out, sizes: str, num_shards: int = 2) -> pathlib.Path:
    """A small shapes dataset at `out`: `sizes` like "train=8,val=4,test=2", 16-d float32."""
    run_prepare(
        out,
        source="shapes",
        shapes_sizes=sizes,
        shapes_feature_dim=16,
        features_dtype="float32",
        num_shards=num_shards,
        vocab_min_count=1,
    )
    return out


def run_train(data_dir, model_dir, **overrides):
    """Runs `python -m tfcap.train --flagfile=configs/smoke.flags ...` in-process."""
    from absl import flags

    from tfcap import train

    argv = [
        "train",
        f"--flagfile={REPO / 'configs' / 'smoke.flags'}",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        "--deterministic",
        *(f"--{k}={v}" for k, v in overrides.items()),
    ]
    cwd = os.getcwd()
    os.chdir(REPO)  # nested --flagfile paths resolve from the repository root
    try:
        with flagsaver.flagsaver():
            flags.FLAGS(argv)
            train.main(["train"])
    finally:
        os.chdir(cwd)


def run_script_json(script: str, *args) -> dict:
    """Runs `python -c script args...` from the repository root (a fresh TensorFlow,
    e.g. to split the CPU into devices) and returns its last stdout line as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
