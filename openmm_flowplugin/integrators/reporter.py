"""OpenMM reporters for the statistics of learned Monte Carlo jumps."""

__all__ = ["FlowMCReporter"]

import math

from openmm import unit
from ..errors import InvalidInputError, InvalidTypeError


class FlowMCReporter:
    """Write the jump statistics of a :class:`~openmm_flowplugin.FlowMCIntegrator` to a CSV file.

    Follows ``openmm.app.StateDataReporter`` (``describeNextReport``/``report``, header line starting
    with ``#``, units in the column names), so its rows line up with StateDataReporter's by step.

    Parameters
    ----------
    file : str or file-like
        Path (opened for writing) or an open text stream such as ``sys.stdout``.
    reportInterval : int
        Steps between reports.
    integrator : FlowMCIntegrator, optional
        Integrator to report on (default: ``simulation.integrator``).
    separator : str
        Column separator (default ``","``).
    append : bool
        Continue an existing file (a resumed run): no second header line, and the first
        "since last report" rate counts from the integrator's values when the reporter is added
        (:meth:`describeNextReport` records them), i.e. from the checkpoint.

    Columns: ``Step``, ``Time (ps)``, ``Jumps proposed``, ``Jumps accepted``, ``Acceptance rate``
    (cumulative, ``nan`` before any proposal), ``Acceptance rate since last report``, ``Jumps invalid``
    (proposals rejected because positions, ``log q`` or the energy were NaN or infinite; cumulative).

    Examples
    --------
    >>> import io
    >>> from openmm import app, unit
    >>> from openmm_flowplugin import systems
    >>> from openmm_flowplugin.integrators import FlowMCIntegrator
    >>> from openmm_flowplugin.proposals import GaussianProposal
    >>> ho = systems.get("harmonic_oscillator")
    >>> proposal = GaussianProposal(ho.reference.mean, ho.reference.std, seed=0)
    >>> integrator = FlowMCIntegrator(300, 1.0, 0.002, proposal, jump_interval=5)
    >>> simulation = app.Simulation(ho.topology, ho.system, integrator)
    >>> simulation.context.setPositions(ho.positions)
    >>> out = io.StringIO()
    >>> simulation.reporters.append(FlowMCReporter(out, 10))
    >>> simulation.step(20)
    >>> print(out.getvalue().splitlines()[0])
    #"Step","Time (ps)","Jumps proposed","Jumps accepted","Acceptance rate","Acceptance rate since last report","Jumps invalid"
    """

    def __init__(self, file, reportInterval, integrator=None, separator=",", append=False):
        if int(reportInterval) != reportInterval or reportInterval < 1:
            raise InvalidInputError(f"reportInterval must be an integer >= 1 (steps), got {reportInterval!r}.")
        self._reportInterval = int(reportInterval)
        self._own_file = isinstance(file, str)
        self._out = open(file, "a" if append else "w") if self._own_file else file
        self._integrator = integrator
        self._separator = separator
        self._has_initialized = bool(append)  # appending continues a file that has its header
        self._last = None  # (proposed, accepted) at the last report
        self._baseline = None  # the integrator's counts before this reporter's first report

    def describeNextReport(self, simulation):
        if self._last is None and self._baseline is None:
            integrator = self._integrator if self._integrator is not None else simulation.integrator
            stats = getattr(integrator, "statistics", None)
            self._baseline = (stats["n_proposed"], stats["n_accepted"]) if stats else (0, 0)
        steps = self._reportInterval - simulation.currentStep % self._reportInterval
        return {"steps": steps, "periodic": None, "include": []}

    def report(self, simulation, state):
        integrator = self._integrator if self._integrator is not None else simulation.integrator
        if not hasattr(integrator, "statistics"):
            raise InvalidTypeError(
                f"FlowMCReporter needs a FlowMCIntegrator, but the simulation's integrator is "
                f"{type(integrator).__name__}; pass integrator=... or use FlowMCIntegrator.")
        if not self._has_initialized:
            headers = ["Step", "Time (ps)", "Jumps proposed", "Jumps accepted", "Acceptance rate",
                       "Acceptance rate since last report", "Jumps invalid"]
            print("#" + self._separator.join(f'"{h}"' for h in headers), file=self._out)
            self._has_initialized = True
        stats = integrator.statistics
        proposed, accepted = stats["n_proposed"], stats["n_accepted"]
        if self._last is None:  # a resumed run's counts start from its checkpoint, not from zero
            self._last = self._baseline if self._baseline is not None else (0, 0)
        window = proposed - self._last[0]
        rate = accepted / proposed if proposed else math.nan
        window_rate = (accepted - self._last[1]) / window if window > 0 else math.nan
        self._last = (proposed, accepted)
        time_ps = state.getTime().value_in_unit(unit.picosecond)
        values = [simulation.currentStep, f"{time_ps:.10g}", proposed, accepted, f"{rate:.6g}", f"{window_rate:.6g}",
                  stats.get("n_invalid", 0)]
        print(self._separator.join(str(v) for v in values), file=self._out)
        if hasattr(self._out, "flush"):
            self._out.flush()

    def __del__(self):
        if getattr(self, "_own_file", False):
            self._out.close()
