"""Fuzzing the test server's request decoding (tests/export/serving_server.py) with hypothesis.

Whatever the body (arbitrary JSON, arbitrary bytes, near-valid requests with random
shapes, dtypes, base64 strings and images), the answer is 200 with predictions or 400 with
`{"error": ...}` only: never a 5xx, never an exception out of the server. Runs through
`ServingApp.handle` (the REST semantics without HTTP) so each example costs only the decode
and, when the request is valid, one graph call; the HTTP layer's own refusals are checked
over a socket at the end. Examples are derandomized (the same ones on every run); their
counts are `EXAMPLES`.
"""

from __future__ import annotations

import base64
import collections
import io
import json
import math
import socket

import numpy as np
import pytest
from export_fixtures import MODEL_NAME
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serving_batching import batching_parameters
from serving_server import ModelStore, ServingApp, make_server, start_in_thread

pytest_plugins = ["export_fixtures"]
bad_input = pytest.mark.bad_input("serving")

PREDICT = f"/v1/models/{MODEL_NAME}:predict"
FEATURE_DIM = 16  # the shapes data of the export fixture
MAX_BATCH = 4
EXAMPLES = {"json": 500, "bytes": 200, "features": 300, "images": 200}


def _settings(name: str):
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module")
def app(export_base):
    """With batching (`max_batch_size` MAX_BATCH): bounded graph work per example, and the
    batching path's own refusals fuzzed too."""
    batching = batching_parameters(f"max_batch_size {{ value: {MAX_BATCH} }}")
    return ServingApp(ModelStore(str(export_base), MODEL_NAME), batching)


def check(app: ServingApp, body: bytes) -> int:
    """POSTs `body`; asserts a 200 with predictions or a 400 with only an error text."""
    status, answer = app.handle("POST", PREDICT, body)
    assert status in (200, 400), (status, answer, body[:300])
    if status == 400:
        assert list(answer) == ["error"] and isinstance(answer["error"], str), answer
        assert answer["error"].strip()
    else:
        assert list(answer) in (["predictions"], ["outputs"]), list(answer)
        json.dumps(answer)  # NaN / Infinity tokens allowed: the real server writes them too
    return status


# Any JSON value; floats include NaN and the infinities (Python's json reads them).
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.builds(lambda s: {"b64": s}, st.text(max_size=12))
)
JSON = st.recursive(
    _SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=24,
)
KEYS = st.sampled_from(["signature_name", "instances", "inputs", "other"])
SIGNATURES = st.sampled_from(["serving_default", "caption_features", "", "nope"]) | JSON


def fuzz(name: str, app: ServingApp, strategy, to_body) -> collections.Counter:
    """Runs `check` on `EXAMPLES[name]` bodies drawn from `strategy`; the statuses seen."""
    seen: collections.Counter = collections.Counter()

    @_settings(name)
    @given(strategy)
    def run(value):
        seen[check(app, to_body(value))] += 1

    run()
    print(f"fuzz {name}: {sum(seen.values())} bodies, statuses {dict(sorted(seen.items()))}")
    return seen


def _dumps(value) -> bytes:
    return json.dumps(value).encode()


@bad_input
def test_arbitrary_json_bodies(app):
    bodies = st.one_of(
        JSON,
        st.dictionaries(KEYS, JSON, max_size=3),
        st.fixed_dictionaries(
            {"signature_name": SIGNATURES}, optional={"instances": JSON, "inputs": JSON}
        ),
    )
    seen = fuzz("json", app, bodies, _dumps)
    assert sum(seen.values()) == EXAMPLES["json"] and seen[400] > 0, seen


_ROW = (
    '{"signature_name": "caption_features", "instances": [{"features": [[%s]], '
    '"boxes": [[0, 0, 1, 1]], "num_regions": 1}]}'
)
NASTY = [  # bodies once answered 500
    b"[" * 100_000,  # RecursionError in the JSON parser
    b'{"instances": ["\\ud800"]}',  # a lone surrogate: not encodable as UTF-8
    # beyond float64: RapidJSON refuses the literal ("Number too big"), not an infinity
    *((_ROW % ", ".join([v] * FEATURE_DIM)).encode() for v in ("1e400", "1" + "0" * 400)),
]
NON_FINITE = [  # accepted, as RapidJSON's kParseNanAndInfFlag reads them (and 1e39: inf)
    (_ROW % ", ".join([v] * FEATURE_DIM)).encode() for v in ("NaN", "Infinity", "-Infinity", "1e39")
]


@bad_input
def test_arbitrary_byte_bodies(app):
    bodies = (
        st.binary(max_size=300)
        | st.builds(lambda n: b"[" * n, st.integers(0, 200_000))
        | st.builds(lambda n: b'{"instances": ' * n, st.integers(1, 5000))
        | st.builds(lambda s: b'{"instances": ["' + s + b'"]}', st.binary(max_size=40))
        | st.sampled_from(NASTY)
    )
    assert [check(app, body) for body in NASTY] == [400] * len(NASTY)
    assert [check(app, body) for body in NON_FINITE] == [200] * len(NON_FINITE)
    seen = fuzz("bytes", app, bodies, lambda body: body)
    assert sum(seen.values()) == EXAMPLES["bytes"], seen


def _number_grid(shape, values):
    """A nested list of `shape` filled from `values` (repeated)."""
    size = math.prod(shape)
    flat = [values[i % len(values)] for i in range(size)] if values else [0.0] * size
    return np.array(flat, dtype=object).reshape(shape).tolist() if shape else flat[0]


NUMBERS = st.lists(
    st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-4, max_value=4),
    min_size=1,
    max_size=8,
)
ODD_VALUES = st.lists(
    st.none() | st.booleans() | st.text(max_size=3) | st.integers() | st.floats(), max_size=3
)


@st.composite
def feature_requests(draw):
    """A caption_features request: valid, or broken in its shapes, dtypes, values or keys."""
    broken = draw(st.booleans())

    def pick(good, bad):  # the good strategy, or when broken either
        return draw(good | bad if broken else good)

    batch = pick(st.integers(1, MAX_BATCH), st.integers(0, MAX_BATCH + 1))
    regions = pick(st.integers(1, 12), st.integers(0, 12))
    dim = pick(st.just(FEATURE_DIM), st.sampled_from([0, 1, FEATURE_DIM + 1]))
    values = draw(NUMBERS) + (draw(ODD_VALUES) if broken and draw(st.booleans()) else [])
    box_dim = pick(st.just(4), st.just(3))
    columns = {
        "features": _number_grid((batch, regions, dim), values),
        "boxes": _number_grid((batch, regions, box_dim), draw(NUMBERS)),
        "num_regions": draw(
            st.lists(
                st.integers(0, regions)
                | (st.integers(-(2**40), 2**40) | st.floats() if broken else st.nothing()),
                min_size=batch,
                max_size=batch,
            )
        ),
    }
    if draw(st.booleans()):
        body = {"inputs": columns}
    else:
        body = {"instances": [{k: v[i] for k, v in columns.items()} for i in range(batch)]}
        if broken and batch and draw(st.booleans()):
            del body["instances"][-1]["boxes"]  # one instance short of a key
    for name in draw(st.sets(st.sampled_from(sorted(columns)), max_size=int(broken))):
        if "inputs" in body:
            columns[name] = draw(JSON)  # one input replaced by anything
        elif batch:
            body["instances"][draw(st.integers(0, batch - 1))][name] = draw(JSON)
    return {"signature_name": "caption_features", **body}


@bad_input
def test_feature_requests_of_any_shape_and_dtype(app):
    seen = fuzz("features", app, feature_requests(), _dumps)
    assert seen[200] >= 10 and seen[400] >= 10, seen  # both valid and broken ones were tried


def _image(width: int, height: int, fmt: str, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


IMAGE_BYTES = st.one_of(
    st.builds(
        _image,
        st.integers(1, 48),
        st.integers(1, 48),
        st.sampled_from(["JPEG", "PNG", "GIF", "BMP"]),
        st.integers(0, 9),
    ),
    st.binary(max_size=64),
    st.builds(
        lambda data, n: data[:n],
        st.builds(_image, st.just(32), st.just(24), st.just("JPEG"), st.just(0)),
        st.integers(0, 600),
    ),  # fmt: skip
)
VALID_IMAGE = st.builds(
    lambda w, h, fmt: {"b64": base64.b64encode(_image(w, h, fmt, w * h)).decode()},
    st.integers(1, 48),
    st.integers(1, 48),
    st.sampled_from(["JPEG", "PNG"]),
)
IMAGE_VALUES = st.one_of(
    st.builds(lambda d: {"b64": base64.b64encode(d).decode()}, IMAGE_BYTES),
    st.builds(lambda s: {"b64": s}, st.text(max_size=16)),  # mostly not base64
    st.text(max_size=8),  # a plain string: sent as its UTF-8 bytes
    JSON,
)


def _image_body(drawn) -> bytes:
    values, form = drawn
    key, named = form.split("_")[0], form.endswith("named")
    if key == "instances":
        body = {key: [{"image_bytes": v} for v in values] if named else values}
    else:
        body = {key: {"image_bytes": values} if named else values}
    return _dumps(body)


@bad_input
def test_image_requests_of_any_bytes(app):
    requests = st.tuples(
        st.lists(VALID_IMAGE, max_size=MAX_BATCH + 1)
        | st.lists(IMAGE_VALUES, max_size=MAX_BATCH + 1),
        st.sampled_from(["instances", "instances_named", "inputs", "inputs_named"]),
    )
    seen = fuzz("images", app, requests, _image_body)
    assert seen[200] >= 10 and seen[400] >= 10, seen


def _raw_http(port: int, request: bytes) -> tuple[int, dict]:
    with socket.create_connection(("127.0.0.1", port), timeout=60) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@bad_input
def test_http_level_refusals_answer_json(export_base):
    server = make_server(str(export_base), MODEL_NAME)
    thread = start_in_thread(server)
    port = server.server_address[1]
    try:
        for request, status in (
            (f"POST {PREDICT} HTTP/1.0\r\nContent-Length: -5\r\n\r\n", 400),
            (f"POST {PREDICT} HTTP/1.0\r\nContent-Length: lots\r\n\r\n", 400),
            (f"POST {PREDICT} HTTP/1.0\r\n\r\n", 400),  # no body: not JSON
            # other methods: "Malformed request" under /v1/ (400), not found elsewhere
            (f"PUT {PREDICT} HTTP/1.0\r\nContent-Length: 2\r\n\r\n{{}}", 400),
            (f"DELETE /v1/models/{MODEL_NAME} HTTP/1.0\r\n\r\n", 400),
            ("PATCH /other HTTP/1.0\r\n\r\n", 404),
        ):
            got, answer = _raw_http(port, request.encode())
            assert (got, list(answer)) == (status, ["error"]), (request, got, answer)
        assert _raw_http(port, f"GET /v1/models/{MODEL_NAME} HTTP/1.0\r\n\r\n".encode())[0] == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
