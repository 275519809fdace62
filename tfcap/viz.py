"""Attention pictures: the image with the attended regions highlighted, one panel per word.

Layout of `attention_grid` (all sizes in pixels): every panel is the image scaled to
`panel_width` wide and `round(panel_width * height / width)` tall, with a label strip of
`max(14, panel_width // 8)` below it. Panel 0 is the plain image (labelled "image"), then one
panel per word, left to right and top to bottom in `min(columns, panels)` columns, with a
`GAP`-pixel white border around and between panels. A `title` adds one more strip on top.

NumPy and Pillow only, so TensorBoard summaries, `tfcap.caption` and README figures share it.
"""

import functools
import math
import os
import uuid
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GAP = 4
_CANVAS = (170, 170, 170)  # neutral grey when there is no real image (synthetic data)
_STRIP = (32, 32, 32)
_HIGHLIGHT = (255, 196, 0)


def attention_grid(
    image: np.ndarray | None,
    boxes: np.ndarray,
    words: Sequence[str],
    weights: np.ndarray,
    *,
    size: tuple[int, int] = (640, 480),
    panel_width: int = 224,
    columns: int = 4,
    region_mask: np.ndarray | None = None,
    title: str | None = None,
) -> np.ndarray:
    """Draws the image once plain, then once per word lit where that word attended.

    Each word panel is `image * (0.25 + 0.75 * map)`, where `map[y, x]` is the sum of the
    weights of the regions whose boxes cover the pixel, divided by its maximum; the box with the
    highest weight is outlined and the strip shows the word and that weight as a percentage.

    Args:
        image: uint8 `[height, width, 3]` (also `[height, width]` or `[height, width, 4]`),
            or None for a neutral canvas of `size`.
        boxes: float `[regions, 4]`, `(x1, y1, x2, y2)` as fractions of the width and height;
            clipped to [0, 1].
        words: the generated words (without `<eos>`), one panel each.
        weights: float `[time, regions]` with `time >= len(words)`; rows past the words are
            ignored.
        size: `(width, height)` of the canvas when `image` is None.
        panel_width: width of each panel.
        columns: panels per row.
        region_mask: optional bool `[regions]`, False on padding regions (given no weight).
        title: optional text (e.g. the whole caption) drawn above the grid.

    Returns:
        uint8 `[grid_height, grid_width, 3]`, sized as in the module docstring.

    >>> boxes = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]])
    >>> attention_grid(None, boxes, ["a", "cat"], np.eye(2), panel_width=64).shape
    (70, 208, 3)
    """
    boxes = np.asarray(boxes, np.float64)
    weights = np.nan_to_num(np.asarray(weights, np.float64))
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be [regions, 4], got shape {boxes.shape}")
    regions = boxes.shape[0]
    if weights.ndim != 2 or weights.shape[0] < len(words) or weights.shape[1] != regions:
        raise ValueError(
            f"weights must be [>= {len(words)} words, {regions} regions], got {weights.shape}"
        )
    if panel_width < 1 or columns < 1:
        raise ValueError(f"panel_width and columns must be >= 1, got {panel_width}, {columns}")
    weights = np.clip(weights[: len(words)], 0.0, None)
    if region_mask is not None:
        region_mask = np.asarray(region_mask, bool)
        if region_mask.shape != (regions,):
            raise ValueError(f"region_mask must be [{regions}], got shape {region_mask.shape}")
        weights = weights * region_mask

    base = _base(image, size, panel_width)  # uint8 [panel_height, panel_width, 3]
    panel_height = base.shape[0]
    pixel_boxes = _pixel_boxes(boxes, panel_width, panel_height)  # [regions, 4] ints
    strip = max(14, panel_width // 8)
    font = _font(round(strip * 0.62))
    panels = 1 + len(words)
    cols = min(columns, panels)
    rows = math.ceil(panels / cols)
    top = strip if title else 0
    grid_size = (
        cols * panel_width + (cols + 1) * GAP,
        top + rows * (panel_height + strip) + (rows + 1) * GAP,
    )
    grid = Image.new("RGB", grid_size, "white")
    draw = ImageDraw.Draw(grid)
    if title:
        text = _fit(title, font, grid.width - 2 * GAP)
        draw.text((GAP, GAP + top / 2), text, "black", font, anchor="lm")

    for index in range(panels):
        x = GAP + (index % cols) * (panel_width + GAP)
        y = top + GAP + (index // cols) * (panel_height + strip + GAP)
        if index == 0:
            grid.paste(Image.fromarray(base), (x, y))
            if image is None:  # a blank canvas says nothing: show where the regions are
                real = np.ones(len(boxes), bool) if region_mask is None else region_mask
                for x1, y1, x2, y2 in pixel_boxes[real]:
                    draw.rectangle((x + x1, y + y1, x + x2 - 1, y + y2 - 1), outline=(90,) * 3)
            _label(draw, font, (x, y + panel_height, panel_width, strip), "image", "")
            continue
        row = weights[index - 1]
        attention = _attention_map(pixel_boxes, row, panel_width, panel_height)
        lit = base * (0.25 + 0.75 * attention[..., None])
        grid.paste(Image.fromarray(lit.round().astype(np.uint8)), (x, y))
        best = int(np.argmax(row))
        x1, y1, x2, y2 = pixel_boxes[best]
        if row[best] > 0 and x2 > x1 and y2 > y1:
            box = (x + x1, y + y1, x + x2 - 1, y + y2 - 1)
            draw.rectangle(box, outline=_HIGHLIGHT, width=max(2, panel_width // 100))
        score = f"{100 * row[best]:.0f}%"
        _label(draw, font, (x, y + panel_height, panel_width, strip), words[index - 1], score)
    return np.asarray(grid)


def save_png(path: str, picture: np.ndarray) -> None:
    """Writes uint8 `[height, width, 3]` `picture` to `path` as PNG, atomically."""
    temp = f"{path}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    # os.open, not mkstemp: the umask applies (mkstemp files are 0600, a PNG is to be shared).
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            Image.fromarray(np.asarray(picture, np.uint8)).save(file, format="PNG")
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def _to_rgb(image: np.ndarray) -> Image.Image:
    """`[height, width]`, `[height, width, 1|3|4]` (uint8, or float in [0, 1]) -> RGB image."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"image must be [height, width(, 1|3|4)], got shape {image.shape}")
    if image.dtype != np.uint8:
        scale = 255.0 if image.size and np.nanmax(image) <= 1.0 else 1.0
        image = np.clip(np.nan_to_num(image * scale), 0, 255).round().astype(np.uint8)
    return Image.fromarray(image).convert("RGB")


def _base(image: np.ndarray | None, size: tuple[int, int], panel_width: int) -> np.ndarray:
    """uint8 `[panel_height, panel_width, 3]`: the image (or a grey canvas) at panel size."""
    if image is None:
        width, height = size
        panel_height = max(1, round(panel_width * height / width))
        return np.full((panel_height, panel_width, 3), _CANVAS, np.uint8)
    picture = _to_rgb(image)
    panel_height = max(1, round(panel_width * picture.height / picture.width))
    return np.asarray(picture.resize((panel_width, panel_height), Image.Resampling.LANCZOS))


def _label(draw: ImageDraw.ImageDraw, font, area: tuple, text: str, score: str) -> None:
    """Dark strip `area = (x, y, width, height)`: `text` left in white, `score` right in amber."""
    x, y, width, height = area
    draw.rectangle((x, y, x + width - 1, y + height - 1), fill=_STRIP)
    pad, middle = max(3, height // 4), y + height / 2
    score_width = draw.textlength(score, font=font) if score else 0
    if score:
        draw.text((x + width - pad, middle), score, _HIGHLIGHT, font, anchor="rm")
    text = _fit(text, font, width - 2 * pad - (score_width + pad if score else 0))
    draw.text((x + pad, middle), text, "white", font, anchor="lm")


def _pixel_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Normalised `[regions, 4]` boxes -> int `[regions, 4]` pixel bounds, end exclusive."""
    boxes = np.clip(np.nan_to_num(boxes), 0.0, 1.0)
    xs = np.sort(boxes[:, [0, 2]], axis=1) * width
    ys = np.sort(boxes[:, [1, 3]], axis=1) * height
    return np.round(np.stack([xs[:, 0], ys[:, 0], xs[:, 1], ys[:, 1]], 1)).astype(np.int64)


def _attention_map(pixel_boxes: np.ndarray, row: np.ndarray, width: int, height: int) -> np.ndarray:
    """float `[height, width]` in [0, 1]: summed weights of covering boxes over their max."""
    corners = np.zeros((height + 1, width + 1))
    x1, y1, x2, y2 = pixel_boxes.T
    np.add.at(corners, (y1, x1), row)  # 2-D difference array: one cumsum per axis fills boxes
    np.add.at(corners, (y1, x2), -row)
    np.add.at(corners, (y2, x1), -row)
    np.add.at(corners, (y2, x2), row)
    attention = corners.cumsum(0).cumsum(1)[:height, :width]
    peak = attention.max()
    return np.clip(attention / peak, 0.0, 1.0) if peak > 1e-12 else np.zeros_like(attention)


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans if installed (wide script coverage), else Pillow's bundled default."""
    try:
        return ImageFont.truetype("DejaVuSans.ttf", size)
    except OSError:
        try:
            return ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1 without FreeType sizes
            return ImageFont.load_default()


def _fit(text: str, font, width: float) -> str:
    """`text` shortened with an ellipsis to fit `width` pixels; unencodable characters -> "?"."""
    try:
        font.getlength(text)
    except UnicodeError:  # the bitmap fallback font is Latin-1 only
        text = text.encode("latin-1", "replace").decode("latin-1")
    if font.getlength(text) <= width:
        return text
    ellipsis = "…" if isinstance(font, ImageFont.FreeTypeFont) else "..."
    while text and font.getlength(text + ellipsis) > width:
        text = text[:-1]
    return text + ellipsis if text else ""
