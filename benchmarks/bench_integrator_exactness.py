"""Configurational bias of FlowMCIntegrator's MD modes: <U>/kT on a stiff harmonic array vs the time step.

Five particles of mass 1.008 amu in isotropic 3D wells with K = 63,000 kJ/mol/nm^2 (omega = 250/ps,
about half the angular frequency of a C-H stretch, which flow jumps leave unconstrained), 300 K,
friction 1/ps, Reference platform. Exact <U>/kT = 15/2 = 7.5. Standard errors from pymbar's statistical
inefficiency. Methods:

- ``langevin``: plain ``openmm.LangevinMiddleIntegrator`` (exact for harmonic wells at any dt < 2/omega);
- ``jumps:<treatment>``: ``FlowMCIntegrator(mode="langevin")`` with an exact Boltzmann proposal
  (every jump accepted) every ``--jump-interval`` steps; ``<treatment>`` is what happens to the
  velocities after an accepted jump: ``redraw`` (Maxwell-Boltzmann, what 0.1 did), ``keep``
  (old velocities), ``halfkick`` (Maxwell-Boltzmann, then ``v -= dt/2 f/m``: the velocity a
  LangevinMiddle step stores half a kick before the end of a BAOAB step), ``transfer`` (keep the
  step-boundary velocity ``v + dt/2 f/m`` across the jump: ``v <- v + dt/2 (f(x) - f(x'))/m``);
- ``ghmc``: :class:`~openmm_flowplugin.integrators.programs.GHMCProgram` alone;
- ``exact``: ``FlowMCIntegrator(mode="exact")`` with the same jumps.

The treatments other than ``transfer`` are built by rewriting one expression of the jump program while
it is built (benchmark only). Prints a markdown table. About 3 minutes with the defaults::

    python benchmarks/bench_integrator_exactness.py --n-steps 200000
"""

import argparse
import contextlib
import io
import time

import numpy as np
import openmm
from openmm import unit

from openmm_flowplugin import systems
from openmm_flowplugin.integrators import FlowMCIntegrator, flow_mc
from openmm_flowplugin.integrators.programs import GHMCProgram
from openmm_flowplugin.proposals import GaussianProposal

REDRAW = "sqrt(fmc_kT/m)*gaussian"
TREATMENTS = {"redraw": REDRAW, "keep": "v", "halfkick": REDRAW + " - 0.5*dt*f/m",
              "transfer": "fmc_v_b - 0.5*dt*f/m"}


class _Rewriting:
    """Forwards to a CustomIntegrator, replacing the post-jump velocity expression."""

    def __init__(self, integrator, expression):
        self._integrator, self._expression = integrator, expression

    def addComputePerDof(self, variable, expression):
        if variable == "v" and expression == flow_mc.VELOCITY_AFTER_JUMP["langevin"]:
            expression = self._expression
        return self._integrator.addComputePerDof(variable, expression)

    def __getattr__(self, name):
        return getattr(self._integrator, name)


@contextlib.contextmanager
def treatment(name):
    original = flow_mc._jump_program
    if TREATMENTS[name] == flow_mc.VELOCITY_AFTER_JUMP["langevin"]:  # what the package ships
        yield
        return
    flow_mc._jump_program = lambda integrator, *args, **kw: original(_Rewriting(integrator, TREATMENTS[name]), *args, **kw)
    try:
        yield
    finally:
        flow_mc._jump_program = original


def harmonic_array(n_particles=5, spring_constant=63000.0, mass=1.008, quartic=0.0):
    """The array, and its exact <U>/kT; ``quartic`` adds ``c kT (d/sigma)^4`` per coordinate d (sigma: harmonic std)."""
    ho = systems.get("harmonic_oscillator", n_particles=n_particles, spring_constant=spring_constant, mass=mass)
    kT = (unit.MOLAR_GAS_CONSTANT_R * 300 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    if not quartic:
        return ho, 1.5 * n_particles
    sigma = np.sqrt(kT / spring_constant)
    force = openmm.CustomExternalForce(f"{quartic * kT / sigma**4}*((x-x0)^4 + (y-y0)^4 + (z-z0)^4)")
    for name in ("x0", "y0", "z0"):
        force.addPerParticleParameter(name)
    for i, centre in enumerate(ho.reference.mean):
        force.addParticle(i, [float(c) for c in centre])
    ho.system.addForce(force)
    t = np.linspace(-8, 8, 20001)  # one coordinate in units of sigma: u(t) = t^2/2 + c t^4, by quadrature
    u = 0.5 * t**2 + quartic * t**4
    w = np.exp(-u)
    return ho, 3 * n_particles * float((u * w).sum() / w.sum())


def make_integrator(method, ho, timestep_fs, jump_interval, seed, friction=1.0):
    dt = timestep_fs * unit.femtosecond
    if method == "langevin":
        return openmm.LangevinMiddleIntegrator(300 * unit.kelvin, friction, dt)
    if method == "ghmc":
        return GHMCProgram(300 * unit.kelvin, friction, dt)
    proposal = GaussianProposal(ho.reference.mean, ho.reference.std, seed=seed)
    kwargs = dict(jump_interval=jump_interval, system=ho.system)
    if method == "exact":
        return FlowMCIntegrator(300 * unit.kelvin, friction, dt, proposal, mode="exact", **kwargs)
    with treatment(method.split(":")[1]):
        return FlowMCIntegrator(300 * unit.kelvin, friction, dt, proposal, **kwargs)


def sample_reduced_energy(integrator, ho, n_steps, seed, stride=1, n_equilibration=1000):
    """u = U/kT after every ``stride`` steps, shape=(n_steps // stride,)."""
    integrator.setRandomNumberSeed(seed)
    context = openmm.Context(ho.system, integrator, openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(ho.positions)
    context.setVelocitiesToTemperature(300 * unit.kelvin, seed)
    integrator.step(n_equilibration)
    kT = (unit.MOLAR_GAS_CONSTANT_R * 300 * unit.kelvin).value_in_unit(unit.kilojoule_per_mole)
    integrator.context = context  # keep the Context alive while the integrator's counters are read
    u = np.empty(n_steps // stride)
    for i in range(len(u)):
        integrator.step(stride)
        u[i] = context.getState(getEnergy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / kT
    return u


def mean_and_se(u, block=50):
    """Mean and its standard error: pymbar's statistical inefficiency of ``block``-step means.

    Block means first: an underdamped oscillator's energy autocorrelation oscillates, and the
    integral to its first zero crossing (pymbar's estimate) would miss the slow decay of the envelope.
    """
    u = u[: len(u) // block * block].reshape(-1, block).mean(axis=1)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from pymbar.timeseries import statistical_inefficiency
        g = statistical_inefficiency(u)
    return float(u.mean()), float(np.sqrt(g * u.var() / len(u)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-steps", type=int, default=200000)
    parser.add_argument("--timesteps", type=float, nargs="+", default=[1.0, 2.0, 4.0], help="fs")
    parser.add_argument("--methods", nargs="+",
                        default=["langevin", "jumps:redraw", "jumps:keep", "jumps:halfkick", "jumps:transfer", "ghmc", "exact"])
    parser.add_argument("--jump-interval", type=int, default=5)
    parser.add_argument("--spring-constant", type=float, default=63000.0, help="kJ/mol/nm^2")
    parser.add_argument("--mass", type=float, default=1.008, help="amu")
    parser.add_argument("--quartic", type=float, default=0.0,
                        help="anharmonic term c kT (d/sigma)^4 per coordinate (exact <U> by quadrature)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    ho, exact = harmonic_array(spring_constant=args.spring_constant, mass=args.mass, quartic=args.quartic)
    omega = np.sqrt(args.spring_constant / args.mass)
    print(f"omega = {omega:.1f}/ps, quartic c = {args.quartic}, exact <U>/kT = {exact:.4f}, {args.n_steps} steps, jumps every "
          f"{args.jump_interval} steps\n")
    print("| method | dt (fs) | omega*dt | <U>/kT | SE | z | MD acceptance | s |")
    print("|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        for dt in args.timesteps:
            integrator = make_integrator(method, ho, dt, args.jump_interval, args.seed)
            start = time.perf_counter()
            u = sample_reduced_energy(integrator, ho, args.n_steps, args.seed)
            seconds = time.perf_counter() - start
            mean, se = mean_and_se(u)
            md = f"{getattr(integrator, '_md', integrator).acceptance_rate:.3f}" if method in ("ghmc", "exact") else "-"
            print(f"| {method} | {dt:g} | {omega * dt / 1000:.2f} | {mean:.3f} | {se:.3f} | "
                  f"{(mean - exact) / se:+.1f} | {md} | {seconds:.0f} |", flush=True)


if __name__ == "__main__":
    main()
