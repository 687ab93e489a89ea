"""The alchemical MBAR route: schedules, a Lennard-Jones excess chemical potential against Widom insertion,
storage that resumes in another process and refuses another system's run.

Widom test-particle insertion is an independent exact estimator: plain OpenMM MD of the solvent (the solute's
epsilon set to 0 in the NonbondedForce, no openmmtools) and NumPy pair energies of random insertions.
"""

import json
import math
import subprocess
import sys

import numpy as np
import openmm
import pytest
from openmm import unit

from openmm_flowplugin._systems.lj_fluids import lj_fluid
from openmm_flowplugin.errors import InvalidInputError
from openmm_flowplugin.freeenergy.alchemical import LambdaSchedule, alchemical_leg, default_schedule
from openmm_flowplugin.freeenergy.mbar_route import analyze_leg, run_leg
from openmm_flowplugin.freeenergy._dudl import derivative_profiles, write_dudl_plot
from openmm_flowplugin.freeenergy.solvation import solvation_free_energy

from _widom import widom_mu
from test_path_ti import _exact_decoupled_dudt

N_SIGMA = 4.0
FLUID = dict(n_particles=36, density=0.5, reduced_temperature=1.5, cutoff=2.0)
SCHEDULE = LambdaSchedule(electrostatics=[1, 0, 0, 0, 0, 0], sterics=[1, 0.8, 0.6, 0.4, 0.2, 0])


def test_schedules_refuse_what_openmmtools_cannot_do():
    assert default_schedule().stage_boundary == 4 and default_schedule(charged=False).stage_boundary == 1
    for electrostatics, sterics in (([1, 0.5, 0], [1, 0.5, 0]),  # sterics move while charged
                                    ([1, 0], [1, 0.5]),  # does not reach 0
                                    ([1, 0, 0, 0], [1, 0.5, 0.7, 0]),  # increases
                                    ([1, 0, 0], [1, 0, 0])):  # repeats a state
        with pytest.raises(InvalidInputError):
            LambdaSchedule(electrostatics, sterics)


@pytest.fixture(scope="module")
def lj_run(tmp_path_factory):
    fluid = lj_fluid(**FLUID)
    leg = alchemical_leg(fluid.solvent, fluid.solute_atoms, schedule=SCHEDULE)
    storage = tmp_path_factory.mktemp("mbar") / "solvent.nc"
    run_leg(leg, storage, 300, md_steps=50, timestep=20.0, checkpoint_interval=1, platform="Reference", progress=False, seed=1)
    return fluid, leg, storage, analyze_leg(storage)


def test_a_seeded_leg_repeats_and_a_resume_draws_anew(tmp_path):
    """The same seed gives the same stored energies, another seed others (the control); a resumed run, its legs'
    Contexts and MPI ranks get integrator seeds of their own."""
    from openmmtools.multistate import MultiStateReporter

    fluid = lj_fluid(**FLUID)
    leg = alchemical_leg(fluid.solvent, fluid.solute_atoms, schedule=LambdaSchedule([1, 0, 0], [1, 0.5, 0]))
    settings = dict(md_steps=10, timestep=10.0, checkpoint_interval=5, equilibration_iterations=0, platform="Reference",
                    progress=False)

    def energies(name, seed, resume_at=None):
        if resume_at is not None:
            run_leg(leg, tmp_path / name, resume_at, seed=seed, **settings)
        run_leg(leg, tmp_path / name, 10, seed=seed, **settings)
        reporter = MultiStateReporter(str(tmp_path / name), open_mode="r")
        try:  # every replica's energies in every state, and the state each replica was in (the swaps)
            swaps = np.asarray(reporter.read_replica_thermodynamic_states()[1:11], dtype=np.float64)
            return np.concatenate([np.array([reporter.read_energies(i)[0] for i in range(1, 11)]), swaps[:, :, None]], axis=2)
        finally:
            reporter.close()

    state = np.random.get_state()
    first = energies("a.nc", 3)
    assert np.array_equal(first, energies("b.nc", 3))  # repeats
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state))  # NumPy's global state restored
    assert not np.allclose(first[1:], energies("c.nc", 4)[1:])  # control: another seed
    resumed = energies("d.nc", 3, resume_at=5)  # the first 5 iterations as in "a" (after them: stored float32 positions)
    assert np.array_equal(resumed[:5], first[:5])
    assert np.array_equal(resumed, energies("e.nc", 3, resume_at=5))  # a resumed run repeats too
    from openmmtools import integrators, states

    from openmm_flowplugin.mcmc.seeded_runs import seeded_context_cache

    def integrator_seeds(run_key, purpose=0, n_contexts=2):
        seeded = seeded_context_cache(openmm.Platform.getPlatformByName("Reference"), 3, run_key, purpose)
        seeds = []
        for temperature in (300.0, 310.0)[:n_contexts]:  # two incompatible states: two Contexts
            state = states.ThermodynamicState(fluid.solvent.system, temperature * unit.kelvin)
            context, integrator = seeded.get_context(state, integrators.LangevinIntegrator(temperature * unit.kelvin))
            seeds.append(integrator.getRandomNumberSeed())
        return seeds

    start, again = integrator_seeds((7, 0, 0)), integrator_seeds((7, 0, 0))
    assert start == again and start[0] != start[1]  # the k-th new Context, repeatably
    others = [integrator_seeds(key, purpose)[0] for key, purpose in (((7, 5, 0), 0), ((7, 0, 1), 0), ((8, 0, 0), 0), ((7, 0, 0), 2))]
    assert len({start[0], *others}) == 5  # another start iteration, rank, leg, or the energy cache's Contexts


def test_a_seeded_npt_leg_repeats(tmp_path, request):
    """With a Monte Carlo barostat the same seed gives the same energies and volumes (each new Context's barostat is
    seeded), another seed others (the control). On the CPU platform with one thread (several threads sum forces in
    varying order), because Reference's barostat draws from the generator the integrator seeds; CPU's (as CUDA's)
    has its own."""
    from openmmtools.multistate import MultiStateReporter

    cpu = openmm.Platform.getPlatformByName("CPU")
    threads = cpu.getPropertyDefaultValue("Threads")
    cpu.setPropertyDefaultValue("Threads", "1")
    request.addfinalizer(lambda: cpu.setPropertyDefaultValue("Threads", threads))

    def volumes_and_energies(name, seed):
        fluid = lj_fluid(**FLUID)
        fluid.solvent.system.addForce(openmm.MonteCarloBarostat(1.0 * unit.bar, fluid.temperature, 1))  # every step
        leg = alchemical_leg(fluid.solvent, fluid.solute_atoms, schedule=LambdaSchedule([1, 0, 0], [1, 0.5, 0]))
        assert leg.pressure is not None
        run_leg(leg, tmp_path / name, 4, md_steps=10, timestep=10.0, checkpoint_interval=2, equilibration_iterations=0,
                platform="CPU", progress=False, seed=seed)
        reporter = MultiStateReporter(str(tmp_path / name), open_mode="r")
        try:
            volumes = [[s.volume.value_in_unit(unit.nanometer**3) for s in reporter.read_sampler_states(i)] for i in (2, 4)]
            return np.array(volumes), np.array([reporter.read_energies(i)[0] for i in range(1, 5)])
        finally:
            reporter.close()

    volumes, energies = volumes_and_energies("a.nc", 5)
    assert len(np.unique(volumes)) > 1  # the barostat moved the boxes
    again = volumes_and_energies("b.nc", 5)
    assert np.array_equal(volumes, again[0]) and np.array_equal(energies, again[1])
    assert not np.allclose(volumes, volumes_and_energies("c.nc", 6)[0])  # control: another seed


def test_interval_errors_are_the_neighbours_and_bound_the_legs_error(lj_run):
    """One MBAR standard error per pair of neighbouring states (not the cumulative ones from the first state), and the
    end-to-end error is at most their sum (the standard deviation of a sum of correlated terms)."""
    from openmmtools.multistate import MultiStateReporter

    from openmm_flowplugin.freeenergy.mbar_route import _decorrelated_samples, _mbar

    _, _, storage, estimate = lj_run
    errors = np.array(estimate.interval_errors)
    assert len(errors) == len(estimate.overlap) - 1 and np.all(np.isfinite(errors)) and np.all(errors > 0)
    assert estimate.error <= errors.sum() * (1 + 1e-9)
    reporter = MultiStateReporter(str(storage), open_mode="r")  # MBAR again, on the samples analyze_leg used
    try:
        energies, _, _ = reporter.read_energies()
        states = np.asarray(reporter.read_replica_thermodynamic_states())
    finally:
        reporter.close()
    energies, states = np.asarray(energies, dtype=np.float64)[1:], states[1:]
    _, _, d = _mbar(energies, states, _decorrelated_samples(energies, states)[0], storage)
    assert np.array_equal(errors, np.diag(d, 1))
    assert not np.allclose(errors, d[0, 1:])  # control: not the cumulative errors from the first state


def test_mbar_excess_chemical_potential_agrees_with_widom_insertion(lj_run):
    fluid, _, _, estimate = lj_run
    mu_widom, se_widom = widom_mu(fluid)
    mu_mbar = -estimate.delta_f  # inserting the particle is the reverse of decoupling it
    z = (mu_mbar - mu_widom) / math.hypot(estimate.error, se_widom)
    assert abs(z) < N_SIGMA, (mu_mbar, estimate.error, mu_widom, se_widom)
    assert estimate.min_neighbour_overlap > 0.03 and estimate.n_uncorrelated > 100
    # Control: the sign convention matters (decoupling vs inserting) and is resolved by the comparison
    assert abs((estimate.delta_f - mu_widom) / math.hypot(estimate.error, se_widom)) > N_SIGMA
    assert len(estimate.forward) == len(estimate.reverse) == 5 and estimate.forward[-1][1] == pytest.approx(estimate.delta_f)


def test_dudl_at_the_decoupled_state_equals_its_exact_value(lj_run):
    """⟨∂u/∂λ_sterics⟩ at λ = 0 (uniform solute): (N - 1)/V ∫ β 4ε x (x - 1) 4πr² dr, x = 1/(α + (r/σ)^6)."""
    _, leg, storage, estimate = lj_run
    (profile,) = derivative_profiles(leg, storage, estimate.n_equilibration)  # uncharged: the sterics stage only
    assert profile.parameter == "lambda_sterics" and profile.stage == "sterics" and profile.states == [5, 4, 3, 2, 1, 0]
    assert profile.lambdas == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0]) and min(profile.n_samples) >= 5
    exact = _exact_decoupled_dudt(leg, None, with_learned=False)
    assert abs(profile.mean[0] - exact) < N_SIGMA * profile.error[0], (profile.mean[0], profile.error[0], exact)
    # Control: the profile read in schedule order (coupled state first) is resolved as wrong
    assert abs(profile.mean[-1] - exact) > N_SIGMA * profile.error[0], (profile.mean[-1], exact)


_RESUME_SCRIPT = """
import sys
from openmm_flowplugin._systems.lj_fluids import lj_fluid
from openmm_flowplugin.freeenergy.alchemical import LambdaSchedule, alchemical_leg
from openmm_flowplugin.freeenergy.mbar_route import run_leg
fluid = lj_fluid(n_particles=36, density=0.5, reduced_temperature=1.5, cutoff=2.0)
schedule = LambdaSchedule(electrostatics=[1, 0, 0, 0, 0, 0], sterics=[1, 0.8, 0.6, 0.4, 0.2, 0])
leg = alchemical_leg(fluid.solvent, fluid.solute_atoms, schedule=schedule)
run_leg(leg, sys.argv[1], 20, md_steps=20, timestep=10.0, checkpoint_interval=10, platform="Reference", progress=False)
"""


def test_a_leg_resumes_in_another_process_and_refuses_other_runs(tmp_path):
    storage = tmp_path / "solvent.nc"
    subprocess.run([sys.executable, "-c", _RESUME_SCRIPT, str(storage)], check=True, capture_output=True)
    fluid = lj_fluid(**FLUID)
    leg = alchemical_leg(fluid.solvent, fluid.solute_atoms, schedule=SCHEDULE)
    assert run_leg(leg, storage, 20, md_steps=20, timestep=10.0, platform="Reference", progress=False) == 20  # nothing to do
    assert run_leg(leg, storage, 40, md_steps=20, timestep=10.0, platform="Reference", progress=False) == 40  # resumed
    assert analyze_leg(storage).n_iterations == 40
    with pytest.raises(InvalidInputError, match="md_steps"):
        run_leg(leg, storage, 60, md_steps=50, timestep=10.0, platform="Reference", progress=False)
    denser = lj_fluid(**dict(FLUID, density=0.6, n_particles=40))
    other = alchemical_leg(denser.solvent, denser.solute_atoms, schedule=SCHEDULE)
    with pytest.raises(InvalidInputError, match="another run"):
        run_leg(other, storage, 60, md_steps=20, timestep=10.0, platform="Reference", progress=False)
    assert analyze_leg(storage).n_iterations == 40  # nothing lost


def test_solvation_workflow_writes_results_and_resumes(tmp_path):
    fluid = lj_fluid(**FLUID)
    result = solvation_free_energy(fluid, tmp_path, n_iterations=20, md_steps=20, timestep=10.0, schedule=SCHEDULE,
                                   platform="Reference", progress=False)
    assert set(result.legs) == {"solvent"} and result.delta_g == pytest.approx(-result.legs["solvent"].delta_f)
    assert result.delta_g_reduced == pytest.approx(result.delta_g * 1.5)  # T* = 1.5: kT = 1.5 epsilon
    for name in ("results.json", "results.md", "overlap.png", "dudl.png", "solvent.nc"):
        assert (tmp_path / name).is_file()
    assert "ΔG_solv" in (tmp_path / "results.md").read_text() and "- solvent: states " in (tmp_path / "results.md").read_text()
    stored = json.loads((tmp_path / "results.json").read_text())["legs"]["solvent"]
    assert stored["interval_errors_kT"] == result.legs["solvent"].interval_errors
    seed = json.loads((tmp_path / "results.json").read_text())["settings"]["seed"]  # a fresh root seed, recorded
    assert seed == result.settings["seed"] and isinstance(seed, int) and seed >= 0
    # dudl.png draws exactly the computed ⟨∂u/∂λ⟩ (read back from the figure's artists)
    (profile,) = result.dudl["solvent"]
    drawn = write_dudl_plot(tmp_path)
    assert set(drawn) == {"solvent leg, alchemical MBAR route (lambda_sterics)"}
    x, y, yerr = drawn["solvent leg, alchemical MBAR route (lambda_sterics)"]
    assert x == profile.lambdas and len(y) == 6 and all(math.isfinite(v) for v in y)
    np.testing.assert_array_equal(y, profile.mean)
    np.testing.assert_allclose(yerr, [e for e in profile.error if math.isfinite(e)], rtol=1e-12)
    again = solvation_free_energy(fluid, tmp_path, n_iterations=20, md_steps=20, timestep=10.0, schedule=SCHEDULE,
                                  platform="Reference", progress=False)
    assert again.delta_g == result.delta_g  # read back from storage, nothing re-run
    assert again.settings["seed"] == seed  # the root stored with the run, not a new one


@pytest.mark.slow
def test_methane_hydration_end_to_end(tmp_path):
    """Both legs of methane in TIP3P (AmberTools), a few iterations: the cycle is assembled and reported."""
    pytest.importorskip("rdkit", reason="needs the solvation extra (RDKit, AmberTools)")
    from openmm_flowplugin.freeenergy import solvation_system

    methane = solvation_system("methane")
    result = solvation_free_energy(methane, tmp_path, n_iterations=20, md_steps=20, equilibration_iterations=2, progress=False)
    assert set(result.legs) == {"solvent", "vacuum"} and math.isfinite(result.delta_g) and result.error > 0
    assert result.delta_g == pytest.approx(result.legs["vacuum"].delta_f - result.legs["solvent"].delta_f)
    assert result.settings["schedule"]["electrostatics"][0] == 1.0  # methane carries AM1-BCC charges: two stages


def test_a_box_of_exactly_twice_the_cutoff_resumes(tmp_path):
    """The storage's float32 box rounds 6 sigma (2.04 nm) down, below twice a 3 sigma cutoff; the resume uses the exact box."""
    from openmm_flowplugin.freeenergy import solvation_system

    fluid = solvation_system("lj-paper", n_solvent=60, box=6.0, cutoff=3.0)
    box_nm = fluid.settings["box_nm"]
    assert float(np.float32(box_nm)) < box_nm == 2 * fluid.settings["cutoff_nm"]  # the case that failed (NaN on resume)
    leg = alchemical_leg(fluid.solvent, fluid.solute_atoms, schedule=SCHEDULE)
    storage = tmp_path / "solvent.nc"
    assert run_leg(leg, storage, 10, md_steps=10, timestep=10.0, checkpoint_interval=10, platform="Reference", progress=False) == 10
    assert run_leg(leg, storage, 20, md_steps=10, timestep=10.0, checkpoint_interval=10, platform="Reference", progress=False) == 20
    from openmm_flowplugin.freeenergy._dudl import derivative_profiles

    (profile,) = derivative_profiles(leg, storage)  # reads the stored configurations: the same box
    assert np.isfinite(profile.mean).all()


def test_the_derivative_pass_shows_a_progress_bar_over_the_checkpoints(tmp_path, capsys):
    from openmm_flowplugin.freeenergy import solvation_system
    from openmm_flowplugin.freeenergy._dudl import derivative_profiles

    fluid = solvation_system("lj", n_particles=36, density=0.5, reduced_temperature=1.5, cutoff=2.0)
    leg = alchemical_leg(fluid.solvent, fluid.solute_atoms, schedule=SCHEDULE)
    storage = tmp_path / "solvent.nc"
    run_leg(leg, storage, 20, md_steps=5, checkpoint_interval=5, platform="Reference", progress=False)
    capsys.readouterr()
    derivative_profiles(leg, storage, progress=True, label="solvent leg: ⟨∂u/∂λ⟩")
    shown = capsys.readouterr().err
    assert "solvent leg: ⟨∂u/∂λ⟩" in shown and "4/4" in shown, shown  # checkpoints 5, 10, 15, 20
    derivative_profiles(leg, storage)  # control: off by default
    assert capsys.readouterr().err == ""


def test_progress_bars_are_shown_on_mpi_rank_0_only():
    from types import SimpleNamespace

    from openmm_flowplugin.freeenergy.mbar_route import on_root_rank

    for progress in (True, None):
        assert on_root_rank(progress, SimpleNamespace(rank=0)) is progress
        assert on_root_rank(progress, SimpleNamespace(rank=3)) is False
    assert on_root_rank(True) is True  # control: one process (no MPI, or rank 0), the caller's choice stands


def test_a_result_without_overlap_is_refused(tmp_path):
    """Synthetic storage-free check of the refusal: states 60 kT apart share no samples (pymbar returns nan errors)."""
    from openmm_flowplugin.errors import NoOverlapError
    from openmm_flowplugin.freeenergy.mbar_route import _check_overlap, _mbar

    rng = np.random.default_rng(0)
    n_iterations = 50
    states = np.tile(np.arange(3), (n_iterations, 1))
    spacing = {"apart": 60.0, "close": 0.3}
    for name, gap in spacing.items():
        energies = np.stack([np.stack([gap * abs(j - k) + rng.normal(size=n_iterations) for j in range(3)], axis=-1)
                             for k in range(3)], axis=1)
        mbar, delta_f, error = _mbar(energies, states, np.arange(n_iterations), name)
        overlap = np.asarray(mbar.compute_overlap()["matrix"])
        if name == "apart":
            with pytest.raises(NoOverlapError, match="states 0 and 1 overlap") as refused:
                _check_overlap(name, overlap, float(delta_f[0, -1]), float(error[0, -1]))
            assert refused.value.weakest_pair == (0, 1)
        else:  # control: overlapping states pass
            _check_overlap(name, overlap, float(delta_f[0, -1]), float(error[0, -1]))
