"""The `cnntrain` command: a click group of verbs. Flags become plain calls; no maths here.

Heavy modules (numpy and everything built on it) are imported inside the commands, so
`cnntrain --help` answers at once.

Exit codes: 0 success, 2 usage or config error, 1 runtime failure, 130 / 143 / 129 stopped by
SIGINT / SIGTERM / SIGHUP (the shell's 128 + signal number).

Console output is best effort (cnntrain.console): a closed or full stdout never fails a command.
A line saying a file was written goes to stderr when that file is stdout (-o /dev/stdout).
"""

import json
import sys
import warnings

import click

from cnntrain import __version__
from cnntrain.console import best_effort_output, is_stdout
from cnntrain.errors import CnnTrainError, Interrupted, require_extra

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class Group(click.Group):
    """Turns the errors a user can fix into one line on stderr and an exit code."""

    def invoke(self, ctx):
        # Non-finite numbers are detected and reported in one line where they matter
        # (divergence, non-finite checkpoints); numpy's own warnings would only add noise.
        warnings.filterwarnings("ignore", message=r".* encountered in ", category=RuntimeWarning)
        with best_effort_output():
            return self._invoke(ctx)

    def _invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Interrupted as exc:
            # A requested stop is not an error: its message says where the run was saved.
            click.echo(str(exc), err=True)
            ctx.exit(exc.exit_code)
        except CnnTrainError as exc:
            if ctx.meta.get("cnntrain.debug"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            click.echo("interrupted", err=True)
            ctx.exit(getattr(exc, "exit_code", 130))
        except OSError as exc:
            if ctx.meta.get("cnntrain.debug"):
                raise
            where = f": {exc.filename}" if exc.filename else ""
            click.echo(f"error: {exc.strerror or exc}{where}", err=True)
            ctx.exit(1)


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "-V", "--version", prog_name="cnntrain")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def cli(ctx, debug):
    """Train and evaluate LeNet-style CNNs on MNIST with from-scratch NumPy layers.

    \b
    Start with:
      cnntrain fit --config configs/lenet5.ini
      cnntrain eval runs/lenet5/checkpoints/best.npz
    """
    ctx.meta["cnntrain.debug"] = debug


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False),
    help="Where MNIST lives (default: $CNNTRAIN_DATA_DIR, the config's [data] dir, "
         "~/.cache/cnntrain/mnist).")
mirror_option = click.option(
    "--mirror", "mirrors", multiple=True, metavar="URL",
    help="A base URL (or local folder) holding the MNIST files, tried before the defaults. "
         "Repeatable.")
set_option = click.option(
    "--set", "overrides", multiple=True, metavar="SECTION.KEY=VALUE",
    help="Override one config value, e.g. --set train.lr=0.01. Repeatable.")


def _load_config(path, overrides):
    from cnntrain.config import load_config
    return load_config(path, overrides)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--config", "config_path", metavar="FILE",
              help="The INI config to train (not needed with --resume).")
@set_option
@click.option("--out", "out_dir", metavar="RUN_DIR",
              help="The run folder (default: [run] dir; with --resume, CHECKPOINT's run folder).")
@click.option("--resume", metavar="CHECKPOINT",
              help="Continue the run saved in CHECKPOINT, e.g. runs/lenet5/checkpoints/last.npz.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run cnntrain wrote in RUN_DIR (or take it back to an older "
                   "--resume CHECKPOINT of its own): its summary.json, checkpoints/last.npz and "
                   "best.npz, metrics.jsonl, train.log and config.ini are deleted or rewritten. "
                   "Nothing else in RUN_DIR is deleted; a folder holding files cnntrain did not "
                   "write (and no .cnntrain-run marker) is refused even so.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars: one line per epoch.")
@data_dir_option
@mirror_option
def fit(config_path, overrides, out_dir, resume, overwrite, quiet, data_dir, mirrors):
    """Train a network as a config describes, writing checkpoints and logs into a run folder.

    \b
    Examples:
      cnntrain fit --config configs/lenet5.ini
      cnntrain fit --config configs/quick.ini --set train.epochs=1 --out runs/try
      cnntrain fit --resume runs/lenet5/checkpoints/last.npz

    Ctrl-C, SIGTERM and SIGHUP save the exact position, print the command that continues it
    and exit with 130, 143 or 129.

    A run is written only into a new or empty folder, or into a folder cnntrain marked as a
    run's own (.cnntrain-run). There, a new run starts only where no results stand (a fit that
    died before its first checkpoint left none), --resume continues the folder's own run, and
    anything else needs --overwrite. A folder holding files cnntrain did not write is always
    refused. A CHECKPOINT outside a checkpoints/ folder needs --out RUN_DIR.
    """
    from cnntrain.runs.fit import start_fit

    start_fit(config_path=config_path, overrides=overrides, out_dir=out_dir,
              resume_path=resume, overwrite=overwrite, quiet=quiet,
              progress=not quiet and sys.stdout.isatty(), data_dir=data_dir,
              mirrors=mirrors, echo=click.echo)


@cli.command("eval", context_settings=CONTEXT_SETTINGS)
@click.argument("checkpoint")
@click.option("--split", type=click.Choice(["test", "val", "train"]), default="test",
              show_default=True, help="Which part of MNIST to score.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--batch-size", type=click.IntRange(min=1), metavar="N",
              help="Images per forward pass (default: the run's eval_batch_size).")
@click.option("--errors", "errors_png", metavar="FILE.png",
              help="Also draw the misclassified digits, labelled true/predicted, into FILE.png.")
@data_dir_option
@mirror_option
def eval_command(checkpoint, split, as_json, batch_size, errors_png, data_dir, mirrors):
    """Score a saved model: accuracy, loss, per-class accuracy and the confusion matrix.

    \b
    Examples:
      cnntrain eval runs/lenet5/checkpoints/best.npz
      cnntrain eval runs/lenet5/checkpoints/last.npz --split val --json
      cnntrain eval runs/lenet5/checkpoints/best.npz --errors errors.png
    """
    from cnntrain.runs.evaluate import evaluate_checkpoint

    if errors_png is not None:  # '' too, which names no file: refused before the work
        from cnntrain.apps import plots
        require_extra("matplotlib", "plotting", "plot")
        plots.check_output(errors_png)
    result = evaluate_checkpoint(checkpoint, split=split, batch_size=batch_size,
                                 data_dir=data_dir, mirrors=mirrors,
                                 progress=not as_json and sys.stderr.isatty(),
                                 keep_errors=errors_png is not None)
    if errors_png is not None:
        plots.plot_errors(result["errors"], errors_png,
                          title=f"{checkpoint}: {len(result['errors']['labels'])} of "
                                f"{result['n']} {split} images misclassified")
    if as_json:
        keys = ("accuracy", "loss", "n", "per_class", "confusion", "split", "checkpoint", "epoch")
        click.echo(json.dumps({k: result[k] for k in keys}))
        return
    click.echo(f"{checkpoint} ({result['position']}), {split} split, {result['n']} images")
    click.echo(f"accuracy {100 * result['accuracy']:.2f}%   mean loss {result['loss']:.4f}")
    click.echo("per-class accuracy: " + "  ".join(
        f"{digit}: {100 * acc:.1f}%" for digit, acc in enumerate(result["per_class"])))
    click.echo("confusion matrix (rows: true digit, columns: predicted digit)")
    click.echo("      " + "".join(f"{d:>6}" for d in range(len(result["confusion"]))))
    for digit, row in enumerate(result["confusion"]):
        click.echo(f"{digit:>6}" + "".join(f"{count:>6}" for count in row))


@cli.command(context_settings=CONTEXT_SETTINGS)
@data_dir_option
@mirror_option
@click.option("--config", "config_path", metavar="FILE",
              help="Take [data] dir and mirrors from this config.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--verify", is_flag=True,
              help="Hash every cached file again instead of trusting the record of the last "
                   "check; a corrupt one is reported and downloaded again.")
def download(data_dir, mirrors, config_path, quiet, verify):
    """Download and verify the four MNIST files (fit and eval do this when needed).

    Mirrors are tried in order. A download slower than 8 KiB/s over its last 20 seconds
    gives up that mirror at once and tries the next, as does a mirror that keeps the
    download waiting 30 seconds in all without any data; later files do not ask a given-up
    mirror again. Each failed attempt is told on stderr in one line.

    \b
    Examples:
      cnntrain download
      cnntrain download --verify
      cnntrain download --data-dir /data/mnist --mirror http://127.0.0.1:8000/
    """
    from cnntrain.data.download import fetch_mnist

    cfg = _load_config(config_path, ()) if config_path else None
    folder, paths = fetch_mnist(data_dir, mirrors,
                                config_dir=cfg.data.dir or None if cfg else None,
                                config_mirrors=cfg.data.mirrors if cfg else (),
                                progress=not quiet and sys.stderr.isatty(), verify=verify)
    how = ", each hashed again" if verify else ""
    click.echo(f"MNIST verified in {folder} ({len(paths)} files{how})")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--config", "config_path", required=True, metavar="FILE", help="The INI config.")
@set_option
def info(config_path, overrides):
    """Show each layer's output shape, parameter count and multiply-adds per image, and the
    order the layers run in when the fast kernels reorder them.

    \b
    Example:
      cnntrain info --config configs/lenet5.ini
    """
    from cnntrain.constants import INPUT_SHAPE
    from cnntrain.nn.model import check_layers, execution_order_note, parse_layers

    cfg = _load_config(config_path, overrides)
    rows = check_layers(cfg.model.layers)
    kinds = [line.kind for line in parse_layers(cfg.model.layers)]
    click.echo(f"{cfg.source}: input {INPUT_SHAPE}, {cfg.train.dtype}")
    click.echo(f"{'layer':<12}{'definition':<40}{'output':>16}{'params':>10}{'mult-adds':>12}")
    for row in rows:
        shape = " x ".join(map(str, row.output_shape))
        click.echo(f"{row.name:<12}{row.layer:<40}{shape:>16}{row.params:>10,}{row.multiply_adds:>12,}")
    total_params = sum(r.params for r in rows)
    total_macs = sum(r.multiply_adds for r in rows)
    click.echo(f"{'total':<12}{'':<40}{'':>16}{total_params:>10,}{total_macs:>12,}")
    note = execution_order_note(kinds, rows, cfg.train.kernels)
    if note:
        order, why = note
        click.echo(f"runs as: {' > '.join(order)}")
        click.echo(f"  why: {why}")


def _checked_tolerance(value):
    # click's FloatRange lets NaN through (every comparison with it is false) and inf too.
    from cnntrain.nn.gradcheck import check_tolerance
    return check_tolerance(value)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--config", "config_path", required=True, metavar="FILE", help="The INI config.")
@set_option
@click.option("--images", type=click.IntRange(min=2), default=8, show_default=True, metavar="N",
              help="Real MNIST training images to run through the network.")
@click.option("--probes", type=click.IntRange(min=1), default=60, show_default=True, metavar="N",
              help="Entries of each array (input, each parameter) probed per layer.")
@click.option("--tolerance", type=float, default=1e-6, show_default=True, metavar="X",
              callback=lambda ctx, param, value: _checked_tolerance(value),
              help="The largest relative error a layer may show, between 0 and 1.")
@data_dir_option
@mirror_option
def gradcheck(config_path, overrides, images, probes, tolerance, data_dir, mirrors):
    """Check every layer's backward pass against finite differences, in float64.

    Each layer of the configured network, at the activations that real MNIST images give it,
    has its input gradient and the gradient of every parameter compared with centred finite
    differences. One row per layer; exit code 1 if any exceeds the tolerance. Run this first
    after editing a layer.

    \b
    Example:
      cnntrain gradcheck --config configs/lenet5.ini
    """
    from cnntrain.nn.gradcheck import format_table
    from cnntrain.runs.gradcheck_run import check_config

    cfg = _load_config(config_path, overrides)
    results = check_config(cfg, images=images, probes=probes, tolerance=tolerance,
                           data_dir=data_dir, mirrors=mirrors,
                           progress=sys.stderr.isatty())
    click.echo(format_table(results))
    failed = [r.name for r in results if not r.passed]
    if failed:
        click.echo(f"error: gradient check failed for {', '.join(failed)} (relative error above "
                   f"{tolerance:g})", err=True)
        sys.exit(1)
    click.echo(f"all {len(results)} layers agree with finite differences (tolerance {tolerance:g})")


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("paths", nargs=-1, required=True, metavar="SWEEP_DIR|RUN_DIR...")
@click.option("--csv", "csv_path", metavar="FILE", help="Also write the table as CSV.")
@click.option("--sort", "sort_key", default="best_val_acc", show_default=True, metavar="KEY",
              help="The column to sort by (descending for accuracies, ascending otherwise).")
def summarize(paths, csv_path, sort_key):
    """One row per run: its overrides, best and final accuracies, epochs and wall time.

    Runs that failed or have not finished are listed as such.

    \b
    Examples:
      cnntrain summarize sweeps/lr-batch
      cnntrain summarize runs/lenet5 runs/lenet5-classic --csv results.csv
    """
    from cnntrain.apps import summarize as summary
    from cnntrain.fileio import check_output

    if csv_path is not None:  # '' too, which names no file
        check_output(csv_path)
    rows = summary.sort_rows(summary.collect_runs(paths), sort_key)
    click.echo(summary.format_table(rows))
    if csv_path is not None:
        summary.write_csv(rows, csv_path)
        click.echo(f"wrote {csv_path}", err=is_stdout(csv_path))


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("run_dirs", nargs=-1, metavar="[RUN_DIR]...")
@click.option("-o", "--output", required=True, metavar="FILE.png", help="The picture to write.")
@click.option("--filters", "filters_checkpoint", metavar="CHECKPOINT",
              help="Draw the first layer's learned kernels of CHECKPOINT instead of curves.")
@click.option("--maps", "maps_checkpoint", metavar="CHECKPOINT",
              help="Draw one picture's activation maps in every convolution and pooling layer "
                   "of CHECKPOINT, with its prediction.")
@click.option("--image", type=click.IntRange(min=0), metavar="N",
              help="With --maps: MNIST test image N (default 0), or picture N of an --input "
                   "stack.")
@click.option("--input", "input_path", metavar="FILE",
              help="With --maps: a picture file (or .npy / IDX) read as cnntrain predict does; "
                   "a folder only if it holds one such file.")
@click.option("--raw", is_flag=True, help="With --maps --input: the input already is a 28x28 "
                                          "MNIST-like field.")
@data_dir_option
@mirror_option
def plot(run_dirs, output, filters_checkpoint, maps_checkpoint, image, input_path, raw,
         data_dir, mirrors):
    """Draw loss and accuracy curves of runs (overlaid), a checkpoint's first-layer kernels,
    or what a checkpoint's network sees of one picture.

    Needs matplotlib: pip install 'cnntrain[plot]'.

    \b
    Examples:
      cnntrain plot runs/lenet5 runs/lenet5-classic -o curves.png
      cnntrain plot --filters runs/lenet5/checkpoints/best.npz -o filters.png
      cnntrain plot --maps runs/lenet5/checkpoints/best.npz --image 7 -o maps.png
      cnntrain plot --maps runs/lenet5/checkpoints/best.npz --input my-digit.jpg -o maps.png
    """
    from cnntrain.apps import plots
    from cnntrain.errors import ConfigError

    require_extra("matplotlib", "plotting", "plot")
    if (image is not None or input_path is not None or raw) and not maps_checkpoint:
        raise ConfigError("--image, --input and --raw go with --maps CHECKPOINT")
    if maps_checkpoint:
        if run_dirs or filters_checkpoint:
            raise ConfigError("give --maps CHECKPOINT alone, without run folders or --filters")
        from cnntrain.apps.maps import draw_maps
        digit, probability = draw_maps(maps_checkpoint, output, image=image,
                                       input_path=input_path, raw=raw, data_dir=data_dir,
                                       mirrors=mirrors)
        click.echo(f"wrote {output} (predicted {digit}, {100 * probability:.1f}%)",
                   err=is_stdout(output))
        return
    if filters_checkpoint:
        if run_dirs:
            raise ConfigError("give either run folders or --filters CHECKPOINT, not both")
        plots.plot_filters(filters_checkpoint, output)
    elif run_dirs:
        plots.plot_curves(run_dirs, output)
    else:
        raise ConfigError("give one or more run folders, or --filters CHECKPOINT")
    click.echo(f"wrote {output}", err=is_stdout(output))


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("checkpoint")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--top", type=click.IntRange(1, 10), default=3, show_default=True, metavar="K",
              help="How many of the most likely digits to list.")
@click.option("--raw", is_flag=True,
              help="Inputs already are 28x28 MNIST-like pictures (white digit on black, "
                   "centred): skip the preprocessing.")
def predict(checkpoint, inputs, as_json, top, raw):
    """Read the digit in pictures: one line per picture with the digit, its probability and
    the top K.

    INPUT: image files (PNG, JPEG, BMP, GIF, TIFF, PGM; need pip install 'cnntrain[images]'),
    .npy arrays (one picture or a stack), MNIST IDX image files, or folders of them. Any
    picture of one digit works, dark on light or light on dark, at any size and place: it is
    cropped, scaled into 20x20 and centred in 28x28 as MNIST's digits were.

    An input that cannot be read, or holds no ink, gets a one-line error and the others go
    on; the exit code is then 1. So does an empty name, a FIFO or device (refused, not read),
    and a picture of more than 16,777,216 pixels, 4096x4096 (refused from its header). Names
    holding a newline, a quote, a backslash or bytes that are not text are printed quoted:
    'a\\nb.png'.

    \b
    Examples:
      cnntrain predict runs/lenet5/checkpoints/best.npz my-digit.jpg
      cnntrain predict runs/lenet5/checkpoints/best.npz scans/ --top 2 --json
    """
    from cnntrain.apps.predict import predict_inputs

    _, failed = predict_inputs(checkpoint, inputs, top=top, raw=raw, as_json=as_json,
                               echo=click.echo, echo_error=lambda line: click.echo(line, err=True))
    if failed:
        sys.exit(1)


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("checkpoint")
@click.option("-o", "--output", required=True, metavar="FILE.onnx", help="The model to write.")
def export(checkpoint, output):
    """Write a checkpoint's network as an ONNX model (opset 17) for other runtimes.

    Input 'image': (N, 1, 28, 28) float32 in [0, 1], white digit on black, centred as MNIST
    (the graph applies the checkpoint's normalisation itself). Outputs 'logits' and
    'probabilities' (N, 10). The class names and the normalisation are in its metadata.
    Needs onnx: pip install 'cnntrain[onnx]'.

    \b
    Example:
      cnntrain export runs/lenet5/checkpoints/best.npz -o lenet5.onnx
    """
    from cnntrain.apps.export import OPSET, export_checkpoint

    summary = export_checkpoint(checkpoint, output)
    click.echo(f"wrote {output}: {summary['name']}, {summary['parameters']:,} parameters, "
               f"ONNX opset {OPSET}", err=is_stdout(output))


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("checkpoint")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The address to listen on. Anything but loopback makes the page reachable "
                   "from other machines (a warning says so).")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535),
              help="The TCP port; 0 picks a free one.")
def serve(checkpoint, host, port):
    """Serve a page to draw digits on and watch CHECKPOINT classify them, with a JSON API.

    Open the printed address in a browser. The API: GET /api/model (the model's summary);
    POST /api/predict with {"width": W, "height": H, "pixels": [grey levels 0..255]} or
    {"png": "<base64>"} (PNG needs Pillow) returns the probabilities, the prediction and the
    28x28 field the network saw.

    Ctrl-C or SIGTERM stops the server; the exit code is then 0.

    \b
    Examples:
      cnntrain serve runs/lenet5/checkpoints/best.npz
      cnntrain serve runs/lenet5/checkpoints/best.npz --port 8080
    """
    from cnntrain.apps import serve as server

    server.run(checkpoint, host, port, echo=click.echo,
               warn=lambda line: click.echo(line, err=True))


@cli.command(hidden=True, context_settings=CONTEXT_SETTINGS)
@click.argument("run_dir")
@click.argument("fields", nargs=-1, required=True, metavar="FIELD...")
def runinfo(run_dir, fields):
    """For scripts: answer FIELDs about RUN_DIR, one value a line, in the order asked.

    FIELD is state (empty, leftovers, resumable, finished or foreign), exit_code (the last sweep
    attempt's, or an empty line) or the path of a run file: config, metrics, log, summary,
    last, best, overrides, sweep_status, sweep_output.

    \b
    Example:
      cnntrain runinfo sweeps/lr/lr-0.1 state last
    """
    from cnntrain.runs.runinfo import run_info

    for value in run_info(run_dir, fields):
        click.echo(value)


def main():
    cli(prog_name="cnntrain")
