"""Written with openmm_flowplugin 0.1 (flat layout, commit 42e7776): storage + System XML fixtures.

Run from the repository root of that version: ``python tests/data/legacy_v0/make_fixtures.py``.
"""
import json

import openmm
import torch
from openmmtools import cache, mcmc
from openmmtools.multistate import MultiStateReporter, ReplicaExchangeSampler

from openmm_flowplugin import systems
from openmm_flowplugin.flows import BoltzmannGenerator
from openmm_flowplugin.forces import HarmonicRestraint, as_openmm_force, flow_potential, parameter_derivative
from openmm_flowplugin.moves import FlowMCMove
from openmm_flowplugin.proposals import GaussianProposal

out = "tests/data/legacy_v0/"
ho = systems.get("harmonic_oscillator")
proposal = GaussianProposal(ho.positions_nm, 1.2 * ho.reference.std, seed=5)
move = mcmc.SequenceMove([mcmc.LangevinDynamicsMove(n_steps=10), FlowMCMove(proposal, n_proposals=4, seed=6)])
sampler = ReplicaExchangeSampler(mcmc_moves=move, number_of_iterations=3)
ref = openmm.Platform.getPlatformByName("Reference")
sampler.energy_context_cache = cache.ContextCache(platform=ref)
sampler.sampler_context_cache = cache.ContextCache(platform=ref)
states = [ho.thermodynamic_state(temperature=t) for t in (300.0, 600.0)]
reporter = MultiStateReporter(out + "replica_exchange.nc", checkpoint_interval=1)
sampler.create(states, [ho.sampler_state() for _ in states], reporter)
sampler.run()
reporter.close()

# A 4-atom chain whose energy is a tiny flow's -kT log q (a top-level PythonForce pickling the flow),
# plus a restraint on a fifth particle with a global parameter (a PythonForce inside a CustomCVForce).
torch.manual_seed(0)
chain = torch.tensor([[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.2, 0.14, 0.0], [0.35, 0.15, 0.05]], dtype=torch.float64)
flow = BoltzmannGenerator(4, [(0, 1), (1, 2), (2, 3)], chain[None] + 0.01 * torch.randn(64, 4, 3, dtype=torch.float64),
                          n_blocks=1, hidden=(4,), bins=4)
system = openmm.System()
for _ in range(5):
    system.addParticle(12.0)
system.addForce(flow_potential(flow, 300.0, particles=[0, 1, 2, 3]))
system.addForce(as_openmm_force(HarmonicRestraint([[1.0, 0.0, 0.0]]), particles=[4], global_parameters={"k": 100.0}, backend="python"))
open(out + "python_force_system.xml", "w").write(openmm.XmlSerializer.serialize(system))

positions = chain.tolist() + [[1.1, 0.2, 0.0]]
context = openmm.Context(system, openmm.VerletIntegrator(0.001), ref)
context.setPositions(positions)
context.setParameter("k", 200.0)
state = context.getState(getEnergy=True, getForces=True)
expected = {
    "positions_nm": positions,
    "k": 200.0,
    "energy_kj_mol": state.getPotentialEnergy()._value,
    "forces_kj_mol_nm": state.getForces(asNumpy=True)._value.tolist(),
    "dU_dk": parameter_derivative(context, "k"),
}
json.dump(expected, open(out + "python_force_system_expected.json", "w"), indent=1)
