"""``openmm-flowplugin systems``: list the ready-made systems."""


import click



@click.command("systems")
def systems_command():
    """List the ready-made systems."""
    from .. import systems

    for name, description in systems.describe().items():
        click.echo(f"{name:28s} {description}")
