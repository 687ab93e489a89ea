"""Thermodynamic integration along the neural-TI path (neural_ti.path_ti, freeenergy._dudl): the trapezoid rule,
its propagated statistical error and Simpson-based quadrature error on analytic integrands, the exact path's
estimators on a Gaussian → Gaussian path with exact ΔF, and the sampled
⟨∂u/∂t⟩ at the decoupled node against its exact value (the solute is then uniform and independent of the solvent,
so ⟨Σ_j g(r_j)⟩ = ρ ∫ g(r) 4πr² dr). TI against MBAR on the same run is in test_neural_ti.py."""

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

from openmm_flowplugin.freeenergy import LambdaSchedule, alchemical_leg, run_leg, solvation_system
from openmmtools import states
from openmmtools.states import GlobalParameterState
from openmm_flowplugin.freeenergy import neural_ti as nti
from openmm_flowplugin.freeenergy._dudl import trapezoid_ti

N_SIGMA = 4.0


def test_trapezoid_ti_on_analytic_integrands():
    x = np.linspace(0.0, 1.0, 11)
    cubic = 1.0 + 2.0 * x - 3.0 * x**2 + 4.0 * x**3  # ∫₀¹ = 1 + 1 - 1 + 1 = 2; Simpson is exact for cubics
    ti = trapezoid_ti(x[::-1], cubic[::-1], np.full(11, 0.1))  # node order does not matter
    trapezoid = float(np.trapezoid(cubic, x))
    assert ti["delta_f_kT"] == pytest.approx(-trapezoid, abs=1e-12)  # ΔF = f(0) - f(1) = -∫
    assert ti["simpson_delta_f_kT"] == pytest.approx(-2.0, abs=1e-12)
    assert ti["quadrature_error_kT"] == pytest.approx(abs(trapezoid - 2.0), rel=1e-9)  # the true error, exactly
    assert ti["quadrature_error_kT"] > 1e-3  # ... which is not negligible here
    # a smooth non-polynomial integrand: the estimate is the true trapezoid error to O(h²)
    smooth = np.exp(2.0 * x)
    exact = (math.exp(2.0) - 1.0) / 2.0
    ti = trapezoid_ti(x, smooth, np.zeros(11))
    assert ti["quadrature_error_kT"] == pytest.approx(abs(np.trapezoid(smooth, x) - exact), rel=0.05)
    # Control: a linear integrand has no quadrature error, and the estimate says so
    assert trapezoid_ti(x, 3.0 - x, np.zeros(11))["quadrature_error_kT"] == pytest.approx(0.0, abs=1e-12)
    # statistical error: the spread of the trapezoid over independent noisy means, unequal nodes and errors
    nodes = np.array([0.0, 0.05, 0.15, 0.3, 0.5, 0.75, 1.0])
    sigma = np.array([0.5, 1.0, 0.8, 0.3, 0.2, 0.2, 0.1])
    rng = np.random.default_rng(0)
    draws = [trapezoid_ti(nodes, np.sin(nodes) + sigma * rng.standard_normal(7), sigma)["delta_f_kT"] for _ in range(4000)]
    reported = trapezoid_ti(nodes, np.sin(nodes), sigma)["statistical_error_kT"]
    assert np.std(draws) == pytest.approx(reported, rel=0.05)
    # Control: the unweighted error (as if the nodes were equally spaced) is resolved as wrong
    assert abs(np.std(draws) - np.sqrt(np.sum(sigma**2)) / 6) > 0.1 * reported
    assert trapezoid_ti([0.0, 1.0], [1.0, 2.0], [0.1, 0.1])["quadrature_error_kT"] is None  # Simpson needs 3 nodes


def _exact_decoupled_dudt(leg, phi, with_learned=True):
    """⟨∂_t u_θ⟩ at t = 0: (N - 1)/V ∫₀^rc β [∂_λ U_softcore(r)|λ=0 + φ(r, 0)] 4πr² dr (the solute is uniform)."""
    import openmm

    nonbonded = next(f for f in leg.molecular_system.system.getForces() if isinstance(f, openmm.NonbondedForce))
    _, sigma, epsilon = (p._value for p in nonbonded.getParticleParameters(1))
    cutoff = nonbonded.getCutoffDistance()._value
    box = leg.alchemical_system.getDefaultPeriodicBoxVectors()[0][0]._value
    beta, alpha, n = 1.0 / leg.molecular_system.kT, 0.5, leg.molecular_system.n_atoms

    def integrand(r):
        x = 1.0 / (alpha + (r / sigma) ** 6)  # openmmtools' soft-core: U = λ 4ε x (x - 1), x = 1/(α(1 - λ) + (r/σ)^6)
        value = 4.0 * epsilon * x * (x - 1.0)
        if with_learned:  # ∂_t [t (1 - t) φ(r, t)] at t = 0 is φ(r, 0)
            with torch.no_grad():
                value += phi(torch.tensor([r], dtype=torch.float64), torch.tensor(0.0)).item()
        return beta * value * 4.0 * math.pi * r**2

    return (n - 1) / box**3 * quad(integrand, 0.0, cutoff, limit=200)[0]


def test_profile_stage_reads_new_and_earlier_profiles():
    from openmm_flowplugin.freeenergy._dudl import profile_stage

    assert profile_stage({"parameter": nti.T_PARAMETER, "lambdas": [0.8, 1.0], "stage": "electrostatics"}) == "electrostatics"
    # profiles written before they recorded their stage
    assert profile_stage({"parameter": nti.T_PARAMETER, "lambdas": [0.8, 0.9, 1.0]}) == "electrostatics"
    assert profile_stage({"parameter": nti.T_PARAMETER, "lambdas": [0.0, 0.4, 0.8]}) == "sterics"
    assert profile_stage({"parameter": "lambda_electrostatics", "lambdas": [0.0, 1.0]}) == "electrostatics"
    assert profile_stage({"parameter": "lambda_sterics", "lambdas": [0.0, 1.0]}) == "sterics"


def test_sampled_dudt_at_the_decoupled_node_equals_its_exact_value(tmp_path):
    fluid = solvation_system("lj", n_particles=36, density=0.5, reduced_temperature=1.5, cutoff=2.0)
    leg = alchemical_leg(fluid.solvent, fluid.solute_atoms, schedule=LambdaSchedule([1, 0, 0], [1, 0.5, 0]))
    phi = nti.PairPotential(nti._cutoff(leg))
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for parameter in phi.parameters():
            parameter.copy_(0.5 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    path = nti.exact_path_leg(leg, phi, nodes=2)  # t = 1 and t = 0: the physical end states, whatever φ
    run_leg(path, tmp_path / "path.nc", 100, md_steps=50, timestep=20.0, checkpoint_interval=1, platform="Reference",
            progress=False, equilibration_iterations=5, seed=3)
    ti = nti.path_ti(path, tmp_path / "path.nc", n_equilibration=5)
    profile = ti["profile"]
    assert profile["lambdas"] == [0.0, 1.0] and profile["n_samples"] == [95, 95] and profile["stage"] == "sterics"
    sampled, error = profile["mean"][0], profile["error"][0]
    exact = _exact_decoupled_dudt(leg, phi)
    assert abs(sampled - exact) < N_SIGMA * error, (sampled, error, exact)
    # Control: without the learned term's ∂_t (the physical soft-core part only) the comparison fails
    physical_only = _exact_decoupled_dudt(leg, phi, with_learned=False)
    assert abs(sampled - physical_only) > N_SIGMA * error, (sampled, error, physical_only)
    assert ti["delta_f_kT"] == pytest.approx(-0.5 * (profile["mean"][0] + profile["mean"][1]))  # two nodes: one trapezoid


class _GaussianPathState(GlobalParameterState):
    """The path parameter of the Gaussian test, under the sterics' name so the TI stages read it as a one-stage path."""

    lambda_sterics = GlobalParameterState.GlobalParameter("lambda_sterics", standard_value=1.0)


def test_gaussian_to_gaussian_path_estimators_recover_the_exact_free_energy(tmp_path):
    """N independent 3D Gaussians, U = k(λ) r²/2 with k(λ) = k0 + (k1 − k0) λ: ΔF = f(λ=0) − f(λ=1) = −(3N/2) ln(k1/k0)
    and ⟨∂u/∂λ⟩ = (3N/2)(k1 − k0)/k(λ) exactly. The exact path's estimators (replica exchange over the nodes, MBAR;
    TI from the stored configurations with its quadrature error) recover both; LangevinMiddle (BAOAB) samples a
    harmonic potential's configurations exactly at any stable step."""
    import openmm
    from openmm import app, unit

    from openmm_flowplugin.freeenergy.alchemical import AlchemicalLeg
    from openmm_flowplugin.freeenergy.mbar_route import analyze_leg
    from openmm_flowplugin.freeenergy._dudl import derivative_profiles
    from openmm_flowplugin.systems import MolecularSystem

    n, k0, k1 = 4, 100.0, 400.0  # kJ/mol/nm²
    system, topology = openmm.System(), app.Topology()
    force = openmm.CustomExternalForce("0.5*(k0 + (k1 - k0)*lambda_sterics)*(x^2 + y^2 + z^2)")
    for name, value in (("lambda_sterics", 1.0), ("k0", k0), ("k1", k1)):
        force.addGlobalParameter(name, value)
    chain = topology.addChain()
    for i in range(n):
        system.addParticle(12.0)
        force.addParticle(i, [])
        topology.addAtom("C", app.element.carbon, topology.addResidue("GAU", chain))
    system.addForce(force)
    gaussians = MolecularSystem(name="gaussians", system=system, topology=topology, temperature=300.0 * unit.kelvin,
                                positions=unit.Quantity(np.zeros((n, 3)), unit.nanometer))
    lambdas = [1.0, 0.8, 0.6, 0.4, 0.2, 0.0]
    thermodynamic = states.ThermodynamicState(system, gaussians.temperature)
    path = [states.CompoundThermodynamicState(thermodynamic, [_GaussianPathState(lambda_sterics=x)]) for x in lambdas]
    leg = AlchemicalLeg("gaussians", gaussians, system, list(range(n)),
                        LambdaSchedule(electrostatics=[1.0] + [0.0] * 5, sterics=lambdas), path, None)
    storage = tmp_path / "gaussians.nc"
    run_leg(leg, storage, 200, md_steps=50, timestep=10.0, checkpoint_interval=2, equilibration_iterations=5, platform="Reference",
            progress=False, seed=1)
    exact = -1.5 * n * math.log(k1 / k0)
    estimate = analyze_leg(storage)
    assert abs(estimate.delta_f - exact) < N_SIGMA * estimate.error, (estimate.delta_f, estimate.error, exact)
    (profile,) = derivative_profiles(leg, storage, estimate.n_equilibration)
    exact_dudl = 1.5 * n * (k1 - k0) / (k0 + (k1 - k0) * np.array(profile.lambdas))
    z = (np.array(profile.mean) - exact_dudl) / np.array(profile.error)
    assert np.mean(z**2) < N_SIGMA, z  # mean of 6 squared z-scores: expectation 1
    ti = trapezoid_ti(profile.lambdas, profile.mean, profile.error)
    assert abs(ti["delta_f_kT"] - exact) < N_SIGMA * ti["statistical_error_kT"] + ti["quadrature_error_kT"], (ti, exact)
    # controls: the same estimates are far from the free energy of 2D Gaussians, and the sampled ⟨∂u/∂λ⟩ from a
    # derivative without the 3/2 (a wrong dimension) would fail the same test
    wrong = -1.0 * n * math.log(k1 / k0)
    assert abs(estimate.delta_f - wrong) > N_SIGMA * estimate.error
    assert abs(ti["delta_f_kT"] - wrong) > N_SIGMA * ti["statistical_error_kT"] + ti["quadrature_error_kT"]
    assert np.mean(((np.array(profile.mean) - exact_dudl / 1.5) / np.array(profile.error)) ** 2) > N_SIGMA
