"""Reporters a run attaches to its :class:`openmm.app.Simulation`: trajectory, log, NaN guard, progress, frames in memory.

They follow OpenMM's reporter protocol (``describeNextReport`` / ``report``). The guard is attached
before the trajectory reporter, so a NaN state stops the run before it reaches the file.
"""

__all__ = [
    "SimulationUnstableError",
    "NaNGuard",
    "ProgressBar",
    "FrameCollector",
    "trajectory_reporter",
    "log_reporter",
    "close_reporter",
]

import math

import numpy as np
from openmm import app, unit

from ..errors import InvalidInputError
from .trajectory_files import check_trajectory_format


class SimulationUnstableError(InvalidInputError):
    """The simulation produced NaN or infinite positions or energies (a :class:`ValueError`, one line on the command line).

    Attributes
    ----------
    step : int
        The step at which the non-finite state was seen (production steps, or equilibration steps).
    phase : str
        ``"equilibration"`` or ``"production"``.
    """

    def __init__(self, step, phase, detail, timestep_fs=None):
        self.step, self.phase = int(step), phase
        now = "" if timestep_fs is None else f" ({timestep_fs:g} fs)"
        super().__init__(
            f"the simulation blew up at {phase} step {self.step} ({detail}): timestep too large{now}, or a bad "
            "starting structure: minimize or reduce --timestep (timestep= in Python)."
        )


class _Reporter:
    """Report every ``interval`` steps of ``simulation.currentStep``; ``include`` lists what the State must hold."""

    include = ()

    def __init__(self, interval):
        self._interval = int(interval)

    def describeNextReport(self, simulation):  # noqa: N802 (OpenMM's protocol)
        steps = self._interval - simulation.currentStep % self._interval
        return {"steps": steps, "periodic": None, "include": list(self.include)}


class NaNGuard(_Reporter):
    """Raise :class:`SimulationUnstableError` when the potential energy or a position is not finite."""

    include = ("positions", "energy")

    def __init__(self, interval, phase="production", timestep_fs=None):
        super().__init__(interval)
        self.phase, self.timestep_fs = phase, timestep_fs

    def report(self, simulation, state):
        energy = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)
        if not math.isfinite(energy):
            raise SimulationUnstableError(simulation.currentStep, self.phase, f"potential energy {energy}", self.timestep_fs)
        positions = state.getPositions(asNumpy=True).value_in_unit(unit.nanometer)
        if not np.isfinite(positions).all():
            raise SimulationUnstableError(simulation.currentStep, self.phase, "non-finite positions", self.timestep_fs)


class ProgressBar(_Reporter):
    """A tqdm bar over ``total`` steps of ``simulation.currentStep``, starting at ``initial``."""

    def __init__(self, interval, total, initial=0, description="MD", enabled=True):
        from tqdm.auto import tqdm

        super().__init__(interval)
        self._bar = tqdm(total=int(total), initial=int(initial), desc=description, unit="step", disable=not enabled,
                         unit_scale=True, dynamic_ncols=True)

    def report(self, simulation, state):
        self._bar.update(simulation.currentStep - self._bar.n)

    def close(self):
        self._bar.close()


class FrameCollector(_Reporter):
    """Keep the positions (nm, float32) and box vectors of each report in memory (for runs without an output file)."""

    include = ("positions",)

    def __init__(self, interval):
        super().__init__(interval)
        self.xyz, self.boxes = [], []

    def report(self, simulation, state):
        self.xyz.append(state.getPositions(asNumpy=True).value_in_unit(unit.nanometer).astype(np.float32))
        self.boxes.append(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.nanometer))


def trajectory_reporter(path, interval, append=False):
    """The reporter writing ``path`` (format by extension: see :data:`~.trajectory_files.TRAJECTORY_FORMATS`)."""
    suffix = check_trajectory_format(path)
    if suffix == ".dcd":
        return app.DCDReporter(str(path), interval, append=append)
    if suffix == ".xtc":
        return app.XTCReporter(str(path), interval, append=append)
    from mdtraj.formats import HDF5TrajectoryFile
    from mdtraj.reporters import HDF5Reporter

    return HDF5Reporter(HDF5TrajectoryFile(str(path), "a" if append else "w", force_overwrite=True), interval)


def log_reporter(log, interval, total_steps, append=False):
    """A StateDataReporter: step, time, potential energy, temperature, speed, progress and remaining time.

    ``log`` is a path or an open text stream (e.g. ``sys.stdout``).
    """
    return app.StateDataReporter(
        str(log) if not hasattr(log, "write") else log, interval, step=True, time=True, potentialEnergy=True,
        temperature=True, speed=True, progress=True, remainingTime=True, totalSteps=int(total_steps), append=append,
    )


def close_reporter(reporter):
    """Close what a reporter holds open (files, progress bars); leaves streams it did not open."""
    if hasattr(reporter, "close"):
        reporter.close()
    elif isinstance(reporter, app.DCDReporter):
        reporter._out.close()  # DCDReporter closes only in __del__
    elif isinstance(reporter, app.StateDataReporter) and getattr(reporter, "_openedFile", False):
        reporter._out.close()
