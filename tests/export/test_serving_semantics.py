"""What the test server (tests/export/serving_server.py) does as TF Serving does, where users
would notice: the version policy (newest only by default; `--model_config_file` policies and
labels), NaN/Infinity in JSON, and request batching (merging, limits, padding, shared failure).
The behaviour each test asserts is the real server's, from its source (module docstring of
serving_server.py); `test_real_server_version_policy` runs the same policy checks against
`tensorflow_model_server` when it is on PATH."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
from export_fixtures import MODEL_NAME
from serving_batching import BatchScheduler, batching_parameters
from serving_errors import RequestError
from serving_server import ModelStore, ServingApp, load_model_config, main

from export.client import ServingClient, ServingError

pytest_plugins = ["export_fixtures"]
bad_input = pytest.mark.bad_input("serving")


@pytest.fixture(scope="module")
def three_versions(export_base, tmp_path_factory):
    """A model base path with versions 1, 2 and 3 (copies of the one export)."""
    base = tmp_path_factory.mktemp("versions") / MODEL_NAME
    for version in (1, 2, 3):
        shutil.copytree(export_base / "1", base / str(version))
    return base


def get(app, path):
    return app.handle("GET", path, b"")


def post(app, path, body):
    return app.handle("POST", path, json.dumps(body).encode())


def versions_in_status(app, name=MODEL_NAME):
    status, answer = get(app, f"/v1/models/{name}")
    assert status == 200, answer
    return [int(v["version"]) for v in answer["model_version_status"]]


def features_body(test_batch, rows=(0,), regions=None):
    n = regions or test_batch["features"].shape[1]
    return {
        "signature_name": "caption_features",
        "inputs": {
            "features": test_batch["features"][list(rows), :n].tolist(),
            "boxes": test_batch["boxes"][list(rows), :n].tolist(),
            "num_regions": np.minimum(test_batch["num_regions"][list(rows)], n).tolist(),
        },
    }


def test_default_policy_serves_only_the_newest_version(three_versions, test_batch):
    app = ServingApp(ModelStore(str(three_versions), MODEL_NAME))
    assert versions_in_status(app) == [3]
    status, answer = post(
        app, f"/v1/models/{MODEL_NAME}/versions/1:predict", features_body(test_batch)
    )
    assert (status, answer) == (
        404,
        {"error": "Servable not found for request: Specific(tfcap, 1)"},
    )
    status, answer = get(app, f"/v1/models/{MODEL_NAME}/versions/1")
    assert (status, answer) == (404, {"error": "Could not find version 1 of model tfcap"})
    status, answer = get(app, f"/v1/models/{MODEL_NAME}/metadata")
    assert status == 200 and answer["model_spec"]["version"] == "3"


def _config(tmp_path, *models: str) -> str:
    path = tmp_path / "models.config"
    entries = "".join(f"  config {{ {m} }}\n" for m in models)
    path.write_text(f"model_config_list {{\n{entries}}}\n")
    return str(path)


def test_model_config_file_policies_and_labels(three_versions, test_batch, tmp_path):
    base = f'name: "{MODEL_NAME}" base_path: "{three_versions}" model_platform: "tensorflow"'
    policies = {
        "model_version_policy { all {} }": [3, 2, 1],
        "model_version_policy { latest { num_versions: 2 } }": [3, 2],
        "model_version_policy { specific { versions: 1 versions: 3 } }": [3, 1],
    }
    for policy, served in policies.items():
        app = ServingApp(load_model_config(_config(tmp_path, f"{base} {policy}")))
        assert versions_in_status(app) == served, policy
    labels = 'version_labels { key: "stable" value: 1 } version_labels { key: "canary" value: 3 }'
    other = f'name: "other" base_path: "{three_versions}"'  # a second model, default policy
    specific = "model_version_policy { specific { versions: 1 versions: 3 } }"
    app = ServingApp(load_model_config(_config(tmp_path, f"{base} {specific} {labels}", other)))
    assert versions_in_status(app, "other") == [3]
    body = features_body(test_batch)
    for path, version in (("labels/stable", "1"), ("labels/canary", "3"), ("versions/1", "1")):
        status, answer = get(app, f"/v1/models/{MODEL_NAME}/{path}/metadata")
        assert status == 200 and answer["model_spec"]["version"] == version, path
        assert post(app, f"/v1/models/{MODEL_NAME}/{path}:predict", body)[0] == 200, path
    status, answer = post(app, f"/v1/models/{MODEL_NAME}/labels/beta:predict", body)
    assert (status, answer) == (400, {"error": "Unrecognized servable version label: beta"})
    for label in ("stable", "beta"):  # GetModelStatus looks at a version, never a label
        assert versions_in_status(app, f"{MODEL_NAME}/labels/{label}") == [3, 1], label
    assert post(app, f"/v1/models/{MODEL_NAME}/versions/2:predict", body)[0] == 404
    with pytest.raises(ValueError, match="assign label to version 2 of model tfcap, which is not"):
        load_model_config(_config(tmp_path, f'{base} version_labels {{ key: "x" value: 2 }}'))


def test_client_reaches_a_configured_version(three_versions, tmp_path):
    from serving_server import make_server, start_in_thread

    base = f'name: "{MODEL_NAME}" base_path: "{three_versions}"'
    config = _config(tmp_path, f"{base} model_version_policy {{ specific {{ versions: 1 }} }}")
    server = make_server(model_config_file=config)
    thread = start_in_thread(server)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert ServingClient(url, MODEL_NAME, version=1).metadata()["model_spec"]["version"] == "1"
        with pytest.raises(ServingError, match=r"Specific\(tfcap, 3\)") as err:
            ServingClient(url, MODEL_NAME, version=3).metadata()  # on disk, not served
        assert err.value.status == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_nan_and_infinity_are_accepted_and_written_back(export_base, test_batch):
    app = ServingApp(ModelStore(str(export_base), MODEL_NAME))
    body = features_body(test_batch)
    body["inputs"]["boxes"][0][0] = [float("nan"), float("inf"), -float("inf"), 1e39]
    raw = json.dumps(body).encode()
    assert b"NaN" in raw and b"-Infinity" in raw  # Python writes the tokens as RapidJSON reads them
    status, answer = app.handle("POST", f"/v1/models/{MODEL_NAME}:predict", raw)
    assert status == 200, answer
    box = answer["outputs"]["boxes"][0][0]  # the boxes output echoes the input boxes
    assert np.isnan(box[0]) and box[1:] == [float("inf"), -float("inf"), float("inf")]
    assert "NaN" in json.dumps(answer) and "Infinity" in json.dumps(answer)
    clean = post(app, f"/v1/models/{MODEL_NAME}:predict", features_body(test_batch))[1]
    assert answer["outputs"]["caption"] == clean["outputs"]["caption"]  # boxes: not read
    rapid = raw.replace(b"-Infinity", b"-Inf").replace(b"NaN", b"-NaN") + b" trailing text"
    status, again = app.handle("POST", f"/v1/models/{MODEL_NAME}:predict", rapid)
    assert status == 200 and json.dumps(again) == json.dumps(answer), again  # RapidJSON's reading
    too_big = raw.replace(b"1e+39", b"1e400")
    status, answer = app.handle("POST", f"/v1/models/{MODEL_NAME}:predict", too_big)
    assert status == 400 and "Number too big" in answer["error"], answer


def _concurrently(app, bodies, stagger=0.02):
    """POSTs every body from its own thread (a little apart, the first opening the batch)."""
    results = [None] * len(bodies)

    def send(i):
        results[i] = post(app, f"/v1/models/{MODEL_NAME}:predict", bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
        time.sleep(stagger)
    for t in threads:
        t.join(timeout=300)
    return results


def _batching_app(export_base, text, **kwargs):
    return ServingApp(ModelStore(str(export_base), MODEL_NAME), batching_parameters(text), **kwargs)


def test_batching_pads_variable_region_counts_and_outputs_come_back_padded(export_base, test_batch):
    plain = ServingApp(ModelStore(str(export_base), MODEL_NAME))
    sizes = [5, 7, 9]
    bodies = [features_body(test_batch, rows=(i,), regions=n) for i, n in enumerate(sizes)]
    alone = [post(plain, f"/v1/models/{MODEL_NAME}:predict", b)[1]["outputs"] for b in bodies]
    app = _batching_app(
        export_base,
        "max_batch_size { value: 8 } batch_timeout_micros { value: 500000 } "
        "pad_variable_length_inputs: true",
    )
    results = _concurrently(app, bodies)
    assert [s for s, _ in results] == [200] * 3, results
    for n, (_, answer), want in zip(sizes, results, alone, strict=True):
        got = answer["outputs"]
        assert got["caption"] == want["caption"] and got["tokens"] == want["tokens"]
        attention = np.asarray(got["attention"])  # [1, T, 9]: padded to the batch's 9 regions
        assert attention.shape[-1] == 9 and np.all(attention[..., n:] == 0.0)
        np.testing.assert_allclose(attention[..., :n], want["attention"], atol=1e-6)
        boxes = np.asarray(got["boxes"])  # padded with the request's first element
        assert boxes.shape == (1, 9, 4) and np.all(boxes[0, n:] == boxes.flat[0])


@bad_input
def test_batching_without_padding_fails_unequal_shapes_and_limits_the_batch(
    export_base, test_batch
):
    app = _batching_app(
        export_base, "max_batch_size { value: 8 } batch_timeout_micros { value: 500000 }"
    )
    unequal = [features_body(test_batch, rows=(i,), regions=n) for i, n in enumerate((5, 9))]
    results = _concurrently(app, unequal)
    for status, answer in results:  # the whole merged batch fails
        assert status == 400 and "padding is turned off" in answer["error"], answer
    equal = [features_body(test_batch, rows=(i,)) for i in range(3)]
    assert [s for s, _ in _concurrently(app, equal)] == [200] * 3
    status, answer = post(
        app, f"/v1/models/{MODEL_NAME}:predict", features_body(test_batch, rows=[0] * 9)
    )
    assert (status, answer) == (
        400,
        {"error": "Task size 9 is larger than maximum input batch size 8"},
    )


@bad_input
def test_batching_one_bad_request_fails_its_whole_batch(export_base, test_batch):
    app = _batching_app(
        export_base, "max_batch_size { value: 8 } batch_timeout_micros { value: 500000 }"
    )
    bad = features_body(test_batch, rows=(1,))
    bad["inputs"]["num_regions"] = [10]  # above the 9 regions given: the graph refuses it
    results = _concurrently(app, [features_body(test_batch), bad])
    assert [s for s, _ in results] == [400, 400], results
    assert all("num_regions exceeds the regions given" in a["error"] for _, a in results)
    assert post(app, f"/v1/models/{MODEL_NAME}:predict", features_body(test_batch))[0] == 200


def test_batching_allowed_batch_sizes_pad_the_batch_not_the_answer(export_base, test_batch):
    app = _batching_app(
        export_base, "max_batch_size { value: 4 } allowed_batch_sizes: 2 allowed_batch_sizes: 4"
    )
    status, answer = post(
        app, f"/v1/models/{MODEL_NAME}:predict", features_body(test_batch, rows=(0, 1, 2))
    )
    assert status == 200 and len(answer["outputs"]["caption"]) == 3  # run as 4, answered 3
    with pytest.raises(ValueError, match="Last entry in allowed_batch_sizes must match"):
        _batching_app(export_base, "max_batch_size { value: 8 } allowed_batch_sizes: 4")


@bad_input
def test_paths_as_the_real_router_reads_them(export_base):
    app = ServingApp(ModelStore(str(export_base), MODEL_NAME))
    assert versions_in_status(app, f"{MODEL_NAME}?any=query") == [1]
    assert get(app, f"/V1/Models/{MODEL_NAME}/METADATA")[0] == 200  # (?i) regexes
    for method, path, status in (
        ("GET", "/v1/models", 400),  # "Missing model name in request."
        ("GET", f"/v1/models/{MODEL_NAME}/versions/x", 400),  # Malformed request
        ("POST", f"/v1/models/{MODEL_NAME}", 400),
        ("PUT", f"/v1/models/{MODEL_NAME}:predict", 400),
        ("GET", "/v2/models/tfcap", 404),
        ("GET", "/", 404),
    ):
        got, answer = app.handle(method, path, b"")
        assert (got, list(answer)) == (status, ["error"]), (method, path, answer)


def test_timeout_answers_504_and_the_server_serves_on(export_base, test_batch):
    app = ServingApp(ModelStore(str(export_base), MODEL_NAME), timeout_ms=1)
    status, answer = post(app, f"/v1/models/{MODEL_NAME}:predict", features_body(test_batch))
    assert status == 504 and "Deadline exceeded" in answer["error"], answer
    assert versions_in_status(app) == [1]
    batched = _batching_app(export_base, "max_batch_size { value: 4 }", timeout_ms=1)
    assert post(batched, f"/v1/models/{MODEL_NAME}:predict", features_body(test_batch))[0] == 504
    default = ServingApp(ModelStore(str(export_base), MODEL_NAME))
    assert default.timeout == 30.0  # tensorflow_model_server's --rest_api_timeout_in_ms
    assert post(default, f"/v1/models/{MODEL_NAME}:predict", features_body(test_batch))[0] == 200


class _Recorder:
    """A batch's run function that records each merged batch and can be held back."""

    def __init__(self):
        self.batches, self.release = [], threading.Event()
        self.release.set()

    def __call__(self, arrays):
        self.release.wait(60)
        self.batches.append(arrays["x"][:, 0].tolist())
        return {"y": arrays["x"] * 2}


def _rows_of(*values):
    return {"x": np.array([[v] for v in values], np.float32)}


def test_scheduler_forms_batches_as_shared_batch_scheduler():
    scheduler = BatchScheduler(
        batching_parameters(
            "max_batch_size { value: 3 } batch_timeout_micros { value: 300000 } "
            "num_batch_threads { value: 1 } max_enqueued_batches { value: 2 }"
        )
    )
    first, second = _Recorder(), _Recorder()
    queue, other = scheduler.add_queue(first), scheduler.add_queue(second)
    first.release.clear()  # the only batch thread is held in the first batch it runs
    a = queue.schedule(_rows_of(1, 2, 3))  # full: runs at once
    time.sleep(0.2)
    b = queue.schedule(_rows_of(4))  # opens the next batch
    c = queue.schedule(_rows_of(5))  # joins it
    d = queue.schedule(_rows_of(6, 7))  # does not fit: closes it, opens a third
    with pytest.raises(RequestError, match="queue to which this task was submitted is full"):
        queue.schedule(_rows_of(8, 9))  # would need a fourth batch; 2 are enqueued
    with pytest.raises(RequestError, match="Task size 4 is larger than maximum input"):
        queue.schedule(_rows_of(1, 2, 3, 4))
    with pytest.raises(RequestError, match="equal 0th-dimension size"):
        queue.schedule({"x": np.zeros([2, 1], np.float32), "n": np.zeros([1], np.int32)})
    e = other.schedule(_rows_of(10))  # another queue, same (held) thread
    tasks = [a, b, c, d, e]
    time.sleep(0.5)  # past batch_timeout_micros: every batch could run, none has
    assert not any(t.done.is_set() for t in tasks) and first.batches == []
    first.release.set()
    answers = [t.result(time.monotonic() + 30)["y"][:, 0].tolist() for t in tasks]
    assert answers == [[2, 4, 6], [8], [10], [12, 14], [20]]
    assert first.batches == [[1, 2, 3], [4, 5], [6, 7]] and second.batches == [[10]]


def test_batching_parameters_file_needs_enable_batching(tmp_path):
    (tmp_path / "batching.config").write_text("max_batch_size { value: 4 }")
    with pytest.raises(SystemExit):  # the real server refuses to start, too
        main(
            [
                f"--model_base_path={tmp_path}",
                f"--batching_parameters_file={tmp_path}/batching.config",
            ]
        )


@pytest.mark.skipif(
    shutil.which("tensorflow_model_server") is None,
    reason="tensorflow_model_server is not on PATH (not installable here: see DESIGN.md)",
)
def test_real_server_version_policy(three_versions, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = _config(
        tmp_path,
        f'name: "{MODEL_NAME}" base_path: "{three_versions}" model_platform: "tensorflow" '
        "model_version_policy { specific { versions: 1 } }",
    )
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        ["tensorflow_model_server", f"--rest_api_port={port}", "--port=0",
         f"--model_config_file={config}"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        client = ServingClient(f"http://127.0.0.1:{port}", MODEL_NAME, version=1, timeout=120)
        deadline = time.monotonic() + 120
        while True:
            try:
                client.status()
                break
            except (ServingError, OSError):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(1)
        assert client.metadata()["model_spec"]["version"] == "1"
        with pytest.raises(ServingError) as err:
            ServingClient(f"http://127.0.0.1:{port}", MODEL_NAME, version=3).metadata()
        assert err.value.status == 404
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
