"""A stand-in for `tensorflow_model_server`'s REST API, for tests.

The real server cannot be installed on these machines, so the tests exercise
the export and `export.client` against this one. It follows TF Serving's
documented REST semantics (https://www.tensorflow.org/tfx/serving/api_rest)
and, where users would notice, the behaviour of its source (tensorflow/serving:
`model_servers/server.cc`, `server_core.cc`, `get_model_status_impl.cc`,
`http_rest_api_handler.cc`, `http_rest_api_util.cc`, `http_server.cc`,
`util/json_tensor.cc`, `batching/batching_session.cc`, `batching/batching_util.cc`,
`servables/tensorflow/bundle_factory_util.cc`; TensorFlow's
`kernels/batching_util/shared_batch_scheduler.h`):

    GET  /v1/models/NAME[/versions/V|/labels/L]              status
    GET  /v1/models/NAME[/versions/V|/labels/L]/metadata     signature defs
    POST /v1/models/NAME[/versions/V|/labels/L]:predict      row or columnar request

- Paths: matched case-insensitively, the query string ignored, NAME and L
  percent-decoded. Any other path or method under `/v1/` is a bad request (400,
  "Malformed request: METHOD PATH"), a path outside `/v1/` 404. `:classify` and
  `:regress` are not implemented here (400).
- Versions: `--model_base_path` + `--model_name` serve only the newest integer
  version (TF Serving's default policy, `latest { num_versions: 1 }`); a
  `--model_config_file` (text `ModelServerConfig`, which then replaces both
  flags) gives each model its `model_version_policy` (`latest`, `all`,
  `specific`) and `version_labels` (each must name a served version, else the
  server does not start). Asking for a version that is not served answers 404
  ("Servable not found for request: Specific(NAME, V)"; the status endpoint:
  "Could not find version V of model NAME"); an unknown label 400
  ("Unrecognized servable version label: L"). The status endpoint ignores a
  label and lists every served version, newest first, as GetModelStatus does.
- Row format: `{"signature_name": S, "instances": [...]}`, one element per
  example: an object of named inputs, or a bare value when the signature has
  one input. Answer `{"predictions": [...]}`: per example an object of named
  outputs (the bare value when there is one output).
- Columnar format: `{"inputs": {name: batched value}}` (or a bare value for one
  input). Answer `{"outputs": {name: value}}` (bare for one output).
- JSON as RapidJSON reads it with TF Serving's flags (kParseNanAndInfFlag,
  kParseStopWhenDoneFlag): `NaN`, `Infinity`, `Inf` and their negatives are
  numbers, and are written back as `NaN`, `Infinity`, `-Infinity` in answers;
  float inputs are rounded to float32 (1e39 becomes Infinity); a literal beyond
  float64 (1e400) is a parse error; anything after the top-level value is
  ignored.
- Binary strings travel as `{"b64": "..."}`; string outputs whose name ends in
  `_bytes` are sent the same way.
- Timeout: a predict call not answered within `--rest_api_timeout_in_ms`
  (default 30000, as the real server; 0: none) is answered 504 (the real
  server's session-run deadline; the work itself is not cancelled here).
- Batching (`--enable_batching`, `--batching_parameters_file`: text
  `BatchingParameters` with `max_batch_size` (default 1000),
  `batch_timeout_micros` (0), `max_enqueued_batches` (10), `num_batch_threads`
  (one per core), `allowed_batch_sizes`, `pad_variable_length_inputs`): one
  queue per model version and signature, batch threads shared by all queues,
  as SharedBatchScheduler. A request joins the open batch of its queue if it
  fits in `max_batch_size`, else closes it and opens the next; a batch is run
  when it is full, when `batch_timeout_micros` has passed since it opened, or
  once a later batch has been opened. A request larger than `max_batch_size` is
  refused ("Task size N is larger than maximum input batch size M", 400), so is
  one that needs a new batch while `max_enqueued_batches` are queued ("The
  batch scheduling queue to which this task was submitted is full", 503) and
  one whose inputs differ in dimension 0 ("Batching Run() input tensors must
  have equal 0th-dimension size", 400). Inputs whose other dimensions differ
  fail the whole batch unless `pad_variable_length_inputs`, which pads each to
  the batch's largest size with that input's first element; outputs are cut
  back along dimension 0 only, so they keep the padded sizes. A batch below an
  `allowed_batch_sizes` entry is padded with its last request's first row, the
  padding rows dropped from the answers. A graph error fails every request of
  its batch. Without batching there is no batch limit.
- Errors: `{"error": "..."}`, status 400 for a bad request (unparsable JSON,
  bad base64, a string that is not UTF-8, wrong dtype or shape, empty batch,
  both `instances` and `inputs`, an input the graph rejects, a bad
  Content-Length, a malformed path), 404 for an unknown model or version or a
  path outside `/v1/`, 503 for a full batching queue, 504 for a timeout, 500
  for anything else (a fault of the server, never of the request:
  tests/export/test_request_fuzz.py holds it to that); the server keeps
  running.

Where it still differs from the real server: error texts of request decoding
are its own (the status codes are the real ones); strings are checked for
UTF-8 (RapidJSON, as TF Serving runs it, passes any bytes through); floats in
answers are Python's repr of the float32 value as a double
(0.20000000298023224 where the real server writes 0.2: the same float32); the
real server's 404 outside `/v1/` has an HTML body, not JSON; HEAD is not
answered; no gRPC, no model hot-reload or config polling, no
`enable_large_batch_splitting`,
`enable_per_model_batching_params` or batching priority queues (other
batching fields are refused when parsing the file); a timed-out request's
graph work runs on to its end; the real server cancels it, and answers 429
when a batched request's deadline passed while it was still queued.

Here: paths, versions, model config and the HTTP server; the JSON codec is in
serving_json.py, the batching in serving_batching.py.

Run as a process: `python tests/export/serving_server.py --model_base_path=DIR
--model_name=tfcap --port=8501` (or `--model_config_file=FILE`; add
`--enable_batching [--batching_parameters_file=FILE]`,
`--rest_api_timeout_in_ms=MS`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import serving_json
import tensorflow as tf
from google.protobuf import json_format, text_format
from serving_batching import BatchQueue, BatchScheduler, Task, batching_parameters, run_tasks
from serving_errors import RequestError, clean_tf_message
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2
from tensorflow_serving.config import model_server_config_pb2

DEFAULT_TIMEOUT_MS = 30_000  # tensorflow_model_server's --rest_api_timeout_in_ms
# http_rest_api_util.cc's kPredictionApiGegex and kModelStatusApiRegex, matched in full.
_PREDICT_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(classify|regress|predict)",
    re.IGNORECASE,
)
_STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:/versions/(\d+)|/labels/([^/:]+))?(?:/(metadata))?",
    re.IGNORECASE,
)


class ModelStore:
    """The versions of one model that its version policy serves, loaded with
    tf.saved_model.load.

    Args:
        base_path: the model's base path (integer-named version directories).
        name: the model name.
        policy: a `ServableVersionPolicy` (tensorflow_serving.config); None is TF
            Serving's default, the newest version only.
        labels: version label -> version (`version_labels` of a model config).
    """

    def __init__(self, base_path: str, name: str, policy=None, labels=None):
        self.name = name
        on_disk = sorted(
            int(entry)
            for entry in os.listdir(base_path)
            if entry.isdigit() and os.path.isdir(os.path.join(base_path, entry))
        )
        if not on_disk:
            raise FileNotFoundError(f"no integer version directory under {base_path}")
        self.versions: dict[int, tuple] = {}
        for number in served_versions(on_disk, policy):
            path = os.path.join(base_path, str(number))
            self.versions[number] = (tf.saved_model.load(path), _signature_defs(path))
        self.labels = dict(labels or {})
        for number in self.labels.values():
            if number not in self.versions:
                raise ValueError(
                    f"Request to assign label to version {number} of model {name}, "
                    "which is not currently available for inference"
                )

    def resolve(self, version: str | None, label: str | None) -> int:
        """The version a request names (404/400 RequestError as the real server)."""
        if label is not None:
            if label not in self.labels:
                raise RequestError(f"Unrecognized servable version label: {label}", 400)
            return self.labels[label]
        if version is None:
            return max(self.versions)
        if int(version) not in self.versions:
            raise RequestError(
                f"Servable not found for request: Specific({self.name}, {int(version)})", 404
            )
        return int(version)


def served_versions(on_disk: list[int], policy=None) -> list[int]:
    """The versions a `ServableVersionPolicy` serves out of those on disk.

    >>> served_versions([1, 2, 5])
    [5]
    >>> p = model_server_config_pb2.ModelConfig().model_version_policy
    >>> p.latest.num_versions = 2
    >>> served_versions([1, 2, 5], p)
    [2, 5]
    >>> p.specific.versions[:] = [1, 7]
    >>> served_versions([1, 2, 5], p)
    [1]
    """
    choice = policy.WhichOneof("policy_choice") if policy is not None else None
    if choice == "all":
        return list(on_disk)
    if choice == "specific":
        return [v for v in on_disk if v in set(policy.specific.versions)]
    count = policy.latest.num_versions if choice == "latest" else 1
    return list(on_disk[-max(count, 1) :])


def load_model_config(path: str) -> dict[str, ModelStore]:
    """The models of a text `ModelServerConfig` (`--model_config_file`), by name."""
    with open(path, encoding="utf-8") as f:
        config = text_format.Parse(f.read(), model_server_config_pb2.ModelServerConfig())
    stores = {}
    for model in config.model_config_list.config:
        policy = model.model_version_policy if model.HasField("model_version_policy") else None
        stores[model.name] = ModelStore(model.base_path, model.name, policy, model.version_labels)
    if not stores:
        raise ValueError(f"{path}: no model_config_list entries")
    return stores


def _signature_defs(path: str):
    saved = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved.ParseFromString(f.read())
    return saved.meta_graphs[0].signature_def


class ServingApp:
    """The REST semantics, independent of HTTP: `handle` returns (status, JSON object).

    Args:
        stores: model name -> `ModelStore` (or one `ModelStore`).
        batching: a `BatchingParameters` message (`batching_parameters`) to merge
            concurrent requests as `--enable_batching` does; None: no batching.
        timeout_ms: `--rest_api_timeout_in_ms`; a predict call not answered by then
            gets 504. 0 or less: no timeout.
        num_threads: `--rest_api_num_threads`, the threads that run graphs without
            batching (the real default: 4 per core).
    """

    def __init__(
        self,
        stores,
        batching=None,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        num_threads: int | None = None,
    ):
        self.stores = {stores.name: stores} if isinstance(stores, ModelStore) else dict(stores)
        self.batching = batching
        self.timeout = timeout_ms / 1000 if timeout_ms > 0 else None
        threads = num_threads or 4 * (os.cpu_count() or 1)
        # the real server's HTTP executor (--rest_api_num_threads) runs the graphs
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="rest")
        # refused when the server starts, as the real one does
        self._scheduler = BatchScheduler(batching) if batching is not None else None
        self._queues: dict[tuple, BatchQueue] = {}
        self._lock = threading.Lock()

    def handle(self, method: str, path: str, body: bytes) -> tuple[int, dict]:
        try:
            return 200, self._dispatch(method, path.split("?", 1)[0], body)
        except RequestError as e:
            return e.status, {"error": str(e)}
        except tf.errors.InvalidArgumentError as e:
            return 400, {"error": clean_tf_message(e.message)}
        except RecursionError:
            return 400, {"error": "JSON Value: request nested too deeply"}
        except Exception as e:  # noqa: BLE001 - a server answers, it does not crash
            return 500, {"error": f"{type(e).__name__}: {e}"}

    def _dispatch(self, method: str, path: str, body: bytes) -> dict:
        """ProcessRequest of http_rest_api_handler.cc: route by method and path."""
        if not path.lower().startswith("/v1/"):
            raise RequestError(f"Not found: {path}", 404)
        malformed = RequestError(f"Malformed request: {method} {path}", 400)
        pattern = {"POST": _PREDICT_PATH, "GET": _STATUS_PATH}.get(method)
        match = pattern.fullmatch(path) if pattern else None
        if not match:
            raise malformed
        name, version, label, tail = match.groups()
        name = urllib.parse.unquote(name or "")
        label = None if label is None else urllib.parse.unquote(label)
        if not name:
            raise RequestError("Missing model name in request.")
        if method == "GET" and tail is None:
            return self._status(name, version)
        store = self.stores.get(name)
        if store is None:
            raise RequestError(f"Servable not found for request: Latest({name})", 404)
        number = store.resolve(version, label)
        loaded, sigdefs = store.versions[number]
        if method == "GET":
            return self._metadata(name, number, sigdefs)
        if tail.lower() != "predict":
            raise RequestError(f"this test server implements :predict only, not :{tail}")
        return self._predict((name, number), loaded, sigdefs, body)

    def _status(self, name: str, version: str | None) -> dict:
        """GetModelStatus: every served version (newest first), or the one asked for. A
        version label is not looked at (get_model_status_impl.cc checks only a version)."""
        store = self.stores.get(name)
        if store is None:
            raise RequestError(f"Could not find any versions of model {name}", 404)
        if version is not None:
            if int(version) not in store.versions:
                raise RequestError(f"Could not find version {int(version)} of model {name}", 404)
            numbers = [int(version)]
        else:
            numbers = sorted(store.versions, reverse=True)
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

    def _predict(self, servable: tuple, loaded, sigdefs, body: bytes) -> dict:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        request = serving_json.parse_json(body)
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
            arrays, row = serving_json.from_instances(request["instances"], specs), True
        elif "inputs" in request:
            arrays, row = serving_json.from_inputs(request["inputs"], specs), False
        else:
            raise RequestError("Missing 'inputs' or 'instances' key")

        def run(a: dict) -> dict[str, np.ndarray]:
            return {k: v.numpy() for k, v in fn(**serving_json.to_tensors(a, specs)).items()}

        if self._scheduler is None:
            task = Task(arrays)
            self._pool.submit(run_tasks, run, [task])
        else:
            task = self._queue(servable + (sig_name,), run).schedule(arrays)
        outputs = task.result(deadline)
        if row:
            return {"predictions": serving_json.rows(outputs)}
        if len(outputs) == 1:
            return {"outputs": serving_json.jsonable(*outputs.items())}
        return {"outputs": {k: serving_json.jsonable(k, v) for k, v in outputs.items()}}

    def _queue(self, key: tuple, run_fn) -> BatchQueue:
        with self._lock:
            if key not in self._queues:
                self._queues[key] = self._scheduler.add_queue(run_fn)
            return self._queues[key]


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

    def _other_method(self):  # the real server: "Malformed request" under /v1/, else 404
        self._answer(*self.app.handle(self.command, self.path, b""))

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _other_method  # noqa: N815

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
    base_path: str | None = None,
    model_name: str = "tfcap",
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    model_config_file: str | None = None,
    batching=None,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> ThreadingHTTPServer:
    """A server (not started) for `base_path` as `model_name` (newest version only), or
    for the models of `model_config_file`; `batching` a `BatchingParameters` message
    (`--enable_batching`); `timeout_ms` as `--rest_api_timeout_in_ms`. Port 0 picks a
    free port (`server.server_address[1]`)."""
    if model_config_file:  # as the real server: --model_name/--model_base_path are ignored
        stores = load_model_config(model_config_file)
    elif base_path:
        stores = ModelStore(base_path, model_name)
    else:
        raise ValueError("Both model_base_path and model_config_file are empty!")
    app = ServingApp(stores, batching, timeout_ms)
    handler = type("Handler", (_Handler,), {"app": app})
    return _Server((host, port), handler)


def start_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="serving")
    thread.start()
    return thread


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_base_path")
    parser.add_argument("--model_name", default="tfcap")
    parser.add_argument("--model_config_file")
    parser.add_argument("--enable_batching", action="store_true")
    parser.add_argument("--batching_parameters_file")
    parser.add_argument("--rest_api_timeout_in_ms", type=int, default=DEFAULT_TIMEOUT_MS)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501)
    args = parser.parse_args(argv)
    batching = None
    if args.enable_batching:
        text = ""
        if args.batching_parameters_file:
            with open(args.batching_parameters_file, encoding="utf-8") as f:
                text = f.read()
        batching = batching_parameters(text)
    elif args.batching_parameters_file:
        parser.error("--batching_parameters_file is set without setting --enable_batching to true.")
    server = make_server(
        args.model_base_path,
        args.model_name,
        args.host,
        args.port,
        model_config_file=args.model_config_file,
        batching=batching,
        timeout_ms=args.rest_api_timeout_in_ms,
    )
    names = ", ".join(server.RequestHandlerClass.app.stores)
    print(f"serving {names} on http://{args.host}:{server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
