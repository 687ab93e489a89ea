"""Widom test-particle insertion: an exact estimator of a Lennard-Jones solute's excess chemical potential,
independent of openmmtools (plain OpenMM MD of the solvent, NumPy pair energies of random insertions)."""

import math

import numpy as np
import openmm
from openmm import unit


def widom_mu(fluid, n_frames=400, steps_per_frame=100, insertions=400, seed=3):
    """mu_ex / kT by Widom insertion, with its standard error from 20 blocks of frames."""
    system = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(fluid.solvent.system))
    nonbonded = next(f for f in system.getForces() if isinstance(f, openmm.NonbondedForce))
    charge, sigma, epsilon = nonbonded.getParticleParameters(0)
    nonbonded.setParticleParameters(0, charge, sigma, 0.0)  # the solute does not interact: N - 1 particles remain
    sig = sigma.value_in_unit(unit.nanometer)
    eps = nonbonded.getParticleParameters(1)[2].value_in_unit(unit.kilojoule_per_mole)
    cutoff = nonbonded.getCutoffDistance().value_in_unit(unit.nanometer)
    kT = fluid.solvent.kT
    integrator = openmm.LangevinMiddleIntegrator(fluid.temperature, 5.0, 0.01)
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(fluid.solvent.positions)
    context.setVelocitiesToTemperature(fluid.temperature, seed)
    integrator.step(2000)
    box = context.getState().getPeriodicBoxVectors(asNumpy=True)._value[0, 0]
    rng = np.random.default_rng(seed)
    boltzmann = np.empty(n_frames)
    for frame in range(n_frames):
        integrator.step(steps_per_frame)
        x = context.getState(positions=True).getPositions(asNumpy=True)._value[1:]
        trial = rng.uniform(0, box, (insertions, 3))
        d = trial[:, None, :] - x[None, :, :]
        r2 = ((d - box * np.round(d / box)) ** 2).sum(-1)
        s6 = (sig**2 / r2) ** 3
        energy = np.where(r2 < cutoff**2, 4 * eps * (s6 * s6 - s6), 0.0).sum(1)
        boltzmann[frame] = np.exp(-energy / kT).mean()
    blocks = boltzmann.reshape(20, -1).mean(1)
    mean, se = blocks.mean(), blocks.std(ddof=1) / math.sqrt(len(blocks))
    return -math.log(mean), se / mean
