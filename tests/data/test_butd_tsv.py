"""Tests for tfcap.data.butd_tsv: round trips, normalisation, bad input, streaming."""

from __future__ import annotations

import base64
import os
import re
import threading

import numpy as np
import pytest

from tfcap.data import butd_tsv, errors
from tfcap.data.records import ImageRecord

bad_input = pytest.mark.bad_input("data prep")


def _record(rng: np.random.Generator, image_id: int, regions: int, dim: int = 2048) -> ImageRecord:
    """A record with normalised boxes (x1 <= x2, y1 <= y2) and float32 features."""
    corners = rng.random((regions, 2, 2)).astype(np.float32)
    boxes = np.concatenate([corners.min(axis=1), corners.max(axis=1)], axis=1)
    features = rng.standard_normal((regions, dim)).astype(np.float32)
    width, height = (int(v) for v in rng.integers(100, 1000, size=2))
    return ImageRecord(image_id, width, height, boxes, features)


def _to_pixels(record: ImageRecord) -> ImageRecord:
    scale = np.array([record.width, record.height] * 2, np.float64)
    boxes = (record.boxes * scale).astype(np.float32)
    return ImageRecord(record.image_id, record.width, record.height, boxes, record.features)


def _line(image_id, width, height, count, boxes, features) -> bytes:
    """One TSV line written by hand (independent of write_tsv); arrays are base64'd."""
    fields = [image_id, width, height, count]
    fields += [base64.b64encode(np.asarray(a, "<f4").tobytes()) for a in (boxes, features)]
    return b"\t".join(f if isinstance(f, bytes) else str(f).encode() for f in fields) + b"\n"


def _good_line(image_id: int, regions: int = 3, dim: int = 8) -> bytes:
    boxes = np.tile(np.float32([[10, 20, 30, 40]]), (regions, 1))
    return _line(image_id, 100, 50, regions, boxes, np.ones((regions, dim), np.float32))


def _write(path, lines: list[bytes]) -> str:
    with open(path, "wb") as f:
        f.writelines(lines)
    return str(path)


@pytest.mark.parametrize(
    "regions", [[36, 36, 36], [10, 57, 100]], ids=["fixed36", "adaptive10to100"]
)
def test_round_trip_pixel_boxes_is_bit_exact(tmp_path, regions):
    rng = np.random.default_rng(0)
    records = [_to_pixels(_record(rng, 1000 + i, n)) for i, n in enumerate(regions)]
    path = str(tmp_path / "feats.tsv")
    assert butd_tsv.write_tsv(path, records, pixel_boxes=True) == len(records)

    back = list(butd_tsv.read_tsv(path, feature_dim=2048, pixel_boxes=True))

    assert [r.image_id for r in back] == [r.image_id for r in records]
    for got, want in zip(back, records, strict=True):
        assert (got.width, got.height) == (want.width, want.height)
        assert got.boxes.dtype == np.float32 and got.features.dtype == np.float32
        assert got.features.shape == (len(want.boxes), 2048)
        np.testing.assert_array_equal(got.boxes, want.boxes)
        np.testing.assert_array_equal(got.features, want.features)
        assert got.captions == []
    again = str(tmp_path / "again.tsv")
    butd_tsv.write_tsv(again, back, pixel_boxes=True)
    with open(path, "rb") as a, open(again, "rb") as b:
        assert a.read() == b.read()


@pytest.mark.parametrize("regions", [[36, 36], [10, 100]], ids=["fixed36", "adaptive"])
def test_round_trip_normalised_boxes(tmp_path, regions):
    rng = np.random.default_rng(1)
    records = [_record(rng, i, n) for i, n in enumerate(regions)]
    path = str(tmp_path / "feats.tsv")
    butd_tsv.write_tsv(path, records)

    back = list(butd_tsv.read_tsv(path))

    for got, want in zip(back, records, strict=True):
        np.testing.assert_array_equal(got.features, want.features)
        # Pixels are float32, so x -> x * w -> / w may move x by one float32 ulp.
        np.testing.assert_array_max_ulp(got.boxes, want.boxes, maxulp=1)
        assert got.boxes.min() >= 0.0 and got.boxes.max() <= 1.0


def test_boxes_are_normalised_by_image_size_and_clipped(tmp_path):
    pixels = np.float32([[0, 0, 640, 480], [64, 48, 320, 240], [-5, 96, 700, 500]])
    path = _write(tmp_path / "f.tsv", [_line(7, 640, 480, 3, pixels, np.zeros((3, 4)))])

    (record,) = butd_tsv.read_tsv(path)

    want = np.float32([[0, 0, 1, 1], [0.1, 0.1, 0.5, 0.5], [0, 0.2, 1, 1]])
    np.testing.assert_allclose(record.boxes, want, rtol=1e-7)
    assert (record.image_id, record.width, record.height) == (7, 640, 480)
    assert record.features.shape == (3, 4)


def test_crlf_line_endings_are_accepted(tmp_path):
    lines = [_good_line(1).replace(b"\n", b"\r\n"), _good_line(2).replace(b"\n", b"\r\n")]
    path = _write(tmp_path / "crlf.tsv", lines)
    assert [r.image_id for r in butd_tsv.read_tsv(path, feature_dim=8)] == [1, 2]


def _bad_cases():
    boxes3, feats3 = np.zeros((3, 4)), np.ones((3, 8))
    b64 = base64.b64encode(np.zeros((3, 4), "<f4").tobytes())
    nan = feats3.copy()
    nan[1, 2] = np.nan
    return {
        "field_count": (_good_line(7).rsplit(b"\t", 1)[0] + b"\n", "wrong field count: got 5"),
        "image_id": (b"abc" + _good_line(7)[1:], "non-integer image_id: b'abc'"),
        "num_boxes": (_line(7, 100, 50, "3.5", boxes3, feats3), "non-integer num_boxes"),
        "width": (_line(7, "x", 50, 3, boxes3, feats3), "non-integer image_w"),
        "size": (_line(7, 0, 50, 3, boxes3, feats3), "bad image size"),
        "no_boxes": (_line(7, 100, 50, 0, boxes3[:0], feats3[:0]), "no regions: num_boxes 0"),
        "base64_boxes": (_line(7, 100, 50, 3, boxes3, feats3).replace(b64, b"@@@@"), "bad base64"),
        "base64_features": (_line(7, 100, 50, 3, boxes3, feats3)[:-3] + b"\n", "bad base64 in f"),
        "boxes_length": (_line(7, 100, 50, 4, boxes3, np.ones((4, 8))), "boxes byte length"),
        "features_length": (_line(7, 100, 50, 3, boxes3, np.ones(25)), "features byte length"),
        "feature_dim": (_line(7, 100, 50, 3, boxes3, np.ones((3, 16))), "feature dim mismatch"),
        "nan": (_line(7, 100, 50, 3, boxes3, nan), "non-finite features: 1 NaN or Inf"),
    }


@pytest.mark.parametrize("case", sorted(_bad_cases()))
@bad_input
def test_bad_line_raises_naming_file_line_and_image(tmp_path, case):
    bad_line, reason = _bad_cases()[case]
    path = _write(tmp_path / "bad.tsv", [_good_line(1), bad_line, _good_line(3)])
    where = f"{path}:2" if case == "image_id" else f"{path}:2 (image 7)"
    records = butd_tsv.read_tsv(path, feature_dim=8)

    assert next(records).image_id == 1
    with pytest.raises(ValueError, match=re.escape(where) + ": " + re.escape(reason)):
        next(records)


@bad_input
def test_feature_dim_is_fixed_by_the_first_record_when_not_given(tmp_path):
    path = _write(tmp_path / "f.tsv", [_good_line(1, dim=8), _good_line(2, dim=16)])
    with pytest.raises(ValueError, match=rf"{re.escape(path)}:2 \(image 2\): feature dim mismatch"):
        list(butd_tsv.read_tsv(path))


@bad_input
def test_skip_bad_counts_and_continues(tmp_path):
    cases = _bad_cases()
    lines = [_good_line(1), cases["nan"][0], _good_line(3), cases["field_count"][0]]
    path = _write(tmp_path / "bad.tsv", lines + [_good_line(5)])

    assert [r.image_id for r in butd_tsv.read_tsv(path, skip_bad=True)] == [1, 3, 5]

    bad = errors.BadRecords()
    assert len(list(butd_tsv.read_tsv(path, skip_bad=bad))) == 3
    assert len(list(butd_tsv.read_tsv([path], skip_bad=bad))) == 3  # One tally, two reads.
    assert bad.count == 4
    assert bad.by_reason == {"non-finite features": 2, "wrong field count": 2}
    assert bad.examples[0].startswith(f"{path}:2 (image 7): non-finite features")
    assert bad.summary().startswith("4 bad records skipped")


def test_image_ids_filter_skips_other_lines_without_decoding(tmp_path):
    garbage = b"2\t100\t50\t3\tnot base64!\tnor this\n"
    path = _write(tmp_path / "f.tsv", [_good_line(1), garbage, _good_line(3), _good_line(4)])
    got = butd_tsv.read_tsv(path, image_ids={4, 1, 99})
    assert [r.image_id for r in got] == [1, 4]


@bad_input
def test_reads_first_record_without_reading_the_rest(tmp_path):
    garbage = os.urandom(1 << 20).replace(b"\n", b"") + b"\n"
    path = _write(tmp_path / "f.tsv", [_good_line(1)] + [garbage] * 8)
    records = butd_tsv.read_tsv(path)
    assert next(records).image_id == 1
    with pytest.raises(ValueError, match=re.escape(f"{path}:2")):
        next(records)


def test_streams_from_a_pipe_before_the_writer_finishes(tmp_path):
    fifo = str(tmp_path / "pipe.tsv")
    os.mkfifo(fifo)
    first_record_seen = threading.Event()
    waited = []

    def writer():
        with open(fifo, "wb") as f:
            f.write(_good_line(1))
            f.flush()
            waited.append(first_record_seen.wait(timeout=20))
            f.write(_good_line(2))

    thread = threading.Thread(target=writer)
    thread.start()
    records = butd_tsv.read_tsv(fifo)
    assert next(records).image_id == 1
    first_record_seen.set()
    assert [r.image_id for r in records] == [2]
    thread.join()
    assert waited == [True]  # The reader did not wait for the end of the stream.


def test_globs_and_file_order(tmp_path):
    _write(tmp_path / "part.1.tsv", [_good_line(3), _good_line(4)])
    _write(tmp_path / "part.0.tsv", [_good_line(1), _good_line(2)])
    extra = _write(tmp_path / "extra.tsv", [_good_line(9)])
    got = butd_tsv.read_tsv([str(tmp_path / "part.*.tsv"), extra])
    assert [r.image_id for r in got] == [1, 2, 3, 4, 9]


@bad_input
def test_missing_files_raise_at_call_time(tmp_path):
    with pytest.raises(FileNotFoundError, match="no file matches"):
        butd_tsv.read_tsv(str(tmp_path / "*.tsv"))
    with pytest.raises(FileNotFoundError, match="no such file"):
        butd_tsv.read_tsv(str(tmp_path / "absent.tsv"))


@bad_input
def test_write_is_atomic(tmp_path):
    rng = np.random.default_rng(2)
    path = str(tmp_path / "out.tsv")

    def records():
        yield _record(rng, 1, 10, dim=8)
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        butd_tsv.write_tsv(path, records())
    nan = _record(rng, 2, 10, dim=8)
    nan.features[0, 0] = np.nan
    with pytest.raises(
        ValueError, match=f"writing {re.escape(path)}: image 2: non-finite features"
    ):
        butd_tsv.write_tsv(path, [_record(rng, 1, 10, dim=8), nan])
    assert os.listdir(tmp_path) == []
