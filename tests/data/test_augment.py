"""Augmentation: exact identities, conventions checked against NumPy's own shifts and rotations,
the elastic field's statistics, determinism, and a tiny augmented fit through the CLI."""


import numpy as np
import pytest

from cnntrain.data import augment
from cnntrain.data.augment import (
    Augmenter,
    elastic_field,
    elastic_modes,
    field_from_modes,
    gaussian_matrix,
    smooth,
    warp,
)
from cnntrain.runs.checkpoint_reader import load_checkpoint
from tests.support.clitools import invoke, small_config, use_synthetic_mnist

FILL = -0.4242


def batch(n=8, h=28, w=28, dtype=np.float32, seed=0):
    """Random images (N, 1, H, W) with a background of FILL and a bright blob in the middle."""
    rng = np.random.default_rng(seed)
    images = np.full((n, 1, h, w), FILL, dtype=dtype)
    inner = (slice(None), slice(None), slice(h // 4, h - h // 4), slice(w // 4, w - w // 4))
    images[inner] = rng.uniform(0, 2.8, images[inner].shape)
    return images


def shifted(image, dy, dx, fill):
    """np.roll by (dy, dx) on the last two axes, with fill where roll would wrap around."""
    out = np.roll(image, (dy, dx), axis=(-2, -1))
    h, w = image.shape[-2:]
    rows = np.arange(h)[:, None] - dy
    cols = np.arange(w)[None, :] - dx
    outside = (rows < 0) | (rows >= h) | (cols < 0) | (cols >= w)
    out[..., outside] = fill
    return out


def blob(n, h=28, w=28, width=3.0):
    """Smooth Gaussian blobs (N, 1, H, W) on a 0 background, off-centre, well inside the frame."""
    y, x = np.mgrid[0:h, 0:w]
    centres = np.linspace(-3, 3, n)
    images = np.exp(-(((y - h / 2 - centres[:, None, None] / 2) ** 2
                       + (x - w / 2 + centres[:, None, None]) ** 2) / (2 * width ** 2)))
    return images[:, None].astype(np.float32)


# --- the pure resampling function ----------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_warp_without_parameters_is_the_exact_identity(dtype):
    images = batch(dtype=dtype)
    out = warp(images, fill=FILL)
    assert out.dtype == dtype and out.shape == images.shape and out is not images
    np.testing.assert_array_equal(out, images)
    # Explicit neutral parameters go through every step of the arithmetic, still exactly.
    n = len(images)
    out = warp(images, shift=np.zeros((n, 2), int), angle=np.zeros(n), zoom=np.ones(n),
               displacement=np.zeros((n, 2, 28, 28), dtype), fill=FILL)
    np.testing.assert_array_equal(out, images)


def test_integer_shifts_match_np_roll_with_fill_exactly():
    images = batch(n=7)
    shifts = np.array([[0, 0], [1, 0], [0, -1], [2, -2], [-3, 1], [27, 0], [-5, 40]])
    out = warp(images, shift=shifts, fill=FILL)
    for image, result, (dy, dx) in zip(images, out, shifts):
        np.testing.assert_array_equal(result, shifted(image, dy, dx, FILL), err_msg=f"{dy}, {dx}")


@pytest.mark.parametrize("size", [(28, 28), (9, 9)])
@pytest.mark.parametrize("angle,k", [(90, 1), (-90, -1), (180, 2), (270, 3)])
def test_quarter_turns_match_np_rot90(size, angle, k):
    # Positive angles turn the content counter-clockwise as displayed, as np.rot90 does.
    images = batch(n=3, h=size[0], w=size[1])
    out = warp(images, angle=np.full(3, float(angle)), fill=FILL)
    np.testing.assert_allclose(out, np.rot90(images, k, axes=(2, 3)), atol=1e-5)


def test_zoom_one_and_elastic_zero_are_identities():
    images = batch()
    n = len(images)
    np.testing.assert_array_equal(warp(images, zoom=np.ones(n), fill=FILL), images)
    noise = np.random.default_rng(0).uniform(-1, 1, (n, 2, 28, 28)).astype(np.float32)
    field = elastic_field(noise, 0.0, 4.0)
    assert not field.any()
    np.testing.assert_array_equal(warp(images, displacement=field, fill=FILL), images)


def test_pixels_from_outside_read_fill_exactly():
    images = batch(n=2)
    # Pushed right off the frame: nothing is left but background.
    gone = warp(images, shift=np.array([[0, 28], [-40, 0]]), fill=FILL)
    assert np.all(gone == np.float32(FILL))
    # Shrunk to half size, the outer quarter on each side reads from outside the image.
    small = warp(images, zoom=np.full(2, 0.5), fill=7.0)
    assert np.all(small[:, :, :6] == 7) and np.all(small[:, :, :, -6:] == 7)
    # Turned by 45 degrees, the corners come from beyond the original corners.
    turned = warp(images, angle=np.full(2, 45.0), fill=7.0)
    assert np.all(turned[:, :, 0, 0] == 7) and np.all(turned[:, :, -1, -1] == 7)


def test_zoom_enlarges_about_the_centre():
    images = blob(4, width=2.5)
    zoom = np.array([0.8, 0.9, 1.1, 1.2])
    out = warp(images, zoom=zoom, fill=0.0)
    # The ink of a 2-D shape scales with the square of its size.
    ratio = out.sum(axis=(1, 2, 3)) / images.sum(axis=(1, 2, 3))
    np.testing.assert_allclose(ratio, zoom ** 2, rtol=0.02)


def test_half_pixel_shifts_interpolate_between_neighbours():
    images = batch(n=2)
    out = warp(images, shift=np.array([[0.0, 0.5], [0.5, 0.0]]), fill=FILL)
    inner = (images[0, 0, :, 1:] + images[0, 0, :, :-1]) / 2
    np.testing.assert_allclose(out[0, 0, :, 1:], inner, rtol=1e-6)
    np.testing.assert_allclose(out[0, 0, :, 0], (images[0, 0, :, 0] + FILL) / 2, rtol=1e-6)
    np.testing.assert_allclose(out[1, 0, 1:], (images[1, 0, 1:] + images[1, 0, :-1]) / 2,
                               rtol=1e-6)


def test_displacement_moves_the_source_position():
    # output(y, x) = input(y + dy, x + dx): a constant field of +1 column shifts content left.
    images = batch(n=2)
    field = np.zeros((2, 2, 28, 28), np.float32)
    field[:, 1] = 1.0
    np.testing.assert_array_equal(warp(images, displacement=field, fill=FILL),
                                  shifted(images, 0, -1, FILL))


def test_channels_share_one_grid():
    images = np.concatenate([batch(n=4, seed=s) for s in range(3)], axis=1)   # (4, 3, 28, 28)
    params = dict(shift=np.array([[1, -1]] * 4), angle=np.linspace(-20, 20, 4),
                  zoom=np.linspace(0.9, 1.1, 4))
    together = warp(images, fill=FILL, **params)
    for channel in range(3):
        alone = warp(images[:, channel:channel + 1], fill=FILL, **params)
        np.testing.assert_array_equal(together[:, channel:channel + 1], alone)


def test_warp_refuses_images_without_a_channel_axis_or_not_float():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        warp(np.zeros((2, 28, 28), np.float32))
    with pytest.raises(TypeError, match="floating-point"):
        warp(np.zeros((2, 1, 28, 28), np.uint8))


# --- the elastic field ---------------------------------------------------------------------


def test_gaussian_matrix_rows_are_a_unit_sum_kernel_away_from_the_border():
    g = gaussian_matrix(28, 4.0, np.float64)
    np.testing.assert_allclose(g, g.T)
    assert abs(g[14].sum() - 1) < 1e-3            # the middle row holds almost all the kernel
    assert g[0].sum() < 0.6                       # the border row misses half of it


def test_smoothing_matches_the_dense_gaussian_product():
    noise = np.random.default_rng(1).uniform(-1, 1, (50, 28, 28))
    g = gaussian_matrix(28, 4.0, np.float64)
    dense = g @ noise @ g.T
    fast = smooth(noise, 4.0)
    # The truncated eigenbasis keeps all but ~1e-4 of the energy: ~1% of the field's size.
    assert np.sqrt(np.mean((fast - dense) ** 2)) < 0.02 * np.sqrt(np.mean(dense ** 2))
    assert smooth(noise.astype(np.float32), 4.0).dtype == np.float32


@pytest.mark.parametrize("sigma", [3.0, 4.0, 6.0])
def test_smoothing_reduces_the_noise_std_as_predicted(sigma):
    # Uniform noise in [-1, 1] has std 1/sqrt(3). A kernel k summing to 1 leaves, away from
    # the border, std sqrt(sum k^2) / sqrt(3) = 1 / (2 sqrt(3 pi) sigma) for a 2-D Gaussian.
    noise = np.random.default_rng(2).uniform(-1, 1, (4000, 28, 28)).astype(np.float32)
    field = smooth(noise, sigma)
    g = gaussian_matrix(28, sigma, np.float64)
    per_row = np.sqrt((g ** 2).sum(axis=1))
    expected = np.outer(per_row, per_row) / np.sqrt(3)          # every pixel, border included
    measured = field.std(axis=0)
    np.testing.assert_allclose(measured, expected, rtol=0.08)
    centre = expected[14, 14]
    assert centre == pytest.approx(1 / (2 * np.sqrt(3 * np.pi) * sigma), rel=0.02)
    assert measured[14, 14] == pytest.approx(centre, rel=0.06)


def test_elastic_displacements_have_the_documented_size():
    # alpha = 34, sigma = 4: RMS displacement per axis ~ 0.163 * 34 / 4 = 1.38 pixels.
    expected = 34 / (2 * np.sqrt(3 * np.pi) * 4)
    noise = np.random.default_rng(3).uniform(-1, 1, (500, 2, 28, 28))
    simard = elastic_field(noise, 34, 4)[:, :, 10:18, 10:18]
    assert np.sqrt(np.mean(simard ** 2)) == pytest.approx(expected, rel=0.05)
    params = Augmenter(elastic_alpha=34, elastic_sigma=4).draw(500, np.random.default_rng(3))
    drawn = field_from_modes(params.modes, 34, 4, (28, 28))[:, :, 10:18, 10:18]
    assert np.sqrt(np.mean(drawn ** 2)) == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("sigma", [4.0, 6.0])
def test_drawn_fields_have_the_statistics_of_smoothed_uniform_noise(sigma):
    # The Augmenter draws the smoothed field's eigen-coordinates directly; the spread at each
    # pixel and the correlation between pixels must match Simard's recipe (smoothing noise).
    n = 3000
    rng = np.random.default_rng(7)
    noise = rng.uniform(-1, 1, (n, 1, 28, 28)).astype(np.float32)
    simard = elastic_field(noise, 1, sigma)[:, 0]
    drawn = field_from_modes(elastic_modes(n, rng, (28, 28), sigma), 1, sigma, (28, 28))
    drawn = drawn.reshape(2 * n, 28, 28)
    np.testing.assert_allclose(drawn.std(axis=0), simard.std(axis=0), rtol=0.08)
    assert abs(drawn.mean()) < 0.05 * drawn.std()
    for other in [(14, 16), (14, 20), (18, 18), (3, 14)]:
        a = np.corrcoef(simard[:, 14, 14], simard[:, other[0], other[1]])[0, 1]
        b = np.corrcoef(drawn[:, 14, 14], drawn[:, other[0], other[1]])[0, 1]
        assert abs(a - b) < 0.06, (other, a, b)
    # Gaussian, as a sum of hundreds of uniform pixels is: excess kurtosis ~0.
    values = drawn[:, 14, 14] / drawn[:, 14, 14].std()
    assert abs(np.mean(values ** 4) - 3) < 0.3


def test_modes_are_independent_with_the_variance_of_uniform_noise():
    modes = elastic_modes(4000, np.random.default_rng(4), (28, 28), 4.0)
    assert modes.dtype == np.float32 and modes.shape[:2] == (4000, 2)
    assert 5 <= modes.shape[2] <= 10 and modes.shape[2] == modes.shape[3]
    flat = modes.reshape(4000, -1).astype(np.float64)
    np.testing.assert_allclose(flat.var(axis=0), 1 / 3, rtol=0.1)
    assert np.abs(np.corrcoef(flat.T) - np.eye(flat.shape[1])).max() < 0.1
    assert elastic_modes(3, np.random.default_rng(4), (28, 28), 4.0, np.float64).dtype == np.float64


# --- the Augmenter -------------------------------------------------------------------------


FULL = dict(translate=2, rotate=12, scale=0.1, elastic_alpha=30, elastic_sigma=5, fill=FILL)


def test_all_off_returns_an_exact_copy_and_draws_nothing():
    images = batch()
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    out = Augmenter(fill=FILL)(images, rng)
    assert out is not images
    np.testing.assert_array_equal(out, images)
    assert rng.bit_generator.state == state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shape_and_dtype_are_kept_and_the_input_is_untouched(dtype):
    images = batch(n=5, dtype=dtype)
    before = images.copy()
    out = Augmenter(**FULL)(images, np.random.default_rng(0))
    assert out.shape == images.shape and out.dtype == dtype
    assert not np.shares_memory(out, images)
    np.testing.assert_array_equal(images, before)
    assert np.isfinite(out).all() and not np.array_equal(out, images)


def test_same_seed_same_images_other_seed_other_images():
    images = batch(n=16)
    aug = Augmenter(**FULL)
    first = aug(images, np.random.default_rng(5))
    again = aug(images, np.random.default_rng(5))
    other = aug(images, np.random.default_rng(6))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)
    # Consecutive batches from one generator differ: the draw advances it.
    rng = np.random.default_rng(5)
    assert not np.array_equal(aug(images, rng), aug(images, rng))


def test_each_image_gets_its_own_parameters():
    images = np.repeat(batch(n=1), 32, axis=0)
    out = Augmenter(**FULL)(images, np.random.default_rng(0))
    assert len({out[i].tobytes() for i in range(32)}) == 32


def test_call_is_draw_then_apply_and_blocks_do_not_matter(monkeypatch):
    images = batch(n=70)
    aug = Augmenter(**FULL)
    params = aug.draw(len(images), np.random.default_rng(9))
    applied = aug.apply(images, params)                         # blocks of 16 for float32
    np.testing.assert_array_equal(aug(images, np.random.default_rng(9)), applied)
    whole = warp(images, shift=params.shift, angle=params.angle, zoom=params.zoom, fill=FILL,
                 displacement=field_from_modes(params.modes, 30, 5, (28, 28)))
    np.testing.assert_allclose(applied, whole, atol=1e-5)
    monkeypatch.setattr(augment, "BLOCK_BYTES", 20000)            # blocks of 2
    np.testing.assert_allclose(aug(images, np.random.default_rng(9)), whole, atol=1e-5)
    monkeypatch.setattr(augment, "BLOCK_BYTES", 1)                # one image at a time
    np.testing.assert_allclose(aug(images, np.random.default_rng(9)), whole, atol=1e-5)
    monkeypatch.undo()
    assert Augmenter.block_size(images) == 16
    assert Augmenter.block_size(images.astype(np.float64)) == 8


def test_warp_can_write_into_a_given_array():
    images = batch(n=4)
    out = np.empty_like(images)
    result = warp(images, angle=np.full(4, 30.0), fill=FILL, out=out)
    assert result is out
    np.testing.assert_array_equal(out, warp(images, angle=np.full(4, 30.0), fill=FILL))


def test_drawn_parameters_stay_in_their_ranges():
    params = Augmenter(**FULL).draw(2000, np.random.default_rng(0))
    assert params.shift.min() == -2 and params.shift.max() == 2
    assert np.issubdtype(params.shift.dtype, np.integer)
    assert params.angle.min() >= -12 and params.angle.max() <= 12 and params.angle.std() > 6
    assert params.zoom.min() >= 0.9 and params.zoom.max() <= 1.1


def test_translation_only_copies_pixels_exactly():
    images = batch(n=20)
    aug = Augmenter(translate=3, fill=FILL)
    params = aug.draw(20, np.random.default_rng(1))
    out = aug(images, np.random.default_rng(1))
    for image, result, (dy, dx) in zip(images, out, params.shift):
        np.testing.assert_array_equal(result, shifted(image, dy, dx, FILL))


def test_small_transforms_roughly_preserve_the_ink():
    images = blob(64)
    ink = images.sum(axis=(1, 2, 3))
    # Shifts and turns move the ink without compressing it: every image keeps its total.
    for settings in (dict(translate=2), dict(rotate=15), dict(translate=2, rotate=12)):
        out = Augmenter(**settings)(images, np.random.default_rng(0))
        ratio = out.sum(axis=(1, 2, 3)) / ink
        assert np.all(np.abs(ratio - 1) < 0.02), settings
        assert out.min() >= -1e-6 and out.max() <= images.max() + 1e-6   # bilinear: no overshoot
    # An elastic field stretches some places and squeezes others (strokes get thinner or
    # thicker), so single images gain or lose ink; on average it evens out.
    for settings in (dict(elastic_alpha=34, elastic_sigma=4),
                     dict(translate=2, rotate=12, elastic_alpha=30, elastic_sigma=5)):
        out = Augmenter(**settings)(np.repeat(images, 8, axis=0), np.random.default_rng(0))
        ratio = out.sum(axis=(1, 2, 3)) / np.repeat(ink, 8)
        assert abs(ratio.mean() - 1) < 0.03, settings
        assert out.min() >= -1e-6 and out.max() <= images.max() + 1e-6


def test_a_large_batch_in_one_call():
    images = batch(n=512)
    out = Augmenter(**FULL)(images, np.random.default_rng(0))
    assert out.shape == (512, 1, 28, 28)
    assert Augmenter(**FULL)(images[:0], np.random.default_rng(0)).shape == (0, 1, 28, 28)


@pytest.mark.parametrize("kwargs", [dict(translate=-1), dict(translate=1.5), dict(rotate=-1),
                                    dict(scale=1.0), dict(elastic_alpha=-2),
                                    dict(elastic_sigma=0)])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        Augmenter(**kwargs)


# --- through the CLI -----------------------------------------------------------------------


AUGMENT = {"translate": 2, "rotate": 10, "scale": 0.1, "elastic_alpha": 30, "elastic_sigma": 5}


@pytest.fixture
def fit(tmp_path, monkeypatch, synthetic_mnist, synthetic_mnist_dir):
    """fit(name, augment settings) -> the run's final parameters, trained on synthetic MNIST."""
    use_synthetic_mnist(monkeypatch, synthetic_mnist, synthetic_mnist_dir)

    def run(name, augment):
        config = tmp_path / f"{name}.ini"
        config.write_text(small_config(layers=["conv 4 5 pad=2", "relu", "maxpool 2", "flatten",
                                               "dense 10"], augment=augment))
        out = tmp_path / "runs" / name
        result = invoke("fit", "--config", config, "--out", out, "-q")
        assert result.exit_code == 0, result.output
        return load_checkpoint(out / "checkpoints" / "last.npz").params

    return run


def test_an_augmented_fit_is_reproducible_and_differs_from_a_plain_one(fit):
    plain = fit("plain", {})
    augmented = fit("augmented", AUGMENT)
    again = fit("again", AUGMENT)
    assert set(plain) == set(augmented) == set(again)
    for name in plain:
        np.testing.assert_array_equal(augmented[name], again[name], err_msg=name)
    assert any(not np.array_equal(plain[name], augmented[name]) for name in plain)
    assert all(np.isfinite(value).all() for value in augmented.values())


def test_the_shipped_augmented_config_is_lenet5_plus_augmentation():
    from pathlib import Path

    from cnntrain.config import load_config
    from cnntrain.runs.build import build_augmenter

    configs = Path(__file__).resolve().parents[2] / "configs"
    aug_cfg, base = load_config(configs / "lenet5-aug.ini"), load_config(configs / "lenet5.ini")
    assert aug_cfg.model == base.model and aug_cfg.data == base.data
    assert aug_cfg.run.dir == "runs/lenet5-aug"
    augmenter = build_augmenter(aug_cfg)
    assert augmenter is not None and augmenter.active and build_augmenter(base) is None
    assert augmenter.fill == pytest.approx(-base.data.mean / base.data.std)
