r"""A client for a tfcap export behind TensorFlow Serving's REST API.

  python -m export.client --serving_url=http://localhost:8501 status
  python -m export.client metadata
  python -m export.client caption IMAGE.jpg [IMAGE.png ...]     # serving_default
  python -m export.client --request_format=columnar features REGIONS.npz  # caption_features

`REGIONS.npz` holds `features` float32 `[batch, regions, dim]`, `boxes` float32
`[batch, regions, 4]` and `num_regions` int32 `[batch]`. Captions are printed as
one JSON line per image (`--all_outputs` adds tokens, attention and boxes).

Library use (no TensorFlow needed, only NumPy and the standard library):

    client = ServingClient("http://localhost:8501", "tfcap")
    client.status()                        # GET /v1/models/tfcap
    client.caption_images([jpeg_bytes])    # POST /v1/models/tfcap:predict, row format
    client.caption_features(features, boxes, num_regions, columnar=True)

REST calls: `POST /v1/models/NAME[/versions/V]:predict` with `{"instances": [...]}`
(row format: one object of named inputs per image) or `{"inputs": {...}}`
(columnar: one batched value per input name); binary strings travel as
`{"b64": "..."}`. `GET /v1/models/NAME[/versions/V]` is the status and
`.../metadata` the signatures. A non-2xx answer raises `ServingError` with the
server's `{"error": ...}` message.
"""

from __future__ import annotations

import base64
import json
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from tfcap import cli, errors

FEATURES_SIGNATURE = "caption_features"
IMAGES_SIGNATURE = "serving_default"

_URL = flags.DEFINE_string("serving_url", "http://localhost:8501", "TF Serving REST address.")
_MODEL = flags.DEFINE_string("serving_model", "tfcap", "Model name on the server.")
_VERSION = flags.DEFINE_integer(
    "serving_version", None, "Model version (default: the server's latest).", lower_bound=0
)
_FORMAT = flags.DEFINE_enum(
    "request_format", "row", ["row", "columnar"], "Predict request format: instances or inputs."
)
_TIMEOUT = flags.DEFINE_float("request_timeout", 60.0, "Seconds to wait for an answer.")
_ALL_OUTPUTS = flags.DEFINE_bool(
    "all_outputs", False, "Print tokens, attention and boxes besides caption and score."
)


class ServingError(RuntimeError):
    """A failed request: `status` is the HTTP status (None: no answer), `message`
    the server's `error` text."""

    def __init__(self, status: int | None, message: str):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status, self.message = status, message


def b64(data: bytes) -> dict[str, str]:
    """TF Serving's JSON form of a binary string.

    >>> b64(b"\\xff\\xd8")
    {'b64': '/9g='}
    """
    return {"b64": base64.b64encode(data).decode("ascii")}


class ServingClient:
    """TF Serving REST calls for one model (and optionally one version).

    Args:
        url: server root, e.g. `http://localhost:8501`.
        model: model name (`--model_name` of the server).
        version: int version, or None for the server's latest.
        timeout: float seconds per request.
    """

    def __init__(
        self,
        url: str = "http://localhost:8501",
        model: str = "tfcap",
        version: int | None = None,
        timeout: float = 60.0,
    ):
        self.url, self.model, self.version, self.timeout = url.rstrip("/"), model, version, timeout

    @property
    def model_path(self) -> str:
        """`/v1/models/NAME[/versions/V]`."""
        path = f"/v1/models/{self.model}"
        return path if self.version is None else f"{path}/versions/{self.version}"

    def status(self) -> dict:
        """GetModelStatusResponse as JSON: `{"model_version_status": [...]}`."""
        return self._call("GET", self.model_path)

    def metadata(self) -> dict:
        """GetModelMetadataResponse as JSON: `model_spec` and the signature defs."""
        return self._call("GET", self.model_path + "/metadata")

    def predict(
        self,
        *,
        instances: list | None = None,
        inputs: dict | list | None = None,
        signature_name: str | None = None,
    ) -> dict:
        """The raw predict call: exactly one of `instances` (row) or `inputs` (columnar)."""
        if (instances is None) == (inputs is None):
            raise ValueError("give exactly one of instances (row) or inputs (columnar)")
        body: dict = {"instances": instances} if inputs is None else {"inputs": inputs}
        if signature_name:
            body["signature_name"] = signature_name
        return self._call("POST", self.model_path + ":predict", body)

    def caption_images(self, images: Sequence[bytes], *, columnar: bool = False) -> list[dict]:
        """Captions of encoded images (`serving_default`), one output dict per image."""
        values = [b64(data) for data in images]
        if columnar:
            answer = self.predict(inputs={"image_bytes": values}, signature_name=IMAGES_SIGNATURE)
        else:
            answer = self.predict(
                instances=[{"image_bytes": v} for v in values], signature_name=IMAGES_SIGNATURE
            )
        return _per_image(answer)

    def caption_features(
        self, features, boxes, num_regions, *, columnar: bool = False
    ) -> list[dict]:
        """Captions of region features (`caption_features`).

        Args:
            features: float `[batch, regions, dim]`; boxes: float `[batch, regions, 4]`;
            num_regions: int `[batch]`.

        Returns:
            per image a dict: `caption` str, `score` float, `tokens` `[max_len]`,
            `attention` `[max_len, regions]`, `boxes` `[regions, 4]` (nested lists).
        """
        columns = {
            "features": np.asarray(features, np.float32).tolist(),
            "boxes": np.asarray(boxes, np.float32).tolist(),
            "num_regions": np.asarray(num_regions, np.int64).tolist(),
        }
        if columnar:
            answer = self.predict(inputs=columns, signature_name=FEATURES_SIGNATURE)
        else:
            values = zip(*columns.values(), strict=True)
            rows = [dict(zip(columns, row, strict=True)) for row in values]
            answer = self.predict(instances=rows, signature_name=FEATURES_SIGNATURE)
        return _per_image(answer)

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                message = json.loads(raw)["error"]
            except (ValueError, KeyError, TypeError):
                message = raw.decode("utf-8", errors="replace") or e.reason
            raise ServingError(e.code, message) from None
        except urllib.error.URLError as e:
            raise ServingError(None, f"{self.url}: {e.reason}") from None


def _per_image(answer: dict) -> list[dict]:
    """`predictions` (row) or `outputs` (columnar) -> one dict of outputs per image."""
    if "predictions" in answer:
        return answer["predictions"]
    outputs = answer["outputs"]
    return [dict(zip(outputs, row, strict=True)) for row in zip(*outputs.values(), strict=True)]


def _print_captions(names: Sequence[str], results: list[dict]) -> None:
    for name, result in zip(names, results, strict=True):
        shown = result if _ALL_OUTPUTS.value else {k: result[k] for k in ("caption", "score")}
        print(json.dumps({"input": name, **shown}))


REGIONS_KEYS = ("features", "boxes", "num_regions")


def load_regions(path: str) -> list[np.ndarray]:
    """The `REGIONS_KEYS` arrays of a REGIONS.npz (module docstring); `tfcap.errors`
    `MissingInput` or `BadInput` naming the file when it is missing or not such an npz."""
    with errors.open_input(path, "rb") as f:
        try:
            data = np.load(f)
        except (ValueError, OSError, zipfile.BadZipFile) as e:  # np.load: not a NumPy file
            raise errors.BadInput(f"{path}: not a NumPy .npz file ({e})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise errors.BadInput(f"{path}: one array (.npy), not an .npz of {REGIONS_KEYS}")
        with data:
            missing = [k for k in REGIONS_KEYS if k not in data.files]
            if missing:
                raise errors.BadInput(f"{path}: no {', '.join(missing)} in {data.files}")
            return [data[k] for k in REGIONS_KEYS]


def main(argv: list[str]) -> None:
    command, args = (argv[1], argv[2:]) if len(argv) > 1 else (None, [])
    client = ServingClient(_URL.value, _MODEL.value, _VERSION.value, _TIMEOUT.value)
    columnar = _FORMAT.value == "columnar"
    try:
        if command in ("status", "metadata") and not args:
            print(json.dumps(getattr(client, command)(), indent=1))
        elif command == "caption" and args:
            images = []
            for path in args:
                with errors.open_input(path, "rb") as f:
                    images.append(f.read())
            _print_captions(args, client.caption_images(images, columnar=columnar))
        elif command == "features" and len(args) == 1:
            arrays = load_regions(args[0])
            names = [f"{os.path.basename(args[0])}[{i}]" for i in range(len(arrays[0]))]
            _print_captions(names, client.caption_features(*arrays, columnar=columnar))
        else:
            raise app.UsageError(
                f"got {argv[1:] or 'no command'}; commands: status | metadata | "
                "caption IMAGE... | features REGIONS.npz"
            )
    except ServingError as e:  # the server's answer (or none) to what was asked: one line
        where = "" if e.status is None else f"{client.url}{client.model_path}: "
        raise errors.BadInput(f"{where}{e}") from None


if __name__ == "__main__":
    cli.run(main)
