"""``openmm-flowplugin demo``: the main job on built-in defaults."""

from pathlib import Path

import click

from ._common import POSITIVE_INT, _user_errors
from .evaluate_command import _evaluate, _plots


@click.command()
@click.option("--samples", "-n", default=10_000, show_default=True, type=POSITIVE_INT)
@click.option("--output-dir", default="out", show_default=True, type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True)
@_user_errors
def demo(samples, output_dir, seed):
    """The main job on built-in defaults: load (or train) the alanine-dipeptide flow, sample, report ESS, plot."""
    import time

    import torch

    from ..flows.checkpoints import resolve_flow_path

    torch.manual_seed(seed)
    name = "alanine_dipeptide_vacuum"
    checkpoint = resolve_flow_path(name)
    if not checkpoint.is_file():
        checkpoint = _train_small_flow(name, Path(output_dir))
    start = time.perf_counter()
    result, molecular_system = _evaluate(str(checkpoint), {"system_name": name}, samples)
    click.echo(f"flow: {checkpoint}")
    for line in result.summary():
        click.echo(line)
    click.echo(f"sampling + energies + weights: {time.perf_counter() - start:.1f} s")
    Path(output_dir).mkdir(parents=True, exist_ok=True)
    _plots(result, molecular_system, str(Path(output_dir) / "ramachandran.png"), str(Path(output_dir) / "energies.png"))


def _train_small_flow(name, output_dir):
    """Fallback when the shipped model is missing: short MD and a quick maximum-likelihood fit (a few minutes)."""
    import torch

    from .. import systems
    from ..flows.checkpoints import save_flow
    from ..flows.boltzmann_generator import BoltzmannGenerator
    from ..simulation.md import simulate as run
    from ..flows.training import train_maximum_likelihood

    click.echo("shipped flow not found: training a small one (a few minutes)")
    molecular_system = systems.get(name)
    trajectory = run(molecular_system, 500_000, report_interval=50, seed=0)
    positions = torch.as_tensor(trajectory.xyz, dtype=torch.float64)
    flow = BoltzmannGenerator.for_system(molecular_system, positions)
    train_maximum_likelihood(flow, positions, n_steps=1500)
    path = output_dir / f"{name}.pt"
    save_flow(flow, path, overwrite=True)
    return path
