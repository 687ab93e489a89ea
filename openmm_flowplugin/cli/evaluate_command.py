"""``openmm-flowplugin evaluate``: ESS, reweighted observables and plots of a flow."""


import click

from ._common import _load_trajectories, _user_errors


@click.command()
@click.argument("checkpoint")
@click.option("--system", default=None, help="System name (default: the one stored in the checkpoint).")
@click.option("--samples", "-n", default=10_000, show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Ramachandran PNG (peptides).")
@click.option("--energy-plot", type=click.Path(dir_okay=False), default=None, help="Energy histogram PNG.")
@click.option("--data", "-d", multiple=True, type=click.Path(dir_okay=False), help="MD trajectory to compare with.")
@click.option("--seed", default=0, show_default=True)
@_user_errors
def evaluate(checkpoint, system, samples, plot, energy_plot, data, seed):
    """Evaluate a flow CHECKPOINT (path or system name): ESS, energies, Ramachandran plot."""
    import torch

    torch.manual_seed(seed)
    result, molecular_system = _evaluate(checkpoint, system, samples)
    for line in result.summary():
        click.echo(line)
    md_positions = _load_trajectories(data, molecular_system) if data else None
    _plots(result, molecular_system, plot, energy_plot, md_positions)


def _evaluate(checkpoint, system, samples):
    from .. import systems
    from ..flows.checkpoints import load_flow
    from ..analysis.evaluation import evaluate_flow

    flow = load_flow(checkpoint)
    name = system or flow.metadata.get("system")
    if name is None:
        raise ValueError(f"{checkpoint} does not name its system; pass --system.")
    molecular_system = systems.get(name)
    from ..flows.checkpoints import check_flow_matches

    check_flow_matches(flow, molecular_system)
    return evaluate_flow(flow, molecular_system, n_samples=samples), molecular_system


def _plots(result, molecular_system, plot, energy_plot, md_positions=None):
    from ..analysis.evaluation import backbone_dihedrals
    from ..analysis.plotting import plot_energy_histogram, plot_ramachandran

    if plot:
        if result.phi is None:
            raise ValueError(f"{molecular_system.name} has no backbone phi/psi: no Ramachandran plot.")
        panels = [("flow samples", result.phi, result.psi, None), ("reweighted to Boltzmann", result.phi, result.psi, result.normalized_weights)]
        if md_positions is not None:
            phi, psi = backbone_dihedrals(md_positions, molecular_system.mdtraj_topology)
            panels.append(("MD", phi, psi, None))
        plot_ramachandran(panels, plot, title=f"{molecular_system.name}, ESS {result.ess_fraction * 100:.1f} %")
        click.echo(f"wrote {plot}")
    if energy_plot:
        series = [("flow", result.reduced_energies, None), ("flow, reweighted", result.reduced_energies, result.normalized_weights)]
        if md_positions is not None:
            from ..bridge.energy import OpenMMEnergy

            energy = OpenMMEnergy(molecular_system.system, molecular_system.temperature)
            series.append(("MD", energy.energy_and_forces(md_positions)[0], None))
        plot_energy_histogram(series, energy_plot)
        click.echo(f"wrote {energy_plot}")
