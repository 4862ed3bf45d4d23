"""Turn a picture of a digit into the 28x28 field MNIST's digits live in.

MNIST's own recipe (LeCun, Bottou, Bengio and Haffner, 1998): the digits were size-normalised
to fit a 20x20 box, keeping their aspect ratio, with anti-aliasing (hence grey levels), then
placed in a 28x28 field with their centre of mass at the centre. to_mnist_field applies the
same steps to any grey picture of one digit, so the network sees what it was trained on:

  1. grey levels to [0, 1]; the border tells the paper from the ink: a light border means dark
     ink on light paper, which is inverted (MNIST's raw pixels are white ink on black, 0 = paper)
  2. the paper's own level (a plane fitted to the border, so uneven light is taken out)
     becomes 0 and the strongest ink 1; what stays below INK_FLOOR of that range is noise
     (paper texture, JPEG ringing) and becomes 0, and so do isolated specks (no stroke is a
     lone pixel)
  3. crop to the ink's bounding box
  4. resample, keeping the aspect ratio and anti-aliased, so the longer side is 20 pixels
  5. paste into a 28x28 field with the ink's centre of mass on pixel (14, 14), where MNIST's
     digits have theirs (whole pixels, as MNIST did)

Reading the pictures from files is cnntrain.data.inputs's job. numpy only at import time.
"""

import numpy as np

from cnntrain.constants import IMAGE_HW
from cnntrain.errors import CnnTrainError

FIELD = IMAGE_HW[0]  # MNIST's field, pixels per side (square)
BOX = 20         # the longer side of a digit inside it
# Ink weaker than this fraction of the paper-to-ink range is noise. It also sets where the
# crop's edges fall; measured on 1,000 MNIST test digits enlarged, moved, saved as PNG and
# JPEG and read back, 0.2 classified like the originals more often than 0.05, 0.1 or 0.3.
INK_FLOOR = 0.2
MIN_CONTRAST = 0.1  # the ink must differ from the paper by this much of the full grey range


class NoInkError(CnnTrainError):
    """The picture holds nothing that differs from its paper: no digit to read."""


def grey_levels(grey):
    """(H, W) uint8 0..255 (or other integers in that range) or floats in [0, 1] -> float64
    in [0, 1]; ValueError for anything else."""
    grey = np.asarray(grey)
    if grey.ndim != 2 or min(grey.shape) < 1:
        raise ValueError(f"expected one (H, W) grey image, got an array of shape {grey.shape}")
    if grey.dtype.kind in "ui":
        if grey.min() < 0 or grey.max() > 255:
            raise ValueError(f"integer grey levels must lie in 0..255, got {grey.min()}.."
                             f"{grey.max()}")
        return grey.astype(np.float64) / 255.0
    if grey.dtype.kind == "b":
        return grey.astype(np.float64)
    if grey.dtype.kind != "f":
        raise ValueError(f"grey levels must be numbers, got {grey.dtype}")
    if not np.isfinite(grey).all():
        raise ValueError("grey levels hold NaN or infinity")
    if grey.min() < 0 or grey.max() > 1:
        raise ValueError(f"float grey levels must lie in [0, 1], got {grey.min():.4g}.."
                         f"{grey.max():.4g}; divide 0..255 values by 255")
    return grey.astype(np.float64)


def border_pixels(image):
    """(rows, columns) of the outermost ring of pixels of (H, W), every pixel once."""
    h, w = image.shape
    if h <= 2 or w <= 2:  # every pixel is on the border
        rows, cols = np.indices((h, w))
        return rows.ravel(), cols.ravel()
    across, down = np.arange(w), np.arange(1, h - 1)
    rows = np.concatenate([np.zeros(w, int), np.full(w, h - 1), down, down])
    cols = np.concatenate([across, across, np.zeros(h - 2, int), np.full(h - 2, w - 1)])
    return rows, cols


def paper_levels(image):
    """The paper's level at every pixel of (H, W): a plane a + b*row + c*column fitted to
    the border, so a page lit unevenly (brighter on one side, as photos are) reads as even
    paper. Starting from the border's median, each of two fits leaves out the border pixels
    far from the previous one (ink touching the edge), so a stroke there does not tilt it."""
    rows, cols = border_pixels(image)
    values = image[rows, cols]
    h, w = image.shape
    design = np.column_stack([np.ones(len(values)), rows / max(h - 1, 1), cols / max(w - 1, 1)])
    coef = np.array([np.median(values), 0.0, 0.0])  # first guess: even paper
    for _ in range(2):
        residual = np.abs(values - design @ coef)
        spread = 1.4826 * np.median(residual)  # the residuals' standard deviation, robustly
        keep = residual <= max(3 * spread, 0.02)
        coef = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
    down = coef[1] * np.arange(h)[:, None] / max(h - 1, 1)
    across = coef[2] * np.arange(w)[None, :] / max(w - 1, 1)
    return coef[0] + down + across


def ink_levels(grey):
    """(H, W) grey levels, either polarity -> (H, W) float64 ink in [0, 1] (paper 0, the
    strongest ink 1); NoInkError when nothing stands out from the paper."""
    image = grey_levels(grey)
    rows, cols = border_pixels(image)
    if np.median(image[rows, cols]) > 0.5:  # light paper: dark ink, inverted so ink is high
        image = 1.0 - image
    lifted = image - paper_levels(image)
    strongest = float(lifted.max())
    if strongest < MIN_CONTRAST:
        raise NoInkError("no ink: the picture is blank (nothing differs from its background)")
    ink = lifted / strongest
    ink[ink < INK_FLOOR] = 0.0
    ink[~strokes(ink > 0)] = 0.0
    if not ink.any():
        raise NoInkError("no ink: the picture holds only scattered specks, no stroke")
    return ink


def strokes(mask):
    """The pixels of a boolean (H, W) mask that have at least two marked neighbours among
    their eight: any stroke, even a one-pixel-thin diagonal, keeps all its pixels, while
    isolated specks of noise (which would stretch the ink's bounding box) are dropped."""
    padded = np.pad(mask, 1).astype(np.uint8)
    h, w = mask.shape
    around = sum(padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                 for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx)
    return mask & (around >= 2)


def ink_box(ink):
    """(top, bottom, left, right), bottom and right exclusive, of the nonzero pixels."""
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def resample_matrix(n_in, n_out):
    """(n_out, n_in) weights that resample a row of n_in pixels to n_out, anti-aliased.

    Each output pixel is a weighted mean of the input pixels under a triangle (linear) filter
    centred on it. When shrinking, the filter is widened by the factor n_in / n_out, so every
    input pixel contributes (no aliasing); when enlarging it is plain linear interpolation.
    """
    scale = n_in / n_out
    radius = max(scale, 1.0)
    centres = (np.arange(n_out) + 0.5) * scale - 0.5  # output pixel centres in input pixels
    distance = np.abs(np.arange(n_in)[None, :] - centres[:, None]) / radius
    weights = np.maximum(0.0, 1.0 - distance)
    # Near the edges the nearest input pixel alone may lie under the filter (sum > 0 always,
    # since every centre is within half a pixel of some input pixel's centre).
    return weights / weights.sum(axis=1, keepdims=True)


def resize(image, height, width):
    """(H, W) -> (height, width), separably, with resample_matrix along each axis."""
    rows, columns = resample_matrix(image.shape[0], height), resample_matrix(image.shape[1], width)
    return rows @ image @ columns.T


def fit_box(height, width, box=BOX):
    """The size of a (height, width) picture scaled so its longer side is `box` pixels."""
    longer = max(height, width)
    return (max(1, round(height * box / longer)), max(1, round(width * box / longer)))


def centre_of_mass(image):
    """(row, column) of the intensity-weighted mean position, in pixel-centre coordinates."""
    total = image.sum()
    rows = (image.sum(axis=1) * np.arange(image.shape[0])).sum() / total
    cols = (image.sum(axis=0) * np.arange(image.shape[1])).sum() / total
    return rows, cols


def paste_centred(digit, field=FIELD):
    """Paste (h, w) `digit` into a (field, field) zero field, moved by whole pixels so its
    centre of mass lands as near pixel (field // 2, field // 2) as it can while staying inside.

    That pixel, (14, 14) in 0-based row and column indices, is where MNIST put it: over the
    test set the centres of mass average (13.99, 14.01), with a spread of 0.29 pixels, not
    the geometric centre (13.5, 13.5)."""
    h, w = digit.shape
    row, col = centre_of_mass(digit)
    middle = field // 2
    top = int(np.clip(np.floor(middle - row + 0.5), 0, field - h))
    left = int(np.clip(np.floor(middle - col + 0.5), 0, field - w))
    out = np.zeros((field, field))
    out[top:top + h, left:left + w] = digit
    return out


def to_mnist_field(grey):
    """(H, W) grey levels (uint8 0..255 or floats in [0, 1]), dark-on-light or light-on-dark
    -> (28, 28) float32 in [0, 1], ink high, as MNIST's raw pixels / 255.

    NoInkError when the picture holds no ink; ValueError for an array that is not a picture.
    """
    ink = ink_levels(grey)
    top, bottom, left, right = ink_box(ink)
    digit = ink[top:bottom, left:right]
    digit = resize(digit, *fit_box(*digit.shape))
    return np.clip(paste_centred(digit), 0.0, 1.0).astype(np.float32)

