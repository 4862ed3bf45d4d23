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

