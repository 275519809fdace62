"""Interruption: `kill -9` at random moments, then the same command again, resumes
from the last checkpoint, loses at most one checkpoint interval and (with
--deterministic) ends with the same weights as an uninterrupted run; a checkpoint
write killed midway leaves the previous checkpoint intact and restorable.

All runs use one command (`configs/smoke.flags` + BUDGET); the uninterrupted
reference is trained in-process, the interrupted runs in subprocesses.
"""

import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, run_train

from tfcap import checkpoints

BUDGET = dict(train_steps=24, checkpoint_every=4, keep_checkpoints=20, eval_every=100, log_every=1)
SEED = 20261126  # the kill moments


def _argv(data_dir, model_dir):
    return [
        f"--flagfile={REPO / 'configs' / 'smoke.flags'}",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        "--deterministic",
        *(f"--{k}={v}" for k, v in BUDGET.items()),
    ]


def _weights(path):
    """The model weights of checkpoint `path` (MODEL_DIR/ckpt/ckpt-N)."""
    return [v.numpy() for v in checkpoints.model_at(path).weights]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def _latest_step(model_dir) -> int:
    path = tf.train.latest_checkpoint(str(model_dir / "ckpt"))
    return int(path.rsplit("-", 1)[1]) if path else 0


@pytest.fixture(scope="module")
def reference(shapes_dir, tmp_path_factory):
    """An uninterrupted run of BUDGET (every checkpoint kept)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    run_train(shapes_dir, run, **BUDGET)
    return run


def _logged_step(log) -> int:
    steps = re.findall(r"xe step (\d+)/", log.read_text())
    return int(steps[-1]) if steps else 0


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_identical_weights(
    shapes_dir, reference, tmp_path
):
    """Two kills, each at a random moment of the checkpoint cycle after a new
    checkpoint: after a random number of further steps (up to the next save and
    into it) and a random fraction of a step."""
    rng = random.Random(SEED)
    run, log, every = tmp_path / "run", tmp_path / "train.log", BUDGET["checkpoint_every"]
    cmd = [sys.executable, "-m", "tfcap.train", *_argv(shapes_dir, run)]
    kills = []
    for _ in range(2):
        before = _latest_step(run)
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
            deadline = time.time() + 180
            while _latest_step(run) <= before:  # a new checkpoint
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.02)
            target = _latest_step(run) + rng.randint(1, every + 1)
            while _logged_step(log) < target:
                assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
                time.sleep(0.01)
            time.sleep(rng.uniform(0.0, 0.1))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(30) == -signal.SIGKILL
        done, kept = _logged_step(log), _latest_step(run)
        assert done < BUDGET["train_steps"]
        if before:
            assert f"resumed from {run}/ckpt/ckpt-{before} at step {before}" in log.read_text()
        # lost work: the steps after the last checkpoint, at most one interval
        assert 0 <= done - kept <= every, (done, kept)
        _assert_same(_weights(f"{run}/ckpt/ckpt-{kept}"), _weights(f"{reference}/ckpt/ckpt-{kept}"))
        kills.append({"killed_after_step": done, "resumes_from": kept})
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]  # the same command, to the end
    assert f"resumed from {run}/ckpt/ckpt-{kills[-1]['resumes_from']}" in out.stderr
    assert _latest_step(run) == BUDGET["train_steps"]
    _assert_same(
        _weights(tf.train.latest_checkpoint(str(run / "ckpt"))),
        _weights(tf.train.latest_checkpoint(str(reference / "ckpt"))),
    )
    print("interruptions:", kills)


# Runs tfcap.train with a SIGKILL at one point of writing checkpoint `target`:
# "shards": its data is written to the CKPT_temp/ directory, before the merge that
#   writes the final .index and .data files;
# "state": its .index and .data are complete, before the `checkpoint` state file
#   (CheckpointManager's record of the newest checkpoint) is updated.
KILLED_SAVE = textwrap.dedent(
    """
    import os, signal, sys
    from tensorflow.python.checkpoint import checkpoint_management
    from tensorflow.python.ops import gen_io_ops
    point, target, argv = sys.argv[1], sys.argv[2], sys.argv[3:]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if point == "shards":
        merge = gen_io_ops.merge_v2_checkpoints

        def killing_merge(prefixes, destination, *args, **kwargs):
            if str(destination.numpy().decode()).endswith(target):
                die()
            return merge(prefixes, destination, *args, **kwargs)

        gen_io_ops.merge_v2_checkpoints = killing_merge
    else:
        update = checkpoint_management.update_checkpoint_state_internal

        def killing_update(*args, **kwargs):
            path = kwargs.get("model_checkpoint_path") or args[1]
            if path.endswith(target):
                die()
            return update(*args, **kwargs)

        checkpoint_management.update_checkpoint_state_internal = killing_update
    from absl import app
    from tfcap import train
    sys.argv = ["train", *argv]
    app.run(train.main)
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["shards", "state", "corrupt_newest"])
def test_interrupted_checkpoint_write_leaves_the_previous_one_usable(
    shapes_dir, reference, tmp_path, point
):
    run, target = tmp_path / "run", "/ckpt/ckpt-8"
    if point == "corrupt_newest":
        # Not an interrupted write (those never touch the newest complete checkpoint)
        # but a damaged one: the run falls back to the checkpoint before it.
        run_train(shapes_dir, run, **{**BUDGET, "train_steps": 8})
        data = next((run / "ckpt").glob("ckpt-8.data-*"))
        data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    else:
        out = subprocess.run(
            [sys.executable, "-c", KILLED_SAVE, point, target, *_argv(shapes_dir, run)],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )
        assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
        assert tf.train.latest_checkpoint(str(run / "ckpt")).endswith("ckpt-4")
        leftovers = {p.name for p in (run / "ckpt").iterdir()}
        if point == "shards":
            assert "ckpt-8_temp" in leftovers and "ckpt-8.index" not in leftovers
        else:
            assert "ckpt-8.index" in leftovers  # complete, but not recorded
        # the previous checkpoint is intact and usable by the readers (evaluate, export)
        model, _, _ = checkpoints.load_model(str(run), "latest")
        _assert_same([v.numpy() for v in model.weights], _weights(f"{reference}/ckpt/ckpt-4"))
    # The same command again resumes from ckpt-4 and ends as the uninterrupted run.
    run_train(shapes_dir, run, **BUDGET)
    _assert_same(
        _weights(tf.train.latest_checkpoint(str(run / "ckpt"))),
        _weights(tf.train.latest_checkpoint(str(reference / "ckpt"))),
    )
