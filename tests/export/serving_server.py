"""A stand-in for `tensorflow_model_server`'s REST API, for tests.

The real server cannot be installed on these machines, so the tests exercise
the export and `export.client` against this one. It serves every integer
version under a model base path, following TF Serving's documented REST
semantics (https://www.tensorflow.org/tfx/serving/api_rest):

    GET  /v1/models/NAME[/versions/V]              status (GetModelStatusResponse)
    GET  /v1/models/NAME[/versions/V]/metadata     signature defs (GetModelMetadataResponse)
    POST /v1/models/NAME[/versions/V]:predict      row or columnar request

- Row format: `{"signature_name": S, "instances": [...]}`, one element per
  example: an object of named inputs, or a bare value when the signature has
  one input. Answer `{"predictions": [...]}`: per example an object of named
  outputs (the bare value when there is one output).
- Columnar format: `{"inputs": {name: batched value}}` (or a bare value for one
  input). Answer `{"outputs": {name: value}}` (bare for one output).
- Binary strings travel as `{"b64": "..."}`; string outputs whose name ends in
  `_bytes` are sent the same way.
- Errors: `{"error": "..."}`, status 400 for a bad request (unparsable or too
  deeply nested JSON, bad base64, a string that is not UTF-8, wrong dtype or
  shape, a number that is not finite in the input's dtype, empty batch, batch
  over `max_batch`, both `instances` and `inputs`, an input the graph rejects,
  a bad Content-Length), 404 for an unknown model, version or path, 405 for
  another HTTP method, 500 for anything else (a fault of the server, never of
  the request: tests/export/test_request_fuzz.py holds it to that); the server
  keeps running.

Run as a process: `python tests/export/serving_server.py --model_base_path=DIR
--model_name=tfcap --port=8501`.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2

DEFAULT_MAX_BATCH = 64
_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?P<tail>/metadata|:predict)?$"
)


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class ModelStore:
    """Every integer-named version under `base_path`, loaded with tf.saved_model.load."""

    def __init__(self, base_path: str, name: str):
        self.name = name
        self.versions: dict[int, tuple] = {}
        for entry in sorted(os.listdir(base_path)):
            path = os.path.join(base_path, entry)
            if entry.isdigit() and os.path.isdir(path):
                self.versions[int(entry)] = (tf.saved_model.load(path), _signature_defs(path))
        if not self.versions:
            raise FileNotFoundError(f"no integer version directory under {base_path}")

    def get(self, name: str, version: str | None, label: str | None) -> tuple[int, tuple]:
        if name != self.name:
            raise RequestError(f"Servable not found for request: Latest({name})", 404)
        if label is not None:
            raise RequestError(f"Unrecognized servable version label: {label}", 404)
        number = max(self.versions) if version is None else int(version)
        if number not in self.versions:
            raise RequestError(f"Servable not found for request: Specific({name}, {number})", 404)
        return number, self.versions[number]


def _signature_defs(path: str):
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    return saved.meta_graphs[0].signature_def


class ServingApp:
    """The REST semantics, independent of HTTP: `handle` returns (status, JSON object)."""

    def __init__(self, store: ModelStore, max_batch: int = DEFAULT_MAX_BATCH):
        self.store, self.max_batch = store, max_batch

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        try:
            match = _PATH.match(path)
            if not match:
                raise RequestError(f"Malformed request: {method} {path}", 404)
            name, tail = match["name"], match["tail"]
            number, (loaded, sigdefs) = self.store.get(name, match["version"], match["label"])
            if method == "GET" and tail is None:
                return 200, self._status(match["version"])
            if method == "GET" and tail == "/metadata":
                return 200, self._metadata(name, number, sigdefs)
            if method == "POST" and tail == ":predict":
                return 200, self._predict(loaded, sigdefs, body)
            raise RequestError(f"Malformed request: {method} {path}", 404)
        except RequestError as e:
            return e.status, {"error": str(e)}
        except tf.errors.InvalidArgumentError as e:
            return 400, {"error": _clean_tf_message(e.message)}
        except RecursionError:
            return 400, {"error": "JSON Value: request nested too deeply"}
        except Exception as e:  # noqa: BLE001 - a server answers, it does not crash
            return 500, {"error": f"{type(e).__name__}: {e}"}

    def _status(self, version: str | None) -> dict:
        numbers = sorted(self.store.versions) if version is None else [int(version)]
        return {
            "model_version_status": [
                {
                    "version": str(n),
                    "state": "AVAILABLE",
                    "status": {"error_code": "OK", "error_message": ""},
                }
                for n in numbers
            ]
        }

    def _metadata(self, name: str, number: int, sigdefs) -> dict:
        sigmap = get_model_metadata_pb2.SignatureDefMap(signature_def=sigdefs)
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(number)},
            "metadata": {
                "signature_def": json_format.MessageToDict(sigmap, preserving_proto_field_name=True)
            },
        }

    def _predict(self, loaded, sigdefs, body: bytes) -> dict:
        try:
            request = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RequestError(f"JSON Parse error: {e}") from None
        except RecursionError:
            raise RequestError("JSON Parse error: nested too deeply") from None
        if not isinstance(request, dict):
            raise RequestError("JSON Value: request body is not an object")
        sig_name = request.get("signature_name", "serving_default")
        if not isinstance(sig_name, str):
            raise RequestError("'signature_name' key must be a string value.")
        if sig_name not in loaded.signatures or sig_name not in sigdefs:
            raise RequestError(f'Serving signature name: "{sig_name}" not found in signature def')
        fn = loaded.signatures[sig_name]
        specs = fn.structured_input_signature[1]  # name -> TensorSpec
        if "instances" in request and "inputs" in request:
            raise RequestError("expecting only one of 'inputs' or 'instances' keys, not both")
        if "instances" in request:
            arrays, row = _from_instances(request["instances"], specs), True
        elif "inputs" in request:
            arrays, row = _from_inputs(request["inputs"], specs), False
        else:
            raise RequestError("Missing 'inputs' or 'instances' key")
        for name, array in arrays.items():
            if array.shape[0] > self.max_batch:
                raise RequestError(
                    f"batch of {array.shape[0]} ({name}) exceeds the maximum batch size "
                    f"{self.max_batch}"
                )
        outputs = {k: v.numpy() for k, v in fn(**_to_tensors(arrays, specs)).items()}
        if row:
            return {"predictions": _rows(outputs)}
        if len(outputs) == 1:
            return {"outputs": _jsonable(*outputs.items())}
        return {"outputs": {k: _jsonable(k, v) for k, v in outputs.items()}}


def _from_instances(instances, specs: dict) -> dict[str, np.ndarray]:
    """Row format -> one batched array per input name."""
    if not isinstance(instances, list):
        raise RequestError("Expecting 'instances' to be a list/array")
    if not instances:
        raise RequestError("No values in 'instances' array: empty batch")
    names = sorted(specs)
    named = isinstance(instances[0], dict) and not _is_b64(instances[0])
    if not named and len(names) > 1:
        raise RequestError(
            f"instances is a plain list, but expecting a list of objects with keys {names}"
        )
    columns: dict[str, list] = {n: [] for n in names}
    for i, item in enumerate(instances):
        is_obj = isinstance(item, dict) and not _is_b64(item)
        if is_obj != named:
            raise RequestError(f"instance {i}: mixes objects and bare values")
        values = item if named else {names[0]: item}
        if sorted(values) != names:
            raise RequestError(f"instance {i}: keys {sorted(values)} must be equal to {names}")
        for name in names:
            columns[name].append(values[name])
    return {n: _to_array(n, columns[n], specs[n]) for n in names}


def _from_inputs(inputs, specs: dict) -> dict[str, np.ndarray]:
    """Columnar format -> one array per input name."""
    names = sorted(specs)
    if not isinstance(inputs, dict) or _is_b64(inputs):
        if len(names) > 1:
            raise RequestError(
                f"inputs is a plain value/list, but expecting an object with keys {names}"
            )
        inputs = {names[0]: inputs}
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise RequestError(f"unknown input(s) {unknown}; the signature takes {names}")
    for name in names:
        if name not in inputs:
            raise RequestError(f"Missing named input: {name} in 'inputs' object.")
        if inputs[name] == []:
            raise RequestError(f"input {name}: empty batch")
    return {n: _to_array(n, inputs[n], specs[n]) for n in names}


def _is_b64(value) -> bool:
    return isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str)


def _to_array(name: str, value, spec: tf.TensorSpec) -> np.ndarray:
    """A nested JSON list -> array of the spec's dtype, checked against its shape."""
    shape = _dense_shape(name, value)
    flat: list = []
    _flatten(name, value, flat)
    dtype = spec.dtype
    if dtype == tf.string:
        data = np.array([_string(name, v) for v in flat], object)
    elif dtype.is_floating:
        if any(isinstance(v, bool) or not isinstance(v, int | float) for v in flat):
            raise RequestError(f"input {name}: values must be numbers ({dtype.name})")
        with np.errstate(over="ignore"):
            try:
                data = np.array(flat, dtype.as_numpy_dtype)
            except OverflowError:  # an integer beyond float64
                data = np.array([np.inf])
        if not np.all(np.isfinite(data)):
            raise RequestError(
                f"input {name}: values must be finite {dtype.name} numbers "
                "(got NaN, Infinity or a number beyond its range)"
            )
    elif dtype.is_integer:
        if any(isinstance(v, bool) or not isinstance(v, int) for v in flat):
            raise RequestError(f"input {name}: values must be integers ({dtype.name})")
        info = np.iinfo(dtype.as_numpy_dtype)
        if any(not info.min <= v <= info.max for v in flat):
            raise RequestError(f"input {name}: a value is out of range for {dtype.name}")
        data = np.array(flat, dtype.as_numpy_dtype)
    else:
        raise RequestError(f"input {name}: dtype {dtype.name} is not supported here")
    array = data.reshape(shape)
    if not spec.shape.is_compatible_with(array.shape):
        raise RequestError(
            f"input {name}: shape {list(array.shape)} does not match the signature's "
            f"{[-1 if d is None else d for d in spec.shape.as_list()]} (-1: any size)"
        )
    return array


def _dense_shape(name: str, value) -> tuple[int, ...]:
    if not isinstance(value, list):
        return ()
    if not value:
        return (0,)
    shapes = {_dense_shape(name, v) for v in value}
    if len(shapes) != 1:
        raise RequestError(f"input {name}: nested lists of unequal sizes (not a dense tensor)")
    return (len(value),) + shapes.pop()


def _flatten(name: str, value, out: list) -> None:
    if isinstance(value, list):
        for v in value:
            _flatten(name, v, out)
    elif isinstance(value, dict) and not _is_b64(value):
        raise RequestError(f"input {name}: unexpected JSON object {json.dumps(value)[:80]}")
    else:
        out.append(value)


def _string(name: str, value) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:  # JSON "\ud800": a lone surrogate
            raise RequestError(f"input {name}: a string is not valid UTF-8") from None
    if _is_b64(value):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError):
            raise RequestError(f"input {name}: Unable to base64 decode") from None
    raise RequestError(f'input {name}: expected a string or {{"b64": ...}}, got {value!r:.80}')


def _to_tensors(arrays: dict, specs: dict) -> dict[str, tf.Tensor]:
    return {n: tf.constant(a, dtype=specs[n].dtype) for n, a in arrays.items()}


def _jsonable(name: str, value: np.ndarray):
    if value.dtype == object:
        encode = (
            (lambda b: {"b64": base64.b64encode(b).decode("ascii")})
            if name.endswith("_bytes")
            else (lambda b: b.decode("utf-8", errors="replace"))
        )
        return np.vectorize(encode, otypes=[object])(value).tolist() if value.size else []
    return value.tolist()


def _rows(outputs: dict[str, np.ndarray]) -> list:
    batch = {len(v) for v in outputs.values()}
    if len(batch) != 1:
        raise RequestError("outputs do not share a batch size; use the columnar format")
    columns = {k: _jsonable(k, v) for k, v in outputs.items()}
    if len(columns) == 1:
        return next(iter(columns.values()))
    return [{k: columns[k][i] for k in columns} for i in range(batch.pop())]


def _clean_tf_message(message: str) -> str:
    """The informative lines of a TF runtime error (no node names or stack notes)."""
    skip = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[{{")
    lines = [ln.strip() for ln in message.splitlines()]
    kept = [ln for ln in lines if ln and not ln.startswith(skip)]
    return " ".join(kept) or message


class _Handler(BaseHTTPRequestHandler):
    app: ServingApp  # set on the per-server subclass
    timeout = 30  # seconds a client may leave a connection idle

    def do_GET(self):  # noqa: N802 - http.server API
        self._answer(*self.app.handle("GET", self.path, b""))

    def do_POST(self):  # noqa: N802
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0:
            self._answer(400, {"error": "bad Content-Length"})
            return
        self._answer(*self.app.handle("POST", self.path, self.rfile.read(length)))

    def _not_allowed(self):
        self._answer(405, {"error": f"Method not allowed: {self.command} {self.path}"})

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _not_allowed  # noqa: N815

    def _answer(self, status: int, payload: dict) -> None:
        body = json.dumps(payload, indent=1).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # noqa: A002 - quiet in tests
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # listen backlog: many clients connecting at once wait, not retry


def make_server(
    base_path: str,
    model_name: str,
    host: str = "127.0.0.1",
    port: int = 0,
    max_batch: int = DEFAULT_MAX_BATCH,
) -> ThreadingHTTPServer:
    """A server for `base_path` (not started); port 0 picks a free port
    (`server.server_address[1]`)."""
    app = ServingApp(ModelStore(base_path, model_name), max_batch)
    handler = type("Handler", (_Handler,), {"app": app})
    server = _Server((host, port), handler)
    return server


def start_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="serving")
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_base_path", required=True)
    parser.add_argument("--model_name", default="tfcap")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--max_batch", type=int, default=DEFAULT_MAX_BATCH)
    args = parser.parse_args(argv)
    server = make_server(
        args.model_base_path, args.model_name, args.host, args.port, args.max_batch
    )
    print(f"serving {args.model_name} on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
