"""Tests for tfcap.viz: grid layout, attention shading, masking, robustness, PNG writing."""

import math

import numpy as np
import pytest
from PIL import Image

from tfcap import viz

GREY = 200  # a flat test image: lit pixels stay 200, unattended ones drop to 0.25 * 200 = 50
LIT, DARK = GREY, round(0.25 * GREY)


def layout(width, height, words, panel_width=100, columns=4, title=False):
    """The documented layout: (grid_width, grid_height, panel_height, strip, columns, top)."""
    panel_height = round(panel_width * height / width)
    strip = max(14, panel_width // 8)
    panels = 1 + words
    cols = min(columns, panels)
    rows = math.ceil(panels / cols)
    top = strip if title else 0
    grid_width = cols * panel_width + (cols + 1) * viz.GAP
    grid_height = top + rows * (panel_height + strip) + (rows + 1) * viz.GAP
    return grid_width, grid_height, panel_height, strip, cols, top


def panel(picture, index, width=200, height=100, words=1, panel_width=100, columns=4):
    """The image area of panel `index` (0 = the plain image) cut out of a grid."""
    _, _, panel_height, strip, cols, top = layout(width, height, words, panel_width, columns)
    x = viz.GAP + (index % cols) * (panel_width + viz.GAP)
    y = top + viz.GAP + (index // cols) * (panel_height + strip + viz.GAP)
    return picture[y : y + panel_height, x : x + panel_width]


def flat(height=100, width=200):
    return np.full((height, width, 3), GREY, np.uint8)


@pytest.mark.parametrize("words", [0, 1, 3, 4, 5, 9])
@pytest.mark.parametrize("title", [None, "a caption"])
def test_grid_size_follows_documented_layout(words, title):
    weights = np.full((words + 2, 2), 0.5)  # extra rows past the words are ignored
    boxes = np.array([[0.1, 0.1, 0.4, 0.4], [0.5, 0.2, 0.9, 0.8]])
    picture = viz.attention_grid(
        flat(), boxes, ["w"] * words, weights, panel_width=100, title=title
    )
    grid_width, grid_height, *_ = layout(200, 100, words, title=bool(title))
    assert picture.dtype == np.uint8
    assert picture.shape == (grid_height, grid_width, 3)


def test_empty_words_gives_just_the_image_panel():
    picture = viz.attention_grid(flat(), np.zeros((3, 4)), [], np.zeros((0, 3)), panel_width=100)
    assert picture.shape == (4 + 50 + 14 + 4, 4 + 100 + 4, 3)
    np.testing.assert_array_equal(panel(picture, 0, words=0), GREY)


def test_canvas_size_when_there_is_no_image():
    picture = viz.attention_grid(
        None, np.array([[0, 0, 1, 1]]), ["a"], np.ones((1, 1)), size=(300, 100), panel_width=90
    )
    grid_width, grid_height, panel_height, *_ = layout(300, 100, 1, panel_width=90)
    assert picture.shape == (grid_height, grid_width, 3)
    assert panel_height == 30


def test_attended_box_is_bright_and_the_rest_dark():
    boxes = np.array([[0.0, 0.0, 0.3, 0.3], [0.5, 0.5, 1.0, 1.0], [0.2, 0.6, 0.4, 0.9]])
    weights = np.array([[0.0, 1.0, 0.0]])
    picture = viz.attention_grid(flat(), boxes, ["cat"], weights, panel_width=100)
    word = panel(picture, 1)
    np.testing.assert_array_equal(word[37, 75], LIT)  # centre of box 1 (75, 37.5)
    np.testing.assert_array_equal(word[2, 2], DARK)  # far corner, inside unattended box 0
    np.testing.assert_array_equal(word[45, 2], DARK)
    np.testing.assert_array_equal(panel(picture, 0)[2, 2], GREY)  # the plain image is untouched
    assert tuple(word[26, 50]) == viz._HIGHLIGHT  # the top box is outlined at its corner


def test_overlapping_boxes_add():
    boxes = np.array([[0.0, 0.0, 0.6, 1.0], [0.4, 0.0, 1.0, 1.0]])
    picture = viz.attention_grid(flat(), boxes, ["two"], np.array([[0.5, 0.5]]), panel_width=100)
    word = panel(picture, 1)
    np.testing.assert_array_equal(word[25, 50], LIT)  # both boxes: the maximum
    np.testing.assert_array_equal(word[25, 20], round(GREY * (0.25 + 0.75 * 0.5)))


def test_masked_regions_are_ignored():
    boxes = np.array([[0.0, 0.0, 0.4, 0.4], [0.6, 0.6, 1.0, 1.0]])
    weights = np.array([[0.9, 0.1]])  # most weight on a padding region
    picture = viz.attention_grid(
        flat(), boxes, ["a"], weights, panel_width=100, region_mask=np.array([False, True])
    )
    word = panel(picture, 1)
    np.testing.assert_array_equal(word[10, 20], DARK)
    np.testing.assert_array_equal(word[40, 80], LIT)
    unmasked = panel(viz.attention_grid(flat(), boxes, ["a"], weights, panel_width=100), 1)
    np.testing.assert_array_equal(unmasked[10, 20], LIT)


def test_degenerate_boxes_and_weights():
    boxes = np.array([[0.5, 0.5, 0.5, 0.9], [-0.5, -0.5, 0.5, 0.5], [1.2, 0.0, 2.0, 1.0]])
    weights = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    picture = viz.attention_grid(flat(), boxes, list("abcd"), weights, panel_width=100)
    np.testing.assert_array_equal(panel(picture, 1, words=4), DARK)  # all-zero weights
    np.testing.assert_array_equal(panel(picture, 2, words=4), DARK)  # zero-area box
    clipped = panel(picture, 3, words=4)  # box clipped to the top-left quarter
    np.testing.assert_array_equal(clipped[10, 25], LIT)
    np.testing.assert_array_equal(clipped[40, 80], DARK)
    np.testing.assert_array_equal(panel(picture, 4, words=4), DARK)  # box wholly outside


def test_grayscale_and_rgba_images_become_rgb():
    rgb = np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8)
    gray = rgb[..., 0]
    rgba = np.concatenate([rgb, np.full((60, 80, 1), 7, np.uint8)], axis=-1)
    args = (np.array([[0.2, 0.2, 0.7, 0.9]]), ["x"], np.ones((1, 1)))
    expected = viz.attention_grid(rgb, *args)
    np.testing.assert_array_equal(viz.attention_grid(rgba, *args), expected)
    from_gray = viz.attention_grid(gray, *args)
    assert from_gray.shape == expected.shape
    grey_as_rgb = viz.attention_grid(np.repeat(gray[..., None], 3, axis=-1), *args)
    np.testing.assert_array_equal(from_gray, grey_as_rgb)


def test_unusual_words_and_titles_do_not_fail():
    words = ["über", "猫", "naïve—café", "a" * 200, ""]
    picture = viz.attention_grid(
        flat(), np.array([[0, 0, 1, 1]]), words, np.ones((5, 1)), title="ça 猫 " * 50
    )
    assert picture.shape[2] == 3


def test_bad_shapes_raise():
    boxes = np.zeros((2, 4))
    with pytest.raises(ValueError, match="boxes"):
        viz.attention_grid(flat(), np.zeros((2, 3)), ["a"], np.ones((1, 2)))
    with pytest.raises(ValueError, match="weights"):
        viz.attention_grid(flat(), boxes, ["a", "b"], np.ones((1, 2)))
    with pytest.raises(ValueError, match="region_mask"):
        viz.attention_grid(flat(), boxes, ["a"], np.ones((1, 2)), region_mask=np.ones(3, bool))


def test_save_png_round_trip(tmp_path):
    picture = np.random.default_rng(1).integers(0, 256, (37, 53, 3), np.uint8)
    path = tmp_path / "grid.png"
    viz.save_png(str(path), picture)
    with Image.open(path) as reopened:
        assert reopened.format == "PNG"
        assert reopened.size == (53, 37)
        np.testing.assert_array_equal(np.asarray(reopened.convert("RGB")), picture)
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]  # no temp file left behind
    assert path.stat().st_mode & 0o044  # readable by others, unlike mkstemp's 0600


def test_real_photo(shared_data, tmp_path):
    path = shared_data / "coco_val2014_samples" / "COCO_val2014_000000397427.jpg"
    photo = np.asarray(Image.open(path))  # 500 x 375
    boxes = np.array([[140, 220, 305, 375], [0, 0, 185, 375], [330, 108, 500, 375]]) / [
        500,
        375,
        500,
        375,
    ]
    words = ["a", "cat", "on", "laptops"]
    weights = np.array([[1 / 3] * 3, [0.9, 0.0, 0.1], [0.4, 0.3, 0.3], [0.0, 0.5, 0.5]])
    picture = viz.attention_grid(photo, boxes, words, weights, title="a cat on laptops")
    grid_width, grid_height, *_ = layout(500, 375, 4, panel_width=224, title=True)
    assert picture.shape == (grid_height, grid_width, 3)
    kwargs = dict(width=500, height=375, words=4, panel_width=224)
    _, _, _, strip, *_ = layout(500, 375, 4, panel_width=224)
    plain, cat = (panel(picture[strip:], i, **kwargs).astype(float) for i in (0, 2))
    assert plain.std() > 20  # a real photo, not a blank panel
    inside = (slice(110, 160), slice(90, 130))  # the cat, clear of the laptop box
    outside = (slice(0, 60), slice(0, 60))  # left laptop screen, unattended
    np.testing.assert_allclose(cat[inside], plain[inside], atol=1)
    assert cat[outside].mean() < 0.3 * plain[outside].mean()
    viz.save_png(str(tmp_path / "photo.png"), picture)
    assert Image.open(tmp_path / "photo.png").size == (grid_width, grid_height)
