"""Image files for feature extraction: finding them, naming them, decoding them.

Decoding goes through Pillow, so every image is seen the way a photo viewer
shows it: EXIF orientation applied (`PIL.ImageOps.exif_transpose`), grayscale,
palette, 16-bit and CMYK images turned into RGB, and RGBA composited over white.
JPEG (including MPO, the multi-picture JPEG some phones write) and PNG are read;
anything else fails with an `ImageError` that says why, so one bad file can be
reported and skipped while the rest of a batch goes on.

>>> image_ids(["a/COCO_val2014_000000397427.jpg", "b/cat.png", "c/img_7.png"])
[397427, 1000000000000, 7]
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import re
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, UnidentifiedImageError

FORMATS = ("JPEG", "MPO", "PNG")
# Files a directory listing picks up: the readable formats and common image files that are not
# (so those are reported as unsupported rather than silently left out).
EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".heic")
UNNAMED_ID_START = 10**12  # ids of files whose names hold no number: above every COCO id


class ImageError(ValueError):
    """A file that cannot be used as an image; `str()` reads "reason: detail"."""


def list_images(specs: Sequence[str]) -> list[str]:
    """Files named by `specs`: directories (their image files, not recursive), globs, or files.

    A directory contributes the files with an image extension (`EXTENSIONS`), a glob
    everything it matches, a path the file itself. The result is sorted within each spec,
    without repeats, in spec order.

    Raises:
        FileNotFoundError: a spec matches nothing, or nothing at all is found.
    """
    out: list[str] = []
    for spec in specs:
        if os.path.isdir(spec):
            names = sorted(os.listdir(spec))
            found = [os.path.join(spec, n) for n in names if n.lower().endswith(EXTENSIONS)]
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
        elif os.path.exists(spec):
            found = [spec]
        else:
            raise FileNotFoundError(f"{spec}: no such file or directory")
        if not found:
            raise FileNotFoundError(f"{spec}: no image files found")
        out.extend(found)
    if not out:
        raise FileNotFoundError("no images given")
    return list(dict.fromkeys(os.path.abspath(p) for p in out))


def image_ids(paths: Sequence[str]) -> list[int]:
    """An integer id per file: the number at the end of its name (COCO names give COCO ids).

    Files without such a number, or whose number another file has too, get ids counting
    up from `UNNAMED_ID_START`, in order. The same list always gives the same ids.
    """
    numbers = []
    for path in paths:
        match = re.search(r"(\d+)$", os.path.splitext(os.path.basename(path))[0])
        numbers.append(int(match.group(1)) if match and len(match.group(1)) < 18 else None)
    counts: dict[int, int] = {}
    for n in numbers:
        if n is not None:
            counts[n] = counts.get(n, 0) + 1
    out, next_id = [], UNNAMED_ID_START
    for n in numbers:
        if n is not None and counts[n] == 1:
            out.append(n)
        else:
            out.append(next_id)
            next_id += 1
    return out


def load_image(path: str) -> np.ndarray:
    """Decodes a JPEG or PNG file the way it is meant to be shown.

    Returns:
        uint8 `[height, width, 3]` RGB, after the EXIF orientation.

    Raises:
        ImageError: "empty file: ...", "unsupported format: ...", "cannot decode: ...",
            "cannot read: ..." (OS errors).
    """
    try:
        if os.path.getsize(path) == 0:
            raise ImageError("empty file: 0 bytes")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. Pillow's DecompressionBombWarning text
            with Image.open(path) as image:
                if image.format not in FORMATS:
                    raise ImageError(
                        f"unsupported format: {image.format or 'unknown'} (JPEG and PNG are read)"
                    )
                image.load()
                return _to_rgb(ImageOps.exif_transpose(image))
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError("cannot decode: not a JPEG or PNG image (unrecognised content)") from None
    except OSError as err:  # truncated or corrupt data; missing files; permissions
        if not os.path.exists(path):
            raise ImageError("cannot read: no such file") from None
        unreadable = isinstance(err, PermissionError | IsADirectoryError)
        reason = "cannot read" if unreadable else "cannot decode"
        raise ImageError(f"{reason}: {err}") from None
    except (ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise ImageError(f"cannot decode: {err}") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    """uint8 `[height, width, 3]` from any Pillow mode; alpha composited over white."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    elif image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, np.float64)
        peak = 65535.0 if array.max(initial=0) > 255 else 255.0
        image = Image.fromarray((np.clip(array / peak, 0, 1) * 255).round().astype(np.uint8))
    return np.asarray(image.convert("RGB"), np.uint8)


def decode_in_order(
    paths: Sequence[str], threads: int = 4, window: int = 16
) -> Iterator[tuple[str, np.ndarray | ImageError]]:
    """`(path, image or ImageError)` for each path, in order, decoded by `threads` threads.

    At most `window` images are decoded ahead of the consumer (Pillow releases the GIL
    while decoding, so threads overlap decoding with the caller's TensorFlow work).
    """

    def decode(path: str) -> np.ndarray | ImageError:
        try:
            return load_image(path)
        except ImageError as err:
            return err

    if threads <= 1:
        for path in paths:
            yield path, decode(path)
        return
    with concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="decode") as pool:
        pending: list[tuple[str, concurrent.futures.Future]] = []
        for path in paths:
            pending.append((path, pool.submit(decode, path)))
            if len(pending) >= window:
                done_path, future = pending.pop(0)
                yield done_path, future.result()
        for done_path, future in pending:
            yield done_path, future.result()


# EXIF tags of orientation -> how to show the stored pixels (PIL.ImageOps.exif_transpose).
_ORIENTATION_TAG = 0x0112
_EXIF_MARKERS = (b"Exif\x00\x00", b"eXIf")  # JPEG APP1 payload; PNG chunk type
_EXIF_WINDOW = 65536  # bytes of the file searched for the EXIF block (JPEG APP1 is at most 64K)
_MAX_IFD_ENTRIES = 128


def exif_orientation(data: tf.Tensor) -> tf.Tensor:
    """int32 `[]` EXIF orientation (1-8) of encoded JPEG/PNG bytes; 1 without a valid tag.

    Core TensorFlow ops (for serving graphs): finds the TIFF block after a JPEG `Exif\\0\\0`
    APP1 header or a PNG `eXIf` chunk type in the first 64 KiB, reads IFD0 in either byte
    order and returns the SHORT value of tag 0x0112.
    """
    head = tf.strings.substr(data, 0, tf.minimum(tf.strings.length(data), _EXIF_WINDOW))
    found = tf.constant(1, tf.int32)
    for marker in _EXIF_MARKERS:
        parts = tf.strings.split(head, marker, maxsplit=1)
        start = tf.strings.length(parts[0]) + len(marker)
        tiff = tf.strings.substr(head, tf.minimum(start, tf.strings.length(head)), _EXIF_WINDOW)
        value = tf.cond(
            tf.size(parts) > 1,
            lambda tiff=tiff: _tiff_orientation(tiff),
            lambda: tf.constant(1, tf.int32),
        )
        found = tf.where(found == 1, value, found)
    return found


def _tiff_orientation(tiff: tf.Tensor) -> tf.Tensor:
    raw = tf.cast(tf.io.decode_raw(tiff, tf.uint8), tf.int32)
    n = tf.size(raw)
    raw = tf.concat([raw, tf.zeros([16], tf.int32)], 0)
    little = tf.reduce_all(tf.equal(raw[:2], 0x49))  # "II"; "MM" is big-endian

    def u16(at):
        lo_hi = tf.gather(raw, tf.clip_by_value(tf.stack([at, at + 1], -1), 0, n + 15))
        first, second = lo_hi[..., 0], lo_hi[..., 1]
        return tf.where(little, first + 256 * second, 256 * first + second)

    def u32(at):
        return tf.where(little, u16(at) + 65536 * u16(at + 2), 65536 * u16(at) + u16(at + 2))

    valid = (little | tf.reduce_all(tf.equal(raw[:2], 0x4D))) & tf.equal(u16(2), 42)
    ifd = u32(4)
    count = tf.minimum(u16(ifd), _MAX_IFD_ENTRIES)
    entries = ifd + 2 + 12 * tf.range(_MAX_IFD_ENTRIES)  # [entries]
    real = (tf.range(_MAX_IFD_ENTRIES) < count) & (entries + 12 <= n) & (ifd >= 8)
    hits = real & tf.equal(u16(entries), _ORIENTATION_TAG) & tf.equal(u16(entries + 2), 3)
    values = tf.boolean_mask(u16(entries + 8), hits)
    value = tf.cond(tf.size(values) > 0, lambda: values[0], lambda: tf.constant(1, tf.int32))
    return tf.where(valid & (value >= 1) & (value <= 8), value, 1)


def apply_orientation(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """`image` `[height, width, channels]` turned upright for EXIF `orientation` (1-8), as
    `PIL.ImageOps.exif_transpose` does."""

    def transpose(x):
        return tf.transpose(x, [1, 0, 2])

    branches = [
        lambda: image,  # 1: upright
        lambda: image[:, ::-1],  # 2: mirrored
        lambda: image[::-1, ::-1],  # 3: upside down
        lambda: image[::-1],  # 4: mirrored upside down
        lambda: transpose(image),  # 5: PIL TRANSPOSE
        lambda: transpose(image[::-1]),  # 6: PIL ROTATE_270 (90 clockwise)
        lambda: transpose(image[::-1, ::-1]),  # 7: PIL TRANSVERSE
        lambda: transpose(image[:, ::-1]),  # 8: PIL ROTATE_90
    ]
    index = tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7)
    return tf.switch_case(index, branches)


def decode_in_graph(data: tf.Tensor) -> tf.Tensor:
    """uint8 `[height, width, 3]` of encoded image bytes, as `load_image` shows them.

    Core TensorFlow ops (the serving graph decodes with this): JPEG with libjpeg's accurate
    integer DCT as Pillow decodes it (`tf.io.decode_image`'s default fast DCT gives pixels up to
    ~20 levels off), PNG, GIF (first frame) and BMP with `tf.io.decode_image`, EXIF orientation
    applied (`exif_orientation`), grayscale to RGB,
    alpha composited over white with Pillow's `alpha_composite` integer arithmetic. Known
    differences from `load_image`: 16-bit PNGs (TensorFlow scales to 8 bits by x // 257, Pillow's
    path rounds x / 65535 * 255: at most 1 level), and CMYK JPEGs.
    """
    image = tf.cond(
        tf.io.is_jpeg(data),  # Pillow's libjpeg DCT: TensorFlow's default differs by up to ~20
        lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(data, channels=0, expand_animations=False),
    )  # [h, w, 1-4]
    channels = tf.shape(image)[2]
    rgb = tf.cond(
        channels < 3,
        lambda: tf.image.grayscale_to_rgb(image[..., :1]),
        lambda: image[..., :3],
    )
    rgb.set_shape([None, None, 3])
    has_alpha = tf.equal(channels, 2) | tf.equal(channels, 4)
    rgb = tf.cond(has_alpha, lambda: _over_white(rgb, image[..., -1:]), lambda: rgb)
    rgb.set_shape([None, None, 3])
    out = apply_orientation(rgb, exif_orientation(data))
    out.set_shape([None, None, 3])
    return out


def _over_white(rgb: tf.Tensor, alpha: tf.Tensor) -> tf.Tensor:
    """Pillow's AlphaComposite.c of `rgb` with `alpha` over opaque white (PRECISION_BITS 7)."""
    src, a = tf.cast(rgb, tf.int32), tf.cast(alpha, tf.int32)
    coef1 = a * 128
    coef2 = 255 * 128 - coef1
    tmp = src * coef1 + 255 * coef2 + (0x80 << 7)
    shift = tf.bitwise.right_shift
    out = shift(shift(shift(tmp, 8) + tmp, 8), 7)
    return tf.cast(tf.where(a == 0, 255, out), tf.uint8)
