"""Command-line interface: ``openmm-flowplugin systems | simulate | train | evaluate | sample | md | demo``.

One module per command. User errors (unknown system, missing or wrong file, shape mismatch, an
existing output) print one line and exit with status 2, without a traceback.
"""

import click

from .demo_command import demo
from .evaluate_command import evaluate
from .md_command import md
from .sample_command import sample
from .simulate_command import simulate
from .systems_command import systems_command
from .train_command import train


@click.group()
@click.version_option(package_name="openmm_flowplugin")
def main():
    """Learned samplers for OpenMM: Boltzmann generators on ready-made systems."""


for _command in (systems_command, simulate, train, evaluate, sample, md, demo):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
