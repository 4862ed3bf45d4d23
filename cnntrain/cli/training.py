"""Verbs that make networks: fit, download, info, gradcheck, and runinfo for scripts."""

import sys

import click

from cnntrain.cli.group import (
    CONTEXT_SETTINGS,
    cli,
    data_dir_option,
    load_config,
    mirror_option,
    set_option,
)


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

    cfg = load_config(config_path, ()) if config_path else None
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

    cfg = load_config(config_path, overrides)
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

    cfg = load_config(config_path, overrides)
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

