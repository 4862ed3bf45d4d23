"""The `cnntrain` command: a click group of verbs. Flags become plain calls; no maths here."""

import click

from cnntrain import __version__


@click.group()
@click.version_option(__version__, prog_name="cnntrain")
def cli():
    """Train and evaluate LeNet-style CNNs on MNIST with from-scratch NumPy layers."""


def main():
    cli()
