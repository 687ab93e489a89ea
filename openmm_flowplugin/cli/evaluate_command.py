"""``openmm-flowplugin evaluate``: ESS, reweighted observables and plots of a flow."""


import click

from ._common import POSITIVE_INT, _load_trajectories, _user_errors, load_system, named_system_options
from ..errors import InvalidInputError


@click.command()
@click.argument("checkpoint")
@named_system_options
@click.option("--samples", "-n", default=10_000, show_default=True, type=POSITIVE_INT)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Ramachandran PNG (peptides).")
@click.option("--energy-plot", type=click.Path(dir_okay=False), default=None, help="Energy histogram PNG.")
@click.option("--data", "-d", multiple=True, type=click.Path(dir_okay=False), help="MD trajectory to compare with.")
@click.option("--seed", default=0, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace existing plot files.")
@_user_errors
def evaluate(checkpoint, molecular_system_options, samples, plot, energy_plot, data, seed, overwrite):
    """Evaluate a flow CHECKPOINT (path or system name): ESS, energies, Ramachandran plot.

    The system defaults to the registered one named in the checkpoint; a flow trained on your own
    files needs the same files again (--pdb/--forcefield, --prmtop/--inpcrd, ...).
    """
    import torch

    torch.manual_seed(seed)
    from ..outputs import check_output_path

    for path in (plot, energy_plot):  # refuse before the work, not after it
        if path:
            check_output_path(path, overwrite)
    result, molecular_system = _evaluate(checkpoint, molecular_system_options, samples)
    for line in result.summary():
        click.echo(line)
    md_positions = _load_trajectories(data, molecular_system) if data else None
    _plots(result, molecular_system, plot, energy_plot, md_positions, overwrite=overwrite)


def _evaluate(checkpoint, molecular_system_options, samples):
    from .. import systems
    from ..analysis.evaluation import evaluate_flow
    from ..flows.checkpoints import check_flow_matches, load_flow

    flow = load_flow(checkpoint)
    stored = flow.metadata.get("system")
    if not any(molecular_system_options.values()) and stored not in systems.list():
        raise InvalidInputError(
            f"{checkpoint} was trained on {stored!r}, which is not a registered system; pass the files it was built from "
            "(--pdb/--forcefield, --prmtop/--inpcrd, --top/--gro or --system-xml/--pdb)."
        )
    molecular_system = load_system(molecular_system_options, default_name=stored)
    check_flow_matches(flow, molecular_system)
    return evaluate_flow(flow, molecular_system, n_samples=samples), molecular_system


def _plots(result, molecular_system, plot, energy_plot, md_positions=None, overwrite=False):
    from ..analysis.evaluation import backbone_dihedrals
    from ..analysis.plotting import plot_energy_histogram, plot_ramachandran

    if plot:
        if result.phi is None:
            raise InvalidInputError(f"{molecular_system.name} has no backbone phi/psi: no Ramachandran plot.")
        panels = [("flow samples", result.phi, result.psi, None), ("reweighted to Boltzmann", result.phi, result.psi, result.normalized_weights)]
        if md_positions is not None:
            phi, psi = backbone_dihedrals(md_positions, molecular_system.mdtraj_topology)
            panels.append(("MD", phi, psi, None))
        plot_ramachandran(panels, plot, title=f"{molecular_system.name}, ESS {result.ess_fraction * 100:.1f} %", overwrite=overwrite)
        click.echo(f"wrote {plot}")
    if energy_plot:
        series = [("flow", result.reduced_energies, None), ("flow, reweighted", result.reduced_energies, result.normalized_weights)]
        if md_positions is not None:
            from ..bridge.energy import OpenMMEnergy

            energy = OpenMMEnergy(molecular_system.system, molecular_system.temperature)
            series.append(("MD", energy.energy_and_forces(md_positions)[0], None))
        plot_energy_histogram(series, energy_plot, overwrite=overwrite)
        click.echo(f"wrote {energy_plot}")
