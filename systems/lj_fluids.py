"""Lennard-Jones fluids for excess chemical potentials and solvation free energies.

Builders return a :class:`~openmm_flowplugin.freeenergy.SolvationSystem` whose solute is particle 0:

- :func:`lj_fluid`: N identical particles; the solvation free energy of particle 0 is the excess chemical
  potential mu_ex of the fluid (reference: :mod:`openmm_flowplugin.freeenergy.lj_reference`).
- :func:`lj_solute`: one large Lennard-Jones solute in 512 solvent particles, the benchmark of Máté,
  Fleuret & Bereau's neural thermodynamic integration.

Options are in Lennard-Jones reduced units of the solvent (lengths in sigma, rho* = N sigma^3 / V,
T* = k_B T / epsilon); sigma, epsilon and mass give them physical values (argon-like by default) and accept
:mod:`openmm.unit` quantities. The pair potential is OpenMM's ``NonbondedForce`` with ``CutoffPeriodic``:
12-6 Lennard-Jones truncated at the cutoff, not shifted, no switching function, no dispersion correction,
Lorentz-Berthelot mixing, zero charges.
"""

__all__ = ["lj_fluid", "lj_solute", "ARGON_SIGMA_NM", "ARGON_EPSILON_KJ_MOL", "ARGON_MASS_AMU"]

import math
import numbers

import numpy as np
import openmm
from openmm import app, unit

from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.freeenergy import SolvationSystem
from openmm_flowplugin.systems.molecular_system import MolecularSystem
from openmm_flowplugin.units import MOLAR_GAS_CONSTANT, in_unit

#: Argon-like Lennard-Jones parameters (sigma = 3.4 Å, epsilon / k_B = 120 K; Rahman, Phys. Rev. 136, A405 (1964)).
ARGON_SIGMA_NM = 0.34
ARGON_EPSILON_KJ_MOL = 120.0 * MOLAR_GAS_CONSTANT  # 0.99774 kJ/mol
ARGON_MASS_AMU = 39.948

_JITTER = 0.05  # uniform random displacement of lattice sites, in sigma, per coordinate
_MIN_LATTICE_SPACING = 0.9  # nearest-neighbour distance of the starting lattice, in sigma, below which we refuse


def lj_fluid(n_particles=500, density=0.8, reduced_temperature=1.2, cutoff=2.5, seed=0,
             sigma=ARGON_SIGMA_NM, epsilon=ARGON_EPSILON_KJ_MOL, mass=ARGON_MASS_AMU):
    """A one-component Lennard-Jones fluid whose "solute" is particle 0, for the excess chemical potential.

    Particle 0 is identical to the others: its solvation free energy is the excess chemical potential
    mu_ex of the truncated fluid. The full-potential value is approximately
    ``mu_ex + lj_tail_correction_mu(density, cutoff)`` (both from
    :mod:`openmm_flowplugin.freeenergy.lj_reference`), to compare with the JZG equation of state.

    Parameters
    ----------
    n_particles : int
        N >= 2, solute included.
    density : float or Quantity
        Reduced density rho* = N sigma^3 / V (or a number density, e.g. ``21 / unit.nanometer**3``);
        sets the cubic box edge L = (N / rho*)^(1/3) sigma.
    reduced_temperature : float
        T* = k_B T / epsilon; the temperature is T* epsilon / k_B (144 K for argon at T* = 1.2).
    cutoff : float or Quantity
        r_c in sigma (or a length). The box must be at least 2 r_c.
    seed : int
        Chooses the empty lattice sites (when N is not 4 m^3) and the small random displacements of the
        starting positions (at most 0.05 sigma per coordinate).
    sigma : float or Quantity
        nm (default 0.34).
    epsilon : float or Quantity
        kJ/mol (default 120 K * k_B = 0.99774 kJ/mol).
    mass : float or Quantity
        amu (default 39.948).

    Returns
    -------
    SolvationSystem
        ``solvent`` is the fluid (starting positions on an FCC lattice filling the box), ``vacuum`` is
        ``None`` (one particle has no intramolecular energy), ``solute_atoms == [0]``, ``pressure`` is
        ``None`` (NVT), ``settings`` records every option, ``reduced_units`` gives sigma and epsilon.

    Examples
    --------
    >>> fluid = lj_fluid(n_particles=108, density=0.5)
    >>> fluid.solvent.n_atoms, fluid.solute_atoms, round(fluid.settings["box_sigma"], 3)
    (108, [0], 6.0)
    >>> round(fluid.temperature.value_in_unit(unit.kelvin), 6)
    144.0
    """
    n_particles = _count(n_particles, "n_particles", minimum=2)
    sigma_nm, epsilon_kj, mass_amu = _physical(sigma, epsilon, mass)
    rho = _positive(_reduced_density(density, sigma_nm), "density")
    t_star = _positive(reduced_temperature, "reduced_temperature")
    rc = _positive(_reduced_length(cutoff, sigma_nm, "cutoff"), "cutoff")
    seed = _count(seed, "seed", minimum=0)
    box = (n_particles / rho) ** (1.0 / 3.0)
    _check_box(box, rc, f"density {rho} with {n_particles} particles", "lower the density, add particles or shorten the cutoff")
    positions, n_cells = _lattice_start(n_particles - 1, box, exclusion_radius=0.0, seed=seed)
    settings = dict(
        builder="lj_fluid", n_particles=n_particles, density=rho, reduced_temperature=t_star,
        temperature_K=t_star * epsilon_kj / MOLAR_GAS_CONSTANT, cutoff_sigma=rc, cutoff_nm=rc * sigma_nm,
        box_sigma=box, box_nm=box * sigma_nm, sigma_nm=sigma_nm, epsilon_kJ_mol=epsilon_kj, mass_amu=mass_amu,
        solute_index=0, nonbonded_method="CutoffPeriodic", lennard_jones="truncated at the cutoff, not shifted",
        switching_function=False, dispersion_correction=False, mixing_rule="Lorentz-Berthelot", charges=0.0,
        ensemble="NVT", start="fcc lattice", lattice_cells=n_cells, jitter_sigma=_JITTER, seed=seed,
    )
    description = (f"Lennard-Jones fluid, {n_particles} particles, rho* = {rho:g}, T* = {t_star:g}, truncated "
                   f"(not shifted) at {rc:g} sigma; particle 0 is the solute (mu_ex)")
    return _solvation_system("lj_fluid", settings, positions, [(sigma_nm, epsilon_kj, mass_amu)] * n_particles, description)


def lj_solute(n_solvent=512, box=9.0, solute_sigma=2.0, solute_epsilon=2.0, reduced_temperature=1.0, cutoff=4.5, seed=0,
              sigma=ARGON_SIGMA_NM, epsilon=ARGON_EPSILON_KJ_MOL, mass=ARGON_MASS_AMU, solute_mass=None):
    """A large Lennard-Jones solute in a Lennard-Jones solvent: the neural-TI solvation benchmark.

    The system of Máté, Fleuret & Bereau, "Solvation Free Energies from Neural Thermodynamic
    Integration", `arXiv:2410.15815 <https://arxiv.org/abs/2410.15815>`_ (the follow-up of "Neural
    Thermodynamic Integration", `arXiv:2406.02313 <https://arxiv.org/abs/2406.02313>`_), as defined in
    their code, ``balintmate/neuralTI-solvation``, ``data/target_systems.py`` (``LJ3D_with_solute``),
    written here in OpenMM. Solute B (particle 0) has sigma_B = 2 sigma, epsilon_B = 2 epsilon; the
    Lorentz-Berthelot cross terms are sigma_AB = 1.5 sigma, epsilon_AB = sqrt(2) epsilon.

    What matches their Hamiltonian: 512 solvent particles and one solute, the solute first; sigma_B, epsilon_B
    and Lorentz-Berthelot mixing; the box (9 sigma); T* = 1 (their pair sum uses epsilon = 2 with a factor
    1/4 on the double sum at beta = 1, i.e. epsilon = 1 kT per pair); plain 12-6 potential, not shifted, no
    tail correction; NVT.

    What differs: (1) they use no cutoff: every pair interacts at its minimum-image distance, up to
    sqrt(3)/2 L = 7.8 sigma in the corners of the cube. OpenMM's ``CutoffPeriodic`` needs a spherical
    cutoff of at most L/2, so the default here is 4.5 sigma (= 3 sigma_AB), the largest allowed. Their extra
    solute-solvent pairs beyond 4.5 sigma add about rho* times the integral of u_AB over the corners of the
    cube, -0.83 epsilon (= -0.83 kT, with g(r) = 1 there): their solvation free energy should be about
    0.83 kT more negative than this system's. (A 2.5 sigma cutoff would drop -11.9 epsilon of solute tail.)
    (2) Their box is 1/0.111 = 9.009 sigma (sigma = 0.111 in a unit box; "box size: 9 sigma" in their
    comment), rho* = 0.7002 of solvent against 512/9^3 = 0.7023 here. (3) They sample with Monte Carlo
    (no masses) from spread-out random points; here particles have argon masses and start on a lattice.
    Their soft-core decoupling path is an alchemical choice, not part of this builder.

    Parameters
    ----------
    n_solvent : int
        Number of solvent particles (the solute comes in addition).
    box : float or Quantity
        Cubic box edge in solvent sigma (or a length); at least 2 cutoffs.
    solute_sigma, solute_epsilon : float
        sigma_B / sigma and epsilon_B / epsilon (> 0).
    reduced_temperature : float
        T* = k_B T / epsilon (120 K for argon at T* = 1).
    cutoff : float or Quantity
        r_c in solvent sigma (or a length), for every pair.
    seed : int
        Chooses the empty lattice sites and the small random displacements (at most 0.05 sigma).
    sigma, epsilon, mass : float or Quantity
        Solvent parameters: nm, kJ/mol, amu (argon-like by default).
    solute_mass : float or Quantity, optional
        amu; default: ``mass``.

    Returns
    -------
    SolvationSystem
        Solute index 0, ``vacuum=None``, ``pressure=None``. Solvent lattice sites closer to the solute than
        the minimum of its pair potential (2^(1/6) sigma_AB) start empty.

    Examples
    --------
    >>> solute = lj_solute()
    >>> solute.solvent.n_atoms, solute.solute_atoms, round(solute.settings["solvent_density"], 4)
    (513, [0], 0.7023)
    """
    n_solvent = _count(n_solvent, "n_solvent", minimum=1)
    sigma_nm, epsilon_kj, mass_amu = _physical(sigma, epsilon, mass)
    solute_mass_amu = mass_amu if solute_mass is None else _positive(in_unit(solute_mass, unit.dalton, "solute_mass"), "solute_mass")
    box_sigma = _positive(_reduced_length(box, sigma_nm, "box"), "box")
    s_b = _positive(solute_sigma, "solute_sigma")
    e_b = _positive(solute_epsilon, "solute_epsilon")
    t_star = _positive(reduced_temperature, "reduced_temperature")
    rc = _positive(_reduced_length(cutoff, sigma_nm, "cutoff"), "cutoff")
    seed = _count(seed, "seed", minimum=0)
    _check_box(box_sigma, rc, f"box {box_sigma} sigma", "enlarge the box or shorten the cutoff")
    sigma_ab = 0.5 * (1.0 + s_b)
    exclusion = 2.0 ** (1.0 / 6.0) * sigma_ab
    positions, n_cells = _lattice_start(n_solvent, box_sigma, exclusion_radius=exclusion, seed=seed)
    settings = dict(
        builder="lj_solute", n_solvent=n_solvent, n_particles=n_solvent + 1, box_sigma=box_sigma, box_nm=box_sigma * sigma_nm,
        solvent_density=n_solvent / box_sigma**3, solute_sigma=s_b, solute_epsilon=e_b, sigma_AB=sigma_ab,
        epsilon_AB=math.sqrt(e_b), reduced_temperature=t_star, temperature_K=t_star * epsilon_kj / MOLAR_GAS_CONSTANT,
        cutoff_sigma=rc, cutoff_nm=rc * sigma_nm, sigma_nm=sigma_nm, epsilon_kJ_mol=epsilon_kj, mass_amu=mass_amu,
        solute_mass_amu=solute_mass_amu, solute_index=0, nonbonded_method="CutoffPeriodic",
        lennard_jones="truncated at the cutoff, not shifted", switching_function=False, dispersion_correction=False,
        mixing_rule="Lorentz-Berthelot", charges=0.0, ensemble="NVT", start="fcc lattice", lattice_cells=n_cells,
        exclusion_radius_sigma=exclusion, jitter_sigma=_JITTER, seed=seed,
        reference="Máté, Fleuret & Bereau, arXiv:2410.15815; balintmate/neuralTI-solvation LJ3D_with_solute",
    )
    parameters = [(s_b * sigma_nm, e_b * epsilon_kj, solute_mass_amu)] + [(sigma_nm, epsilon_kj, mass_amu)] * n_solvent
    description = (f"Lennard-Jones solute (sigma {s_b:g}, epsilon {e_b:g}) in {n_solvent} solvent particles, box {box_sigma:g} sigma, "
                   f"T* = {t_star:g}, truncated (not shifted) at {rc:g} sigma")
    return _solvation_system("lj_solute", settings, positions, parameters, description)


#: MD time step in units of tau = sigma sqrt(m / epsilon) (10 fs for argon: tau = 2.15 ps), the usual LJ choice
TIMESTEP_TAU = 0.005


def _solvation_system(name, settings, positions_sigma, parameters, description):
    """Build the System (one NonbondedForce), a Topology (one residue per particle) and the SolvationSystem."""
    sigma_nm = settings["sigma_nm"]
    edge = settings["box_nm"]
    tau_ps = sigma_nm * math.sqrt(settings["mass_amu"] / settings["epsilon_kJ_mol"])  # nm sqrt(amu / (kJ/mol)) = ps
    settings["timestep_ps"] = TIMESTEP_TAU * tau_ps
    vectors = [openmm.Vec3(edge, 0, 0), openmm.Vec3(0, edge, 0), openmm.Vec3(0, 0, edge)] * unit.nanometer
    system = openmm.System()
    system.setDefaultPeriodicBoxVectors(*vectors)
    force = openmm.NonbondedForce()
    force.setNonbondedMethod(openmm.NonbondedForce.CutoffPeriodic)
    force.setCutoffDistance(settings["cutoff_nm"])
    force.setUseSwitchingFunction(False)
    force.setUseDispersionCorrection(False)
    topology = app.Topology()
    chain = topology.addChain()
    for i, (particle_sigma, particle_epsilon, particle_mass) in enumerate(parameters):
        system.addParticle(particle_mass)
        force.addParticle(0.0, particle_sigma, particle_epsilon)
        residue = topology.addResidue("SLT" if i == 0 else "LJ", chain)
        topology.addAtom("S" if i == 0 else "Ar", app.element.argon, residue)
    system.addForce(force)
    topology.setPeriodicBoxVectors(vectors)
    molecular_system = MolecularSystem(
        name=name,
        system=system,
        topology=topology,
        positions=unit.Quantity(np.asarray(positions_sigma, dtype=np.float64) * sigma_nm, unit.nanometer),
        temperature=settings["temperature_K"] * unit.kelvin,
        description=description,
        reference=None,
        options=dict(settings),
    )
    return SolvationSystem(name, solvent=molecular_system, vacuum=None, solute_atoms=[0], pressure=None, settings=settings,
                           reduced_units={"sigma_nm": sigma_nm, "epsilon_kJ_mol": settings["epsilon_kJ_mol"]})


def _lattice_start(n_solvent, box, exclusion_radius, seed):
    """Solute at the FCC site nearest the box centre, solvent on randomly chosen free sites; (n+1, 3) in sigma.

    Uses the coarsest FCC lattice (m^3 cells of 4 sites filling the box) with enough sites at least
    ``exclusion_radius`` from the solute; each position then moves by up to ``_JITTER`` per coordinate.
    """
    rng = np.random.default_rng(seed)
    n_cells = max(1, math.ceil(((n_solvent + 1) / 4.0) ** (1.0 / 3.0) - 1e-9))
    while True:
        spacing = box / n_cells
        nearest = spacing / math.sqrt(2.0)
        if nearest < _MIN_LATTICE_SPACING:
            raise InvalidInputError(
                f"cannot place 1 solute and {n_solvent} solvent particles in a box of {box:.4g} sigma without overlaps: the "
                f"starting FCC lattice would need neighbours {nearest:.3f} sigma apart (< {_MIN_LATTICE_SPACING}). Lower the "
                f"density (fewer particles or a larger box).")
        cells = np.stack(np.meshgrid(*(np.arange(n_cells),) * 3, indexing="ij"), axis=-1).reshape(-1, 1, 3)
        basis = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]]) + 0.25
        sites = ((cells + basis) * spacing).reshape(-1, 3)
        solute = int(np.argmin(np.sum((sites - box / 2.0) ** 2, axis=1)))
        delta = sites - sites[solute]
        delta -= box * np.round(delta / box)
        distance = np.sqrt(np.sum(delta**2, axis=1))
        free = np.flatnonzero(distance >= exclusion_radius)
        free = free[free != solute]
        if free.size >= n_solvent:
            break
        n_cells += 1
    chosen = np.sort(rng.choice(free, size=n_solvent, replace=False))
    positions = np.vstack([sites[solute], sites[chosen]])
    positions += rng.uniform(-_JITTER, _JITTER, size=positions.shape)
    return np.mod(positions, box), n_cells


def _check_box(box, cutoff, what, fix):
    if box < 2.0 * cutoff:
        raise InvalidInputError(
            f"{what} gives a cubic box of {box:.15g} sigma, smaller than twice the cutoff ({cutoff:.15g} sigma): OpenMM's "
            f"periodic cutoff needs a box of at least {2 * cutoff:.15g} sigma; {fix}.")


def _physical(sigma, epsilon, mass):
    sigma_nm = _positive(in_unit(sigma, unit.nanometer, "sigma"), "sigma")
    epsilon_kj = _positive(in_unit(epsilon, unit.kilojoule_per_mole, "epsilon"), "epsilon")
    mass_amu = _positive(in_unit(mass, unit.dalton, "mass"), "mass")
    return sigma_nm, epsilon_kj, mass_amu


def _reduced_length(value, sigma_nm, name):
    return in_unit(value, unit.nanometer, name) / sigma_nm if unit.is_quantity(value) else value


def _reduced_density(value, sigma_nm):
    return in_unit(value, unit.nanometer**-3, "density") * sigma_nm**3 if unit.is_quantity(value) else value


def _positive(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"{name} must be a finite number > 0, got {value!r}.")
    return float(value)


def _count(value, name, minimum):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InvalidInputError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)
