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
