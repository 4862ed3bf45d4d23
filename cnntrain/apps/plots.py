"""Pictures: training curves of runs, a checkpoint's first-layer kernels, misclassified digits.

matplotlib is optional (pip install 'cnntrain[plot]') and imported only inside the functions
that draw. Figures are built with matplotlib.figure.Figure on an Agg canvas, never through
pyplot, so nothing ever looks for a display and the global backend is left alone.

Every picture is a PNG written by cnntrain.fileio's rule (atomically into a file; straight
into a device, FIFO or socket such as /dev/stdout) at a fixed DPI, with a pixel size that
depends only on what is drawn:
  curves   CURVES_SIZE (1200 x 500)
  filters  FILTERS_SIZE (900 x 700)
  errors   ERRORS_WIDTH (1000) wide, errors_height(shown) tall: a header plus one
           ERRORS_ROW (100) pixel row per ERRORS_COLUMNS (10) digits shown, at most
           ERRORS_MAX (100) digits
"""

import math
from pathlib import Path

from cnntrain.errors import ConfigError, require_extra
from cnntrain.fileio import REPLACE, atomic_writer, resolve_output

DPI = 100
CURVES_SIZE = (1200, 500)
FILTERS_SIZE = (900, 700)
ERRORS_WIDTH = 1000
ERRORS_COLUMNS = 10
ERRORS_ROW = 100
ERRORS_HEADER = 80
ERRORS_MAX = 100

# Line style per split, colour per run: a glance tells which run, and which split of it.
# Training figures are running means over the epoch's (possibly augmented) batches, the
# others are measured after the epoch, which is why train can sit below val and test.
# Accuracies of exactly 0 or 1 (a training split learnt by heart) lie at infinity on a logit
# axis; they are drawn this close to it, where the tick says 0% or 100%.
ACCURACY_EDGE = 1e-5
# Labelled accuracies on the logit axis: denser towards 100%, where MNIST runs end up.
ACCURACY_TICKS = (ACCURACY_EDGE, 0.01, 0.1, 0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.998,
                  0.999, 0.9995, 0.9999, 1 - ACCURACY_EDGE)

SPLIT_STYLES = (("train", "-", "train (during the epoch)"), ("val", "--", "val (after it)"),
                ("test", ":", "test (after it)"))


def errors_height(shown):
    """Pixel height of the errors picture showing `shown` digits (0 gets one empty row)."""
    rows = max(1, math.ceil(min(shown, ERRORS_MAX) / ERRORS_COLUMNS))
    return ERRORS_HEADER + rows * ERRORS_ROW


def _figure(width, height):
    require_extra("matplotlib", "plotting", "plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def check_output(output):
    """Refuse, before any work is done for it, a path atomic_writer would refuse, and a file
    name not ending in .png (a device, FIFO or socket takes the PNG whatever its name)."""
    if resolve_output(output).how == REPLACE and Path(output).suffix.lower() != ".png":
        raise ConfigError(f"{output}: pictures are written as PNG; give a file name ending "
                          "in .png")
    return output


def _save(figure, output):
    output = check_output(output)
    # No bbox_inches="tight": it would crop to the content and break the fixed pixel size.
    with atomic_writer(output, "wb") as f:
        figure.savefig(f, format="png", dpi=DPI)


# --- curves ------------------------------------------------------------------------------


def _run_labels(run_dirs):
    """Each run's folder name; the path as given where two folders share a name."""
    names = [Path(d).resolve().name or str(d) for d in run_dirs]
    return [str(d) if names.count(name) > 1 else name for d, name in zip(run_dirs, names)]


def _load_runs(run_dirs):
    from cnntrain.runs.runfolder_layout import METRICS
    from cnntrain.runs.runfolder_metrics import read_metrics

    runs = []
    for run_dir, label in zip(run_dirs, _run_labels(run_dirs)):
        if not Path(run_dir).is_dir():
            raise ConfigError(f"{run_dir}: no such run folder")
        rows = read_metrics(run_dir)
        if not rows:
            raise ConfigError(f"{run_dir}: no {METRICS} with a finished epoch; give a run "
                              "folder written by cnntrain fit, e.g. runs/lenet5")
        runs.append((label, rows))
    return runs


def _series(rows, key):
    """(epochs, values) of one metric, skipping epochs where it is missing (no val split)."""
    points = [(row["epoch"], row[key]) for row in rows if row.get(key) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _accuracy_limits(values):
    """(bottom, top) of the logit accuracy axis: every value with a margin around it."""
    logits = [math.log(v / (1 - v)) for v in values] or [0.0]
    low, high = min(logits), max(logits)
    pad = max(0.06 * (high - low), 0.3)
    return tuple(1 / (1 + math.exp(-x)) for x in (low - pad, high + pad))


def _percent(fraction, _position=None):
    """Tick label of an accuracy fraction: 0.99 -> 99%, 0.999 -> 99.9%; the edges 0% and 100%."""
    if fraction <= ACCURACY_EDGE or fraction >= 1 - ACCURACY_EDGE:
        return "0%" if fraction < 0.5 else "100%"
    return f"{100 * fraction:.10g}%"


def plot_curves(run_dirs, output):
    """Loss and accuracy per epoch of each run in `run_dirs` (train, val and test), overlaid
    in one picture with a legend naming each run by its folder."""
    check_output(output)
    require_extra("matplotlib", "plotting", "plot")
    runs = _load_runs(list(run_dirs))
    figure = _figure(*CURVES_SIZE)
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FixedLocator, FuncFormatter, MaxNLocator, NullLocator

    loss_ax, acc_ax = figure.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    most_epochs = max(rows[-1]["epoch"] for _, rows in runs)
    marker = "o" if most_epochs <= 30 else None  # dots help few epochs, clutter many
    accuracies = []
    for (_label, rows), colour in zip(runs, colours):
        for split, style, _ in SPLIT_STYLES:
            for ax, key in ((loss_ax, f"{split}_loss"), (acc_ax, f"{split}_acc")):
                epochs, values = _series(rows, key)
                if ax is acc_ax:
                    values = [min(max(v, ACCURACY_EDGE), 1 - ACCURACY_EDGE) for v in values]
                    accuracies += values
                if epochs:
                    ax.plot(epochs, values, linestyle=style, color=colour, marker=marker,
                            markersize=3, linewidth=1.5)

    # Losses fall over orders of magnitude, so a log axis keeps late epochs readable.
    loss_ax.set_yscale("log")
    loss_ax.set_title("loss (mean cross-entropy)")
    loss_ax.set_ylabel("loss (log scale)")
    # A logit axis spaces 90%, 99% and 99.9% evenly: the last tenths of a percent, where
    # MNIST runs differ, get as much room as the first epochs' rise.
    acc_ax.set_yscale("logit")
    acc_ax.set_ylim(*_accuracy_limits(accuracies))
    acc_ax.yaxis.set_major_locator(FixedLocator(ACCURACY_TICKS))
    acc_ax.yaxis.set_major_formatter(FuncFormatter(_percent))
    acc_ax.yaxis.set_minor_locator(NullLocator())
    acc_ax.set_title("accuracy")
    acc_ax.set_ylabel("accuracy (%, logit scale)")
    for ax in (loss_ax, acc_ax):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, which="major", alpha=0.3)
    loss_ax.grid(True, which="minor", alpha=0.1)

    run_handles = [Line2D([], [], color=c, linewidth=2.5) for c in colours]
    loss_ax.legend(run_handles, [label for label, _ in runs], title="run", loc="upper right",
                   fontsize="small")
    split_handles = [Line2D([], [], color="0.3", linestyle=style) for _, style, _ in SPLIT_STYLES]
    acc_ax.legend(split_handles, [text for _, _, text in SPLIT_STYLES], title="split",
                  loc="lower right", fontsize="small")
    figure.suptitle("loss and accuracy per epoch" if len(runs) == 1 else
                    f"loss and accuracy per epoch, {len(runs)} runs")
    figure.set_layout_engine("constrained")
    _save(figure, output)


# --- first-layer kernels -----------------------------------------------------------------


def first_conv_weights(params):
    """(name, array (F, C, kh, kw)) of the first convolution among a network's parameters.

    Layers are named by kind and running count (conv1, conv2, ...), so the first
    convolution is the conv with the smallest number."""
    convs = []
    for name, value in params.items():
        layer, _, kind = name.partition(".")
        if kind == "W" and layer.startswith("conv") and layer[4:].isdigit() and value.ndim == 4:
            convs.append((int(layer[4:]), name, value))
    if not convs:
        return None
    _, name, value = min(convs, key=lambda item: item[0])
    return name, value


def plot_filters(checkpoint_path, output):
    """The first convolution's kernels in a checkpoint, one small grey image per kernel and
    input channel, each scaled symmetrically around 0 (grey 0, white positive, black
    negative) so its own pattern shows whatever its magnitude."""
    import numpy as np

    from cnntrain.runs.checkpoint_reader import load_checkpoint

    check_output(output)
    require_extra("matplotlib", "plotting", "plot")
    ckpt = load_checkpoint(checkpoint_path)
    found = first_conv_weights(ckpt.params)
    if found is None:
        raise ConfigError(f"{checkpoint_path}: the network has no convolution layer, so there "
                          "are no kernels to draw")
    name, weights = found
    weights = np.asarray(weights, dtype=np.float64)
    f, c, kh, kw = weights.shape
    tiles = [(i, j, weights[i, j]) for i in range(f) for j in range(c)]
    cols = math.ceil(math.sqrt(len(tiles)))
    rows = math.ceil(len(tiles) / cols)

    figure = _figure(*FILTERS_SIZE)
    width, height = FILTERS_SIZE
    header, footer, margin = 84, 10, 10
    # Square tiles as large as fit, centred: each tile is an image plus a line of label.
    label = 22
    tile = min((width - 2 * margin) / cols, (height - header - footer) / rows - label)
    left0 = (width - cols * tile) / 2
    cell_px = tile / max(kh, kw)
    show_values = cell_px >= 34 and kh * kw <= 49  # numbers only where they stay legible
    for n, (i, j, kernel) in enumerate(tiles):
        row, col = divmod(n, cols)
        left = left0 + col * tile + 0.04 * tile
        bottom = height - header - (row + 1) * (tile + label) + 0.04 * tile
        ax = figure.add_axes([left / width, bottom / height, 0.92 * tile / width,
                              0.92 * tile / height])
        limit = float(np.abs(kernel).max()) or 1.0
        ax.imshow(kernel, cmap="gray", vmin=-limit, vmax=limit, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        which = f"kernel {i + 1}" + (f", channel {j + 1}" if c > 1 else "")
        ax.set_title(f"{which}   ±{limit:.2f}", fontsize=9, pad=3)
        if show_values:
            for (y, x), value in np.ndenumerate(kernel):
                # Black on the lighter cells, white on the darker: grey 0 sits in between.
                ax.text(x, y, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if value > -0.1 * limit else "white")
    epoch = ckpt.meta.get("epoch")
    figure.text(0.5, 1 - 18 / height, f"{name}: the {f} learned {kh}x{kw} first-layer kernels"
                + (f", after epoch {epoch}" if epoch else ""), ha="center", va="center",
                fontsize=12)
    figure.text(0.5, 1 - 42 / height, str(checkpoint_path), ha="center", va="center",
                fontsize=9, color="0.3")
    figure.text(0.5, 1 - 60 / height, "each kernel scaled to its own ±max|w| (shown above it): "
                "white positive, black negative, grey 0", ha="center", va="center", fontsize=9,
                color="0.3")
    _save(figure, output)


# --- misclassified digits ----------------------------------------------------------------


def plot_errors(errors, output, title=""):
    """A grid of misclassified digits, each labelled with its true and predicted class.

    errors: {"images": (M, H, W) (or (M, 1, H, W)) floats in [0, 1], "labels": (M,),
    "predictions": (M,)}, and for a committee's mistakes "member_predictions" (k, M) and
    "names" (k,): each digit's label then has a second line, every member's answer in the
    order of the names, which the header lists. The first ERRORS_MAX are drawn, in the order
    given; the header says how many were left out.
    """
    import numpy as np

    check_output(output)
    require_extra("matplotlib", "plotting", "plot")
    images = np.asarray(errors["images"], dtype=np.float64)
    labels = np.asarray(errors["labels"])
    predictions = np.asarray(errors["predictions"])
    members = errors.get("member_predictions")
    members = None if members is None else np.asarray(members)
    if images.ndim == 4:
        images = images[:, 0]
    total = len(labels)
    shown = min(total, ERRORS_MAX)
    width, height = ERRORS_WIDTH, errors_height(shown)
    figure = _figure(width, height)

    title = title or "misclassified digits"
    figure.text(0.5, 1 - 22 / height, title, ha="center", fontsize=12 if len(title) <= 100 else 9)
    legend = "true / predicted" if members is None else (
        "true / committee, then each member: " + ", ".join(errors["names"]))
    if total == 0:
        note = "none: every image was classified correctly"
    elif shown < total:
        note = f"the first {shown} shown, {total - shown} more omitted; label: {legend}"
    else:
        note = f"all {total} shown; label: {legend}"
    figure.text(0.5, 1 - 50 / height, note, ha="center", fontsize=9 if len(note) <= 150 else 7,
                color="0.3")

    cell = width / ERRORS_COLUMNS
    # The rest of the row holds the label (two lines for a committee) above the digit.
    image_px = ERRORS_ROW - (22 if members is None else 34)
    for n in range(shown):
        row, col = divmod(n, ERRORS_COLUMNS)
        left = col * cell + (cell - image_px) / 2
        bottom = height - ERRORS_HEADER - (row + 1) * ERRORS_ROW + 2
        ax = figure.add_axes([left / width, bottom / height, image_px / width,
                              image_px / height])
        # Dark ink on white, as the digits were written, reads better than MNIST's negative.
        ax.imshow(images[n], cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("0.8")
        label = f"true {labels[n]} / pred {predictions[n]}"
        if members is not None:
            label += "\n" + " ".join(str(answer) for answer in members[:, n])
        ax.set_title(label, fontsize=8, pad=3, color="black")
    _save(figure, output)
