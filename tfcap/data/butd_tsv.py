"""Streaming reader and writer for bottom-up-attention region features (TSV).

The public features of Anderson et al. ("Bottom-Up and Top-Down Attention",
github.com/peteanderson80/bottom-up-attention) come as tab-separated files
without a header, one image per line, with the fields

    image_id  image_w  image_h  num_boxes  boxes  features

where `boxes` is base64 of float32 `[num_boxes, 4]` (x1, y1, x2, y2 in pixels)
and `features` base64 of float32 `[num_boxes, dim]` (dim 2048), both
little-endian. Both the fixed-36 and the adaptive 10-100 region files use it.
Lines may end in "\\n" or "\\r\\n" (the original writer used `csv`).

The files are tens of GB, so `read_tsv` reads one line at a time and yields
`ImageRecord`s lazily; lines of images not in `image_ids` are skipped without
decoding their base64.

Boxes: `read_tsv` divides by the image size (clipped to [0, 1]) and `write_tsv`
multiplies back, in float64, so a default round trip keeps features bit-exact
and boxes within 1 float32 ulp. With `pixel_boxes=True` on both sides boxes stay
in pixels and the round trip is bit-exact, the rewritten file byte-identical.
"""

from __future__ import annotations

import base64
import binascii
import glob
import os
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from absl import logging

from tfcap.data import errors
from tfcap.data.records import ImageRecord
from tfcap.errors import MissingInput, open_input

FIELDS = ("image_id", "image_w", "image_h", "num_boxes", "boxes", "features")
_FLOAT32 = np.dtype("<f4")


class _BadLine(Exception):
    """A malformed line; the message is the `why` for `BadRecords.add`."""


def expand_paths(paths: str | Sequence[str]) -> list[str]:
    """Expands globs (each pattern's matches sorted), keeping the given order otherwise.

    Raises:
        `tfcap.errors.MissingInput` (a FileNotFoundError) if a pattern matches nothing or
        a plain path does not exist.
    """
    patterns = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    expanded = []
    for pattern in map(os.fspath, patterns):
        if any(c in pattern for c in "*?["):
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise MissingInput(f"no file matches {pattern!r}")
            expanded.extend(matches)
        elif os.path.exists(pattern):  # Also pipes, e.g. /dev/stdin or <(zcat f.tsv.gz).
            expanded.append(pattern)
        else:
            raise MissingInput(f"no such file: {pattern!r}")
    if not expanded:
        raise MissingInput("no TSV paths given")
    return expanded


def _to_int(value: bytes, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise _BadLine(f"non-integer {name}: {value[:32]!r}") from None


def _decode(fields: list[bytes], index: int) -> bytes:
    try:
        return base64.b64decode(fields[index], validate=True)
    except binascii.Error as err:
        raise _BadLine(f"bad base64 in {FIELDS[index]}: {err}") from None


def _parse(
    fields: list[bytes], image_id: int, dim: int | None, dim_source: str, pixel_boxes: bool
) -> ImageRecord:
    """Decodes one line's fields; raises _BadLine. `dim` None: any dim is accepted."""
    width, height, count = (_to_int(fields[i], FIELDS[i]) for i in (1, 2, 3))
    if width <= 0 or height <= 0:
        raise _BadLine(f"bad image size: image_w {width}, image_h {height}")
    if count <= 0:
        raise _BadLine(f"no regions: num_boxes {count}")
    raw_boxes, raw_feats = _decode(fields, 4), _decode(fields, 5)
    if len(raw_boxes) != count * 4 * 4:
        raise _BadLine(
            f"boxes byte length: got {len(raw_boxes)}, expected num_boxes*4*4 = {count * 16}"
        )
    got_dim, rest = divmod(len(raw_feats), count * 4)
    if rest or not got_dim:
        want = f"num_boxes*{dim}*4 = {count * dim * 4}" if dim else "a multiple of num_boxes*4"
        raise _BadLine(f"features byte length: got {len(raw_feats)}, expected {want}")
    if dim is not None and got_dim != dim:
        raise _BadLine(
            f"feature dim mismatch: {got_dim} ({len(raw_feats)} bytes for {count} boxes), "
            f"expected {dim} ({dim_source})"
        )
    boxes = np.frombuffer(raw_boxes, _FLOAT32).astype(np.float32).reshape(count, 4)
    features = np.frombuffer(raw_feats, _FLOAT32).astype(np.float32).reshape(count, got_dim)
    if not np.all(np.isfinite(boxes)):
        raise _BadLine("non-finite boxes: NaN or Inf in boxes")
    bad_values = np.size(features) - np.count_nonzero(np.isfinite(features))
    if bad_values:
        raise _BadLine(f"non-finite features: {bad_values} NaN or Inf values")
    if not pixel_boxes:
        scale = np.array([width, height, width, height], np.float64)
        boxes = np.clip(boxes / scale, 0.0, 1.0).astype(np.float32)
    return ImageRecord(
        image_id=image_id, width=width, height=height, boxes=boxes, features=features
    )


def read_tsv(
    paths: str | Sequence[str],
    feature_dim: int | None = None,
    image_ids: set[int] | None = None,
    skip_bad: bool | errors.BadRecords = False,
    pixel_boxes: bool = False,
) -> Iterator[ImageRecord]:
    """Streams `ImageRecord`s from bottom-up-attention TSV files.

    Args:
        paths: a file, a glob, or a sequence of them; read in order (glob
            matches sorted). Missing files raise `MissingInput` at call time.
        feature_dim: expected feature width D; None accepts the width of the
            first good record and then requires it of all others.
        image_ids: if given, only these images are decoded and yielded.
        skip_bad: False raises on the first malformed line; True or a
            `errors.BadRecords` skips and counts it (see `tfcap.data.errors`).
        pixel_boxes: keep boxes in pixels as stored instead of normalising them.

    Returns:
        An iterator of `ImageRecord`s in file order, with `boxes` float32
        `[regions, 4]` (x1, y1, x2, y2 in [0, 1], or pixels), `features`
        float32 `[regions, dim]` and no captions.

    Raises (while iterating, unless skipped):
        `BadInput` (a ValueError) "PATH:LINE (image ID): reason: detail" for a wrong field
        count, a non-integer field, bad base64, a byte length that disagrees
        with num_boxes and the feature dim, num_boxes <= 0, a non-positive
        image size, or NaN/Inf values.
    """
    files = expand_paths(paths)
    if feature_dim is not None and feature_dim <= 0:
        raise ValueError(f"feature_dim must be positive, got {feature_dim}")
    bad, owned = errors.resolve(skip_bad)
    wanted = None if image_ids is None else frozenset(int(i) for i in image_ids)
    return _iter_records(files, feature_dim, wanted, bad, owned, pixel_boxes)


def _iter_records(
    files: list[str],
    feature_dim: int | None,
    wanted: frozenset[int] | None,
    bad: errors.BadRecords,
    owned: bool,
    pixel_boxes: bool,
) -> Iterator[ImageRecord]:
    dim, dim_source = feature_dim, "feature_dim"
    for path in files:
        logging.info("Reading region features from %s", path)
        yielded = 0
        with open_input(path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                where = f"{path}:{lineno}"
                line = line.rstrip(b"\r\n")
                tab = line.find(b"\t")
                try:
                    image_id = _to_int(line[:tab] if tab >= 0 else line, "image_id")
                except _BadLine as err:
                    bad.add(where, str(err))  # Raises unless skipping.
                    continue
                if wanted is not None and image_id not in wanted:
                    continue
                where = f"{where} (image {image_id})"
                fields = line.split(b"\t")
                try:
                    if len(fields) != len(FIELDS):
                        raise _BadLine(
                            f"wrong field count: got {len(fields)}, expected {len(FIELDS)} "
                            f"({', '.join(FIELDS)})"
                        )
                    record = _parse(fields, image_id, dim, dim_source, pixel_boxes)
                except _BadLine as err:
                    bad.add(where, str(err))
                    continue
                if dim is None:
                    dim, dim_source = record.features.shape[1], f"as in {where}"
                yielded += 1
                yield record
        logging.info("Read %d records from %s", yielded, path)
    if owned:
        errors.log_summary(bad, ", ".join(files))


def _encode_line(record: ImageRecord, pixel_boxes: bool) -> bytes:
    width, height = int(record.width), int(record.height)
    if width <= 0 or height <= 0:
        raise ValueError(f"image {record.image_id}: bad image size {width}x{height}")
    boxes = np.asarray(record.boxes, np.float64)
    if not pixel_boxes:
        boxes = boxes * np.array([width, height, width, height], np.float64)
    boxes = np.ascontiguousarray(boxes, _FLOAT32)
    features = np.ascontiguousarray(record.features, _FLOAT32)
    fields = [
        str(int(record.image_id)).encode(),
        str(width).encode(),
        str(height).encode(),
        str(boxes.shape[0]).encode(),
        base64.b64encode(boxes.tobytes()),
        base64.b64encode(features.tobytes()),
    ]
    return b"\t".join(fields) + b"\n"


def write_tsv(path: str, records: Iterable[ImageRecord], pixel_boxes: bool = False) -> int:
    """Writes records in the bottom-up-attention TSV format, streaming, atomically.

    Args:
        path: output file, written to a temporary file beside it and renamed
            into place (its directory is created if needed).
        records: `ImageRecord`s (any iterable, consumed once). Features are
            stored as float32; boxes are scaled to pixels by width and height
            unless `pixel_boxes`.
        pixel_boxes: the records' boxes are already in pixels.

    Returns:
        The number of records written.

    Raises:
        ValueError naming the image when a record fails `ImageRecord.validate`
        or has a non-positive size; nothing is written then.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp{os.getpid()}")
    count = 0
    try:
        with open(tmp, "wb") as f:
            for record in records:
                problem = record.problem()
                if problem:
                    raise ValueError(f"writing {path}: image {record.image_id}: {problem}")
                f.write(_encode_line(record, pixel_boxes))
                count += 1
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    logging.info("Wrote %d records to %s", count, path)
    return count
