"""MNIST's preprocessing on hand-made pictures (the readers: tests/data/test_inputs.py)."""


import numpy as np
import pytest

from cnntrain.data import preprocess as pp
from cnntrain.data.preprocess import NoInkError, to_mnist_field

# An asymmetric hand-drawn '7' (1 = ink), 15 rows x 11 columns: its centre of mass lies
# well away from its bounding box's centre, so centring by mass is actually tested.
SEVEN = np.array([[1 if c == "#" else 0 for c in row] for row in [
    "###########",
    "###########",
    "........##.",
    ".......##..",
    ".......##..",
    "......##...",
    "......##...",
    ".....##....",
    ".....##....",
    "....##.....",
    "....##.....",
    "...##......",
    "...##......",
    "..##.......",
    "..##.......",
]], dtype=np.float64)


def canvas(shape, stroke, top, left, *, dark_on_light=True, paper=None, ink=None, dtype=np.uint8):
    """`stroke` (1 = ink) drawn at (top, left) on a canvas of `shape`."""
    high = 255 if dtype == np.uint8 else 1.0
    paper = (high if dark_on_light else 0) if paper is None else paper
    ink = (0 if dark_on_light else high) if ink is None else ink
    picture = np.full(shape, paper, dtype=np.float64)
    h, w = stroke.shape
    region = picture[top:top + h, left:left + w]
    region[...] = paper + (ink - paper) * stroke
    return picture.astype(dtype)


def centre(field):
    return np.array(pp.centre_of_mass(field.astype(np.float64)))


def bbox_size(field):
    top, bottom, left, right = pp.ink_box(field)
    return bottom - top, right - left


CASES = [((40, 40), 3, 5, True, np.uint8), ((64, 90), 40, 70, True, np.uint8),
         ((200, 150), 0, 0, True, np.uint8), ((200, 150), 185, 139, False, np.uint8),
         ((33, 17), 9, 3, False, np.float32), ((120, 300), 17, 250, True, np.float64),
         ((15, 11), 0, 0, False, np.uint8)]


def test_a_stroke_anywhere_on_any_canvas_comes_out_the_same_and_centred():
    fields = [to_mnist_field(canvas(shape, SEVEN, top, left, dark_on_light=dark, dtype=dtype))
              for shape, top, left, dark, dtype in CASES]
    for field in fields:
        assert field.shape == (28, 28) and field.dtype == np.float32
        np.testing.assert_array_equal(field, fields[0])
    field = fields[0]
    assert 0 <= field.min() and field.max() <= 1 and field.max() > 0.9
    # The longer side (15 rows) becomes 20 pixels, the other 11 * 20 / 15 = 14.7 -> 15.
    assert bbox_size(field) == (20, 15)
    # Whole-pixel centring: the centre of mass is within half a pixel of pixel (14, 14),
    # where MNIST's digits have theirs.
    assert np.all(np.abs(centre(field) - 14) <= 0.5), centre(field)
    # Ink is high, paper 0: the top bar of the 7 is ink.
    top, _, left, right = pp.ink_box(field)
    assert field[top, left + 1:right - 1].min() > 0.5


def test_a_stroke_drawn_larger_comes_out_nearly_the_same():
    reference = to_mnist_field(canvas((60, 60), SEVEN, 20, 20))
    for factor, shape, at in ((2, (100, 80), (7, 40)), (3, (400, 300), (300, 200)),
                              (7, (300, 200), (10, 50))):
        big = np.kron(SEVEN, np.ones((factor, factor)))
        field = to_mnist_field(canvas(shape, big, *at, dark_on_light=factor != 3))
        assert bbox_size(field) == (20, 15)
        assert np.abs(field - reference).mean() < 0.05, factor
        assert np.abs(centre(field) - centre(reference)).max() <= 1.0


def test_grey_paper_and_noise_are_not_ink():
    rng = np.random.default_rng(0)
    clean = to_mnist_field(canvas((90, 70), SEVEN * 1, 30, 10))
    noisy = canvas((90, 70), np.kron(SEVEN, np.ones((4, 4))), 20, 10, paper=190, ink=60,
                   dtype=np.float64)
    noisy = np.clip(noisy + rng.normal(0, 4, noisy.shape), 0, 255).astype(np.uint8)
    field = to_mnist_field(noisy)
    assert bbox_size(field) == (20, 15)  # the noise did not widen the box
    assert np.abs(field - clean).mean() < 0.06
    assert np.abs(centre(field) - centre(clean)).max() <= 1.0


def test_a_wide_stroke_keeps_its_aspect_ratio():
    bar = np.ones((2, 30))
    field = to_mnist_field(canvas((50, 50), bar, 40, 3))
    assert bbox_size(field) == (1, 20)  # 2 * 20 / 30 = 1.3 rows, rounded to 1
    assert field.max() == pytest.approx(1.0) and field.sum() == pytest.approx(20.0)
    assert np.all(np.abs(centre(field) - 14) <= 0.5)


def test_a_small_stroke_is_enlarged_to_twenty_pixels():
    dot = np.ones((4, 2))
    field = to_mnist_field(canvas((10, 10), dot, 1, 7))
    assert bbox_size(field) == (20, 10)
    assert np.all(np.abs(centre(field) - 14) <= 0.5)


@pytest.mark.parametrize("picture", [np.full((30, 30), 255, np.uint8), np.zeros((5, 9)),
                                     np.full((40, 40), 0.5),
                                     np.random.default_rng(1).integers(250, 256, (50, 50))])
def test_a_picture_without_ink_is_a_no_ink_error(picture):
    with pytest.raises(NoInkError, match="no ink"):
        to_mnist_field(picture)


def test_no_ink_error_is_a_cnntrain_error():
    from cnntrain.errors import CnnTrainError
    assert issubclass(NoInkError, CnnTrainError)


@pytest.mark.parametrize("bad, message", [(np.zeros((2, 28, 28)), "shape"),
                                          (np.full((9, 9), 2.0), "divide"),
                                          (np.full((9, 9), 300), "0..255"),
                                          (np.full((9, 9), np.nan), "NaN")])
def test_arrays_that_are_not_grey_pictures_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        to_mnist_field(bad)


def test_shrinking_is_anti_aliased_and_keeps_the_mean():
    stripes = np.tile([0.0, 1.0], (40, 20))  # one-pixel stripes, 40 x 40
    small = pp.resize(stripes, 10, 10)
    # Point sampling would give all 0 or all 1; a filter over the whole footprint gives grey.
    assert np.allclose(small, 0.5, atol=0.05)
    for n_in, n_out in ((15, 20), (300, 20), (7, 7), (1, 20), (20, 1)):
        weights = pp.resample_matrix(n_in, n_out)
        assert weights.shape == (n_out, n_in) and np.all(weights >= 0)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0)
    ramp = np.arange(10.0)[None, :].repeat(3, axis=0)
    enlarged = pp.resize(ramp, 3, 20)
    assert np.all(np.diff(enlarged[0]) >= 0)  # linear interpolation keeps a ramp monotone


def test_paper_lit_unevenly_reads_as_even_paper():
    clean = to_mnist_field(canvas((90, 70), SEVEN, 30, 10))
    light = np.linspace(-45, 45, 150)[None, :] + np.linspace(-20, 20, 120)[:, None]
    photo = canvas((120, 150), np.kron(SEVEN, np.ones((4, 4))), 8, 30, paper=190, ink=50,
                   dtype=np.float64) + light
    field = to_mnist_field(np.clip(photo, 0, 255).astype(np.uint8))
    assert bbox_size(field) == (20, 15)  # the darker side of the page is not ink
    assert np.abs(field - clean).mean() < 0.06
    with pytest.raises(NoInkError):  # unevenly lit blank paper is still blank
        to_mnist_field(np.clip(190 + light, 0, 255).astype(np.uint8))
    # Ink touching the edge does not tilt the paper's plane.
    edge = to_mnist_field(canvas((60, 60), np.kron(SEVEN, np.ones((4, 4))), 0, 0))
    assert bbox_size(edge) == (20, 15) and np.abs(edge - clean).mean() < 0.06
