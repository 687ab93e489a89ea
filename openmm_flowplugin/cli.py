"""Command-line interface: ``openmm-flowplugin systems | simulate | train | evaluate | demo``.

User errors (unknown system, missing or wrong file, shape mismatch) print one line and exit with
status 2, without a traceback.
"""

import functools
import sys
from pathlib import Path

import click

USER_ERRORS = (KeyError, FileNotFoundError, FileExistsError, ValueError, TypeError, OSError)


def _user_errors(command):
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            click.echo(f"error: {message}", err=True)
            sys.exit(2)

    return wrapper


@click.group()
@click.version_option(package_name="openmm_flowplugin")
def main():
    """Learned samplers for OpenMM: Boltzmann generators on ready-made systems."""


@main.command("systems")
def systems_command():
    """List the ready-made systems."""
    from . import systems

    for name, description in systems.describe().items():
        click.echo(f"{name:28s} {description}")


@main.command()
@click.argument("system")
@click.option("--steps", default=1_000_000, show_default=True, help="Production MD steps.")
@click.option("--interval", default=100, show_default=True, help="Steps between saved frames.")
@click.option("--temperature", type=float, default=None, help="Kelvin (default: the system's).")
@click.option("--timestep", type=float, default=1.0, show_default=True, help="Femtoseconds.")
@click.option("--seed", type=int, default=None)
@click.option("--platform", default=None, help="OpenMM platform (default: automatic).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="mdtraj HDF5 file to write.")
@click.option("--start", type=click.Path(dir_okay=False), default=None, help="Start from a frame of this trajectory.")
@click.option("--start-frame", default=-1, show_default=True, help="Frame of --start to begin from.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output file.")
@_user_errors
def simulate(system, steps, interval, temperature, timestep, seed, platform, output, start, start_frame, overwrite):
    """Run Langevin MD of SYSTEM and save an HDF5 trajectory."""
    from openmm import unit

    from . import systems
    from .simulate import simulate as run

    molecular_system = systems.get(system)
    if start is not None:
        frames = _load_trajectories([start], molecular_system)
        if not -len(frames) <= start_frame < len(frames):
            raise ValueError(f"--start-frame {start_frame} is outside {start}, which has {len(frames)} frames.")
        molecular_system.positions = unit.Quantity(frames[start_frame].astype("float64"), unit.nanometer)
    trajectory = run(molecular_system, steps, report_interval=interval, temperature=temperature,
                     timestep=timestep * unit.femtosecond, seed=seed, platform=platform, output=output, overwrite=overwrite)
    click.echo(f"wrote {trajectory.n_frames} frames to {output}")


def _load_trajectories(paths, molecular_system):
    import mdtraj
    import numpy as np

    frames = []
    for path in paths:
        if not Path(path).is_file():
            raise FileNotFoundError(f"trajectory {path} not found.")
        trajectory = mdtraj.load(path, top=molecular_system.mdtraj_topology) if not str(path).endswith(".h5") else mdtraj.load(path)
        if trajectory.n_atoms != molecular_system.n_atoms:
            raise ValueError(f"{path} has {trajectory.n_atoms} atoms but {molecular_system.name} has {molecular_system.n_atoms}.")
        frames.append(trajectory.xyz)
    return np.concatenate(frames)


@main.command()
@click.argument("system")
@click.option("--data", "-d", multiple=True, required=True, type=click.Path(dir_okay=False), help="MD trajectory (repeatable).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Checkpoint file to write.")
@click.option("--ml-steps", default=3000, show_default=True, help="Maximum-likelihood steps.")
@click.option("--kl-steps", default=0, show_default=True, help="Reverse-KL fine-tuning steps (energy-based).")
@click.option("--batch-size", default=256, show_default=True)
@click.option("--learning-rate", default=1e-3, show_default=True)
@click.option("--kl-learning-rate", default=1e-4, show_default=True)
@click.option("--blocks", default=3, show_default=True, help="Coupling blocks.")
@click.option("--hidden", default="128,128", show_default=True, help="Conditioner hidden widths.")
@click.option("--bins", default=8, show_default=True, help="Spline bins.")
@click.option("--seed", default=0, show_default=True)
@click.option("--ess-samples", default=10_000, show_default=True, help="Samples for the final ESS report.")
@click.option("--select-every", default=0, show_default=True,
              help="Every N steps measure the ESS on 2,000 fresh samples and keep the best weights (0: off).")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint.")
@_user_errors
def train(system, data, output, ml_steps, kl_steps, batch_size, learning_rate, kl_learning_rate, blocks, hidden, bins,
          seed, ess_samples, select_every, overwrite):
    """Train a Boltzmann generator for SYSTEM on MD data, then optionally by reverse KL."""
    import torch

    from . import systems
    from .checkpoints import check_output_path, save_flow
    from .energy import OpenMMEnergy
    from .evaluation import evaluate_flow
    from .flows import BoltzmannGenerator
    from .training import ESSSelector, train_maximum_likelihood, train_reverse_kl

    check_output_path(output, overwrite)  # refuse an existing file before training
    torch.manual_seed(seed)
    molecular_system = systems.get(system)
    positions = torch.as_tensor(_load_trajectories(data, molecular_system), dtype=torch.float64)
    hidden_widths = tuple(int(h) for h in hidden.split(","))
    command = " ".join(["openmm-flowplugin"] + sys.argv[1:])
    flow = BoltzmannGenerator.for_system(molecular_system, positions, n_blocks=blocks, hidden=hidden_widths, bins=bins,
                                         metadata={"training_command": command, "n_training_frames": len(positions)})
    energy = OpenMMEnergy(molecular_system.system, molecular_system.temperature)
    selector = ESSSelector(energy, every=select_every) if select_every else None
    train_maximum_likelihood(flow, positions, n_steps=ml_steps, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
                             callback=selector)
    if selector is not None:
        history = ", ".join(f"{step}: {ess * 100:.1f}%" for step, ess in selector.history)
        click.echo(f"maximum likelihood, ESS by step ({history}); keeping the best: {selector.restore_best(flow) * 100:.1f} %")
    if kl_steps:
        train_reverse_kl(flow, energy, n_steps=kl_steps, batch_size=batch_size, learning_rate=kl_learning_rate,
                         data=positions, seed=seed, callback=selector)
        if selector is not None:
            history = ", ".join(f"{step}: {ess * 100:.1f}%" for step, ess in selector.history)
            click.echo(f"with reverse KL, ESS by step ({history}); keeping the best: {selector.restore_best(flow) * 100:.1f} %")
    result = evaluate_flow(flow, molecular_system, n_samples=ess_samples)
    flow.metadata["ess_fraction"] = result.ess_fraction
    save_flow(flow, output, overwrite=overwrite)
    for line in result.summary():
        click.echo(line)
    click.echo(f"wrote {output}")


@main.command()
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
    from . import systems
    from .checkpoints import load_flow
    from .evaluation import evaluate_flow

    flow = load_flow(checkpoint)
    name = system or flow.metadata.get("system")
    if name is None:
        raise ValueError(f"{checkpoint} does not name its system; pass --system.")
    molecular_system = systems.get(name)
    from .checkpoints import check_flow_matches

    check_flow_matches(flow, molecular_system)
    return evaluate_flow(flow, molecular_system, n_samples=samples), molecular_system


def _plots(result, molecular_system, plot, energy_plot, md_positions=None):
    from .evaluation import backbone_dihedrals
    from .plotting import plot_energy_histogram, plot_ramachandran

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
            from .energy import OpenMMEnergy

            energy = OpenMMEnergy(molecular_system.system, molecular_system.temperature)
            series.append(("MD", energy.energy_and_forces(md_positions)[0], None))
        plot_energy_histogram(series, energy_plot)
        click.echo(f"wrote {energy_plot}")


@main.command()
@click.option("--samples", "-n", default=10_000, show_default=True)
@click.option("--output-dir", default="out", show_default=True, type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
@_user_errors
def demo(samples, output_dir, seed):
    """The main job on built-in defaults: load (or train) the alanine-dipeptide flow, sample, report ESS, plot."""
    import time

    import torch

    from .checkpoints import resolve_flow_path

    torch.manual_seed(seed)
    name = "alanine_dipeptide_vacuum"
    checkpoint = resolve_flow_path(name)
    if not checkpoint.is_file():
        checkpoint = _train_small_flow(name, Path(output_dir))
    start = time.perf_counter()
    result, molecular_system = _evaluate(str(checkpoint), name, samples)
    click.echo(f"flow: {checkpoint}")
    for line in result.summary():
        click.echo(line)
    click.echo(f"sampling + energies + weights: {time.perf_counter() - start:.1f} s")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    _plots(result, molecular_system, str(Path(output_dir) / "ramachandran.png"), str(Path(output_dir) / "energies.png"))


def _train_small_flow(name, output_dir):
    """Fallback when the shipped model is missing: short MD and a quick maximum-likelihood fit (a few minutes)."""
    import torch

    from . import systems
    from .checkpoints import save_flow
    from .flows import BoltzmannGenerator
    from .simulate import simulate as run
    from .training import train_maximum_likelihood

    click.echo("shipped flow not found: training a small one (a few minutes)")
    molecular_system = systems.get(name)
    trajectory = run(molecular_system, 500_000, report_interval=50, seed=0)
    positions = torch.as_tensor(trajectory.xyz, dtype=torch.float64)
    flow = BoltzmannGenerator.for_system(molecular_system, positions)
    train_maximum_likelihood(flow, positions, n_steps=1500)
    path = output_dir / f"{name}.pt"
    save_flow(flow, path, overwrite=True)
    return path


if __name__ == "__main__":  # pragma: no cover
    main()
