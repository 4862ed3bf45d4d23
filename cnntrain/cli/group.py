"""The click group: one-line errors and exit codes for every verb, and the shared options."""

import warnings

import click

from cnntrain import __version__
from cnntrain.console import best_effort_output
from cnntrain.errors import CnnTrainError, Interrupted

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


def load_config(path, overrides):
    from cnntrain.config import load_config
    return load_config(path, overrides)


def main():
    cli(prog_name="cnntrain")
