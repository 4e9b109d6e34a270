"""The ``vfinfer`` command group; each module of ``vfinfer.cli`` adds its commands to it.

Every command fails with one line on stderr and a non-zero exit (2 for a command line that
cannot be run as given, through click); set VFINFER_DEBUG=1 to see the Python traceback
behind an unexpected error.
"""

import click

from vfinfer import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vfinfer")
def main():
    """Varifocal-Net chromosome classification: export models, run cases, measure them."""
