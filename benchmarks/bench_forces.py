"""Per-evaluation overhead of learned forces in OpenMM, and MD speed with an ANI-architecture force.

Overhead = time of ``context.setPositions`` + ``getState(energy, forces)`` for a System holding only
the learned force (Reference platform), divided by the bare torch call (forward + autograd forces
on a tensor) measured in the same run. Goal: <= 2x.

Run: ``python benchmarks/bench_forces.py`` (about a minute; ``--help`` for sizes).
"""

import argparse
import copy
import os
import time

import numpy as np
import openmm
import torch
from openmm import app, unit

os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")

from openmm_flowplugin import systems  # noqa: E402
from openmm_flowplugin.forces.ani import ANIPotential, ani_force, create_mixed_system, small_ani_model  # noqa: E402
from openmm_flowplugin.forces import as_openmm_force  # noqa: E402


class PairMLP(torch.nn.Module):
    """A tiny MLP on all pair distances: cheap enough that the bridge's own cost shows."""

    def __init__(self, width=16):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(1, width), torch.nn.Tanh(), torch.nn.Linear(width, 1)).double()

    def forward(self, positions):
        pairs = torch.triu_indices(positions.shape[0], positions.shape[0], 1)
        r = torch.sqrt(((positions[pairs[0]] - positions[pairs[1]]) ** 2).sum(-1, keepdim=True))
        return self.net(r).sum()


class ScaledPairMLP(PairMLP):
    """PairMLP times a global parameter: exercises the CustomCVForce wrapper used for parameters."""

    def forward(self, positions, lambda_ml):
        return lambda_ml * super().forward(positions)


class PeriodicLJ(torch.nn.Module):
    """All-pairs Lennard-Jones with minimum image in a rectangular box (argon-like)."""

    def __init__(self, sigma=0.34, epsilon=0.996):
        super().__init__()
        self.sigma, self.epsilon = sigma, epsilon

    def forward(self, positions, box_vectors):
        lengths = torch.diagonal(box_vectors)
        n = positions.shape[0]
        pairs = torch.triu_indices(n, n, 1)
        delta = positions[pairs[0]] - positions[pairs[1]]
        delta = delta - lengths * torch.round(delta / lengths)
        s6 = (self.sigma**2 / (delta**2).sum(-1)) ** 3
        return (4.0 * self.epsilon * (s6 * s6 - s6)).sum()


def best_times(functions, repeats):
    """Fastest seconds per call of each function: calls interleaved, after 3 warm-up calls each.

    The minimum (not the mean) because this machine is shared: noise only ever adds time.
    """
    for function in functions:
        for _ in range(3):
            function()
    times = [[] for _ in functions]
    for _ in range(repeats):
        for function, record in zip(functions, times):
            start = time.perf_counter()
            function()
            record.append(time.perf_counter() - start)
    return [min(record) for record in times]


def overhead(name, module, positions, box=None, repeats=50, parameters=None):
    kwargs = {} if box is None else {"box_vectors": torch.tensor(box, dtype=torch.float64)}
    kwargs.update({key: torch.tensor(value, dtype=torch.float64) for key, value in (parameters or {}).items()})
    x = torch.tensor(positions, dtype=torch.float64)

    def bare():
        xr = x.detach().requires_grad_(True)
        energy = module(xr, **kwargs)
        torch.autograd.grad(energy, xr)

    system = openmm.System()
    for _ in range(len(positions)):
        system.addParticle(1.0)
    if box is not None:
        system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*row) for row in box])
    system.addForce(as_openmm_force(module, periodic=box is not None, global_parameters=parameters, backend="python"))
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))

    def through_openmm():
        context.setPositions(positions)
        context.getState(getEnergy=True, getForces=True)

    t_bare, t_openmm = best_times([bare, through_openmm], repeats)
    return name, len(positions), t_bare, t_openmm


def ns_per_day(system, molecule, steps):
    integrator = openmm.LangevinMiddleIntegrator(300 * unit.kelvin, 1.0 / unit.picosecond, 1.0 * unit.femtosecond)
    simulation = app.Simulation(molecule.topology, system, integrator, openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(molecule.positions)
    simulation.step(10)
    start = time.perf_counter()
    simulation.step(steps)
    elapsed = time.perf_counter() - start
    return steps * 1e-6 / elapsed * 86400.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per measurement (median)")
    parser.add_argument("--n-lj", type=int, default=1000, help="particles in the periodic LJ system")
    parser.add_argument("--md-steps", type=int, default=300, help="MD steps per ns/day measurement (1 fs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    molecule = systems.get("alanine_dipeptide_vacuum")
    x_ala = np.asarray(molecule.positions.value_in_unit(unit.nanometer))
    numbers = [atom.element.atomic_number for atom in molecule.topology.atoms()]
    model = small_ani_model(seed=0)

    side = int(np.ceil(args.n_lj ** (1 / 3)))
    length = side * 0.38
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[: args.n_lj] * 0.38
    x_lj = grid + np.random.default_rng(0).uniform(-0.02, 0.02, grid.shape)
    box = np.eye(3) * length

    rows = [
        overhead("alanine dipeptide, tiny pair MLP", PairMLP(), x_ala, repeats=args.repeats * 4),
        overhead(
            "same, with global parameter lambda_ml (CustomCVForce)",
            ScaledPairMLP(),
            x_ala,
            repeats=args.repeats * 4,
            parameters={"lambda_ml": 0.5},
        ),
        overhead("alanine dipeptide, ANI-architecture", ANIPotential(model, numbers), x_ala, repeats=args.repeats),
        overhead(f"{args.n_lj}-atom periodic LJ (all pairs)", PeriodicLJ(), x_lj, box, repeats=max(5, args.repeats // 5)),
    ]
    print(f"torch {torch.__version__}, OpenMM {openmm.__version__}, {args.threads} torch thread(s), Reference platform\n")
    print("| system | atoms | bare torch (ms) | PythonForce via Context (ms) | added (ms) | ratio |")
    print("|---|---|---|---|---|---|")
    for name, n, t_bare, t_openmm in rows:
        print(
            f"| {name} | {n} | {t_bare * 1e3:.3f} | {t_openmm * 1e3:.3f} | {(t_openmm - t_bare) * 1e3:.3f} "
            f"| {t_openmm / t_bare:.2f}x |"
        )

    mm = copy.deepcopy(molecule.system)
    with_ani = copy.deepcopy(molecule.system)
    with_ani.addForce(ani_force(model, molecule.topology))
    mixed = create_mixed_system(molecule.system, molecule.topology, range(22), model, lambda_value=0.5)
    print("\n| MD, alanine dipeptide, 1 fs, Reference | ns/day | relative to MM |")
    print("|---|---|---|")
    base = ns_per_day(mm, molecule, args.md_steps * 10)
    for label, system, steps in [
        ("AMBER ff96 (MM only)", mm, args.md_steps * 10),
        ("MM + ANI-architecture PythonForce", with_ani, args.md_steps),
        ("ML/MM mixed system, all 22 atoms ML, lambda=0.5", mixed, args.md_steps),
    ]:
        speed = base if system is mm else ns_per_day(system, molecule, steps)
        print(f"| {label} | {speed:,.1f} | {speed / base:.4f} |")


if __name__ == "__main__":
    main()
