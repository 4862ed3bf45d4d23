"""Verbs that show runs: summarize (a table) and plot (pictures)."""

import click

from cnntrain.cli.group import CONTEXT_SETTINGS, cli, data_dir_option, mirror_option
from cnntrain.console import is_stdout
from cnntrain.errors import require_extra


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
@click.option("--deltas", "deltas_checkpoint", metavar="CHECKPOINT",
              help="Draw one picture's backward pass through CHECKPOINT in evaluation mode: "
                   "every layer's output, its delta dloss/doutput and the weight gradients.")
@click.option("--image", type=click.IntRange(min=0), metavar="N",
              help="With --maps or --deltas: MNIST test image N (default 0), or picture N of "
                   "an --input stack.")
@click.option("--input", "input_path", metavar="FILE",
              help="With --maps or --deltas: a picture file (or .npy / IDX) read as cnntrain "
                   "predict does; a folder only if it holds one such file.")
@click.option("--raw", is_flag=True, help="With --input: the input already is a 28x28 "
                                          "MNIST-like field.")
@click.option("--target", type=click.IntRange(min=0), metavar="K",
              help="With --deltas: the label the loss is taken against (default: the "
                   "predicted digit).")
@data_dir_option
@mirror_option
def plot(run_dirs, output, filters_checkpoint, maps_checkpoint, deltas_checkpoint, image,
         input_path, raw, target, data_dir, mirrors):
    """Draw loss and accuracy curves of runs (overlaid), a checkpoint's first-layer kernels,
    what a checkpoint's network sees of one picture, or that picture's backward pass.

    Needs matplotlib: pip install 'cnntrain[plot]'.

    \b
    Examples:
      cnntrain plot runs/lenet5 runs/lenet5-classic -o curves.png
      cnntrain plot --filters runs/lenet5/checkpoints/best.npz -o filters.png
      cnntrain plot --maps runs/lenet5/checkpoints/best.npz --image 7 -o maps.png
      cnntrain plot --maps runs/lenet5/checkpoints/best.npz --input my-digit.jpg -o maps.png
      cnntrain plot --deltas runs/lenet5/checkpoints/best.npz --image 0 --target 3 -o deltas.png
    """
    from cnntrain.apps import plots
    from cnntrain.errors import ConfigError

    require_extra("matplotlib", "plotting", "plot")
    picture_checkpoint = maps_checkpoint or deltas_checkpoint
    if maps_checkpoint and deltas_checkpoint:
        raise ConfigError("give --maps CHECKPOINT or --deltas CHECKPOINT, not both")
    if (image is not None or input_path is not None or raw) and not picture_checkpoint:
        raise ConfigError("--image, --input and --raw go with --maps or --deltas CHECKPOINT")
    if target is not None and not deltas_checkpoint:
        raise ConfigError("--target goes with --deltas CHECKPOINT")
    if picture_checkpoint and (run_dirs or filters_checkpoint):
        flag = "--maps" if maps_checkpoint else "--deltas"
        raise ConfigError(f"give {flag} CHECKPOINT alone, without run folders or --filters")
    if maps_checkpoint:
        from cnntrain.apps.maps import draw_maps
        digit, probability = draw_maps(maps_checkpoint, output, image=image,
                                       input_path=input_path, raw=raw, data_dir=data_dir,
                                       mirrors=mirrors)
        click.echo(f"wrote {output} (predicted {digit}, {100 * probability:.1f}%)",
                   err=is_stdout(output))
        return
    if deltas_checkpoint:
        from cnntrain.apps.deltas import draw_deltas
        digit, target, loss = draw_deltas(deltas_checkpoint, output, image=image,
                                          input_path=input_path, raw=raw, target=target,
                                          data_dir=data_dir, mirrors=mirrors)
        click.echo(f"wrote {output} (predicted {digit}, target {target}, loss {loss:.4g})",
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

