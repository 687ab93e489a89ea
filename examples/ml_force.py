"""Learned potentials running as ordinary OpenMM forces in an OpenMM Simulation.

1. An ANI-architecture model (small, random weights: no download) on the alanine residue of
   alanine dipeptide, embedded in the AMBER system with a switching parameter ``lambda_ml``;
   ``dU/dlambda`` comes from the Context, as thermodynamic integration needs.
2. A flow's energy ``-kT log q(x)`` (an untrained zuko flow standing in for a trained one) added
   as a bias with :func:`openmm_flowplugin.flow_potential`.

Run: ``python examples/ml_force.py`` (CPU, under a minute). Pass ``--state-dict`` with a local
``ani2x_state_dict.pt`` to use real ANI-2x weights instead.
"""

import argparse
import copy
import os
import sys

import openmm
import torch
from openmm import app, unit

os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")

from openmm_flowplugin import systems  # noqa: E402
from openmm_flowplugin.forces.ani import create_mixed_system, load_ani_model, small_ani_model  # noqa: E402
from openmm_flowplugin.forces import flow_potential, parameter_derivative  # noqa: E402


class ZukoFlow(torch.nn.Module):
    """``log_prob`` over (n, n_atoms, 3) positions for a zuko flow on flattened coordinates."""

    def __init__(self, n_atoms, seed=0):
        super().__init__()
        import zuko

        torch.manual_seed(seed)
        self.flow = zuko.flows.MAF(features=3 * n_atoms, transforms=2, hidden_features=(64,))

    def log_prob(self, x):
        return self.flow().log_prob(x.reshape(x.shape[0], -1))


def run(system, molecule, steps, label):
    integrator = openmm.LangevinMiddleIntegrator(molecule.temperature, 1.0 / unit.picosecond, 1.0 * unit.femtosecond)
    simulation = app.Simulation(molecule.topology, system, integrator, openmm.Platform.getPlatformByName("Reference"))
    simulation.context.setPositions(molecule.positions)
    simulation.context.setVelocitiesToTemperature(molecule.temperature, 1)
    print(f"\n{label}")
    simulation.reporters.append(
        app.StateDataReporter(sys.stdout, max(1, steps // 4), step=True, potentialEnergy=True, temperature=True, speed=True)
    )
    simulation.step(steps)
    return simulation


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="MD steps (1 fs) per run")
    parser.add_argument("--state-dict", default=None, help="local ani2x_state_dict.pt (else a small random ANI model)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    molecule = systems.get("alanine_dipeptide_vacuum")
    model = load_ani_model("ANI-2x", state_dict=args.state_dict, model_index=0) if args.state_dict else small_ani_model()
    ml_atoms = range(6, 16)  # the alanine residue (N-H, CA, side chain, C=O)
    mixed = create_mixed_system(molecule.system, molecule.topology, ml_atoms, model, lambda_value=0.5)
    simulation = run(mixed, molecule, args.steps, "ML/MM alanine dipeptide, lambda_ml = 0.5")
    for lam in (0.0, 0.5, 1.0):
        simulation.context.setParameter("lambda_ml", lam)
        print(f"lambda_ml = {lam:.1f}: dU/dlambda = {parameter_derivative(simulation.context, 'lambda_ml'):10.3f} kJ/mol")

    biased = copy.deepcopy(molecule.system)
    biased.addForce(flow_potential(ZukoFlow(molecule.system.getNumParticles()), molecule.temperature))
    run(biased, molecule, args.steps, "AMBER alanine dipeptide + flow energy -kT log q(x) as a bias")


if __name__ == "__main__":
    main()
