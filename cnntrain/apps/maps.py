"""What the network sees: one picture's activation maps in every convolution and pooling layer.

`cnntrain plot --maps CHECKPOINT [--image N | --input FILE] -o maps.png` draws, from top to
bottom: the 28x28 field the network is given, with its probabilities per digit; then one row
per convolution and per pooling layer (after the batch norm, activation or dropout right
behind it, if any), each map a small grey image. Every row is scaled to its own range (black = its
minimum, white = its maximum, both shown), so the maps of one layer can be compared with each
other.

The picture's pixel size depends only on the network: WIDTH wide, and a header, the input row
and one band per layer (MAX_COLUMNS maps a line) tall. matplotlib as for cnntrain.apps.plots.
"""

import math

import numpy as np

from cnntrain.apps.plots import _figure, _save, check_output
from cnntrain.errors import ConfigError, require_extra
from cnntrain.nn.conv import Conv2D
from cnntrain.nn.pooling import _Pool2D

WIDTH = 1200
HEADER = 70
INPUT_ROW = 240
LABEL_WIDTH = 170   # the layer's name and shape, left of its maps
MAX_COLUMNS = 16
MAX_TILE = 100
BAND_TITLE = 8
LABEL_CHARS = 20    # a label line of layer names beyond this would run into the maps
LABEL_LINE = 16     # pixels between the lines of a band's label


def _makes_maps(layer):
    """Convolution and pooling layers: the ones whose outputs are drawn."""
    return isinstance(layer, (Conv2D, _Pool2D))


def activation_maps(network, field_input):
    """One picture through the network, layer by layer in evaluation mode.

    field_input: (1, C, H, W) normalised network input -> (logits (1, K), [(title, maps
    (C', H', W'))]), one row for every convolution and every pooling layer, in network order.
    A row's maps are taken after the layers right behind it that keep their shape (batch
    norm, an activation, dropout, which is the identity here), up to the next convolution,
    pooling or flatten: those maps are what the next layer sees, and the title names every
    layer they went through ('conv1 + batchnorm1 + relu1').
    """
    x, rows = field_input, []
    names = None  # the layers of the row being followed, or None when no row is
    for name, layer in network.layers:
        shape = x.shape
        x = layer.forward(x, train=False)
        if _makes_maps(layer):
            names = [name]
            rows.append((name, np.array(x[0])))
        elif names is not None and x.ndim == 4 and x.shape == shape:
            names.append(name)
            rows[-1] = (" + ".join(names), np.array(x[0]))
        else:
            names = None
    return x, rows


def _label(title):
    """A row's title -> (its first layer, the lines naming the layers after it, '+ relu1').
    The names are packed LABEL_CHARS to a line, so the label stays left of the maps."""
    first, *rest = title.split(" + ")
    lines = []
    for name in rest:
        word = f"+ {name}"
        if lines and len(lines[-1]) + 1 + len(word) <= LABEL_CHARS:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    return first, lines


def _band_height(n_maps, title=""):
    """Pixel height of one row: its lines of maps, or its label if that is taller."""
    lines = math.ceil(n_maps / MAX_COLUMNS)
    label = 60 + LABEL_LINE * len(_label(title)[1])
    return BAND_TITLE + max(lines * (_tile(n_maps) + 6), label) + 8


def _tile(n_maps):
    columns = min(n_maps, MAX_COLUMNS)
    return int(min(MAX_TILE, (WIDTH - LABEL_WIDTH - 20) / columns - 6))


def maps_height(rows):
    """Pixel height of the picture for these rows of maps."""
    return HEADER + INPUT_ROW + sum(_band_height(len(maps), title) for title, maps in rows)


def plot_maps(predictor, field, output, *, title, label=None, picture=None):
    """Draw `field` ((28, 28) in [0, 1], ink high) as `predictor`'s network sees it; with
    `picture` (grey levels in [0, 1]), the picture the field was made from beside it."""
    check_output(output)
    require_extra("matplotlib", "plotting", "plot")
    logits, rows = activation_maps(predictor.network, predictor.normalise(field[None]))
    if not rows:
        raise ConfigError(f"{predictor.path}: the network has no convolution or pooling "
                          "layer, so there are no maps to draw")
    probabilities = predictor.probabilities(field[None])[0]
    digit = int(np.argmax(probabilities))
    width, height = WIDTH, maps_height(rows)
    figure = _figure(width, height)

    def axes(left, top, w, h):
        return figure.add_axes([left / width, 1 - (top + h) / height, w / width, h / height])

    headline = f"predicted {digit} ({100 * probabilities[digit]:.1f}%)"
    if label is not None:
        headline += f", true label {label}"
    figure.text(0.5, 1 - 22 / height, headline, ha="center", va="center", fontsize=14,
                weight="bold", color="black" if label in (None, digit) else "firebrick")
    figure.text(0.5, 1 - 48 / height, title, ha="center", va="center", fontsize=9, color="0.3")

    top, left = HEADER, LABEL_WIDTH
    figure.text(10 / width, 1 - (top + 110) / height, "input", fontsize=11, weight="bold",
                va="center")
    if picture is not None:
        ax = axes(left, top + 10, 200, 200)
        ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="bilinear")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"the picture, {picture.shape[1]}x{picture.shape[0]}", fontsize=9)
        left += 240
    ax = axes(left, top + 10, 200, 200)
    ax.imshow(field, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("what the network gets: 28x28, [0, 1]", fontsize=9)
    left += 280
    bars = axes(left, top + 20, min(520, width - left - 30), 180)
    colours = ["tab:blue" if d != digit else "tab:orange" for d in range(len(probabilities))]
    bars.bar(range(len(probabilities)), probabilities, color=colours)
    bars.set_xticks(range(len(probabilities)))
    bars.set_ylim(0, 1.15)  # room for the labels above the bars
    bars.set_yticks([0, 0.25, 0.5, 0.75, 1])
    bars.set_ylabel("probability")
    bars.set_title("probability per digit", fontsize=9)
    for d, p in enumerate(probabilities):
        if p >= 0.01:
            bars.text(d, p + 0.02, f"{100 * p:.0f}%", ha="center", fontsize=8)
    top += INPUT_ROW

    for row_title, maps in rows:
        n = len(maps)
        tile = _tile(n)
        low, high = float(maps.min()), float(maps.max())
        span = high - low or 1.0
        c, h, w = maps.shape
        first, after = _label(row_title)
        label_top = top + BAND_TITLE + 14
        figure.text(10 / width, 1 - label_top / height, first, fontsize=11, weight="bold",
                    va="center")
        for line_text in after:
            label_top += LABEL_LINE
            figure.text(10 / width, 1 - label_top / height, line_text, fontsize=9.5,
                        va="center")
        figure.text(10 / width, 1 - (label_top + 20) / height,
                    f"{c} maps {h}x{w}", fontsize=9, va="center", color="0.3")
        figure.text(10 / width, 1 - (label_top + 38) / height,
                    f"black {low:.2f}, white {high:.2f}", fontsize=8, va="center", color="0.3")
        for i, single in enumerate(maps):
            line, column = divmod(i, MAX_COLUMNS)
            ax = axes(LABEL_WIDTH + column * (tile + 6), top + BAND_TITLE + line * (tile + 6),
                      tile, tile)
            ax.imshow(single, cmap="gray", vmin=low, vmax=low + span, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        top += _band_height(n, row_title)
    _save(figure, output)
    return digit, float(probabilities[digit])


def load_field(*, image=None, input_path=None, raw=False, data_dir=None, mirrors=(),
               config_dir=None, config_mirrors=()):
    """The picture to draw -> (field (28, 28) in [0, 1], true label or None, description,
    the picture as read when it came from a file (grey levels in [0, 1]) or None).

    input_path: a file as `cnntrain predict` reads it, through the same reader (a folder only
    when it holds one input file); `image` then picks one picture of a stack (default the
    first). Otherwise MNIST test image `image` (default 0).
    """
    from cnntrain.apps.predict import to_field
    from cnntrain.constants import TEST_IMAGES_FILE, TEST_LABELS_FILE
    from cnntrain.data.download import fetch_mnist
    from cnntrain.data.inputs import display_name, read_single_input
    from cnntrain.data.mnist import read_idx
    from cnntrain.data.preprocess import grey_levels

    if input_path is not None:
        entries = read_single_input(input_path)
        index = image or 0
        if not 0 <= index < len(entries):
            raise ConfigError(f"{display_name(input_path)} holds {len(entries)} picture(s); "
                              f"--image {index} is out of range")
        label_text, grey = entries[index]
        return to_field(grey, label_text, raw), None, label_text, grey_levels(grey)
    index = 0 if image is None else image
    folder, _ = fetch_mnist(data_dir, mirrors, config_dir=config_dir,
                            config_mirrors=config_mirrors, progress=False)
    images = read_idx(folder / TEST_IMAGES_FILE)
    labels = read_idx(folder / TEST_LABELS_FILE)
    if not 0 <= index < len(images):
        raise ConfigError(f"--image {index} is out of range: the MNIST test set has images "
                          f"0..{len(images) - 1}")
    return (images[index] / np.float32(255), int(labels[index]), f"MNIST test image {index}",
            None)


def load_picture(checkpoint, output, *, image=None, input_path=None, raw=False, data_dir=None,
                 mirrors=()):
    """What `plot --maps` and `plot --deltas` start from: the output checked (before any work
    is done for it), the checkpoint's predictor and the picture (by load_field, with the
    checkpoint's own data folder and mirrors as fallbacks)
    -> (predictor, field (28, 28) float32 in [0, 1], true label or None, the picture as read
    from a file or None, a title naming the picture and the checkpoint)."""
    from cnntrain.apps.inference import load_predictor
    from cnntrain.fileio import refuse_overwriting

    check_output(output)
    refuse_overwriting(output, checkpoint, input_path)
    require_extra("matplotlib", "plotting", "plot")
    predictor = load_predictor(checkpoint)
    cfg = predictor.config
    field, label, what, picture = load_field(image=image, input_path=input_path, raw=raw,
                                             data_dir=data_dir, mirrors=mirrors,
                                             config_dir=cfg.data.dir or None,
                                             config_mirrors=cfg.data.mirrors)
    summary = predictor.summary()
    title = f"{what} through {checkpoint} ({summary['name']}, after epoch {summary['epoch']})"
    return predictor, np.asarray(field, dtype=np.float32), label, picture, title


def draw_maps(checkpoint, output, *, image=None, input_path=None, raw=False, data_dir=None,
              mirrors=()):
    """`cnntrain plot --maps`: load the checkpoint and the picture, draw; -> (digit, p)."""
    predictor, field, label, picture, title = load_picture(
        checkpoint, output, image=image, input_path=input_path, raw=raw, data_dir=data_dir,
        mirrors=mirrors)
    return plot_maps(predictor, field, output, title=title, label=label, picture=picture)
