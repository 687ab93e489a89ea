"""The systems registry: exact Hamiltonians, shipped inputs, toy potentials and their references."""

import numpy as np
import openmm
import pytest
from openmm import unit

from openmm_flowplugin import systems


def _energy(system, positions_nm):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions_nm)
    return context.getState(energy=True).getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole)


def test_registry_lists_required_systems():
    names = systems.list()
    for name in ("alanine_dipeptide_vacuum", "alanine_dipeptide_implicit", "double_well_2d", "mueller_brown", "harmonic_oscillator"):
        assert name in names
    assert set(systems.describe()) == set(names)


def test_unknown_system_names_the_choices():
    with pytest.raises(KeyError, match="Unknown system 'alanine'.*alanine_dipeptide_vacuum"):
        systems.get("alanine")


@pytest.mark.parametrize(
    "name, openmmtools_class",
    [("alanine_dipeptide_vacuum", "AlanineDipeptideVacuum"), ("alanine_dipeptide_implicit", "AlanineDipeptideImplicit")],
)
def test_alanine_dipeptide_is_exactly_openmmtools(name, openmmtools_class):
    from openmmtools import testsystems

    ours = systems.get(name)
    theirs = getattr(testsystems, openmmtools_class)(constraints=None)
    assert ours.n_constraints == 0 == theirs.system.getNumConstraints()
    assert [a.element.symbol for a in ours.topology.atoms()] == [a.element.symbol for a in theirs.topology.atoms()]
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = theirs.positions.value_in_unit(unit.nanometer) + 0.01 * rng.standard_normal((22, 3))
        assert _energy(ours.system, x) == pytest.approx(_energy(theirs.system, x), rel=1e-10, abs=1e-8)


def test_molecular_system_helpers():
    ala2 = systems.get("alanine_dipeptide_vacuum")
    assert ala2.mdtraj_topology.n_atoms == 22
    assert ala2.temperature == 300 * unit.kelvin
    state = ala2.thermodynamic_state()
    sampler_state = ala2.sampler_state()
    assert state.temperature == 300 * unit.kelvin
    assert sampler_state.n_particles == 22
    assert ala2.fingerprint.startswith("v2:") and len(ala2.fingerprint) == 3 + 64
    assert ala2.fingerprint != systems.get("harmonic_oscillator").fingerprint


def test_shipped_inputs_are_package_data():
    assert systems.data_path("data", "alanine-dipeptide.prmtop").is_file()
    assert systems.data_path("models", "alanine_dipeptide_vacuum.pt").is_file()


@pytest.mark.parametrize("name", ["double_well_2d", "mueller_brown"])
def test_openmm_and_numpy_potentials_agree(name):
    from openmm_flowplugin._systems import toy_potentials

    toy = systems.get(name)
    numpy_potential = {
        "double_well_2d": toy_potentials.double_well_potential,
        "mueller_brown": toy_potentials.mueller_brown_potential,
    }[name]
    rng = np.random.default_rng(1)
    for x, y, z in rng.uniform(-1.5, 1.5, size=(5, 3)):
        expected = numpy_potential(x, y) + 0.5 * 100.0 * z**2
        assert _energy(toy.system, [[x, y, z]]) == pytest.approx(expected, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("name", ["double_well_2d", "mueller_brown"])
def test_planar_references_are_normalized_and_contained(name):
    reference = systems.get(name).reference
    assert reference.expectation(lambda x, y: np.ones_like(x)) == pytest.approx(1.0, abs=1e-9)
    edge = max(reference.density[0].max(), reference.density[-1].max(), reference.density[:, 0].max(), reference.density[:, -1].max())
    assert edge < 1e-8 * reference.density.max()
    assert reference.bin_probabilities(np.linspace(*reference.bounds[0], 41)).sum() == pytest.approx(1.0, abs=1e-6)


def test_double_well_reference_is_symmetric_and_bimodal():
    reference = systems.get("double_well_2d").reference
    # x = 0 sits on the quadrature grid, so the half-weight of that column is missing: O(grid spacing).
    assert reference.probability(lambda x, y: x > 0) == pytest.approx(0.5, abs=1e-3)
    assert reference.mean() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert reference.covariance()[1, 1] == pytest.approx(reference.kT / 20.0, rel=1e-6)


def test_harmonic_reference_matches_equipartition():
    ho = systems.get("harmonic_oscillator", n_particles=2, spring_constant=500.0)
    assert ho.n_atoms == 2
    np.testing.assert_allclose(ho.reference.variance, ho.kT / 500.0)
    assert _energy(ho.system, ho.reference.mean + 0.1) == pytest.approx(2 * 0.5 * 500.0 * 3 * 0.01)
