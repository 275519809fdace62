"""Multi-worker training: two local worker processes (TF_CONFIG on 127.0.0.1 ports)
train to the weights of one process on the same global batch; when a worker is
killed the other stops with a clear error, and restarting both resumes from the
chief's checkpoint.

Same global batch: the tiny dataset has 8 train images in 2 shards and the
batch is all 8, so one process sees the whole set each step and each worker
sees its shard (4 images); only the order of the sums differs. Weights agree to
float32 rounding (the measured max difference is printed; tolerance 1e-5).
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import REPO, prepare_shapes, run_train

from tfcap import checkpoints

BUDGET = dict(
    batch_size=8,
    scheduled_sampling_start=-1,  # sampling draws per replica: not comparable
    checkpoint_every=2,
    keep_checkpoints=10,
    eval_every=100,
    log_every=1,
    val_images=4,
)
TOLERANCE = 1e-5
DETECTION_LIMIT_S = 60  # a peer's death is seen in about 10 s (coordination heartbeats)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return prepare_shapes(tmp_path_factory.mktemp("tiny") / "shapes", "train=8,val=4,test=2")


@pytest.fixture(scope="module")
def reference(tiny_dir, tmp_path_factory):
    """One process, default strategy, 8 steps of the global batch (every 2nd kept)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    run_train(tiny_dir, run, train_steps=8, **BUDGET)
    return run


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _start_workers(data_dir, model_dir, steps, logs):
    cluster = {"worker": [f"127.0.0.1:{p}" for p in _free_ports(2)]}
    argv = [
        sys.executable,
        "-m",
        "tfcap.train",
        f"--flagfile={REPO / 'configs' / 'smoke.flags'}",
        f"--data_dir={data_dir}",
        f"--model_dir={model_dir}",
        "--deterministic",
        "--strategy=multi_worker",
        f"--train_steps={steps}",
        *(f"--{k}={v}" for k, v in BUDGET.items()),
    ]
    procs = []
    for i, log in enumerate(logs):
        config = {"cluster": cluster, "task": {"type": "worker", "index": i}}
        env = {**os.environ, "TF_CONFIG": json.dumps(config)}
        with open(log, "w") as out:
            procs.append(
                subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
            )
    return procs


def _wait_all(procs, logs, timeout=300):
    try:
        return [p.wait(timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            print(f"--- {log.name}:", *log.read_text().splitlines()[-5:], sep="\n")


def _weights(path):
    return [v.numpy() for v in checkpoints.model_at(path).weights]


def _max_diff(a, b):
    assert len(a) == len(b)
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b, strict=True))


def _latest_step(model_dir) -> int:
    path = tf.train.latest_checkpoint(str(model_dir / "ckpt"))
    return int(path.rsplit("-", 1)[1]) if path else 0


@pytest.mark.slow
def test_two_workers_train_to_the_weights_of_one_process(tiny_dir, reference, tmp_path):
    run, logs = tmp_path / "run", [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    codes = _wait_all(_start_workers(tiny_dir, run, 4, logs), logs)
    assert codes == [0, 0]
    assert "2 replicas" in logs[0].read_text()
    assert not (run / ".worker1").exists()  # the non-chief's scratch copy is dropped
    diff = _max_diff(_weights(f"{run}/ckpt/ckpt-4"), _weights(f"{reference}/ckpt/ckpt-4"))
    print(f"multi-worker vs one process after 4 steps: max |weight diff| {diff:.3g}")
    assert diff < TOLERANCE


@pytest.mark.slow
def test_a_dead_worker_stops_the_job_which_resumes_from_the_checkpoint(
    tiny_dir, reference, tmp_path
):
    run = tmp_path / "run"
    logs = [tmp_path / "worker0.log", tmp_path / "worker1.log"]
    procs = _start_workers(tiny_dir, run, 8, logs)
    try:
        deadline = time.time() + 180
        while _latest_step(run) < 2:
            assert all(p.poll() is None for p in procs), logs[0].read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint written"
            time.sleep(0.05)
        time.sleep(random.Random(7).uniform(0.0, 1.0))
        procs[1].send_signal(signal.SIGKILL)
        killed = time.time()
        code = procs[0].wait(DETECTION_LIMIT_S + 30)
        detection = time.time() - killed
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    text = logs[0].read_text()
    assert code != 0
    assert "WorkerLostError: worker 0: the multi-worker job lost a worker" in text
    assert "Restart every worker with the same command" in text
    print(f"worker 1 killed: worker 0 stopped {detection:.1f} s later")
    assert detection < DETECTION_LIMIT_S
    kept = _latest_step(run)
    assert 2 <= kept < 8

    logs = [tmp_path / "again0.log", tmp_path / "again1.log"]
    codes = _wait_all(_start_workers(tiny_dir, run, 8, logs), logs)
    assert codes == [0, 0]
    for log in logs:  # every worker restores the chief's checkpoint
        assert f"resumed from {run}/ckpt/ckpt-{kept} at step {kept}" in log.read_text()
    diff = _max_diff(_weights(f"{run}/ckpt/ckpt-8"), _weights(f"{reference}/ckpt/ckpt-8"))
    print(f"resumed at step {kept}; vs one process after 8 steps: max |weight diff| {diff:.3g}")
    assert diff < TOLERANCE
