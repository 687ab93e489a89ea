"""Alchemical legs of a solvation cycle: openmmtools' ``AbsoluteAlchemicalFactory`` and a λ schedule.

The solute's electrostatics are annihilated (off first: openmmtools refuses to decouple them under
PME) and its sterics decoupled with soft-core Lennard-Jones; the vacuum leg uses the same alchemical
region and treatment, so the two decoupled end states are the same molecule and the cycle closes.
"""

__all__ = ["LambdaSchedule", "default_schedule", "AlchemicalLeg", "alchemical_leg"]

from dataclasses import dataclass, field

import numpy as np
import openmm
from openmm import unit

from .._quiet import quiet_banners
from ..errors import InvalidInputError

#: Sterics λ of the default schedule: denser near 0, where the soft-core solute's free energy changes fastest.
DEFAULT_STERICS = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.35, 0.3, 0.25, 0.2, 0.15, 0.1, 0.05, 0.0)
DEFAULT_ELECTROSTATICS = (1.0, 0.75, 0.5, 0.25, 0.0)


@dataclass(frozen=True)
class LambdaSchedule:
    """The λ values of the alchemical states, fully coupled (λ = 1) first, decoupled (λ = 0) last.

    Parameters
    ----------
    electrostatics, sterics : sequence of float
        ``lambda_electrostatics`` and ``lambda_sterics`` per state (openmmtools' ``AlchemicalState``),
        each non-increasing from 1 to 0; the electrostatics reach 0 before the sterics leave 1.

    Examples
    --------
    >>> schedule = LambdaSchedule(electrostatics=[1, 0.5, 0, 0, 0], sterics=[1, 1, 1, 0.5, 0])
    >>> schedule.n_states, schedule.stage_boundary
    (5, 2)
    """

    electrostatics: tuple
    sterics: tuple

    def __post_init__(self):
        electrostatics = tuple(float(v) for v in self.electrostatics)
        sterics = tuple(float(v) for v in self.sterics)
        object.__setattr__(self, "electrostatics", electrostatics)
        object.__setattr__(self, "sterics", sterics)
        if len(electrostatics) != len(sterics) or len(sterics) < 2:
            raise InvalidInputError(
                f"a schedule needs as many electrostatics as sterics values, at least 2; got {len(electrostatics)} and {len(sterics)}.")
        for name, values in (("electrostatics", electrostatics), ("sterics", sterics)):
            if not all(0.0 <= v <= 1.0 for v in values) or values[0] != 1.0 or values[-1] != 0.0:
                raise InvalidInputError(f"{name} λ values must lie in [0, 1], start at 1 (coupled) and end at 0 (decoupled); got {values}.")
            if any(b > a for a, b in zip(values, values[1:])):
                raise InvalidInputError(f"{name} λ values must not increase along the schedule; got {values}.")
        if any(s < 1.0 and e > 0.0 for e, s in zip(electrostatics, sterics)):
            raise InvalidInputError("the electrostatics must be off (λ = 0) before the sterics are turned down: with PME, "
                                    "openmmtools can only annihilate the charges of a fully interacting solute.")
        if len(set(zip(electrostatics, sterics))) != len(sterics):
            raise InvalidInputError("the schedule repeats a state; remove the duplicate.")

    @property
    def n_states(self):
        """Number of alchemical states."""
        return len(self.sterics)

    @property
    def stage_boundary(self):
        """Index of the first state with the electrostatics off (the sterics stage starts there)."""
        return next(i for i, e in enumerate(self.electrostatics) if e == 0.0)

    def to_dict(self):
        """Plain data, e.g. for JSON."""
        return {"electrostatics": list(self.electrostatics), "sterics": list(self.sterics)}


def default_schedule(charged=True, electrostatics=DEFAULT_ELECTROSTATICS, sterics=DEFAULT_STERICS):
    """Electrostatics off in ``len(electrostatics) - 1`` steps, then the sterics along ``sterics``.

    ``charged=False`` (a solute without partial charges, e.g. Lennard-Jones) skips the electrostatics stage.

    Examples
    --------
    >>> default_schedule().n_states, default_schedule(charged=False).n_states
    (19, 15)
    """
    if not charged:
        # charges are all zero: the electrostatics λ changes nothing, and is 0 once the sterics move
        return LambdaSchedule(electrostatics=[1.0] + [0.0] * (len(sterics) - 1), sterics=sterics)
    electrostatics = list(electrostatics)
    return LambdaSchedule(electrostatics=electrostatics + [0.0] * (len(sterics) - 1),
                          sterics=[1.0] * (len(electrostatics) - 1) + list(sterics))


@dataclass
class AlchemicalLeg:
    """One leg of the cycle: the alchemical System and one openmmtools compound state per λ.

    Attributes
    ----------
    name : str
        ``"solvent"`` or ``"vacuum"``.
    molecular_system : MolecularSystem
        The physical system the leg was made from.
    alchemical_system : openmm.System
    solute_atoms : list of int
    schedule : LambdaSchedule
    thermodynamic_states : list of openmmtools.states.CompoundThermodynamicState
        One per λ, fully coupled first.
    pressure : openmm.unit.Quantity or None
    record : dict
        Plain data identifying anything else the states depend on (e.g. learned weights); stored with the
        leg's run, so storage made with something else is never resumed.
    """

    name: str
    molecular_system: object
    alchemical_system: openmm.System
    solute_atoms: list
    schedule: LambdaSchedule
    thermodynamic_states: list = field(repr=False)
    pressure: unit.Quantity = None
    record: dict = field(default_factory=dict)

    def sampler_state(self):
        """An openmmtools ``SamplerState`` at the system's starting positions and box."""
        return self.molecular_system.sampler_state()


def _solute_charges(system, atoms):
    for force in system.getForces():
        if isinstance(force, openmm.NonbondedForce):
            return np.array([force.getParticleParameters(i)[0].value_in_unit(unit.elementary_charge) for i in atoms])
    return np.zeros(len(atoms))


def alchemical_leg(molecular_system, solute_atoms, schedule=None, name="solvent", pressure=None, softcore_alpha=0.5):
    """Build one alchemical leg of a solvation cycle from a physical system.

    Parameters
    ----------
    molecular_system : MolecularSystem
        The solute in solvent (periodic; PME, cutoff or reaction field) or the solute alone.
    solute_atoms : sequence of int
        The atoms whose interactions with the rest are turned off.
    schedule : LambdaSchedule, optional
        Default: :func:`default_schedule`, without its electrostatics stage if the solute has no charges.
    name : str
    pressure : openmm.unit.Quantity, optional
        NPT states (the System must hold a ``MonteCarloBarostat``). Default: the barostat's pressure if the
        System holds one (openmmtools samples at it anyway), else constant volume.
    softcore_alpha : float
        openmmtools' soft-core Lennard-Jones parameter.

    Returns
    -------
    AlchemicalLeg

    Examples
    --------
    >>> from openmm_flowplugin.freeenergy import solvation_system
    >>> fluid = solvation_system("lj", n_particles=64, density=0.5)
    >>> leg = alchemical_leg(fluid.solvent, fluid.solute_atoms)
    >>> leg.schedule.n_states, len(leg.thermodynamic_states)
    (15, 15)
    """
    with quiet_banners():
        from openmmtools import alchemy, states

    atoms = [int(i) for i in solute_atoms]
    system = molecular_system.system
    if not any(isinstance(f, openmm.NonbondedForce) for f in system.getForces()):
        raise InvalidInputError(f"{molecular_system.name} has no NonbondedForce: nothing couples the solute to its surroundings.")
    if pressure is None:
        barostat = next((f for f in system.getForces() if isinstance(f, openmm.MonteCarloBarostat)), None)
        pressure = barostat.getDefaultPressure() if barostat is not None else None
    charged = bool(np.any(_solute_charges(system, atoms) != 0.0))
    schedule = default_schedule(charged=charged) if schedule is None else schedule
    factory = alchemy.AbsoluteAlchemicalFactory(alchemical_pme_treatment="exact")
    region = alchemy.AlchemicalRegion(alchemical_atoms=atoms, annihilate_electrostatics=True, annihilate_sterics=False,
                                      softcore_alpha=softcore_alpha)
    alchemical_system = factory.create_alchemical_system(system, region)
    thermodynamic = states.ThermodynamicState(alchemical_system, temperature=molecular_system.temperature, pressure=pressure)
    compound_states = []
    for electrostatics, sterics in zip(schedule.electrostatics, schedule.sterics):
        alchemical_state = alchemy.AlchemicalState.from_system(alchemical_system)
        if alchemical_state.lambda_electrostatics is not None:
            alchemical_state.lambda_electrostatics = electrostatics
        alchemical_state.lambda_sterics = sterics
        compound_states.append(states.CompoundThermodynamicState(thermodynamic, composable_states=[alchemical_state]))
    return AlchemicalLeg(name, molecular_system, alchemical_system, atoms, schedule, compound_states, pressure)
