"""Solvation free energy of a :class:`SolvationSystem` by the alchemical MBAR route, with a report.

``ΔG_solv = ΔF_vacuum - ΔF_solvent``, each leg's ``ΔF = f(decoupled) - f(coupled)`` estimated by MBAR
over replica exchange in its λ states (:mod:`~openmm_flowplugin.freeenergy.mbar_route`). The output
folder holds each leg's resumable storage, ``results.json``, ``results.md``, ``overlap.png`` and ``dudl.png``
(⟨∂u/∂λ⟩ against λ at each leg's states, from the stored configurations: ``_dudl``).
"""

__all__ = ["SolvationResult", "solvation_free_energy"]

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from openmm import unit

from ..errors import InvalidInputError
from ._dudl import derivative_profiles, write_dudl_plot
from .alchemical import alchemical_leg
from .mbar_route import analyze_leg, kT_in, on_root_rank, resolved_root_seed, run_leg


@dataclass
class SolvationResult:
    """ΔG of solvation (kT and kcal/mol) with its standard error, per-leg estimates and the run's costs.

    Attributes
    ----------
    name : str
    delta_g, error : float
        kT; ``delta_g_kcal``/``error_kcal`` give kcal/mol, ``delta_g_reduced`` units of epsilon for LJ.
    temperature_K : float
    legs : dict
        ``{"solvent": LegEstimate, "vacuum": LegEstimate}`` (no vacuum leg for a single LJ particle).
    costs : dict
        Per leg: iterations, states, MD steps and energy evaluations, CPU seconds of this process.
    settings : dict
        The system's settings and the run's (schedule, MD steps, time step...).
    reduced_units : dict or None
        ``{"sigma_nm", "epsilon_kJ_mol"}`` for LJ systems.
    dudl : dict or None
        Per leg, a list of ``_dudl.DerivativeProfile``: ⟨∂u/∂λ⟩ (kT) at the states of each stage
        (electrostatics, sterics), the values drawn in ``dudl.png``.
    """

    name: str
    delta_g: float
    error: float
    temperature_K: float
    legs: dict = field(repr=False)
    costs: dict = field(repr=False)
    settings: dict = field(repr=False)
    reduced_units: dict = None
    dudl: dict = field(default=None, repr=False)

    @property
    def delta_g_kcal(self):
        return self.delta_g * kT_in(self.temperature_K)

    @property
    def error_kcal(self):
        return self.error * kT_in(self.temperature_K)

    @property
    def delta_g_reduced(self):
        """ΔG in units of the LJ epsilon (``None`` without reduced units)."""
        if not self.reduced_units:
            return None
        return self.delta_g * kT_in(self.temperature_K, unit.kilojoule_per_mole) / self.reduced_units["epsilon_kJ_mol"]

    @property
    def lj_chemical_potential(self):
        """For an LJ fluid preset (particle 0 the solute): μ_ex = ΔG in ε for the truncated potential, with the
        analytic tail correction added (the full LJ fluid), and the Johnson–Zollweg–Gubbins equation of state's
        value for the full fluid; ``None`` for other systems."""
        if self.settings.get("builder") != "lj_fluid" or self.delta_g_reduced is None:
            return None
        from .lj_reference import jzg_excess_chemical_potential, lj_tail_correction_mu

        density, temperature = self.settings["density"], self.settings["reduced_temperature"]
        error = self.error * kT_in(self.temperature_K, unit.kilojoule_per_mole) / self.reduced_units["epsilon_kJ_mol"]  # kT → ε
        tail = lj_tail_correction_mu(density, self.settings["cutoff_sigma"])
        return {"mu_ex_truncated_epsilon": self.delta_g_reduced, "error_epsilon": error, "tail_correction_epsilon": tail,
                "mu_ex_full_lj_epsilon": self.delta_g_reduced + tail,
                "jzg_full_lj_epsilon": jzg_excess_chemical_potential(density, temperature)}

    def to_dict(self):
        return {"name": self.name, "method": "alchemical MBAR (openmmtools replica exchange + pymbar)",
                "delta_g_kT": self.delta_g, "error_kT": self.error, "delta_g_kcal_mol": self.delta_g_kcal,
                "error_kcal_mol": self.error_kcal, "delta_g_epsilon": self.delta_g_reduced, "temperature_K": self.temperature_K,
                "legs": {name: leg.to_dict() for name, leg in self.legs.items()}, "costs": self.costs, "settings": self.settings,
                "dudl": {name: [p.to_dict() for p in profiles] for name, profiles in (self.dudl or {}).items()},
                "lj_chemical_potential": self.lj_chemical_potential}

    def to_markdown(self):
        kcal = kT_in(self.temperature_K)
        lines = [f"# Solvation free energy of {self.name} (alchemical MBAR)", "",
                 f"ΔG_solv = {self.delta_g_kcal:.3f} ± {self.error_kcal:.3f} kcal/mol "
                 f"({self.delta_g:.3f} ± {self.error:.3f} kT at {self.temperature_K:.2f} K)"
                 + (f" = {self.delta_g_reduced:.4f} ε" if self.reduced_units else ""), ""]
        mu = self.lj_chemical_potential
        if mu is not None:
            lines += [f"Excess chemical potential of the LJ fluid (ρ* = {self.settings['density']:g}, T* = "
                      f"{self.settings['reduced_temperature']:g}): μ_ex = {mu['mu_ex_truncated_epsilon']:.3f} ± {mu['error_epsilon']:.3f} ε "
                      f"for the potential truncated at {self.settings['cutoff_sigma']:g} σ; with the analytic tail correction "
                      f"({mu['tail_correction_epsilon']:.3f} ε) {mu['mu_ex_full_lj_epsilon']:.3f} ± {mu['error_epsilon']:.3f} ε for the "
                      f"full LJ fluid, against {mu['jzg_full_lj_epsilon']:.3f} ε from the Johnson–Zollweg–Gubbins equation of state.", ""]
        lines += ["| leg | ΔF (decouple), kT | ± | kcal/mol | states | min. neighbour overlap | iterations | equil. | g | uncorrelated | CPU s |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, leg in self.legs.items():
            cost = self.costs[name]
            lines.append(f"| {name} | {leg.delta_f:.3f} | {leg.error:.3f} | {leg.delta_f * kcal:.3f} | {len(leg.overlap)} | "
                         f"{leg.min_neighbour_overlap:.3f} | {leg.n_iterations} | {leg.n_equilibration} | "
                         f"{leg.statistical_inefficiency:.2f} | {leg.n_uncorrelated} | {cost['cpu_seconds']:.0f} |")
        lines += ["", "ΔG_solv = ΔF(vacuum) − ΔF(solvent); ΔF = f(decoupled) − f(coupled). Forward / reverse convergence "
                  "(ΔF in kT from the first / last fraction of the uncorrelated samples):", ""]
        for name, leg in self.legs.items():
            pairs = ", ".join(f"{f:.0%}: {a:.3f} / {b:.3f}" for (f, a, _), (_, b, _) in zip(leg.forward, leg.reverse))
            lines.append(f"- {name}: {pairs}")
        lines += ["", "Standard error (kT) of ΔF between neighbouring states, the three largest per leg (add or spread states there "
                  "to lower the leg's error):", ""]
        for name, leg in self.legs.items():
            largest = sorted(range(len(leg.interval_errors)), key=lambda k: -leg.interval_errors[k])[:3]
            lines.append(f"- {name}: " + ", ".join(f"states {k} → {k + 1}: {leg.interval_errors[k]:.3f}" for k in largest))
        if self.dudl:
            lines += ["", "⟨∂u/∂λ⟩ (kT) at the states, from the stored configurations (dudl.png):", ""]
            for name, profiles in self.dudl.items():
                for p in profiles:
                    values = ", ".join(f"{x:g}: {'–' if m is None or m != m else f'{m:.2f}'}" for x, m in zip(p.lambdas, p.mean))
                    lines.append(f"- {name}, {p.parameter}: {values}")
        return "\n".join(lines) + "\n"


def solvation_free_energy(solvation_system, output_dir, n_iterations=500, md_steps=500, timestep=None, collision_rate=1.0,
                          schedule=None, checkpoint_interval=10, equilibration_iterations=20, platform=None, progress=None,
                          seed=None):
    """ΔG of solvation of ``solvation_system`` by the alchemical MBAR route; resumable in ``output_dir``.

    Parameters
    ----------
    solvation_system : SolvationSystem
    output_dir : str or Path
        Holds ``solvent.nc``/``vacuum.nc`` (openmmtools storage, resumed when present), ``results.json``,
        ``results.md``, ``overlap.png`` and ``dudl.png`` (⟨∂u/∂λ⟩ against λ_electrostatics and λ_sterics at
        each leg's states, with neural TI's ⟨∂u/∂t⟩ if :func:`~.neural_ti.neural_ti_free_energy` ran in the
        same folder; the derivatives are finite differences at the checkpointed configurations, costing two
        or three evaluations of the λ-dependent forces per state and checkpoint, see ``_dudl``).
    n_iterations : int
        Replica-exchange iterations per leg (total, including those already stored).
    md_steps : int
        Langevin steps per iteration and replica.
    timestep : float or Quantity, optional
        fs if a bare number; default: ``settings["timestep_ps"]`` of the system if recorded, else 2 fs.
    collision_rate : float or Quantity
        1/ps if a bare number.
    schedule : LambdaSchedule, optional
        Default: :func:`~openmm_flowplugin.freeenergy.alchemical.default_schedule` (electrostatics stage
        only for a charged solute). The vacuum leg uses the same schedule.
    checkpoint_interval, equilibration_iterations, platform, progress, seed
        As :func:`~openmm_flowplugin.freeenergy.mbar_route.run_leg`: one root seed for both legs, recorded in
        ``settings["seed"]`` (with ``seed=None``: the one stored with the solvent leg, or a fresh one for a new run).

    Returns
    -------
    SolvationResult
    """
    _check_schedule_type(schedule)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if timestep is None:
        timestep = 1000.0 * solvation_system.settings.get("timestep_ps", 0.002)
    temperature = solvation_system.temperature.value_in_unit(unit.kelvin)
    seed = resolved_root_seed(seed, output_dir / "solvent.nc")  # both legs' root, recorded
    legs, costs, dudl = {}, {}, {}
    plan = [("solvent", solvation_system.solvent, solvation_system.solute_atoms, solvation_system.pressure)]
    if solvation_system.vacuum is not None:
        plan.append(("vacuum", solvation_system.vacuum, list(range(solvation_system.n_solute_atoms)), None))
    used_schedule = None
    for name, molecular_system, atoms, pressure in plan:
        leg = alchemical_leg(molecular_system, atoms, schedule=schedule if schedule is not None else used_schedule,
                             name=name, pressure=pressure)
        used_schedule = leg.schedule  # the vacuum leg follows the solvent leg's schedule: the same end states
        start = time.process_time()
        run_leg(leg, output_dir / f"{name}.nc", n_iterations, md_steps=md_steps, timestep=timestep,
                collision_rate=collision_rate, checkpoint_interval=checkpoint_interval,
                equilibration_iterations=equilibration_iterations, platform=platform, progress=progress, seed=seed)
        cpu = time.process_time() - start
        legs[name] = analyze_leg(output_dir / f"{name}.nc")
        dudl[name] = derivative_profiles(leg, output_dir / f"{name}.nc", legs[name].n_equilibration,
                                         progress=on_root_rank(progress), label=f"{name} leg: ⟨∂u/∂λ⟩")
        n_states, n_done = leg.schedule.n_states, legs[name].n_iterations  # the stored iterations (≥ n_iterations)
        costs[name] = {"iterations": n_done, "states": n_states, "md_steps": n_done * n_states * md_steps,
                       "energy_evaluations": n_done * n_states * (md_steps + n_states),
                       "cpu_seconds": cpu, "note": "cpu_seconds counts this process only (a resumed run adds its own)"}
    delta_f_vacuum = legs["vacuum"].delta_f if "vacuum" in legs else 0.0
    error_vacuum = legs["vacuum"].error if "vacuum" in legs else 0.0
    delta_g = delta_f_vacuum - legs["solvent"].delta_f
    error = math.hypot(legs["solvent"].error, error_vacuum)
    settings = dict(recorded_system_settings(solvation_system), schedule=used_schedule.to_dict(), n_iterations=n_iterations, md_steps=md_steps,
                    timestep_fs=float(timestep.value_in_unit(unit.femtosecond)) if unit.is_quantity(timestep) else float(timestep),
                    collision_rate=str(collision_rate), seed=seed)
    result = SolvationResult(solvation_system.name, delta_g, error, temperature, legs, costs, settings,
                             solvation_system.reduced_units, dudl)
    from .mbar_route import _mpi_comm

    comm = _mpi_comm()
    if comm is None or comm.rank == 0:  # under mpirun every rank holds the result; rank 0 writes it
        (output_dir / "results.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
        (output_dir / "results.md").write_text(result.to_markdown())
        _plot_overlaps(legs, output_dir / "overlap.png")
        write_dudl_plot(output_dir)
    if comm is not None:
        comm.barrier()
    return result


def _plot_overlaps(legs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(legs), figsize=(4.5 * len(legs), 4), squeeze=False)
    for axis, (name, leg) in zip(axes[0], legs.items()):
        image = axis.imshow(leg.overlap, vmin=0, vmax=1, cmap="viridis")
        axis.set_title(f"{name} leg: MBAR overlap")
        axis.set_xlabel("state")
        axis.set_ylabel("state")
        figure.colorbar(image, ax=axis, fraction=0.046)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _check_schedule_type(schedule):
    from .alchemical import LambdaSchedule

    if schedule is not None and not isinstance(schedule, LambdaSchedule):
        raise InvalidInputError(f"schedule must be a LambdaSchedule, got {type(schedule).__name__}.")


def recorded_system_settings(solvation_system):
    """The system's settings as a result records them: an LJ preset's lattice seed as ``lattice_seed``, so that
    ``seed`` in a result is always the run's root seed."""
    settings = dict(solvation_system.settings)
    if "seed" in settings:
        settings["lattice_seed"] = settings.pop("seed")
    return settings
