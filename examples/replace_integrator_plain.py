"""A standard OpenMM script; exactly one line differs between plain MD and MD with exact learned jumps.

Alanine dipeptide in vacuum (AMBER ff96 from the prmtop/crd files openmmtools ships), 300 K:
minimize, run with StateDataReporter and DCDReporter, save a checkpoint, reload it and continue.
``examples/replace_integrator_plain.py`` uses OpenMM's LangevinMiddleIntegrator,
``examples/replace_integrator.py`` openmm_flowplugin's FlowMCIntegrator, and
``diff examples/replace_integrator_plain.py examples/replace_integrator.py`` shows that one line. The proposal is the trained Boltzmann generator of
:func:`openmm_flowplugin.flows.load_flow`; every 100 steps the integrator tries a jump to one of its
samples, accepted by the Metropolis-Hastings rule, so the Boltzmann distribution stays exact.

Run: ``python examples/replace_integrator.py [output_dir]`` (CPU, well under a minute), or the ``_plain`` twin.
"""

import os
import sys

import openmm
from openmm import app
from openmm.unit import femtoseconds, kelvin, picosecond

from openmm_flowplugin import integrators, load_flow, systems  # noqa: F401 - the plain twin uses only systems

out = sys.argv[1] if len(sys.argv) > 1 else "."
os.makedirs(out, exist_ok=True)

prmtop = app.AmberPrmtopFile(str(systems.data_path("data", "alanine-dipeptide.prmtop")))
inpcrd = app.AmberInpcrdFile(str(systems.data_path("data", "alanine-dipeptide.crd")))
system = prmtop.createSystem(nonbondedMethod=app.NoCutoff, constraints=None)

integrator = openmm.LangevinMiddleIntegrator(300 * kelvin, 1 / picosecond, 1 * femtoseconds)

simulation = app.Simulation(prmtop.topology, system, integrator, openmm.Platform.getPlatformByName("Reference"))
simulation.context.setPositions(inpcrd.positions)
simulation.minimizeEnergy()
simulation.context.setVelocitiesToTemperature(300 * kelvin)
simulation.reporters.append(app.StateDataReporter(sys.stdout, 2000, step=True, potentialEnergy=True, temperature=True, speed=True))
simulation.reporters.append(app.DCDReporter(os.path.join(out, "ala2.dcd"), 500))
simulation.step(10000)
simulation.saveCheckpoint(os.path.join(out, "ala2.chk"))

simulation.loadCheckpoint(os.path.join(out, "ala2.chk"))
simulation.step(10000)
print("jump acceptance rate:", getattr(simulation.integrator, "acceptance_rate", "no jumps (plain MD)"))
