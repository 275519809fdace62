"""The test server's REST JSON (tests/export/serving_server.py, "Row format" to "Binary
strings"): requests parsed as TF Serving's RapidJSON reads them, row and columnar inputs
turned into arrays of the signature's dtypes and shapes, and outputs written back."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re

import numpy as np
import tensorflow as tf
from serving_errors import RequestError


def parse_json(body: bytes):
    """The request body as RapidJSON reads it with TF Serving's flags: NaN, Infinity and
    Inf (either sign) are numbers (kParseNanAndInfFlag); a literal beyond float64 is an
    error, not an infinity; what follows the top-level value is ignored
    (kParseStopWhenDoneFlag).

    >>> parse_json(b'{"x": [NaN, -Inf, Infinity, 1]} trailing')
    {'x': [nan, -inf, inf, 1]}
    >>> parse_json(b'{"s": "Inf -NaN \\\\" Inf", "y": -NaN}')
    {'s': 'Inf -NaN " Inf', 'y': nan}
    """

    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise RequestError(
                f"JSON Parse error: Number too big to be stored in double: {text[:40]}"
            )
        return value

    def integer(text: str) -> int | float:
        value = int(text)
        if abs(value) > 2**64:  # beyond int64/uint64: RapidJSON reads a double
            return number(text)
        return value

    if not body.strip():
        raise RequestError("JSON Parse error: The document is empty")
    try:
        text = body.decode("utf-8")
        if "Inf" in text or "-NaN" in text:
            text = _NON_FINITE.sub(_python_token, text)
        text = text.lstrip()
        decoder = json.JSONDecoder(parse_float=number, parse_int=integer)
        return decoder.raw_decode(text)[0]
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"JSON Parse error: {e}") from None
    except RecursionError:
        raise RequestError("JSON Parse error: nested too deeply") from None


# A JSON string (kept as it is), or a non-finite token Python's json does not read. Run
# on every body, with the string part as `"(?:[^"\\]|\\.)*"`, it grew the server by
# ~300 MB over tests/export/test_serving_load.py's base64 image bodies; now bodies
# without such a token skip it, and the string part is the unrolled form.
_NON_FINITE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|-?Inf(?!inity)|-NaN')


def _python_token(match: re.Match) -> str:
    token = match[0]
    if token.startswith('"'):
        return token
    if token == "-NaN":
        return "NaN"
    return token + "inity"  # Inf -> Infinity, -Inf -> -Infinity


def from_instances(instances, specs: dict) -> dict[str, np.ndarray]:
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


def from_inputs(inputs, specs: dict) -> dict[str, np.ndarray]:
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
        with np.errstate(over="ignore"):  # as GetFloat(): 1e39 becomes Infinity
            data = np.array(np.array(flat, np.float64), dtype.as_numpy_dtype)
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


def to_tensors(arrays: dict, specs: dict) -> dict[str, tf.Tensor]:
    return {n: tf.constant(a, dtype=specs[n].dtype) for n, a in arrays.items()}


def jsonable(name: str, value: np.ndarray):
    if value.dtype == object:
        encode = (
            (lambda b: {"b64": base64.b64encode(b).decode("ascii")})
            if name.endswith("_bytes")
            else (lambda b: b.decode("utf-8", errors="replace"))
        )
        return np.vectorize(encode, otypes=[object])(value).tolist() if value.size else []
    return value.tolist()


def rows(outputs: dict[str, np.ndarray]) -> list:
    batch = {len(v) for v in outputs.values()}
    if len(batch) != 1:
        raise RequestError("outputs do not share a batch size; use the columnar format")
    columns = {k: jsonable(k, v) for k, v in outputs.items()}
    if len(columns) == 1:
        return next(iter(columns.values()))
    return [{k: columns[k][i] for k in columns} for i in range(batch.pop())]
