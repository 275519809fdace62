"""export.client against TF Serving's REST API over real HTTP on 127.0.0.1: the test server
(tests/export/serving_server.py) always, the real tensorflow_model_server when on PATH."""

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request

import numpy as np
import pytest
from absl.testing import flagsaver
from conftest import shared_data_dir
from export_fixtures import MODEL_NAME, checkpoint_decode, sample_images
from serving_server import make_server, start_in_thread

from export import client as client_lib
from export.client import ServingClient, ServingError, b64
from tfcap import errors

bad_input = pytest.mark.bad_input("serving")

pytest_plugins = ["export_fixtures"]


@pytest.fixture(scope="module")
def server_url(export_base):
    server = make_server(str(export_base), MODEL_NAME)
    thread = start_in_thread(server)
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.fixture()
def client(server_url):
    return ServingClient(server_url, MODEL_NAME, timeout=120)


def test_status_and_metadata(client, server_url):
    status = client.status()
    assert status == {
        "model_version_status": [
            {
                "version": "1",
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
        ]
    }
    assert ServingClient(server_url, MODEL_NAME, version=1).status() == status
    meta = client.metadata()
    assert meta["model_spec"] == {"name": MODEL_NAME, "signature_name": "", "version": "1"}
    sigs = meta["metadata"]["signature_def"]["signature_def"]
    assert sorted(sigs["caption_features"]["inputs"]) == ["boxes", "features", "num_regions"]
    assert sigs["serving_default"]["inputs"]["image_bytes"]["dtype"] == "DT_STRING"
    outputs = sigs["serving_default"]["outputs"]
    assert sorted(outputs) == ["attention", "boxes", "caption", "score", "tokens"]
    assert outputs["tokens"]["dtype"] == "DT_INT32"
    for bad, text in (
        (ServingClient(server_url, "other"), "Could not find any versions of model other"),
        (ServingClient(server_url, MODEL_NAME, 7), "Could not find version 7 of model tfcap"),
    ):  # the real server's GetModelStatus texts
        with pytest.raises(ServingError, match=text) as err:
            bad.status()
        assert err.value.status == 404
        with pytest.raises(ServingError, match="Servable not found for request") as err:
            bad.metadata()
        assert err.value.status == 404


def test_features_row_and_columnar_equal_the_checkpoint(client, model_dir, test_batch):
    args = (test_batch["features"], test_batch["boxes"], test_batch["num_regions"])
    row = client.caption_features(*args)
    columnar = client.caption_features(*args, columnar=True)
    assert row == columnar
    want = checkpoint_decode(model_dir, test_batch["features"], test_batch["num_regions"])
    assert [r["caption"] for r in row] == want["caption"]
    np.testing.assert_array_equal([r["tokens"] for r in row], want["tokens"])
    np.testing.assert_allclose([r["score"] for r in row], want["score"], rtol=1e-5, atol=1e-5)
    assert np.asarray(row[0]["attention"]).shape == (want["tokens"].shape[1], 9)


def test_images_row_columnar_and_bare_values_agree(client):
    images = sample_images(shared_data_dir())
    row = client.caption_images(images)
    assert row == client.caption_images(images, columnar=True)
    assert len(row) == 2 and all(np.asarray(r["attention"]).shape == (16, 36) for r in row)
    # One named input: instances (and inputs) may be bare values.
    bare = client.predict(instances=[b64(d) for d in images])["predictions"]
    assert bare == row
    columns = client.predict(inputs=[b64(d) for d in images])["outputs"]
    assert columns["caption"] == [r["caption"] for r in row]


def _features_rows(test_batch, n=1):
    return [
        {
            "features": test_batch["features"][i].tolist(),
            "boxes": test_batch["boxes"][i].tolist(),
            "num_regions": int(test_batch["num_regions"][i]),
        }
        for i in range(n)
    ]


def _columns(test_batch, n):
    return {k: v[:n].tolist() for k, v in test_batch.items()}


BAD_REQUESTS = {
    "not base64": (
        {"instances": [{"image_bytes": {"b64": "not*base64!"}}]},
        "base64",
    ),
    "not an image": ({"instances": [b64(b"GIF? no, plain text")]}, "image"),
    "empty batch (row)": ({"instances": []}, "empty batch"),
    "both instances and inputs": (
        {"instances": [b64(b"x")], "inputs": [b64(b"x")]},
        "not both",
    ),
    "neither instances nor inputs": ({"signature_name": "serving_default"}, "Missing"),
    "unknown signature": ({"signature_name": "nope", "instances": [1]}, "not found"),
    "number for a string": ({"instances": [3.5]}, "string"),
}
FEATURE_REQUESTS = {  # test_batch -> (body, expected text)
    "empty batch (columnar)": (
        lambda b: {"inputs": {"features": [], "boxes": [], "num_regions": []}},
        "empty batch",
    ),
    "float num_regions": (
        lambda b: {"instances": [{**_features_rows(b)[0], "num_regions": 2.5}]},
        "integers",
    ),
    "string features": (
        lambda b: {"instances": [{**_features_rows(b)[0], "features": [["a"] * 16] * 9}]},
        "numbers",
    ),
    "wrong feature dim": (
        lambda b: {"instances": [{**_features_rows(b)[0], "features": [[0.0] * 8] * 9}]},
        "shape",
    ),
    "ragged features": (
        lambda b: {"instances": [{**_features_rows(b)[0], "features": [[0.0] * 16, [0.0]]}]},
        "dense",
    ),
    "missing input": (lambda b: {"inputs": {"features": [[[0.0] * 16]]}}, "Missing named input"),
    "num_regions over the regions given": (
        lambda b: {"instances": [{**_features_rows(b)[0], "num_regions": 10}]},
        "num_regions exceeds the regions given",
    ),
    "boxes of another batch": (
        lambda b: {"inputs": {**_columns(b, 2), "boxes": b["boxes"][:1].tolist()}},
        "boxes must be [B, N, 4]",
    ),
}


def _post(url: str, body) -> tuple[int, dict]:
    """POSTs a raw JSON body to the predict URL; returns the status and the answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url + f"/v1/models/{MODEL_NAME}:predict", data=data)
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS) + sorted(FEATURE_REQUESTS))
@bad_input
def test_bad_requests_get_400_with_a_clear_error(client, server_url, test_batch, case):
    if case in BAD_REQUESTS:
        body, expected = BAD_REQUESTS[case]
    else:
        make, expected = FEATURE_REQUESTS[case]
        body = {"signature_name": "caption_features", **make(test_batch)}
    status, answer = _post(server_url, body)
    assert status == 400 and list(answer) == ["error"], answer
    assert expected.lower() in answer["error"].lower(), answer["error"]
    assert client.status()["model_version_status"][0]["state"] == "AVAILABLE"  # still up


@bad_input
def test_unparsable_json_and_unknown_paths(server_url):
    assert _post(server_url, b"{not json")[0] == 400
    assert _post(server_url, b"[1, 2]")[0] == 400
    for path, data, status in (
        (f"/v1/models/{MODEL_NAME}:classify", b"{}", 400),  # not implemented here
        (f"/v1/models/{MODEL_NAME}/nope", None, 400),  # under /v1/: "Malformed request"
        ("/v2/whatever", None, 404),
    ):
        request = urllib.request.Request(server_url + path, data=data)
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(request, timeout=60)
        assert err.value.code == status
        assert "error" in json.loads(err.value.read())


def test_client_command_line(server_url, test_batch, tmp_path, capsys):
    images = sample_images(shared_data_dir())
    paths = []
    for i, data in enumerate(images):
        paths.append(tmp_path / f"image{i}.jpg")
        paths[-1].write_bytes(data)
    np.savez(tmp_path / "regions.npz", **test_batch)
    with flagsaver.flagsaver(serving_url=server_url, request_format="columnar"):
        client_lib.main(["client", "status"])
        client_lib.main(["client", "caption", *map(str, paths)])
        client_lib.main(["client", "features", str(tmp_path / "regions.npz")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert json.loads("\n".join(lines[:-6]))["model_version_status"][0]["state"] == "AVAILABLE"
    captions = [json.loads(line) for line in lines[-6:]]
    assert [c["input"] for c in captions[:2]] == list(map(str, paths))
    assert captions[2]["input"] == "regions.npz[0]"
    assert set(captions[2]) == {"input", "caption", "score"}
    with flagsaver.flagsaver(serving_url=server_url, serving_model="nope"):
        with pytest.raises(errors.BadInput, match="/v1/models/nope: HTTP 404: Could not find any"):
            client_lib.main(["client", "status"])  # tfcap.cli.run prints it as one line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(
    shutil.which("tensorflow_model_server") is None,
    reason="tensorflow_model_server is not on PATH (not installable here: see DESIGN.md)",
)
def test_real_tensorflow_model_server(export_base, model_dir, test_batch, tmp_path):
    port = _free_port()
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        ["tensorflow_model_server", f"--rest_api_port={port}", f"--port={_free_port()}",
         f"--model_name={MODEL_NAME}", f"--model_base_path={export_base}",
         "--enable_model_warmup=true"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    try:
        real = ServingClient(f"http://127.0.0.1:{port}", MODEL_NAME, timeout=120)
        deadline = time.monotonic() + 120
        while True:
            try:
                if real.status()["model_version_status"][0]["state"] == "AVAILABLE":
                    break
            except ServingError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "server.log"
            ).read_text()[-3000:]
            time.sleep(1)
        args = (test_batch["features"], test_batch["boxes"], test_batch["num_regions"])
        want = checkpoint_decode(model_dir, test_batch["features"], test_batch["num_regions"])
        for columnar in (False, True):
            got = real.caption_features(*args, columnar=columnar)
            assert [r["caption"] for r in got] == want["caption"]
        images = real.caption_images(sample_images(shared_data_dir()))
        assert len(images) == 2 and all(len(r["tokens"]) == 16 for r in images)
        with pytest.raises(ServingError) as err:
            real.predict(instances=[], signature_name="caption_features")
        assert err.value.status == 400
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
