"""Plots say what they show: units on axes and colorbars, degrees as labelled, warnings, no overwrite."""

import numpy as np
import pytest

from openmm_flowplugin.analysis.plotting import (
    MIN_EFFECTIVE_SAMPLES,
    plot_energy_histogram,
    plot_ramachandran,
)
from openmm_flowplugin.outputs import OutputExistsError
from openmm_flowplugin.units import kT


def _beta_basin(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    return rng.vonmises(-1.4, 4.0, n), rng.vonmises(2.6, 4.0, n)  # radians


def _mesh_cells(ax):
    """(phi centre, psi centre, value) of every filled cell of a panel's pcolormesh (degrees, kT)."""
    (mesh,) = ax.collections
    values = mesh.get_array()  # masked (n_psi, n_phi)
    edges = np.linspace(-180, 180, values.shape[1] + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])
    rows, cols = np.nonzero(~np.ma.getmaskarray(values))
    return [(centres[c], centres[r], float(values[r, c])) for r, c in zip(rows, cols)]


def _texts(ax):
    return " ".join(t.get_text() for t in ax.texts)


def test_ramachandran_labels_units_and_colorbar(tmp_path):
    phi, psi = _beta_basin()
    path = tmp_path / "rama.png"
    fig = plot_ramachandran([("MD", phi, psi, None), ("weighted", phi, psi, np.ones_like(phi))], path, title="ala2")
    assert path.is_file() and path.stat().st_size > 0
    *panels, colorbar = fig.axes
    assert len(panels) == 2
    for ax in panels:
        assert ax.get_xlabel() == "φ (degrees)" and ax.get_ylabel() == "ψ (degrees)"
        assert ax.get_xlim() == (-180, 180) and ax.get_ylim() == (-180, 180)
    assert "(kT)" in colorbar.get_ylabel() and "free energy" in colorbar.get_ylabel()
    assert fig.get_suptitle() == "ala2"
    assert "n = 2,000" in panels[0].get_title() and "Kish ESS = 2,000" in panels[1].get_title()


def test_ramachandran_converts_radians_to_degrees(tmp_path):
    phi = np.full(50, 1.0)  # 57.3 degrees
    psi = np.full(50, -0.5)  # -28.6 degrees
    fig = plot_ramachandran([("point", phi, psi, None)], tmp_path / "r.png", n_bins=360)
    [(phi_deg, psi_deg, value)] = _mesh_cells(fig.axes[0])
    assert abs(phi_deg - np.degrees(1.0)) <= 0.5 and abs(psi_deg - np.degrees(-0.5)) <= 0.5
    assert value == 0.0


def test_ramachandran_free_energy_in_kT(tmp_path):
    # Two points whose weights differ by exp(-2): their free energies differ by exactly 2 kT.
    phi, psi = np.radians([-90.0, 90.0]), np.radians([0.0, 0.0])
    fig = plot_ramachandran([("two", phi, psi, [1.0, np.exp(-2.0)])], tmp_path / "r.png")
    cells = sorted(_mesh_cells(fig.axes[0]))
    assert [round(c[0]) for c in cells] == [-87, 93]
    assert cells[0][2] == pytest.approx(0.0) and cells[1][2] == pytest.approx(2.0)


def test_ramachandran_refuses_degrees(tmp_path):
    phi, psi = _beta_basin()
    with pytest.raises(ValueError, match="radians"):
        plot_ramachandran([("deg", np.degrees(phi), np.degrees(psi), None)], tmp_path / "r.png")
    assert not (tmp_path / "r.png").exists()


def test_ramachandran_small_and_empty_samples_say_so(tmp_path):
    phi, psi = _beta_basin()
    few = np.zeros_like(phi)
    few[:10] = 1.0
    fig = plot_ramachandran([("few", phi, psi, few), ("none", phi, psi, np.zeros_like(phi))], tmp_path / "r.png")
    assert "only 10 effective samples" in _texts(fig.axes[0])
    assert "no usable samples" in _texts(fig.axes[1])
    full = plot_ramachandran([("all", phi, psi, None)], tmp_path / "full.png")
    assert _texts(full.axes[0]) == ""  # control: enough samples, no warning
    with pytest.raises(ValueError, match="no panel has any usable sample"):
        plot_ramachandran([("none", phi, psi, np.zeros_like(phi))], tmp_path / "none.png")
    with pytest.raises(ValueError, match="at least one panel"):
        plot_ramachandran([], tmp_path / "empty.png")


def test_ramachandran_drops_nonfinite_and_checks_shapes(tmp_path):
    phi, psi = _beta_basin(200)
    phi[:3] = np.nan
    fig = plot_ramachandran([("md", phi, psi, None)], tmp_path / "r.png")
    assert "n = 197" in fig.axes[0].get_title() and "3 non-finite dropped" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="psi has 199"):
        plot_ramachandran([("md", phi, psi[:-1], None)], tmp_path / "s.png")
    with pytest.raises(ValueError, match="non-negative"):
        plot_ramachandran([("md", phi, psi, -np.ones_like(phi))], tmp_path / "s.png")


def test_plots_never_overwrite_unless_asked(tmp_path):
    phi, psi = _beta_basin()
    path = tmp_path / "rama.png"
    path.write_bytes(b"user data")
    with pytest.raises(OutputExistsError, match="already exists"):
        plot_ramachandran([("MD", phi, psi, None)], path)
    with pytest.raises(OutputExistsError):
        plot_energy_histogram([("MD", np.arange(100.0), None)], path)
    assert path.read_bytes() == b"user data"
    plot_ramachandran([("MD", phi, psi, None)], path, overwrite=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rama.png"]  # no temporary files left


def test_plot_format_follows_suffix_and_unknown_suffix_is_refused(tmp_path):
    phi, psi = _beta_basin()
    plot_ramachandran([("MD", phi, psi, None)], tmp_path / "rama.pdf")
    assert (tmp_path / "rama.pdf").read_bytes()[:4] == b"%PDF"
    with pytest.raises(ValueError, match="image format"):
        plot_ramachandran([("MD", phi, psi, None)], tmp_path / "rama")
    assert not (tmp_path / "rama").exists()


def test_energy_histogram_units_and_normalization(tmp_path):
    u = np.random.default_rng(1).normal(-20.0, 3.0, 5000)
    fig = plot_energy_histogram([("MD", u, None)], tmp_path / "u.png")
    ax = fig.axes[0]
    assert ax.get_xlabel() == "reduced potential energy u = U/kT (kT)"
    assert ax.get_ylabel() == "probability density (1/kT)"
    assert "reduced potential energy" in fig.get_suptitle()
    (stairs,) = ax.patches
    density, edges = stairs.get_data().values, stairs.get_data().edges
    shown = np.mean((u >= edges[0]) & (u <= edges[-1]))
    assert np.sum(density * np.diff(edges)) == pytest.approx(shown)  # area = probability inside the range

    fig_kj = plot_energy_histogram([("MD", u, None)], tmp_path / "U.png", temperature=300)
    ax = fig_kj.axes[0]
    assert ax.get_xlabel() == "potential energy U (kJ/mol)" and ax.get_ylabel() == "probability density (mol/kJ)"
    assert "300 K" in fig_kj.get_suptitle()
    (stairs,) = ax.patches
    centres = 0.5 * (stairs.get_data().edges[1:] + stairs.get_data().edges[:-1])
    mean = np.sum(centres * stairs.get_data().values) / np.sum(stairs.get_data().values)
    assert mean == pytest.approx(-20.0 * kT(300), abs=0.1 * kT(300))


def test_energy_histogram_small_failed_and_empty_series(tmp_path):
    u = np.random.default_rng(2).normal(-20.0, 3.0, 1000)
    u_failed = u.copy()
    u_failed[:7] = np.inf
    few = np.zeros_like(u)
    few[: MIN_EFFECTIVE_SAMPLES // 2] = 1.0
    fig = plot_energy_histogram(
        [("flow", u_failed, None), ("few", u, few), ("broken", np.full(4, np.nan), None)], tmp_path / "u.png"
    )
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels[0] == "flow (n = 993; 7 non-finite dropped)"
    assert "unreliable" in labels[1] and "unreliable" not in labels[0]
    assert "no finite energies" in labels[2]
    with pytest.raises(ValueError, match="nothing to plot"):
        plot_energy_histogram([("broken", np.full(4, np.inf), None)], tmp_path / "none.png")


def test_caller_call_forms(tmp_path):
    # cli/evaluate_command.py calls plot_ramachandran(panels, path, title=...) and plot_energy_histogram(series, path).
    phi, psi = _beta_basin()
    plot_ramachandran([("flow samples", phi, psi, None)], str(tmp_path / "a.png"), title="x")
    plot_energy_histogram([("flow", np.arange(100.0), None)], str(tmp_path / "b.png"))
    assert (tmp_path / "a.png").is_file() and (tmp_path / "b.png").is_file()


def test_fes_panels_have_units_titles_and_a_colorbar_each(tmp_path):
    from openmm_flowplugin.analysis.fes_plots import plot_free_energy_surfaces

    centres = (np.linspace(-3.0, 3.0, 12), np.linspace(-2.0, 2.0, 8))
    surface = np.add.outer(centres[0] ** 2, centres[1] ** 2)
    surface[0, 0] = np.nan  # an empty bin
    fig = plot_free_energy_surfaces([("reweighted", centres, surface), ("approximate", centres, 2 * surface)], ("phi", "psi"),
                                    ("rad", "rad"), tmp_path / "fes.png")
    assert (tmp_path / "fes.png").stat().st_size > 0
    panels = [ax for ax in fig.axes if ax.get_title()]
    colorbars = [ax for ax in fig.axes if not ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["reweighted", "approximate"] and len(colorbars) == 2
    assert all(ax.get_xlabel() == "phi (rad)" and ax.get_ylabel() == "psi (rad)" for ax in panels)
    assert all(ax.get_ylabel() == "F (kJ/mol)" for ax in colorbars)
