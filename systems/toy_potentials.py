"""One-particle toy systems with exact reference densities.

Each potential is written once as an OpenMM ``CustomExternalForce`` expression and once in numpy
(for quadrature); ``tests/test_systems.py`` checks that the two agree.
"""

import numpy as np
import openmm
from openmm import app, unit

from openmm_flowplugin.systems.molecular_system import MolecularSystem
from openmm_flowplugin.systems.references import GaussianReference, PlanarReference
from openmm_flowplugin.units import in_unit, kT

# Mueller-Brown parameters (Mueller & Brown, Theor. Chim. Acta 53, 75 (1979)).
_MB_A = (-200.0, -100.0, -170.0, 15.0)
_MB_a = (-1.0, -1.0, -6.5, 0.7)
_MB_b = (0.0, 0.0, 11.0, 0.6)
_MB_c = (-10.0, -10.0, -6.5, 0.7)
_MB_x0 = (1.0, 0.0, -0.5, -1.0)
_MB_y0 = (0.0, 0.5, 1.5, 1.0)


def _particle_system(name, expression, parameters, mass, temperature, positions, description, reference, options):
    system = openmm.System()
    topology = app.Topology()
    chain = topology.addChain()
    for i in range(len(positions)):
        system.addParticle(mass)
        residue = topology.addResidue("PRT", chain)
        topology.addAtom(f"P{i}", app.element.argon, residue)
    force = openmm.CustomExternalForce(expression)
    for parameter, value in parameters.items():
        force.addGlobalParameter(parameter, value)
    for i in range(len(positions)):
        force.addParticle(i, [])
    system.addForce(force)
    if not unit.is_quantity(temperature):
        temperature = temperature * unit.kelvin
    return MolecularSystem(
        name=name,
        system=system,
        topology=topology,
        positions=unit.Quantity(np.asarray(positions, dtype=np.float64), unit.nanometer),
        temperature=temperature,
        description=description,
        reference=reference,
        options=options,
    )


def harmonic_oscillator(n_particles=1, spring_constant=1000.0, mass=39.948, temperature=300.0):
    """Independent particles in isotropic wells U = K/2 |r - r0|^2, r0 spaced 1 nm apart along x.

    Parameters
    ----------
    n_particles : int
    spring_constant : float or Quantity
        K in kJ/mol/nm^2 (default gives a standard deviation of 0.05 nm per coordinate at 300 K).
    mass : float or Quantity
        amu.
    temperature : float or Quantity
        K.
    """
    K = float(in_unit(spring_constant, unit.kilojoule_per_mole / unit.nanometer**2, "spring_constant"))
    centres = np.zeros((n_particles, 3))
    centres[:, 0] = np.arange(n_particles, dtype=np.float64)
    expression = "0.5*ho_K*((x-x0)^2 + (y-y0)^2 + (z-z0)^2)"
    system = openmm.System()
    topology = app.Topology()
    chain = topology.addChain()
    force = openmm.CustomExternalForce(expression)
    force.addGlobalParameter("ho_K", K)
    for name in ("x0", "y0", "z0"):
        force.addPerParticleParameter(name)
    for i, centre in enumerate(centres):
        system.addParticle(mass)
        topology.addAtom(f"P{i}", app.element.argon, topology.addResidue("PRT", chain))
        force.addParticle(i, centre.tolist())
    system.addForce(force)
    temperature = temperature if unit.is_quantity(temperature) else temperature * unit.kelvin
    std = np.sqrt(kT(temperature) / K)
    return MolecularSystem(
        name="harmonic_oscillator",
        system=system,
        topology=topology,
        positions=unit.Quantity(centres.copy(), unit.nanometer),
        temperature=temperature,
        description=f"{n_particles} particle(s) in harmonic wells, K = {K} kJ/mol/nm^2",
        reference=GaussianReference(centres, std),
        options=dict(n_particles=n_particles, spring_constant=K, mass=mass, temperature=temperature),
    )


def double_well_potential(x, y, barrier=10.0, half_width=1.0, y_spring_constant=20.0):
    """U(x, y) = h ((x/a)^2 - 1)^2 + k_y y^2 / 2 in kJ/mol, numpy version."""
    return barrier * ((x / half_width) ** 2 - 1.0) ** 2 + 0.5 * y_spring_constant * y**2


def double_well_2d(barrier=10.0, half_width=1.0, y_spring_constant=20.0, z_spring_constant=100.0, mass=12.0, temperature=300.0):
    """One particle in a double well along x (minima at x = +-a), harmonic along y, z restrained.

    Parameters
    ----------
    barrier : float
        h in kJ/mol (default ~4 kT at 300 K).
    half_width : float
        a in nm.
    y_spring_constant, z_spring_constant : float
        kJ/mol/nm^2.
    mass : float
        amu.
    temperature : float or Quantity
    """
    # Parameter names carry a prefix: global names like "a" or "kT" clash with integrators' own variables.
    expression = "dw_h*((x/dw_a)^2 - 1)^2 + 0.5*dw_ky*y^2 + 0.5*dw_kz*z^2"
    parameters = dict(dw_h=barrier, dw_a=half_width, dw_ky=y_spring_constant, dw_kz=z_spring_constant)
    y_extent = 12.0 * np.sqrt(kT(temperature) / y_spring_constant)
    reference = PlanarReference(
        lambda x, y: double_well_potential(x, y, barrier, half_width, y_spring_constant),
        z_spring_constant,
        temperature,
        bounds=((-2.5 * half_width, 2.5 * half_width), (-y_extent, y_extent)),
    )
    return _particle_system(
        "double_well_2d", expression, parameters, mass, temperature, [[-half_width, 0.0, 0.0]],
        f"Double well along x, barrier {barrier} kJ/mol", reference,
        dict(barrier=barrier, half_width=half_width, y_spring_constant=y_spring_constant, z_spring_constant=z_spring_constant,
             mass=mass, temperature=temperature),
    )


def mueller_brown_potential(x, y, energy_scale=0.15):
    """Mueller-Brown energy in kJ/mol (numpy), ``energy_scale`` kJ/mol per original unit."""
    total = 0.0
    for A, a, b, c, x0, y0 in zip(_MB_A, _MB_a, _MB_b, _MB_c, _MB_x0, _MB_y0):
        total = total + A * np.exp(a * (x - x0) ** 2 + b * (x - x0) * (y - y0) + c * (y - y0) ** 2)
    return energy_scale * total


def mueller_brown(energy_scale=0.15, z_spring_constant=100.0, mass=12.0, temperature=300.0):
    """One particle on the Mueller-Brown surface, lengths in nm, z restrained.

    Parameters
    ----------
    energy_scale : float
        kJ/mol per original Mueller-Brown energy unit (0.15 puts the main barrier near 6 kT at 300 K).
    z_spring_constant : float
        kJ/mol/nm^2.
    mass : float
        amu.
    temperature : float or Quantity
    """
    terms = [
        f"({A})*exp(({a})*(x-({x0}))^2 + ({b})*(x-({x0}))*(y-({y0})) + ({c})*(y-({y0}))^2)"
        for A, a, b, c, x0, y0 in zip(_MB_A, _MB_a, _MB_b, _MB_c, _MB_x0, _MB_y0)
    ]
    expression = f"mb_scale*({' + '.join(terms)}) + 0.5*mb_kz*z^2"
    parameters = dict(mb_scale=energy_scale, mb_kz=z_spring_constant)
    reference = PlanarReference(
        lambda x, y: mueller_brown_potential(x, y, energy_scale),
        z_spring_constant,
        temperature,
        bounds=((-3.5, 2.5), (-2.0, 4.0)),
    )
    return _particle_system(
        "mueller_brown", expression, parameters, mass, temperature, [[-0.558, 1.442, 0.0]],
        f"Mueller-Brown surface, {energy_scale} kJ/mol per unit", reference,
        dict(energy_scale=energy_scale, z_spring_constant=z_spring_constant, mass=mass, temperature=temperature),
    )
