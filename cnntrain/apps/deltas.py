"""One picture's backward pass, layer by layer: the static figure of `/explore` (issue #30).

`cnntrain plot --deltas CHECKPOINT [--image N | --input FILE] [--target K] -o deltas.png` runs
cnntrain.nn.explain on one picture, in evaluation mode (batch norm with its running statistics,
dropout the identity), against the target K (default: the predicted digit), and draws from top
to bottom: a title with the prediction, the target and the loss; the field the network gets,
the delta at the input and the probabilities; then one band per layer in config order, holding
  its output (grey: black = the row's minimum, white = its maximum),
  its delta dloss/doutput (diverging: red > 0, blue < 0, white = 0, symmetric per row),
  for max pooling the delta routed to each window's maximum, on the layer's input,
  for a convolution the kernel gradient of every shown output map (its input channels side by
  side), for a dense layer the weight gradient as one image,
each row with its own colour bar, and left of it the layer's name and the equation it applies.
Maps beyond MAX_CHANNELS per layer and kernel inputs beyond MAX_KERNEL_INPUTS are left out (the
caption says how many are shown); the colour scales are those of the whole layer.

The pixel size depends only on the network: WIDTH wide, deltas_height(bands) tall.
matplotlib as for cnntrain.apps.plots.
"""

import math
import textwrap
from collections import namedtuple

import numpy as np

from cnntrain.apps.maps import load_picture
from cnntrain.apps.plots import _figure, _save, check_output
from cnntrain.errors import ConfigError, require_extra
from cnntrain.nn.explain import explain

WIDTH = 1300
HEADER = 100
INPUT_ROW = 270
LABEL_WIDTH = 270   # the layer's name, shape and equation, left of its rows
MAX_CHANNELS = 8
MAX_KERNEL_INPUTS = 16
TILE = 100          # one map's square
GAP = 8
CAPTION = 20        # a row's caption, above its pictures
STRIP = 34          # a vector's row
MATRIX = 120        # a dense layer's weight gradient
BAND_GAP = 26
LABEL_LINE = 14
LABEL_CHARS = 32    # a longer layer description would run into the pictures
AREA = MAX_CHANNELS * (TILE + GAP) - GAP
COLORBAR_LEFT = LABEL_WIDTH + AREA + 16
COLORBAR_WIDTH = 14
ANNOTATED = 16      # vectors up to this long have their values written in their cells
DIVERGING = "RdBu_r"
GREY = "gray"

# What each kind of layer computes forward and backward, in docs/maths.md's notation, with the
# function of cnntrain/nn/functional.py that computes its backward step.
EQUATIONS = {
    "conv": ["y = W * x_pad + b  (conv_forward)", "delta below: 'full' convolution",
             "  with W (conv_input_grad)", "dW = 'valid' correlation of x",
             "  with the delta (conv_kernel_grad)"],
    "maxpool": ["y = the maximum of each window", "delta routed to that maximum",
                "  (maxpool2d_backward)"],
    "meanpool": ["y = the mean of each window", "delta spread over it / area",
                 "  (meanpool2d_backward)"],
    "relu": ["dx = dout * (y > 0)", "  (relu_backward)"],
    "tanh": ["dx = dout * (1 - y**2)", "  (tanh_backward)"],
    "sigmoid": ["dx = dout * y * (1 - y)", "  (sigmoid_backward)"],
    "dense": ["y = x @ W + b", "dx = dout @ W.T, dW = x.T @ dout", "  (dense_backward)"],
    "batchnorm": ["running statistics (evaluation):", "dx = dout * gamma /",
                  "  sqrt(running_var + eps)", "  (batchnorm_eval_backward)"],
    "dropout": ["the identity in evaluation:", "dx = dout"],
    "flatten": ["a reshape: the delta is", "reshaped back"],
}
LAST_EQUATION = ["delta = softmax(z) - onehot(target)", "  (softmax_cross_entropy_backward)"]

# One row of a band. kind: "maps" (C, H, W) or "kernels" (a list of 2-D mosaics), one square
# each; "vector" (n,) a strip; "matrix" (rows, columns) one image. limits: (vmin, vmax).
Row = namedtuple("Row", "caption kind data limits cmap")
Band = namedtuple("Band", "name about equation rows")


def _grey(caption, kind, data, whole):
    low, high = float(np.min(whole)), float(np.max(whole))
    return Row(caption, kind, data, (low, high if high > low else low + 1), GREY)


def _diverging(caption, kind, data, whole):
    bound = float(np.max(np.abs(whole))) or 1.0  # an all-zero row: any symmetric scale
    return Row(caption, kind, data, (-bound, bound), DIVERGING)


def _shown(n, what):
    return f"{n} {what}" if n <= MAX_CHANNELS else f"{MAX_CHANNELS} of {n} {what}"


def routed_delta(routes, delta, input_shape):
    """Where max pooling sends its delta. routes: (C, out_h, out_w, 2) (row, column) in the
    layer's input, delta: (C, out_h, out_w), input_shape: (C, H, W) -> (C, H, W), each delta
    at its window's maximum and zero elsewhere (the delta max pooling hands below)."""
    routed = np.zeros(input_shape, dtype=np.float64)
    channels = np.broadcast_to(np.arange(len(delta))[:, None, None], delta.shape)
    np.add.at(routed, (channels, routes[..., 0], routes[..., 1]), delta)
    return routed


def mosaic(tiles, columns):
    """Equal 2-D arrays -> one 2-D array, `columns` a line, NaN (drawn blank) one cell wide
    between them and in the unused places of the last line."""
    tiles = np.asarray(tiles, dtype=np.float64)
    n, h, w = tiles.shape
    lines = math.ceil(n / columns)
    out = np.full((lines * (h + 1) - 1, columns * (w + 1) - 1), np.nan)
    for i, tile in enumerate(tiles):
        line, column = divmod(i, columns)
        out[line * (h + 1):line * (h + 1) + h, column * (w + 1):column * (w + 1) + w] = tile
    return out


def _kernel_row(weight_grad):
    """(C_out, C_in, kh, kw) -> a Row: per shown output map, its kernels' gradients."""
    c_out, c_in = weight_grad.shape[:2]
    inputs = min(c_in, MAX_KERNEL_INPUTS)
    columns = math.ceil(math.sqrt(inputs))
    tiles = [mosaic(weight_grad[j, :inputs], columns) for j in range(min(c_out, MAX_CHANNELS))]
    of = f"{inputs} of {c_in}" if inputs < c_in else f"{c_in}"
    caption = (f"kernel gradient dW {'x'.join(map(str, weight_grad.shape))}: per map, the "
               f"kernels of its {of} input channel(s)")
    return _diverging(caption, "kernels", tiles, weight_grad)


def _layer_rows(entry, input_shape):
    """One layer of explain's result -> its Rows."""
    output, delta = entry["output"], entry["delta"]
    if output.ndim == 3:
        c, h, w = output.shape
        shown = min(c, MAX_CHANNELS)
        rows = [_grey(f"output: {_shown(c, 'maps')} {h}x{w}", "maps", output[:shown], output),
                _diverging("delta \u2202loss/\u2202output", "maps", delta[:shown], delta)]
    else:
        size = output.size
        rows = [_grey(f"output: {size} values", "vector", output.reshape(-1), output),
                _diverging("delta \u2202loss/\u2202output", "vector", delta.reshape(-1), delta)]
    if "routes" in entry:
        routed = routed_delta(entry["routes"], delta, input_shape)
        c, h, w = routed.shape
        rows.append(_diverging(f"delta routed to each window's maximum, on the {h}x{w} input",
                               "maps", routed[:MAX_CHANNELS], routed))
    if entry["kind"] == "conv" and "weight_grad" in entry:
        rows.append(_kernel_row(entry["weight_grad"]))
    elif entry["kind"] == "dense" and "weight_grad" in entry:
        n_in, n_out = entry["weight_grad"].shape
        rows.append(_diverging(f"weight gradient dW = x.T @ dout, {n_in}x{n_out}, drawn "
                               f"transposed: {n_out} rows (outputs), {n_in} columns (inputs)",
                               "matrix", entry["weight_grad"].T, entry["weight_grad"]))
    return rows


def delta_bands(network, result):
    """explain's result for `network` -> one Band per layer, in config order: its name, the
    lines about it (the layer, its output shape), the equation it applies, and its Rows."""
    shapes = [tuple(network.input_shape)] + [entry["output"].shape
                                             for entry in result["layers"][:-1]]
    summary = network.summary()
    bands = []
    for index, (entry, shape, row) in enumerate(zip(result["layers"], shapes, summary)):
        about = textwrap.wrap(row.layer, LABEL_CHARS, subsequent_indent="  ")
        about.append("output " + "x".join(map(str, row.output_shape)))
        equation = list(EQUATIONS.get(entry["kind"], []))
        if index == len(summary) - 1:
            equation += LAST_EQUATION
        bands.append(Band(entry["name"], about, equation, _layer_rows(entry, shape)))
    return bands


def _row_height(row):
    return CAPTION + {"vector": STRIP, "matrix": MATRIX}.get(row.kind, TILE)


def _band_height(band):
    rows = sum(_row_height(row) for row in band.rows)
    label = 22 + LABEL_LINE * (len(band.about) + len(band.equation))
    return max(rows, label) + BAND_GAP


def deltas_height(bands):
    """Pixel height of the picture for these bands."""
    return HEADER + INPUT_ROW + sum(_band_height(band) for band in bands)


class _Canvas:
    """A figure of fixed pixel size, placed in pixels from its top left corner."""

    def __init__(self, width, height):
        from matplotlib import colormaps

        self.figure = _figure(width, height)
        self.width, self.height = width, height
        self.colormaps = colormaps

    def axes(self, left, top, w, h, ticks=False):
        ax = self.figure.add_axes([left / self.width, 1 - (top + h) / self.height,
                                   w / self.width, h / self.height])
        if not ticks:
            ax.set_xticks([])
            ax.set_yticks([])
        return ax

    def text(self, left, top, text, **style):
        self.figure.text(left / self.width, 1 - top / self.height, text, va="center", **style)

    def image(self, ax, data, row, **style):
        cmap = self.colormaps[row.cmap].with_extremes(bad="white")
        low, high = row.limits
        return ax.imshow(data, cmap=cmap, vmin=low, vmax=high, **style)

    def colorbar(self, image, row, left, top, h):
        """A colour bar labelled at its ends (and at zero on a diverging scale tall enough)."""
        bar = self.figure.colorbar(image, cax=self.axes(left, top, COLORBAR_WIDTH, h, True))
        low, high = row.limits
        ticks = [low, 0.0, high] if row.cmap == DIVERGING and h >= 60 else [low, high]
        bar.set_ticks(ticks, labels=[f"{t:.2g}" for t in ticks])
        bar.ax.tick_params(labelsize=7)


def _draw_row(canvas, row, top):
    canvas.text(LABEL_WIDTH, top + CAPTION / 2, row.caption, fontsize=8.5, color="0.25")
    top += CAPTION
    if row.kind in ("maps", "kernels"):
        for i, tile in enumerate(row.data):
            ax = canvas.axes(LABEL_WIDTH + i * (TILE + GAP), top, TILE, TILE)
            image = canvas.image(ax, tile, row, interpolation="nearest")
        canvas.colorbar(image, row, LABEL_WIDTH + len(row.data) * (TILE + GAP) + 4, top, TILE)
        return
    height = STRIP if row.kind == "vector" else MATRIX
    ax = canvas.axes(LABEL_WIDTH, top, AREA, height)
    data = row.data[None] if row.kind == "vector" else row.data
    image = canvas.image(ax, data, row, aspect="auto",
                         interpolation="nearest" if data.shape[1] <= AREA else "antialiased")
    if row.kind == "vector" and len(row.data) <= ANNOTATED:
        low, high = row.limits
        for i, value in enumerate(row.data):
            # white on the darkest cells of either scale, black elsewhere
            position = (value - low) / (high - low)
            dark = position < 0.35 if row.cmap == GREY else abs(position - 0.5) > 0.35
            ax.text(i, 0, f"{i}: {value:.3g}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    canvas.colorbar(image, row, COLORBAR_LEFT, top, height)


def _draw_band(canvas, band, top):
    canvas.text(10, top + 12, band.name, fontsize=11, weight="bold")
    for i, line in enumerate(band.about):
        canvas.text(10, top + 32 + i * LABEL_LINE, line, fontsize=8, color="0.3")
    for i, line in enumerate(band.equation, start=len(band.about)):
        canvas.text(10, top + 32 + i * LABEL_LINE, line, fontsize=8, family="monospace")
    for row in band.rows:
        _draw_row(canvas, row, top)
        top += _row_height(row)


def _draw_input(canvas, field, result, target, top):
    canvas.text(10, top + 110, "input", fontsize=11, weight="bold")
    canvas.text(10, top + 130, "x = (field - mean) / std", fontsize=8, family="monospace")
    left = LABEL_WIDTH
    ax = canvas.axes(left, top + 30, 200, 200)
    ax.imshow(field, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title("what the network gets: 28x28, [0, 1]", fontsize=9)
    left += 250
    delta = result["input_delta"]
    row = _diverging("", "maps", delta, delta)
    ax = canvas.axes(left, top + 30, 200, 200)
    image = canvas.image(ax, delta, row, interpolation="nearest")
    ax.set_title("delta at the input \u2202loss/\u2202x", fontsize=9)
    canvas.colorbar(image, row, left + 206, top + 30, 200)
    left += 300
    probabilities = result["probabilities"]
    digit = int(np.argmax(probabilities))
    bars = canvas.axes(left, top + 40, WIDTH - left - 40, 180, ticks=True)
    colours = ["tab:orange" if d == digit else "tab:blue" for d in range(len(probabilities))]
    drawn = bars.bar(range(len(probabilities)), probabilities, color=colours)
    drawn[target].set_edgecolor("firebrick")
    drawn[target].set_linewidth(2.5)
    drawn[target].set_hatch("//")
    bars.set_xticks(range(len(probabilities)))
    for d, tick in enumerate(bars.get_xticklabels()):
        if d in (digit, target):
            tick.set_color("firebrick" if d == target else "tab:orange")
            tick.set_fontweight("bold")
    bars.set_ylim(0, 1.15)  # room for the labels above the bars
    bars.set_yticks([0, 0.5, 1])
    bars.set_title(f"probability per digit (orange: predicted {digit}; hatched, red edge: "
                   f"target {target})", fontsize=9)
    for d, p in enumerate(probabilities):
        if p >= 0.01:
            bars.text(d, p + 0.02, f"{100 * p:.0f}%", ha="center", fontsize=8)


def plot_deltas(predictor, field, output, *, title, target=None, label=None):
    """Draw the backward pass of `field` ((28, 28) in [0, 1], ink high) through `predictor`'s
    network against `target` (default: the predicted digit) -> (digit, target, explain's
    result)."""
    check_output(output)
    require_extra("matplotlib", "plotting", "plot")
    n_classes = len(predictor.probabilities(field[None])[0])
    if target is None:
        target = int(predictor.predict(field[None])[0])
    elif not 0 <= target < n_classes:
        raise ConfigError(f"--target {target} is out of range: the network has {n_classes} "
                          f"classes, give 0..{n_classes - 1}")
    network = predictor.network
    result = explain(network, predictor.normalise(field[None]), target)
    bands = delta_bands(network, result)
    digit = int(np.argmax(result["probabilities"]))
    canvas = _Canvas(WIDTH, deltas_height(bands))
    p = result["probabilities"][digit]
    headline = (f"predicted {digit} ({100 * p:.1f}%), target {target}, "
                f"loss -log p[{target}] = {result['loss']:.4g}")
    if label is not None:
        headline += f", true label {label}"
    canvas.text(WIDTH / 2, 20, headline, ha="center", fontsize=14, weight="bold")
    canvas.text(WIDTH / 2, 44, "evaluation mode: batch norm uses its running statistics, "
                "dropout is the identity; the loss is this one image's cross-entropy against "
                "the target", ha="center", fontsize=10)
    canvas.text(WIDTH / 2, 64, "deltas and gradients: red > 0, blue < 0, white 0, each row "
                "scaled symmetrically to its largest |value|; outputs: black the row's "
                "minimum, white its maximum", ha="center", fontsize=9, color="0.3")
    canvas.text(WIDTH / 2, 84, title, ha="center", fontsize=9, color="0.3")
    _draw_input(canvas, field, result, target, HEADER)
    top = HEADER + INPUT_ROW
    for band in bands:
        _draw_band(canvas, band, top)
        top += _band_height(band)
    _save(canvas.figure, output)
    return digit, target, result


def draw_deltas(checkpoint, output, *, image=None, input_path=None, raw=False, target=None,
                data_dir=None, mirrors=()):
    """`cnntrain plot --deltas`: load the checkpoint and the picture (as `plot --maps` does),
    draw; -> (digit, target, loss)."""
    predictor, field, label, _, title = load_picture(
        checkpoint, output, image=image, input_path=input_path, raw=raw, data_dir=data_dir,
        mirrors=mirrors)
    digit, target, result = plot_deltas(predictor, field, output, title=title, target=target,
                                        label=label)
    return digit, target, result["loss"]
