"""tfcap.features.images.decode_in_graph (the serving graph's decoder) equals load_image
(extraction's): EXIF orientation, alpha, grayscale, palette, and the real JPEGs pixel for pixel."""

from __future__ import annotations

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from tfcap.features import images


@pytest.fixture(scope="module")
def photo(shared_data):
    path = shared_data / "coco_val2014_samples" / "COCO_val2014_000000397427.jpg"
    return images.load_image(str(path))[:45, :61]  # not square: rotations change the shape


def encoded(image: Image.Image, fmt: str, orientation: int | None = None) -> bytes:
    out = io.BytesIO()
    kwargs = {"quality": 95} if fmt == "JPEG" else {}
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        kwargs["exif"] = exif
    image.save(out, fmt, **kwargs)
    return out.getvalue()


def both(data: bytes, tmp_path) -> tuple[np.ndarray, np.ndarray]:
    path = tmp_path / "image"
    path.write_bytes(data)
    return images.load_image(str(path)), images.decode_in_graph(tf.constant(data)).numpy()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_applied_as_pillow_does(photo, fmt, orientation, tmp_path):
    data = encoded(Image.fromarray(photo), fmt, orientation)
    assert int(images.exif_orientation(tf.constant(data))) == orientation
    want, got = both(data, tmp_path)
    assert want.shape == got.shape and (orientation < 5) == (got.shape[:2] == (45, 61))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "RGB"])
def test_alpha_gray_and_palette_pngs(photo, mode, tmp_path):
    image = Image.fromarray(photo).convert(mode)
    if mode in ("RGBA", "LA"):
        alpha = np.random.default_rng(0).integers(0, 256, photo.shape[:2], np.uint8)
        alpha[:5] = 0  # fully transparent rows: white
        image.putalpha(Image.fromarray(alpha))
    want, got = both(encoded(image, "PNG"), tmp_path)
    np.testing.assert_array_equal(got, want)


def test_the_real_photos_decode_identically(shared_data):
    for path in sorted((shared_data / "coco_val2014_samples").glob("*.jpg")):
        got = images.decode_in_graph(tf.constant(path.read_bytes())).numpy()
        np.testing.assert_array_equal(got, images.load_image(str(path)), err_msg=path.name)


def test_no_or_broken_exif_reads_as_upright(photo):
    plain = encoded(Image.fromarray(photo), "JPEG")
    assert int(images.exif_orientation(tf.constant(plain))) == 1
    with_exif = encoded(Image.fromarray(photo), "JPEG", 6)
    start = with_exif.index(b"Exif\x00\x00") + 6
    broken = with_exif[:start] + b"XX" + with_exif[start + 2 :]  # not II/MM: no valid TIFF
    assert int(images.exif_orientation(tf.constant(broken))) == 1
    graph = tf.function(images.exif_orientation, input_signature=[tf.TensorSpec([], tf.string)])
    assert int(graph(tf.constant(with_exif))) == 6
