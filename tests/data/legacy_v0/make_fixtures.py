"""Written with openmm_flowplugin before the subpackage layout (commit 42e7776): storage + System XML fixtures."""
import openmm
from openmm import unit
from openmmtools import cache, mcmc
from openmmtools.multistate import MultiStateReporter, ReplicaExchangeSampler
from openmm_flowplugin import systems
from openmm_flowplugin.moves import FlowMCMove
from openmm_flowplugin.proposals import GaussianProposal
from openmm_flowplugin.forces import as_openmm_force, HarmonicRestraint

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

system = openmm.System(); system.addParticle(1.0); system.addParticle(1.0)
system.addForce(as_openmm_force(HarmonicRestraint([[0.0, 0.0, 0.0]]), particles=[0], backend="python"))
system.addForce(as_openmm_force(HarmonicRestraint([[0.1, 0.0, 0.0]]), particles=[1], global_parameters={"k": 100.0}, backend="python"))
open(out + "python_force_system.xml", "w").write(openmm.XmlSerializer.serialize(system))
