"""Random geometric augmentation of image batches: shifts, rotations, zooms and elastic
distortions (Simard, Steinkraus and Platt, ICDAR 2003), in NumPy.

Every transform is expressed as *where each output pixel reads from*: one (y, x) source
coordinate per output pixel. The affine part (zoom, rotation, shift) and the elastic
displacement are added into one such sampling grid per image, and the batch is resampled
once, with bilinear interpolation. Resampling once instead of once per transform blurs a
digit only once, and the whole batch is a handful of array operations, never a Python loop
over images or pixels.

The work is split so each part can be tested on its own:
  Augmenter.draw    all randomness: the per-image parameters, from the generator it is given
  elastic_field     Simard's recipe: per-pixel uniform noise, smoothed, times alpha
  elastic_modes,    the same random fields, drawn directly in the smoothing's eigenbasis
  field_from_modes  (equal mean and covariance, a fraction of the cost; see elastic_modes)
  warp              a pure function: images and explicit parameters in, new images out

Conventions (output pixel (y, x), rows down, columns right, centre c = ((H-1)/2, (W-1)/2)):
  shift (dy, dx)  pixels; content moves down/right, like np.roll(image, (dy, dx)) but with
                  `fill` coming in instead of wrapping around. The Augmenter draws whole
                  pixels (uniform integers in [-translate, translate] per axis), which copy
                  pixels exactly.
  angle           degrees; positive turns the content counter-clockwise as displayed, the
                  direction of np.rot90.
  zoom            > 1 enlarges the content about the image centre.
  displacement    (dy, dx) in pixels, added to the source coordinate after the affine part:
                  output(y, x) = input(affine_source(y, x) + displacement(y, x)).
  elastic_alpha   displacement = alpha * (uniform[-1, 1] noise smoothed by a Gaussian of
                  std sigma whose kernel sums to 1). Alpha is thus the displacement, in
                  pixels, that a field of all ones would give; random noise averages out,
                  leaving an RMS displacement per axis of about
                  alpha / (2 sqrt(3 pi) sigma) ~= 0.163 alpha / sigma, i.e. ~1.4 px for
                  alpha = 34, sigma = 4 (Simard et al.'s MNIST values, same convention as
                  the usual scipy.ndimage.gaussian_filter implementation).
Pixels read from outside the image take `fill`, the background value of the normalised
images; interpolation blends into it at the border, as if the image were surrounded by it.

Speed: benchmarks/bench_augment.py measures the cost of a batch against a training step
(docs/speed.md keeps the figures). At this size memory matters more than arithmetic: operations work
in place where they can, and a batch is warped in blocks whose temporaries stay under ~128 KiB,
small enough to stay in the CPU cache and to be recycled by malloc; larger ones went back to the
system after every call, and each batch paid hundreds of page faults to get them again.
"""

from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

from cnntrain.constants import IMAGE_HW

# Largest temporary array of one block of a batch, in bytes (see "Speed" above).
BLOCK_BYTES = 120 * 1024


@dataclass
class WarpParams:
    """One batch's random draw. Any part may be None, meaning "not applied".

    shift (N, 2) int (dy, dx); angle (N,) degrees; zoom (N,) factors; modes (N, 2, kh, kw):
    the (dy, dx) elastic fields' coordinates in the smoothing eigenbasis (see elastic_modes).
    """

    shift: Optional[np.ndarray] = None
    angle: Optional[np.ndarray] = None
    zoom: Optional[np.ndarray] = None
    modes: Optional[np.ndarray] = None


def _coord_dtype(dtype):
    # float32 coordinates are exact for every pixel position and half of the work of float64;
    # only float64 batches (gradient checks, debugging) get float64 coordinates.
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)


# --- the elastic field ---------------------------------------------------------------------


@lru_cache(maxsize=16)
def gaussian_matrix(n, sigma, dtype=np.float32):
    """(n, n) matrix G with G[i, j] = g(i - j), g a sampled Gaussian of std `sigma` pixels
    normalised to sum 1 over the whole integer line.

    G @ v smooths a length-n signal as a convolution with zero padding: near the ends part of
    the kernel falls outside and the result shrinks towards 0, so the elastic field fades at
    the border (where MNIST has only background) instead of being amplified there.
    """
    reach = n + int(np.ceil(6 * sigma))
    offsets = np.arange(-reach, reach + 1, dtype=np.float64)
    norm = np.exp(-0.5 * (offsets / sigma) ** 2).sum()
    i = np.arange(n, dtype=np.float64)
    g = np.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2) / norm
    g = g.astype(dtype)
    g.flags.writeable = False  # shared by every call through the cache
    return g


@lru_cache(maxsize=16)
def _smoothing_basis(n, sigma, dtype):
    """(C, A): G ~= C diag(lam) C.T = A C.T with C (n, k) eigenvectors of the symmetric G
    and A = C diag(lam), keeping the k largest eigenvalues.

    A Gaussian matrix is a low-pass filter with fast-decaying eigenvalues: for sigma = 4 on
    28 pixels, 7 of the 28 carry all but 1e-4 of its energy (the field they drop is ~1% of
    the displacement, ~0.01 pixel). Smoothing through the k-dimensional basis costs a
    fraction of the dense G @ f @ G.T.
    """
    lam, vec = np.linalg.eigh(gaussian_matrix(n, sigma, np.float64))
    order = np.argsort(-np.abs(lam))
    lam, vec = lam[order], vec[:, order]
    energy = np.cumsum(lam ** 2) / np.sum(lam ** 2)
    k = min(n, int(np.searchsorted(energy, 1 - 1e-4)) + 1)
    basis, scaled = vec[:, :k].astype(dtype), (vec[:, :k] * lam[:k]).astype(dtype)
    basis.flags.writeable = scaled.flags.writeable = False
    return basis, scaled


def _reduce(planes, sigma):
    """(P, H, W) -> (P, kh, kw): each plane in the leading eigenvectors of G, C_H.T f C_W."""
    _, h, w = planes.shape
    ch, _ = _smoothing_basis(h, float(sigma), planes.dtype)
    cw, _ = _smoothing_basis(w, float(sigma), planes.dtype)
    return ch.T @ planes @ cw


def _expand(core, sigma, h, w):
    """(P, kh, kw) -> (P, H, W): A_H core A_W.T, back to pixels, smoothed."""
    _, ah = _smoothing_basis(h, float(sigma), core.dtype)
    _, aw = _smoothing_basis(w, float(sigma), core.dtype)
    return ah @ (core @ aw.T)


def smooth(field, sigma):
    """Gaussian-smooth the last two axes of `field` (..., H, W), i.e. G_H @ f @ G_W.T for every
    plane with G from gaussian_matrix (to ~1e-4 of its energy); a new array, same dtype.

    Each plane goes into the leading eigenvectors of G and back (see _smoothing_basis), as
    batched matrix products over the whole stack: no loop over planes.
    """
    *lead, h, w = field.shape
    return _expand(_reduce(field.reshape(-1, h, w), sigma), sigma, h, w).reshape(*lead, h, w)


def elastic_field(noise, alpha, sigma):
    """Simard et al.'s recipe, pixel by pixel: displacements in pixels (N, 2, H, W) from
    uniform noise in [-1, 1] (N, 2, H, W), smoothed, times alpha (units: module docstring).

    The Augmenter draws the same random fields more cheaply (see elastic_modes); this is the
    reference they are tested against, and the way to turn noise of one's own into a field.
    """
    noise = np.asarray(noise)
    return smooth(noise, sigma) * noise.dtype.type(alpha)


def elastic_modes(n, rng, shape, sigma, dtype=np.float32):
    """n random elastic fields (N, 2, kh, kw), as coordinates in the eigenbasis that smoothing
    keeps (see _smoothing_basis); field_from_modes turns them into displacements.

    Smoothing per-pixel uniform noise N (variance 1/3) gives A (C.T N C) A.T, and the k x k
    core C.T N C has entries of mean 0, variance 1/3 and no correlation (C is orthonormal),
    each a weighted sum of hundreds of pixels and so Gaussian to a very good approximation.
    Drawing the core directly as independent N(0, 1/3) values therefore gives fields with the
    same mean and covariance as Simard's recipe, from k * k (36 to 49 for sigma 4 to 6 on 28
    pixels) random numbers per plane instead of 784, and skips the first half of the smoothing.
    """
    dtype = _coord_dtype(dtype)
    kh = _smoothing_basis(shape[0], float(sigma), dtype)[0].shape[1]
    kw = _smoothing_basis(shape[1], float(sigma), dtype)[0].shape[1]
    modes = rng.standard_normal((n, 2, kh, kw), dtype=dtype)
    modes *= dtype.type(np.sqrt(1 / 3))
    return modes


def field_from_modes(modes, alpha, sigma, shape):
    """Displacements in pixels (N, 2, H, W) of `shape` (H, W) from elastic_modes' (N, 2, kh, kw).

    The result is a (N, 2, H, W) view of a (2, N, H, W) array, so that warp adds the dy planes
    of all images to its grid in one contiguous sweep, then the dx planes.
    """
    modes = np.asarray(modes)
    n = len(modes)
    # A new array: the caller's modes must survive, to be applied again.
    core = modes.transpose(1, 0, 2, 3) * modes.dtype.type(alpha)
    field = _expand(core.reshape(2 * n, *modes.shape[2:]), sigma, *shape)
    return field.reshape(2, n, *shape).transpose(1, 0, 2, 3)


# --- resampling ----------------------------------------------------------------------------


@lru_cache(maxsize=16)
def _pixel_positions(h, w, dtype):
    """(3, H*W): x and y of every pixel of an H x W image measured from its centre, and 1."""
    y, x = np.mgrid[0:h, 0:w].reshape(2, -1)
    positions = np.stack([x - (w - 1) / 2, y - (h - 1) / 2, np.ones(h * w)]).astype(dtype)
    positions.flags.writeable = False
    return positions


def warp(images, *, shift=None, angle=None, zoom=None, displacement=None, fill=0.0, out=None):
    """Resample images (N, C, H, W) through one sampling grid per image.

    shift (N, 2) (dy, dx) pixels, angle (N,) degrees, zoom (N,) factors, displacement
    (N, 2, H, W) (dy, dx) pixels: any may be None. All channels of an image share its grid.
    Source positions outside the image read `fill`. Integer shifts with no other transform
    copy pixels exactly (the interpolation weights are exactly 0 and 1). Returns a new
    array, or fills `out` (C-contiguous, images' shape and dtype) and returns it.
    """
    images = _check_images(images)
    n, _, h, w = images.shape
    return _warp(images, _affine_coefficients(n, h, w, shift, angle, zoom), displacement, fill,
                 out, whole_pixels=_whole_shift(shift, angle, zoom))


def _whole_shift(shift, angle, zoom):
    """True when the affine part is nothing but a shift by whole pixels."""
    return (angle is None and zoom is None
            and (shift is None or np.issubdtype(np.asarray(shift).dtype, np.integer)))


def _check_images(images):
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {images.shape}")
    if images.dtype.kind != "f":
        raise TypeError(f"expected floating-point images, got {images.dtype}")
    return images


def _affine_coefficients(n, h, w, shift, angle, zoom):
    """(2, N, 3): per image, the source y and x as coefficients of (x, y, 1) of the centred
    output pixel, in the frame of the fill-padded image (+1) that _sample reads.

    Output pixel (y, x) (centred) reads from centre + M ((y, x) - t), M = R(-angle) / zoom:
      y_src = cy + b (x - tx) + a (y - ty),  x_src = cx + a (x - tx) - b (y - ty),
    with (a, b) = (cos, sin) / zoom.
    """
    a, b = 1.0, 0.0
    if angle is not None:
        radians = np.deg2rad(np.asarray(angle, dtype=np.float64))
        a, b = np.cos(radians), np.sin(radians)
    if zoom is not None:
        a, b = a / np.asarray(zoom, np.float64), b / np.asarray(zoom, np.float64)
    ty, tx = (0.0, 0.0) if shift is None else np.asarray(shift, np.float64).T
    coef = np.empty((2, n, 3))
    coef[0, :, 0], coef[0, :, 1], coef[0, :, 2] = b, a, (h + 1) / 2 - b * tx - a * ty
    coef[1, :, 0], coef[1, :, 1], coef[1, :, 2] = a, -b, (w + 1) / 2 - a * tx + b * ty
    return coef


def _warp(images, coef, displacement, fill, out, whole_pixels=False):
    n, _, h, w = images.shape
    ct = _coord_dtype(images.dtype)
    # Affine in (x, y, 1), the whole (2, N, H, W) grid is one matrix product of the per-image
    # coefficients with the pixel positions (3, H*W), several times faster than the same
    # sums broadcast piecewise.
    grid = (coef.astype(ct).reshape(2 * n, 3) @ _pixel_positions(h, w, ct)).reshape(2, n, h, w)
    if displacement is not None:
        grid += np.asarray(displacement).transpose(1, 0, 2, 3)
    return _sample(images, grid, fill, out, whole_pixels and displacement is None)


def _sample(images, grid, fill, out=None, whole_pixels=False):
    """Bilinear samples of images (N, C, H, W) at grid (2, N, H, W) = (y, x) source positions
    in the frame of the image padded with fill (its pixel (0, 0) is at (1, 1)). Overwrites
    grid; writes into `out` when given. whole_pixels: the caller knows every position is a
    whole number (pure integer shifts), so one gather does and no interpolation is needed.
    """
    n, c, h, w = images.shape
    # The frame (1 pixel before, 2 after each axis) lets every coordinate be clamped into it
    # instead of masked: a point far outside lands on fill pixels (weights exactly 0 and 1,
    # so it reads fill exactly), a point just outside blends with the edge, and the right and
    # lower neighbours of the last clamped position still exist.
    hp, wp = h + 3, w + 3
    padded = np.full((n * c, hp, wp), fill, dtype=images.dtype)
    padded[:, 1:h + 1, 1:w + 1] = images.reshape(n * c, h, w)
    flat = padded.reshape(-1)

    upper = h + 1 if h == w else np.array([h + 1, w + 1], grid.dtype)[:, None, None, None]
    np.clip(grid, 0, upper, out=grid)
    whole = grid if whole_pixels else np.floor(grid)
    if not whole_pixels:
        grid -= whole                                 # the interpolation weights, in [0, 1]
    corner = whole[0]
    corner *= wp
    corner += whole[1]                                # flat position of the top-left neighbour
    plane = np.arange(n, dtype=np.intp) * (c * hp * wp)
    if flat.size < (2 ** 24 if corner.dtype == np.float32 else 2 ** 53):
        # Whole numbers this small are exact in the float type, and adding there is cheaper
        # than adding to the int64 index.
        corner += plane.astype(corner.dtype)[:, None, None]
        index = corner.astype(np.intp)[:, None]
    else:
        index = corner.astype(np.intp)[:, None]
        index += plane[:, None, None, None]
    if c > 1:
        index = index + (np.arange(c, dtype=np.intp) * (hp * wp))[None, :, None, None]
    if whole_pixels:
        return flat.take(index, mode="clip", out=out)
    fy = grid[0][:, None].astype(images.dtype, copy=False)   # (N, 1, H, W)
    fx = grid[1][:, None].astype(images.dtype, copy=False)

    # The three other neighbours are the same gather from views shifted by 1, wp and wp + 1
    # elements, which saves building three more index arrays. The indices are in range by
    # construction; mode="clip" only skips the checks.
    top = flat.take(index, mode="clip", out=out)
    right = flat[1:].take(index, mode="clip")
    right -= top
    right *= fx
    top += right                                      # v00 + fx (v01 - v00): exact for fx = 0
    bottom = flat[wp:].take(index, mode="clip")
    flat[wp + 1:].take(index, mode="clip", out=right)
    right -= bottom
    right *= fx
    bottom += right
    bottom -= top
    bottom *= fy
    top += bottom
    return top


# --- the random part -----------------------------------------------------------------------


class Augmenter:
    """Random shifts, rotations, zooms and elastic distortions of training batches.

    translate: max shift in whole pixels, uniform integer in [-t, t] per axis per image;
    rotate: max degrees, uniform in [-r, r]; scale: max relative zoom, uniform in [1-s, 1+s];
    elastic_alpha, elastic_sigma: Simard-style displacement (see the module docstring);
    fill: the value of pixels moved in from outside, i.e. the normalised background.

    augmenter(images, rng) takes (N, C, H, W) float images and a numpy Generator and returns
    a new array of the same shape and dtype. All randomness comes from `rng`, drawn in a fixed
    order (shifts, angles, zooms, noise; parts that are off draw nothing), so a seed fixes the
    images.
    """

    def __init__(self, translate=0, rotate=0.0, scale=0.0, elastic_alpha=0.0, elastic_sigma=4.0,
                 fill=0.0):
        if translate < 0 or int(translate) != translate:
            raise ValueError(f"translate must be a whole number of pixels >= 0, got {translate}")
        if rotate < 0 or not 0 <= scale < 1 or elastic_alpha < 0 or elastic_sigma <= 0:
            raise ValueError("need rotate >= 0, 0 <= scale < 1, elastic_alpha >= 0 and "
                             f"elastic_sigma > 0; got rotate={rotate}, scale={scale}, "
                             f"elastic_alpha={elastic_alpha}, elastic_sigma={elastic_sigma}")
        self.translate, self.rotate, self.scale = int(translate), float(rotate), float(scale)
        self.elastic_alpha, self.elastic_sigma = float(elastic_alpha), float(elastic_sigma)
        self.fill = float(fill)

    def __repr__(self):
        return (f"Augmenter(translate={self.translate}, rotate={self.rotate:g}, "
                f"scale={self.scale:g}, elastic_alpha={self.elastic_alpha:g}, "
                f"elastic_sigma={self.elastic_sigma:g}, fill={self.fill:g})")

    @property
    def active(self):
        return bool(self.translate or self.rotate or self.scale or self.elastic_alpha)

    def draw(self, n, rng, shape=IMAGE_HW, dtype=np.float32):
        """The random parameters of n images of `shape` (H, W), as WarpParams."""
        params = WarpParams()
        if self.translate:
            params.shift = rng.integers(-self.translate, self.translate + 1, size=(n, 2))
        if self.rotate:
            params.angle = rng.uniform(-self.rotate, self.rotate, size=n)
        if self.scale:
            params.zoom = rng.uniform(1 - self.scale, 1 + self.scale, size=n)
        if self.elastic_alpha:
            params.modes = elastic_modes(n, rng, shape, self.elastic_sigma, dtype)
        return params

    def apply(self, images, params, out=None):
        """Warp images (N, C, H, W) with drawn params, into `out` if given, else a new array.

        The batch goes through in blocks of block_size(images) images (see "Speed" in the
        module docstring); each image's result does not depend on the block it falls in.
        """
        images = _check_images(images)
        n, _, h, w = images.shape
        coef = _affine_coefficients(n, h, w, params.shift, params.angle, params.zoom)
        whole = _whole_shift(params.shift, params.angle, params.zoom)
        out = np.empty(images.shape, images.dtype) if out is None else out
        block = self.block_size(images)
        for start in range(0, n, block):
            part = slice(start, start + block)
            displacement = None
            if params.modes is not None:
                displacement = field_from_modes(params.modes[part], self.elastic_alpha,
                                                self.elastic_sigma, (h, w))
            _warp(images[part], coef[:, part], displacement, self.fill, out[part], whole)
        return out

    @staticmethod
    def block_size(images):
        """Images warped together: a power of 2 keeping the largest temporary (the (y, x)
        grid, or the int64 gather index) within BLOCK_BYTES; 16 for 28 x 28 float32."""
        _, c, h, w = images.shape
        per_image = max(2 * h * w * _coord_dtype(images.dtype).itemsize, c * h * w * 8)
        return 1 << max(0, (BLOCK_BYTES // per_image).bit_length() - 1)

    def __call__(self, images, rng):
        images = _check_images(images)
        if not self.active:
            return images.copy()
        n, _, h, w = images.shape
        return self.apply(images, self.draw(n, rng, (h, w), images.dtype))
