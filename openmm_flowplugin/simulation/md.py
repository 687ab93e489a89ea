"""Data generation: Langevin MD of a registered system, saved as an mdtraj HDF5 trajectory."""

__all__ = ["simulate"]

import numpy as np
import openmm
from openmm import unit
from tqdm.auto import tqdm

from ..platforms import select_platform
from ..units import in_unit, kelvin


def simulate(
    molecular_system,
    n_steps,
    report_interval=100,
    timestep=1.0 * unit.femtosecond,
    friction=1.0 / unit.picosecond,
    temperature=None,
    equilibration_steps=10_000,
    platform=None,
    seed=None,
    output=None,
    overwrite=False,
    progress=True,
):
    """Run Langevin MD (LangevinMiddleIntegrator) and return the frames as an :class:`mdtraj.Trajectory`.

    Parameters
    ----------
    molecular_system : MolecularSystem
        From :func:`openmm_flowplugin.systems.get`.
    n_steps : int
        Production steps; one frame every ``report_interval`` steps.
    report_interval : int
    timestep : Quantity or float
        Time step (ps if a bare number; default 1 fs).
    friction : Quantity or float
        Collision rate (1/ps if a bare number).
    temperature : Quantity or float, optional
        Default: the system's temperature.
    equilibration_steps : int
        Steps run (after energy minimization) before the first frame.
    platform : str, optional
        OpenMM platform name; default: automatic (Reference for tiny systems).
    seed : int, optional
        Integrator random seed (and velocities).
    output : str or Path, optional
        HDF5 file to write (atomically). An existing file is not overwritten unless ``overwrite``.
    progress : bool
        Show a progress bar.

    Returns
    -------
    mdtraj.Trajectory

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> traj = simulate(systems.get("alanine_dipeptide_vacuum"), 200, report_interval=100,
    ...                 equilibration_steps=0, seed=1, progress=False)
    >>> traj.n_frames, traj.n_atoms
    (2, 22)
    """
    import mdtraj

    from ..flows.checkpoints import atomic_output_path, check_output_path

    n_steps, report_interval = int(n_steps), int(report_interval)
    if n_steps < report_interval or report_interval < 1:
        raise ValueError(f"n_steps ({n_steps}) must be at least report_interval ({report_interval}) >= 1.")
    if output is not None:
        check_output_path(output, overwrite)  # refuse early, before any work
    temperature = kelvin(molecular_system.temperature if temperature is None else temperature)
    integrator = openmm.LangevinMiddleIntegrator(
        temperature, in_unit(friction, unit.picosecond**-1, "friction"), in_unit(timestep, unit.picosecond, "timestep")
    )
    if seed is not None:
        integrator.setRandomNumberSeed(int(seed))
    context = openmm.Context(molecular_system.system, integrator, select_platform(molecular_system.system, platform))
    context.setPositions(molecular_system.positions)
    openmm.LocalEnergyMinimizer.minimize(context)
    context.setVelocitiesToTemperature(temperature, *(() if seed is None else (int(seed),)))
    integrator.step(int(equilibration_steps))

    n_frames = n_steps // report_interval
    xyz = np.empty((n_frames, molecular_system.n_atoms, 3), dtype=np.float32)
    for frame in tqdm(range(n_frames), desc=f"MD {molecular_system.name}", disable=not progress, unit="frame"):
        integrator.step(report_interval)
        xyz[frame] = context.getState(positions=True).getPositions(asNumpy=True).value_in_unit(unit.nanometer)
    dt_ps = in_unit(timestep, unit.picosecond, "timestep") * report_interval
    trajectory = mdtraj.Trajectory(xyz, molecular_system.mdtraj_topology, time=dt_ps * np.arange(1, n_frames + 1))
    if output is not None:
        with atomic_output_path(output, overwrite) as tmp:
            trajectory.save_hdf5(str(tmp))
    return trajectory
