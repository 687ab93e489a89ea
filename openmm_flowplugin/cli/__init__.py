"""Command-line interface: ``openmm-flowplugin systems | simulate | train | train-timewarp | evaluate | sample | md | solvation | diffuse | demo``.

One module per command. User errors (unknown system, missing or wrong file, shape mismatch, an
existing output, an option value out of range) print one line and exit with status 2, without a
traceback.
"""

import sys

import click

from .demo_command import demo
from .diffuse_command import diffuse
from .evaluate_command import evaluate
from .md_command import md
from .sample_command import sample
from .simulate_command import simulate
from .solvation_command import solvation
from .systems_command import systems_command
from .train_command import train
from .train_timewarp_command import train_timewarp


class _OneLineErrors(click.Group):
    """click's usage errors (bad option values, missing options) as one line ``error: ...``, exit status 2."""

    def main(self, *args, standalone_mode=True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            result = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as error:
            if type(error).__name__ == "NoArgsIsHelpError":  # bare `openmm-flowplugin`: the help, as click shows it
                error.show()
                sys.exit(error.exit_code)
            command = f" ({error.ctx.command_path} --help lists the options)" if getattr(error, "ctx", None) else ""
            click.echo(f"error: {error.format_message()}{command}", err=True)
            sys.exit(error.exit_code)
        except click.exceptions.Abort:
            click.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


@click.group(cls=_OneLineErrors)
@click.version_option(package_name="openmm_flowplugin")
def main():
    """Learned samplers for OpenMM: Boltzmann generators on ready-made systems."""


for _command in (systems_command, simulate, train, train_timewarp, evaluate, sample, md, solvation, diffuse, demo):
    main.add_command(_command)

if __name__ == "__main__":  # pragma: no cover
    main()
