"""The CUDA platform: the energy bridge, FlowMCMove and the alchemical MBAR route run on it and agree with
the CPU platforms and with exact answers.

All tests here are marked ``gpu`` and skipped with a reason where OpenMM has no CUDA platform or torch no
CUDA device (``conftest.py``); run them with ``pytest -m gpu`` on a GPU machine. CUDA's default precision is
mixed (forces in single, energies accumulated in double), hence the tolerances of the comparisons with the
Reference platform.
"""

import math

import numpy as np
import openmm
import pytest
import torch
from openmmtools import cache
from openmm import unit

from openmm_flowplugin import OpenMMEnergy, systems
from openmm_flowplugin._systems.lj_fluids import lj_fluid
from openmm_flowplugin.freeenergy.alchemical import alchemical_leg
from openmm_flowplugin.freeenergy.mbar_route import analyze_leg, run_leg
from openmm_flowplugin.mcmc import FlowMCMove
from openmm_flowplugin.platforms import clear_platform_cache, platform_choice
from openmm_flowplugin.proposals import GaussianProposal

from _widom import widom_mu
from test_freeenergy_mbar import FLUID, SCHEDULE
from test_moves import assert_misscaled_proposal_corrected

pytestmark = pytest.mark.gpu


def _perturbed(molecular_system, n, scale=0.01, seed=0):
    rng = np.random.default_rng(seed)
    return molecular_system.positions_nm + scale * rng.standard_normal((n, molecular_system.n_atoms, 3))


def test_automatic_choice_times_cuda_and_the_bridge_takes_the_fastest():
    clear_platform_cache()
    ala2 = systems.get("alanine_dipeptide_implicit")
    choice = platform_choice(ala2.system, purpose="energy")
    assert sorted(choice.timings) == ["CPU", "CUDA", "Reference"] and all(math.isfinite(t) for t in choice.timings.values())
    assert choice.name == min(choice.timings, key=choice.timings.get)
    assert OpenMMEnergy(ala2.system, ala2.temperature).platform.getName() == choice.name


@pytest.mark.parametrize("name", ["alanine_dipeptide_vacuum", "alanine_dipeptide_implicit"])
def test_energy_bridge_on_cuda_matches_reference(name):
    """Reduced energies and their gradients of CUDA tensors: CUDA platform against Reference, same batch."""
    molecular_system = systems.get(name)
    x = _perturbed(molecular_system, 16)
    gradients, energies = {}, {}
    for platform in ("Reference", "CUDA"):
        positions = torch.tensor(x, dtype=torch.float64, device="cuda").requires_grad_()
        u = OpenMMEnergy(molecular_system.system, molecular_system.temperature, platform=platform)(positions)
        u.sum().backward()
        assert u.device == positions.device and positions.grad.device == positions.device
        energies[platform], gradients[platform] = u.detach().cpu().numpy(), positions.grad.cpu().numpy()
    np.testing.assert_allclose(energies["CUDA"], energies["Reference"], rtol=1e-5, atol=1e-3)  # kT
    scale = np.abs(gradients["Reference"]).max()
    np.testing.assert_allclose(gradients["CUDA"], gradients["Reference"], rtol=1e-3, atol=1e-4 * scale)
    # Control: the comparison sees a change of 1e-3 nm in one atom.
    moved = x.copy()
    moved[:, 0, 0] += 1e-3
    shifted = OpenMMEnergy(molecular_system.system, molecular_system.temperature, platform="CUDA")(torch.as_tensor(moved))
    assert np.abs(shifted.numpy() - energies["CUDA"]).max() > 1e-3


def test_flow_mcmove_is_exact_with_a_cuda_context_cache():
    """The misscaled-proposal harmonic-oscillator check of tests/test_moves.py, sampled through CUDA Contexts."""
    ho = systems.get("harmonic_oscillator")
    sigma = ho.reference.std[0, 0]
    proposal = GaussianProposal(ho.positions_nm + 0.5 * sigma, 2 * sigma, seed=11)
    move = FlowMCMove(proposal, n_proposals=4, seed=12)
    thermodynamic_state, sampler_state = ho.thermodynamic_state(), ho.sampler_state()
    context_cache = cache.ContextCache(platform=openmm.Platform.getPlatformByName("CUDA"))
    x = np.empty((2000, 3))
    for i in range(len(x)):
        move.apply(thermodynamic_state, sampler_state, context_cache=context_cache)
        x[i] = sampler_state.positions.value_in_unit(unit.nanometer)[0]
    context, _ = context_cache.get_context(thermodynamic_state)
    assert context.getPlatform().getName() == "CUDA"
    assert_misscaled_proposal_corrected(x, move, ho.positions_nm[0], sigma)


def test_mbar_route_on_cuda_agrees_with_widom_insertion(tmp_path):
    """tests/test_freeenergy_mbar.py's LJ excess chemical potential, replica exchange on CUDA Contexts."""
    fluid = lj_fluid(**FLUID)
    leg = alchemical_leg(fluid.solvent, fluid.solute_atoms, schedule=SCHEDULE)
    run_leg(leg, tmp_path / "solvent.nc", 300, md_steps=50, timestep=20.0, checkpoint_interval=10, platform="CUDA", progress=False)
    estimate = analyze_leg(tmp_path / "solvent.nc")
    mu_widom, se_widom = widom_mu(fluid)
    z = (-estimate.delta_f - mu_widom) / math.hypot(estimate.error, se_widom)
    assert abs(z) < 4.0, (-estimate.delta_f, estimate.error, mu_widom, se_widom)
    # Control: the opposite sign convention is refused by the same comparison.
    assert abs((estimate.delta_f - mu_widom) / math.hypot(estimate.error, se_widom)) > 4.0
