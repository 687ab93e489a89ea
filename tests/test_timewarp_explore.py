"""Biased exploration finds a second basin, is labelled biased everywhere, and seeds exact runs.

Toy: two particles bound by a double-well bond U(r) = h ((r - r0)^2 / w^2 - 1)^2, minima at r = 0.3 and
0.5 nm, barrier h = 12 kT at r0 = 0.4 nm. Proposal: a fresh ConditionalFlow (identity couplings, so a
Gaussian random walk of 0.02 nm per centred coordinate, the centre kept). Started in the short-bond basin,
exploration with a 15 kT cutoff reaches the long-bond basin. Controls: the same walk with a cutoff of
0.5 kT (it cannot climb the barrier), and the exact TimewarpMove with the same proposal and number of
steps, stay in the first basin.
"""

import logging

import numpy as np
import openmm
import pytest
from openmm import unit
from openmmtools import cache, mcmc, states

from openmm_flowplugin.flows import ConditionalFlow
from openmm_flowplugin.mcmc import BiasedExploration, TimewarpMove, explore_biased

TEMPERATURE = 300.0 * unit.kelvin
KT = (unit.MOLAR_GAS_CONSTANT_R * TEMPERATURE).value_in_unit(unit.kilojoule_per_mole)
N_STEPS = 400


def double_well_bond():
    system = openmm.System()
    for _ in range(2):
        system.addParticle(12.0)
    bond = openmm.CustomBondForce("h*((r-r0)^2/w^2-1)^2")
    for name, value in (("h", 12.0 * KT), ("r0", 0.4), ("w", 0.1)):
        bond.addGlobalParameter(name, value)
    bond.addBond(0, 1, [])
    system.addForce(bond)
    thermodynamic_state = states.ThermodynamicState(system, TEMPERATURE)
    sampler_state = states.SamplerState(np.array([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0]]) * unit.nanometer)
    return thermodynamic_state, sampler_state


def bond_length(positions):
    return np.linalg.norm(positions[..., 1, :] - positions[..., 0, :], axis=-1)


def walk():
    return ConditionalFlow(2, n_layers=2, hidden=(8,), context_features=4, step_scale=0.02)


def context_cache():
    return cache.ContextCache(platform=openmm.Platform.getPlatformByName("Reference"))


def test_exploration_crosses_the_barrier_and_is_labelled_biased(caplog):
    thermodynamic_state, sampler_state = double_well_bond()
    with caplog.at_level(logging.WARNING, logger="openmm_flowplugin.mcmc.timewarp_explore"):
        found = explore_biased(walk(), thermodynamic_state, sampler_state, N_STEPS, max_energy_increase=15.0, seed=3,
                               context_cache=context_cache())
    r = bond_length(found.positions)
    assert r.max() > 0.47 and r.min() < 0.33  # both basins visited
    assert isinstance(found, BiasedExploration) and found.biased and found.statistics["biased"] is True
    assert "biased=True" in repr(found) and any("biased exploration" in rec.getMessage() for rec in caplog.records)
    assert found.statistics["n_proposed"] == N_STEPS and len(found.positions) == N_STEPS + 1
    assert np.allclose(found.positions.mean(1), [0.15, 0.0, 0.0])  # the walk keeps the centre
    np.testing.assert_allclose(sampler_state.positions[1].value_in_unit(unit.nanometer), [0.3, 0, 0])  # start untouched

    # the cutoff as a Quantity is the same run
    again = explore_biased(walk(), thermodynamic_state, sampler_state, N_STEPS, max_energy_increase=15.0 * KT * unit.kilojoule_per_mole,
                           seed=3, context_cache=context_cache())
    np.testing.assert_array_equal(again.positions, found.positions)

    # seeds: one per basin, and an exact run starts from each
    seeds = found.seeds(2, features=lambda x: bond_length(x)[:, None])
    lengths = sorted(float(bond_length(s.positions.value_in_unit(unit.nanometer))) for s in seeds)
    assert lengths[0] < 0.35 and lengths[1] > 0.45
    for seed_state in seeds:
        move = TimewarpMove(walk(), n_proposals=5, seed=1)
        mcmc.MCMCSampler(thermodynamic_state, seed_state, move).run(2, context_cache=context_cache())
        assert move.n_proposed == 10


def test_controls_low_cutoff_and_exact_chain_stay_in_the_first_basin():
    thermodynamic_state, sampler_state = double_well_bond()
    low = explore_biased(walk(), thermodynamic_state, sampler_state, N_STEPS, max_energy_increase=0.5, seed=3,
                         context_cache=context_cache())
    assert bond_length(low.positions).max() < 0.4
    move = TimewarpMove(walk(), n_proposals=N_STEPS // 4, seed=3)
    sampler = mcmc.MCMCSampler(thermodynamic_state, sampler_state, move)
    r = []
    for _ in range(4):
        sampler.run(1, context_cache=context_cache())
        r.append(float(bond_length(sampler.sampler_state.positions.value_in_unit(unit.nanometer))))
    assert max(r) < 0.4 and move.n_accepted > 0


def test_bad_cutoff_and_seed_count_name_the_fix():
    thermodynamic_state, sampler_state = double_well_bond()
    with pytest.raises(ValueError, match="max_energy_increase"):
        explore_biased(walk(), thermodynamic_state, sampler_state, 5, max_energy_increase=-1.0, context_cache=context_cache())
    found = explore_biased(walk(), thermodynamic_state, sampler_state, 5, seed=0, record_interval=5, context_cache=context_cache())
    assert len(found.positions) == 2
    with pytest.raises(ValueError, match="n_seeds"):
        found.seeds(3)
