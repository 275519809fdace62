"""tfcap.features.images.load_image on files that are not usable images: one clear reason each."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from conftest import shared_data_dir
from PIL import Image

from tfcap.features import images

bad_input = pytest.mark.bad_input("feature extraction")


def _encoded(fmt: str, size=(24, 16)) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, fmt)
    return out.getvalue()


def _photo() -> bytes:
    photos = sorted((shared_data_dir() / "coco_val2014_samples").glob("*.jpg"))
    return photos[0].read_bytes() if photos else _encoded("JPEG", (320, 240))


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG signature and IHDR chunk for an image of this size (and no pixel data)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def _corrupt_png() -> bytes:
    data = bytearray(_encoded("PNG"))
    start = data.index(b"IDAT") + 8
    data[start : start + 20] = b"\x00" * 20  # pixel data no longer inflates (nor matches its CRC)
    return bytes(data)


BAD_FILES = {  # file name -> (content, the start of the reason)
    "empty.jpg": (lambda: b"", "empty file: 0 bytes"),
    "truncated.jpg": (lambda: _photo()[:3000], "cannot decode"),
    "header_only.jpg": (lambda: b"\xff\xd8\xff\xe0", "cannot decode"),
    "truncated.png": (lambda: _encoded("PNG")[:60], "cannot decode"),
    "corrupt.png": (_corrupt_png, "cannot decode"),
    "text.jpg": (lambda: b"just some words\n" * 20, "cannot decode: not a JPEG or PNG"),
    "page.png": (lambda: b"<!doctype html><html><body>404</body></html>", "cannot decode"),
    "anim.gif": (lambda: _encoded("GIF"), "unsupported format: GIF"),
    "bitmap.bmp": (lambda: _encoded("BMP"), "unsupported format: BMP"),
    "jpeg_named.png": (lambda: _encoded("JPEG"), None),  # a JPEG by any name is read
    "bomb.png": (lambda: _png_claiming(60_000, 60_000), "cannot decode"),
}


@bad_input
@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_image_files_raise_image_error_with_the_reason(tmp_path, name):
    make, reason = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(make())
    if reason is None:
        assert images.load_image(str(path)).shape == (16, 24, 3)
        return
    with pytest.raises(images.ImageError) as err:
        images.load_image(str(path))
    assert str(err.value).startswith(reason), str(err.value)


@bad_input
def test_missing_file_and_directory_cannot_be_read(tmp_path):
    with pytest.raises(images.ImageError, match="^cannot read: no such file"):
        images.load_image(str(tmp_path / "gone.jpg"))
    (tmp_path / "folder.jpg").mkdir()
    with pytest.raises(images.ImageError, match="^cannot read: .*a directory"):
        images.load_image(str(tmp_path / "folder.jpg"))


@bad_input
def test_decode_in_order_reports_each_bad_file_and_keeps_the_rest(tmp_path):
    paths = []
    for i, data in enumerate([_encoded("PNG"), b"", _encoded("JPEG"), b"nope"]):
        paths.append(str(tmp_path / f"{i}.png"))
        (tmp_path / f"{i}.png").write_bytes(data)
    got = list(images.decode_in_order(paths, threads=2, window=2))
    assert [p for p, _ in got] == paths
    kinds = [type(x).__name__ for _, x in got]
    assert kinds == ["ndarray", "ImageError", "ndarray", "ImageError"]
