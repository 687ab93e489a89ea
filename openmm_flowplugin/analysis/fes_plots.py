"""Plots of free-energy surfaces on two collective variables, with colourbars and units.

Examples
--------
>>> import numpy as np
>>> from openmm_flowplugin.analysis.fes import free_energy_surface
>>> s = np.random.default_rng(0).normal(size=(2000, 2))
>>> fes = free_energy_surface(s, np.zeros(2000), [np.linspace(-3, 3, 13)] * 2, 300.0, n_bootstrap=2)
>>> import tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "fes.png")
>>> _ = plot_free_energy_surfaces([("reweighted", fes.centres, fes.free_energy)], ("s1", "s2"), ("nm", "nm"), path)
>>> os.path.exists(path)
True
"""

__all__ = ["plot_free_energy_surfaces"]

import numpy as np

from ..outputs import check_output_path


def plot_free_energy_surfaces(panels, cv_names, cv_units, path, overwrite=False, max_free_energy=30.0):
    """One panel per surface: filled contours of F (kJ/mol) over the two CVs, each with a colourbar.

    Parameters
    ----------
    panels : sequence of (title, centres, free_energy)
        ``centres`` a pair of 1D arrays (bin centres or grid nodes per CV), ``free_energy`` of shape
        (len(centres[0]), len(centres[1])) in kJ/mol, ``nan`` where unknown.
    cv_names, cv_units : pair of str
        Axis labels, e.g. ("phi", "psi"), ("rad", "rad").
    path : str or Path
        Image file; an existing one is replaced only with ``overwrite``.
    max_free_energy : float
        Upper end of the colour scale, kJ/mol.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.figure import Figure

    from .plotting import _image_format, _save

    check_output_path(path, overwrite)
    fig = Figure(figsize=(5.0 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    levels = np.linspace(0.0, max_free_energy, 16)
    for ax, (title, centres, free_energy) in zip(axes, panels):
        surface = np.clip(np.asarray(free_energy, dtype=np.float64), 0.0, max_free_energy)
        filled = ax.contourf(centres[0], centres[1], surface.T, levels=levels, cmap="viridis")
        fig.colorbar(filled, ax=ax, label="F (kJ/mol)")
        ax.set_title(title)
        ax.set_xlabel(f"{cv_names[0]} ({cv_units[0]})")
        ax.set_ylabel(f"{cv_names[1]} ({cv_units[1]})")
    _save(fig, path, _image_format(path), overwrite)
    return fig
