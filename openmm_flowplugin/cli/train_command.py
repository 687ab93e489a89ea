"""``openmm-flowplugin train``: a Boltzmann generator from MD data, optionally refined by reverse KL."""

import sys

import click

from ..errors import InvalidInputError
from ._common import POSITIVE_INT, _load_trajectories, _user_errors, load_system, system_options


@click.command()
@system_options
@click.option("--data", "-d", multiple=True, required=True, type=click.Path(dir_okay=False), help="MD trajectory (repeatable).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Checkpoint file to write.")
@click.option("--ml-steps", default=3000, show_default=True, type=click.IntRange(min=0), help="Maximum-likelihood steps.")
@click.option("--kl-steps", default=0, show_default=True, type=click.IntRange(min=0), help="Reverse-KL fine-tuning steps (energy-based).")
@click.option("--batch-size", default=256, show_default=True, type=POSITIVE_INT)
@click.option("--learning-rate", default=1e-3, show_default=True)
@click.option("--kl-learning-rate", default=1e-4, show_default=True)
@click.option("--blocks", default=3, show_default=True, type=POSITIVE_INT, help="Coupling blocks.")
@click.option("--hidden", default="128,128", show_default=True, help="Conditioner hidden widths.")
@click.option("--bins", default=8, show_default=True, type=click.IntRange(min=2), help="Spline bins.")
@click.option("--seed", default=0, show_default=True)
@click.option("--ess-samples", default=10_000, show_default=True, type=POSITIVE_INT, help="Samples for the final ESS report.")
@click.option("--select-every", default=0, show_default=True, type=click.IntRange(min=0),
              help="Every N steps measure the ESS on 2,000 fresh samples and keep the best weights (0: off).")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint.")
@_user_errors
def train(molecular_system_options, data, output, ml_steps, kl_steps, batch_size, learning_rate, kl_learning_rate, blocks, hidden, bins,
          seed, ess_samples, select_every, overwrite):
    """Train a Boltzmann generator for SYSTEM on MD data, then optionally by reverse KL."""
    import torch

    from ..flows.checkpoints import save_flow
    from ..outputs import check_output_path
    from ..bridge.energy import OpenMMEnergy
    from ..analysis.evaluation import evaluate_flow
    from ..flows.boltzmann_generator import BoltzmannGenerator
    from ..flows.training import ESSSelector, train_maximum_likelihood, train_reverse_kl

    try:
        hidden_widths = tuple(int(h) for h in hidden.split(","))
    except ValueError:
        raise InvalidInputError(f"--hidden must be comma-separated integer widths, e.g. 128,128; got {hidden!r}.") from None
    if not hidden_widths or min(hidden_widths) < 1:
        raise InvalidInputError(f"--hidden widths must be integers >= 1, e.g. 128,128; got {hidden!r}.")
    check_output_path(output, overwrite)  # refuse an existing file before training
    torch.manual_seed(seed)
    molecular_system = load_system(molecular_system_options)
    positions = torch.as_tensor(_load_trajectories(data, molecular_system), dtype=torch.float64)
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
        kl_history = train_reverse_kl(flow, energy, n_steps=kl_steps, batch_size=batch_size, learning_rate=kl_learning_rate,
                                      data=positions, seed=seed, callback=selector)
        click.echo(
            f"reverse KL: {kl_history.n_nonfinite_samples} samples left out (non-finite energy or log q), "
            f"{kl_history.n_softened_samples} softened above the energy cut, {kl_history.n_skipped_steps} steps skipped"
            + (" (the objective was biased by these; the flow stays an exact proposal)" if kl_history.n_nonfinite_samples
               or kl_history.n_softened_samples else "")
        )
        if selector is not None:
            history = ", ".join(f"{step}: {ess * 100:.1f}%" for step, ess in selector.history)
            click.echo(f"with reverse KL, ESS by step ({history}); keeping the best: {selector.restore_best(flow) * 100:.1f} %")
    result = evaluate_flow(flow, molecular_system, n_samples=ess_samples)
    flow.metadata["ess_fraction"] = result.ess_fraction
    save_flow(flow, output, overwrite=overwrite)
    for line in result.summary():
        click.echo(line)
    click.echo(f"wrote {output}")
