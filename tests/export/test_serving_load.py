"""The test server (tests/export/serving_server.py, its own process) under 8 concurrent clients.

A bounded, seeded mix of good and bad requests: every good one must be answered 200 with
exactly what the SavedModel itself returns for that batch (called directly here), every bad
one 400 with only `{"error": ...}`, nothing may go unanswered, and the server's resident
memory (psutil) must stay flat: after a warm-up round, `ROUNDS` more rounds may grow it by
at most `RSS_GROWTH_BOUND_MB`, and the rounds after the first by `RSS_LATE_GROWTH_BOUND_MB`
(a leak keeps growing; allocator arenas settle). The figures are printed (`pytest -s`).
"""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import psutil
import pytest
import tensorflow as tf
from conftest import REPO, shared_data_dir
from export_fixtures import MODEL_NAME, sample_images
from test_request_fuzz import NASTY
from test_rest import BAD_REQUESTS, FEATURE_REQUESTS

from export.client import b64

pytest_plugins = ["export_fixtures"]
pytestmark = [pytest.mark.slow, pytest.mark.bad_input("serving")]

CLIENTS = 8
WARMUP_PER_CLIENT = 8
ROUNDS, PER_CLIENT = 4, 25  # after the warm-up: ROUNDS x CLIENTS x PER_CLIENT requests
GOOD_SHARE = 0.6
RSS_GROWTH_BOUND_MB = 32.0  # after the warm-up, to the end
RSS_LATE_GROWTH_BOUND_MB = 16.0  # from the end of round 1 to the end: a leak grows on


def _rows(columns: dict, index) -> list[dict]:
    return [{k: v[i].tolist() for k, v in columns.items()} for i in index]


def good_requests(test_batch, images) -> list[tuple[str, dict]]:
    """(name, body): both signatures, row and columnar, named and bare, batches 1 to 4."""
    cols, sig = test_batch, {"signature_name": "caption_features"}
    return [
        ("features row [0]", {**sig, "instances": _rows(cols, [0])}),
        ("features row [1, 2]", {**sig, "instances": _rows(cols, [1, 2])}),
        ("features row [0..3]", {**sig, "instances": _rows(cols, range(4))}),
        ("features columnar [0..3]", {**sig, "inputs": {k: v.tolist() for k, v in cols.items()}}),
        (
            "features columnar [1..3]",
            {**sig, "inputs": {k: v[1:].tolist() for k, v in cols.items()}},
        ),
        ("images row named [0]", {"instances": [{"image_bytes": b64(images[0])}]}),
        ("images row bare [1]", {"instances": [b64(images[1])]}),
        ("images columnar bare [0, 1]", {"inputs": [b64(d) for d in images]}),
    ]


def direct_outputs(saved_model, body: dict) -> dict[str, np.ndarray]:
    """The SavedModel's own outputs for a good request body (no server involved)."""
    fn = saved_model.signatures[body.get("signature_name", "serving_default")]
    specs = fn.structured_input_signature[1]
    if "instances" in body:
        rows = [r if isinstance(r, dict) and "b64" not in r else {"image_bytes": r}
                for r in body["instances"]]  # fmt: skip
        columns = {n: [r[n] for r in rows] for n in specs}
    else:
        inputs = body["inputs"]
        columns = inputs if isinstance(inputs, dict) else {"image_bytes": inputs}
    tensors = {}
    for name, value in columns.items():
        if specs[name].dtype == tf.string:
            value = [base64.b64decode(v["b64"]) for v in value]
        tensors[name] = tf.constant(value, specs[name].dtype)
    out = {k: v.numpy() for k, v in fn(**tensors).items()}
    out["caption"] = np.array([c.decode("utf-8") for c in out["caption"]], object)
    return out


def served_outputs(answer: dict) -> dict[str, np.ndarray]:
    if "predictions" in answer:
        rows = answer["predictions"]
        columns = {k: [r[k] for r in rows] for k in rows[0]}
    else:
        columns = answer["outputs"]
    return {k: np.array(v, object if k == "caption" else None) for k, v in columns.items()}


def same_outputs(got: dict, want: dict) -> bool:
    if sorted(got) != sorted(want):
        return False
    for key in want:
        if key in ("caption", "tokens"):
            if not np.array_equal(got[key], want[key]):
                return False
        elif not np.allclose(got[key], want[key], rtol=1e-4, atol=1e-4):
            return False
    return True


def bad_requests(test_batch) -> list[tuple[str, bytes]]:
    out = [(name, json.dumps(body).encode()) for name, (body, _) in BAD_REQUESTS.items()]
    for name, (make, _) in FEATURE_REQUESTS.items():
        body = {"signature_name": "caption_features", **make(test_batch)}
        out.append((name, json.dumps(body).encode()))
    out += [(f"nasty {i}", body[:200_000]) for i, body in enumerate(NASTY)]
    out += [("not json", b"{not json"), ("a list", b"[1, 2]"), ("no body", b"")]
    return out


@pytest.fixture(scope="module")
def server(export_base, tmp_path_factory):
    """`python tests/export/serving_server.py` on a free port: (url, psutil.Process)."""
    log = open(tmp_path_factory.mktemp("load") / "server.log", "w+")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "tests" / "export" / "serving_server.py"),
         f"--model_base_path={export_base}", f"--model_name={MODEL_NAME}", "--port=0"],
        stdout=subprocess.PIPE, stderr=log, text=True, cwd=REPO,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()  # "serving NAME on http://HOST:PORT", after loading
        if not line.startswith("serving"):
            log.seek(0)
            pytest.fail(f"server did not start: {line!r}\n{log.read()[-3000:]}")
        yield line.split()[-1], psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def _post(url: str, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"{url}/v1/models/{MODEL_NAME}:predict", data=body)
    try:
        with urllib.request.urlopen(request, timeout=300) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


class Load:
    """Runs CLIENTS threads against the server and tallies what came back."""

    def __init__(self, url: str, good, bad, expected):
        self.url, self.good, self.bad, self.expected = url, good, bad, expected
        self.lock = threading.Lock()
        self.tally = {"good sent": 0, "good correct": 0, "bad sent": 0, "bad 400": 0}
        self.failures: list[str] = []

    def one(self, rng: random.Random) -> None:
        is_good = rng.random() < GOOD_SHARE
        index = rng.randrange(len(self.good if is_good else self.bad))
        name, body = (self.good if is_good else self.bad)[index]
        try:
            status, answer = _post(self.url, body)
        except Exception as err:  # noqa: BLE001 - a lost request is a finding, not a crash
            status, answer = None, {"exception": repr(err)}
        if is_good:
            ok = status == 200 and same_outputs(served_outputs(answer), self.expected[index])
        else:
            ok = status == 400 and list(answer) == ["error"]
        key = "good" if is_good else "bad"
        with self.lock:
            self.tally[f"{key} sent"] += 1
            self.tally["good correct" if is_good else "bad 400"] += ok
            if not ok:
                self.failures.append(f"{name}: {status} {str(answer)[:200]}")

    def run(self, per_client: int, seed: int) -> None:
        def client(c: int) -> None:
            rng = random.Random(seed * 1000 + c)
            for _ in range(per_client):
                self.one(rng)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def test_eight_clients_mixed_requests_all_answered_rss_flat(server, export_base, test_batch):
    url, process = server
    images = sample_images(shared_data_dir())
    good = good_requests(test_batch, images)
    saved_model = tf.saved_model.load(str(export_base / "1"))
    expected = [direct_outputs(saved_model, body) for _, body in good]
    good = [(name, json.dumps(body).encode()) for name, body in good]
    load = Load(url, good, bad_requests(test_batch), expected)

    mb = 1 << 20
    rss = {"loaded": process.memory_info().rss / mb}
    start = time.monotonic()
    load.run(WARMUP_PER_CLIENT, seed=0)
    rss["after warm-up"] = process.memory_info().rss / mb
    peak, sampling = [rss["after warm-up"]], threading.Event()

    def sample() -> None:
        while not sampling.wait(0.1):
            peak.append(process.memory_info().rss / mb)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for r in range(1, ROUNDS + 1):
        load.run(PER_CLIENT, seed=r)
        rss[f"after round {r}"] = process.memory_info().rss / mb
    sampling.set()
    sampler.join()
    seconds = time.monotonic() - start
    rss["peak"] = max(peak)
    sent = load.tally["good sent"] + load.tally["bad sent"]
    print(
        f"\nserving load: {CLIENTS} clients, {sent} requests in {seconds:.1f}s "
        f"({sent / seconds:.1f}/s): {load.tally}; RSS MB "
        + ", ".join(f"{k} {v:.1f}" for k, v in rss.items())
    )

    assert not load.failures, load.failures[:10]
    assert sent == CLIENTS * (WARMUP_PER_CLIENT + ROUNDS * PER_CLIENT)
    assert load.tally["good correct"] == load.tally["good sent"] > 0
    assert load.tally["bad 400"] == load.tally["bad sent"] > 0
    assert process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    with urllib.request.urlopen(f"{url}/v1/models/{MODEL_NAME}", timeout=60) as answer:
        assert json.loads(answer.read())["model_version_status"][0]["state"] == "AVAILABLE"
    end = rss[f"after round {ROUNDS}"]
    assert end - rss["after warm-up"] <= RSS_GROWTH_BOUND_MB, rss
    assert end - rss["after round 1"] <= RSS_LATE_GROWTH_BOUND_MB, rss
