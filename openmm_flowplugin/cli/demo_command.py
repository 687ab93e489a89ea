"""``openmm-flowplugin demo``: the main job on built-in defaults, in well under a minute.

It prints its first line before importing torch and OpenMM (a few seconds on a small machine),
shows a progress bar while sampling, and writes each run into a new folder
``<output-dir>/demo-<YYYYmmdd-HHMMSS>/`` (created exclusively), so running it twice never replaces
earlier plots.
"""

import time
from pathlib import Path

import click

from ._common import POSITIVE_INT, _user_errors

_NAME = "alanine_dipeptide_vacuum"


@click.command()
@click.option("--samples", "-n", default=10_000, show_default=True, type=POSITIVE_INT)
@click.option(
    "--output-dir",
    default="out",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Each run writes into a new folder demo-<date>-<time> inside it.",
)
@click.option("--seed", default=0, show_default=True)
@_user_errors
def demo(samples, output_dir, seed):
    """The main job on built-in defaults: load (or train) the alanine-dipeptide flow, sample, report ESS, plot."""
    start = time.perf_counter()
    click.echo("openmm-flowplugin demo: loading torch, OpenMM and the alanine-dipeptide flow ...")
    run_dir = _new_run_folder(Path(output_dir))
    click.echo(f"writing into {run_dir}/")
    try:
        _run(samples, seed, run_dir, start)
    finally:
        if not any(run_dir.iterdir()):  # nothing written (an error or Ctrl-C): leave no empty folder
            run_dir.rmdir()


def _run(samples, seed, run_dir, start):
    import torch
    from tqdm.auto import tqdm

    from .. import systems
    from ..analysis.evaluation import evaluate_flow
    from ..flows.checkpoints import check_flow_matches, load_flow, resolve_flow_path
    from .evaluate_command import _plots

    torch.manual_seed(seed)
    checkpoint = resolve_flow_path(_NAME)
    if not checkpoint.is_file():
        checkpoint = _train_small_flow(_NAME, run_dir)
    flow = load_flow(checkpoint)
    molecular_system = systems.get(_NAME)
    check_flow_matches(flow, molecular_system)
    click.echo(f"flow: {checkpoint} (ready after {time.perf_counter() - start:.1f} s)")
    sampling_start = time.perf_counter()
    with tqdm(total=samples, desc="sampling + energies", unit="sample") as bar:
        result = evaluate_flow(_SampleProgress(flow, bar), molecular_system, n_samples=samples)
    for line in result.summary():
        click.echo(line)
    click.echo(f"sampling + energies + weights: {time.perf_counter() - sampling_start:.1f} s")
    _plots(result, molecular_system, str(run_dir / "ramachandran.png"), str(run_dir / "energies.png"))
    click.echo(f"done in {time.perf_counter() - start:.1f} s")


class _SampleProgress:
    """The flow, advancing a progress bar as each batch is drawn (its energies follow at once)."""

    def __init__(self, flow, bar):
        self._flow, self._bar = flow, bar

    def sample(self, n):
        drawn = self._flow.sample(n)
        self._bar.update(n)
        return drawn

    def __getattr__(self, name):
        return getattr(self._flow, name)


def _new_run_folder(parent):
    """Create ``parent/demo-<YYYYmmdd-HHMMSS>`` exclusively (``-2``, ``-3``, ... within the same second)."""
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"--output-dir {parent} is a file; choose a folder.")
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 100):
        folder = parent / (f"demo-{stamp}" if attempt == 1 else f"demo-{stamp}-{attempt}")
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        return folder
    raise FileExistsError(f"could not create a new demo-{stamp}* folder in {parent}; remove old runs or choose another --output-dir.")


def _train_small_flow(name, output_dir):
    """Fallback when the shipped model is missing: short MD and a quick maximum-likelihood fit (a few minutes)."""
    import torch

    from .. import systems
    from ..flows.boltzmann_generator import BoltzmannGenerator
    from ..flows.checkpoints import save_flow
    from ..flows.training import train_maximum_likelihood
    from ..simulation.md import simulate as run

    click.echo("shipped flow not found: training a small one (a few minutes)")
    molecular_system = systems.get(name)
    trajectory = run(molecular_system, 500_000, report_interval=50, seed=0)
    positions = torch.as_tensor(trajectory.xyz, dtype=torch.float64)
    flow = BoltzmannGenerator.for_system(molecular_system, positions)
    train_maximum_likelihood(flow, positions, n_steps=1500)
    path = output_dir / f"{name}.pt"
    save_flow(flow, path)
    return path
