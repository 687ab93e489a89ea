"""``openmm-flowplugin train-timewarp``: a conditional flow p(x(t+tau) | x(t)) from MD pairs, checkpointed, resumable."""

import sys

import click

from ..errors import InvalidInputError
from ._common import FINITE_POSITIVE, POSITIVE_INT, _load_trajectories, _user_errors, load_system, system_options

_HELP = """Train a Timewarp-style conditional flow for SYSTEM on pairs of frames --lag frames apart.

Each -d trajectory (any format mdtraj reads; repeatable) is a separate run of SYSTEM: pairs never span two
trajectories. The flow is written to --output; use it with openmm_flowplugin.mcmc.TimewarpMove (exact
Metropolis-Hastings) or openmm_flowplugin.mcmc.explore_biased (biased exploration), see docs/timewarp.md.
With --checkpoint FILE the model, optimizer and losses are written every --checkpoint-every steps; if FILE
exists, training resumes from it (same data and settings) and continues to --steps in total.

--internal all|torsions trains an InternalCoordinateProposal: a conditional Gaussian on bonds, angles and
torsions (or on the torsions alone, bonds and angles kept: a block move to mix with MD, as `md --flow` does).
With --internal torsions, --torsion backbone (every phi and psi) or --torsion A,B,C,D (repeatable) moves only
the rotations about those dihedrals' bonds, and --components K > 1 learns a mixture that jumps between their
basins: train it on pairs far apart in time (a --lag of several ps).

--fine-tune-steps N then tunes the acceptance through the System's energy (Timewarp's acceptance loss beside
--likelihood-weight times the likelihood; not checkpointed, so a rerun repeats it from the trained model).
It raises acceptance by shrinking moves: measure effective samples, not acceptance (docs/timewarp.md).

--transferable trains one model over atoms (atom features from elements and bonds, distance-kernel
attention) that runs on other molecules too; then -d NAME=FILE adds a trajectory of another registered
system NAME (e.g. -d dipeptide_ser=ser.dcd), so one model learns from several molecules.
"""


def _dihedrals(ctx, param, values):
    """``--torsion``: 'backbone', or comma-separated quadruples of atom indices."""
    quadruples = []
    for value in values:
        if value == "backbone":
            quadruples.append(value)
            continue
        try:
            atoms = tuple(int(a) for a in value.split(","))
        except ValueError:
            atoms = ()
        if len(atoms) != 4:
            raise click.BadParameter(f"give 'backbone' or four comma-separated atom indices, e.g. 4,6,8,14; got {value!r}.")
        quadruples.append(atoms)
    return quadruples


def _backbone_dihedrals(molecular_system):
    """Atom quadruples of every phi and psi of the system (mdtraj's definitions)."""
    import mdtraj
    import numpy as np

    trajectory = mdtraj.Trajectory(np.zeros((1, molecular_system.n_atoms, 3)), molecular_system.mdtraj_topology)
    quadruples = [tuple(int(a) for a in q) for compute in (mdtraj.compute_phi, mdtraj.compute_psi) for q in compute(trajectory)[0]]
    if not quadruples:
        raise InvalidInputError(f"--torsion backbone: {molecular_system.name} has no phi or psi (not a peptide); give A,B,C,D quadruples.")
    return quadruples


def _widths(ctx, param, value):
    try:
        widths = tuple(int(h) for h in value.split(","))
    except ValueError:
        raise click.BadParameter(f"give comma-separated integer widths, e.g. 64,64; got {value!r}.") from None
    if min(widths) < 1:
        raise click.BadParameter(f"widths must be integers >= 1, got {value!r}.")
    return widths


@click.command("train-timewarp", help=_HELP)
@system_options
@click.option("--data", "-d", multiple=True, required=True, type=click.Path(dir_okay=False), help="MD trajectory (repeatable).")
@click.option("--lag", required=True, type=POSITIVE_INT, help="tau, in saved frames of the trajectories.")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Conditional flow file (.pt) to write.")
@click.option("--steps", default=2000, show_default=True, type=POSITIVE_INT, help="Optimisation steps in total (also with a resumed checkpoint).")
@click.option("--batch-size", default=64, show_default=True, type=POSITIVE_INT)
@click.option("--learning-rate", default=1e-3, show_default=True, type=FINITE_POSITIVE)
@click.option("--layers", default=8, show_default=True, type=click.IntRange(min=2), help="Affine couplings (positions and velocities alternate).")
@click.option("--hidden", default="64,64", show_default=True, callback=_widths, help="Hidden widths of each coupling's MLP.")
@click.option("--context-features", default=64, show_default=True, type=POSITIVE_INT, help="Width of the embedding of x(t) (not with --transferable).")
@click.option("--step-scale", default=0.02, show_default=True, type=FINITE_POSITIVE, help="Initial displacement per centred coordinate, nm (learned).")
@click.option("--transferable", is_flag=True, help="A TransferableConditionalFlow (per-atom, several molecules; --hidden's first width, --rounds).")
@click.option("--internal", type=click.Choice(["all", "torsions"]), default=None,
              help="An InternalCoordinateProposal moving all internal coordinates or the torsions only (bonds and angles kept: "
                   "use it beside MD, e.g. `md --flow`); --hidden sets its MLP.")
@click.option("--torsion", "torsions", multiple=True, callback=_dihedrals,
              help="With --internal torsions: move only the rotation about this dihedral's bond, A,B,C,D (repeatable), or "
                   "'backbone' for every phi and psi.")
@click.option("--components", default=1, show_default=True, type=POSITIVE_INT,
              help="With --internal: mixture components of the torsion density (K > 1 jumps between basins).")
@click.option("--rounds", default=2, show_default=True, type=click.IntRange(min=0), help="Attention rounds per coupling (--transferable).")
@click.option("--no-rotations", is_flag=True, help="Do not augment pairs by random rigid rotations.")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(min=0))
@click.option("--fine-tune-steps", default=0, show_default=True, type=click.IntRange(min=0),
              help="After the likelihood training, steps of acceptance fine-tuning through the System's energy (one molecule).")
@click.option("--likelihood-weight", default=1.0, show_default=True, type=click.FloatRange(min=0.0),
              help="Weight of the likelihood beside the acceptance loss in --fine-tune-steps (it holds the step length).")
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False), help="Training checkpoint to write, and to resume from if it exists.")
@click.option("--checkpoint-every", default=100, show_default=True, type=POSITIVE_INT, help="Steps between checkpoints.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --output.")
@click.option("--progress/--no-progress", default=None, help="Progress bar with the loss on stderr [default: when stderr is a terminal].")
@_user_errors
def train_timewarp(molecular_system_options, data, lag, output, steps, batch_size, learning_rate, layers, hidden, context_features,
                   step_scale, transferable, internal, torsions, components, rounds, no_rotations, seed, fine_tune_steps, likelihood_weight,
                   checkpoint, checkpoint_every, overwrite, progress):
    from pathlib import Path

    import torch

    from ..flows.conditional import ConditionalFlow
    from ..flows.internal_conditional import InternalCoordinateProposal
    from ..flows.transferable import TransferableConditionalFlow
    from ..flows.conditional_io import save_conditional_flow
    from ..flows.conditional_training import train_timewarp as train, trajectory_pairs
    from ..outputs import check_output_path

    if transferable and internal:
        raise InvalidInputError("--transferable and --internal are two different models: choose one.")
    if (torsions and internal != "torsions") or (components > 1 and not internal):
        raise InvalidInputError("--torsion needs --internal torsions, and --components needs --internal.")
    if checkpoint is not None and Path(checkpoint).resolve() == Path(output).resolve():
        raise InvalidInputError("--checkpoint and --output must be different files (the checkpoint also holds the optimizer).")
    check_output_path(output, overwrite)  # refuse an existing output before training
    molecules = _trajectories_by_molecule(data, molecular_system_options, transferable)
    if fine_tune_steps and transferable:
        raise InvalidInputError("--fine-tune-steps works on a per-molecule model: train --transferable without it.")
    if fine_tune_steps and len(molecules) > 1:
        raise InvalidInputError(f"--fine-tune-steps tunes the acceptance on one molecule's energy, but -d gives {len(molecules)} molecules: "
                                "fine-tune a model per molecule, or train without it.")
    longest = max(len(frames) for _, trajectories in molecules for frames in trajectories)
    if lag >= longest:
        raise InvalidInputError(f"--lag {lag} frames is too long: the longest trajectory has {longest} frames, so there is no pair; "
                                "pass a smaller --lag or longer trajectories.")
    datasets = [(molecule, trajectory_pairs(trajectories, lag)) for molecule, trajectories in molecules]
    n_pairs, n_trajectories = sum(len(p[0]) for _, p in datasets), sum(len(t) for _, t in molecules)
    command = " ".join(["openmm-flowplugin"] + sys.argv[1:])
    metadata = dict(training_command=command, lag_frames=int(lag), n_pairs=n_pairs, n_trajectories=n_trajectories)
    with torch.random.fork_rng():  # initial weights from --seed, without touching torch's global stream
        torch.manual_seed(seed)
        if internal:
            molecule = molecules[0][0]
            selected = [q for t in torsions for q in (_backbone_dihedrals(molecule) if t == "backbone" else [t])] or None
            flow = InternalCoordinateProposal.for_system(molecule, hidden=hidden, moves=internal, torsions=selected, components=components,
                                                         metadata=metadata)
            pairs = datasets[0][1]
        elif transferable:
            flow = TransferableConditionalFlow(n_layers=layers, hidden=hidden[0], n_rounds=rounds, step_scale=step_scale,
                                               metadata=dict(metadata, training_molecules=[m.name for m, _ in datasets]))
            pairs = datasets
        else:
            flow = ConditionalFlow.for_system(molecules[0][0], n_layers=layers, hidden=hidden, context_features=context_features,
                                              step_scale=step_scale, dtype=torch.float64, metadata=metadata)
            pairs = datasets[0][1]
    if progress is None:
        progress = sys.stderr.isatty()
    resumed = f" (resumed from {checkpoint})" if checkpoint is not None and Path(checkpoint).is_file() else ""
    history = train(flow, pairs, n_steps=steps, batch_size=batch_size, learning_rate=learning_rate, rotations=not no_rotations,
                    seed=seed, checkpoint=checkpoint, checkpoint_every=checkpoint_every, progress=progress)
    tuned = ""
    if fine_tune_steps:
        tuned = _fine_tune(flow, datasets[0], fine_tune_steps, batch_size, likelihood_weight, not no_rotations, seed, progress)
    save_conditional_flow(flow, output, overwrite=overwrite)
    tail = history[-min(len(history), 100):]
    click.echo(f"{n_pairs} pairs from {n_trajectories} trajectories of {len(datasets)} molecule(s); loss (nats per pair, mean of the last {len(tail)} "
               f"steps) {sum(tail) / len(tail):.3f}{resumed}{tuned}; wrote {output}")


def _fine_tune(flow, dataset, n_steps, batch_size, likelihood_weight, rotations, seed, progress):
    """Acceptance fine-tuning of ``flow`` on one molecule's pairs (not checkpointed: a rerun repeats it from the trained model)."""
    from ..bridge.energy import OpenMMEnergy
    from ..flows.conditional_training import fine_tune_acceptance

    molecule, (x_t, x_lag) = dataset
    energy = OpenMMEnergy(molecule.system, molecule.temperature)
    accepted = fine_tune_acceptance(flow, (x_t, x_lag), energy, n_steps=n_steps, batch_size=batch_size, likelihood_weight=likelihood_weight,
                                    rotations=rotations, seed=seed + 1, progress=progress)
    tail = accepted[-min(len(accepted), 100):]
    return f"; fine-tuned {n_steps} steps, acceptance of the training starts (mean of the last {len(tail)} steps) {float(sum(tail) / len(tail)):.3g}"


def _trajectories_by_molecule(data, molecular_system_options, transferable):
    """``[(MolecularSystem, [frames, ...]), ...]`` from -d FILE (SYSTEM's) and -d NAME=FILE (registered system NAME's)."""
    from pathlib import Path

    from .. import systems

    if transferable and all("=" in item and not Path(item).is_file() for item in data) and not any(molecular_system_options.values()):
        molecular_system = None  # every trajectory names its molecule: SYSTEM is not needed
    else:
        molecular_system = load_system(molecular_system_options)

    by_name, order = {}, []
    for item in data:
        name, separator, path = item.partition("=")
        if not separator or Path(item).is_file():  # a file whose name holds '=' is a file of SYSTEM
            name, path = None, item
        elif not transferable:
            raise InvalidInputError(f"-d {item}: trajectories of other molecules (NAME=FILE) need --transferable.")
        if name not in by_name:
            by_name[name] = (molecular_system if name is None else systems.get(name), [])
            order.append(name)
        molecule, trajectories = by_name[name]
        trajectories.append(_load_trajectories([path], molecule))
    return [by_name[name] for name in order]
