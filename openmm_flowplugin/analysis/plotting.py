"""Plots of samples: Ramachandran free-energy maps and energy distributions.

Both functions take weighted or unweighted samples, write one image through
:func:`~openmm_flowplugin.outputs.atomic_output_path` (an existing file is kept unless
``overwrite=True``) and return the :class:`matplotlib.figure.Figure`. They never touch pyplot's
global state or the user's matplotlib backend. Units are on every axis and colorbar: angles in
degrees, free energies in kT (relative to the lowest bin), energies in kT or kJ/mol. A panel or
curve with fewer than :data:`MIN_EFFECTIVE_SAMPLES` effective samples is drawn with a warning on
the plot; inputs with nothing to draw are refused with a ``ValueError``.
"""

__all__ = ["plot_ramachandran", "plot_energy_histogram", "MIN_EFFECTIVE_SAMPLES"]

from pathlib import Path

import numpy as np

from ..outputs import atomic_output_path, check_output_path

#: Below this Kish effective sample size a histogram is noise: it is drawn with a warning on the plot.
MIN_EFFECTIVE_SAMPLES = 50

_WARNING_STYLE = {"color": "darkred", "fontsize": 8, "bbox": {"facecolor": "white", "edgecolor": "darkred", "alpha": 0.9}}


def plot_ramachandran(panels, path, title="Ramachandran plot: free energy of (φ, ψ)", overwrite=False, max_free_energy=10.0,
                      n_bins=60):
    """Write an image of (φ, ψ) free-energy maps, one panel per sample set; return the figure.

    Each panel shows ``F(φ, ψ) = -ln p(φ, ψ)`` in kT, relative to its lowest bin, on a colour scale
    shared by all panels and capped at ``max_free_energy``; white bins hold no samples. Axes are in
    degrees (the Ramachandran convention), from -180 to 180.

    Parameters
    ----------
    panels : list of (label, phi, psi, weights)
        ``phi`` and ``psi`` in **radians** (as :func:`mdtraj.compute_phi` returns them), shape (n,);
        ``weights`` of shape (n,), non-negative (e.g. normalized importance weights), or None.
        Samples with a non-finite angle or weight are dropped and counted in the panel title.
    path : str or pathlib.Path
        Image file; the format follows the suffix (``.png``, ``.pdf``, ``.svg``, ...).
    title : str
        Figure title.
    overwrite : bool
        Replace an existing ``path``; by default an existing file raises
        :class:`~openmm_flowplugin.outputs.OutputExistsError`.
    max_free_energy : float
        Top of the colour scale in kT; higher bins get the top colour.
    n_bins : int
        Bins per angle (60 gives 6° bins).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        No panel, mismatched lengths, negative weights, angles outside [-π, π] (degrees passed by
        mistake), or no panel with any usable sample.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> phi, psi = rng.vonmises(-1.4, 4.0, 2000), rng.vonmises(2.6, 4.0, 2000)  # radians
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "rama.png"
    >>> fig = plot_ramachandran([("MD", phi, psi, None)], path)
    >>> fig.axes[0].get_xlabel(), fig.axes[-1].get_ylabel().splitlines()[0]  # the last axes is the colorbar
    ('φ (degrees)', 'free energy −ln p(φ, ψ) (kT)')
    """
    if len(panels) == 0:
        raise ValueError("plot_ramachandran needs at least one panel (label, phi, psi, weights).")
    prepared = [_ramachandran_panel(i, panel) for i, panel in enumerate(panels)]
    if not any(p["n_effective"] > 0 for p in prepared):
        raise ValueError("no panel has any usable sample (all angles non-finite or all weights zero): nothing to plot.")
    image_format = _image_format(path)
    check_output_path(path, overwrite)

    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.9 * len(prepared) + 1.2, 4.4), layout="constrained")
    axes = fig.subplots(1, len(prepared), squeeze=False)[0]
    edges = np.linspace(-180.0, 180.0, int(n_bins) + 1)
    mesh = None
    for ax, panel in zip(axes, prepared):
        ax.set(xlim=(-180, 180), ylim=(-180, 180), aspect="equal", xlabel="φ (degrees)", ylabel="ψ (degrees)")
        ax.set_xticks(np.arange(-180, 181, 90))
        ax.set_yticks(np.arange(-180, 181, 90))
        ax.set_title(panel["title"], fontsize=10)
        if panel["n_effective"] == 0:
            ax.text(0, 0, "no usable samples", ha="center", va="center", **_WARNING_STYLE)
            continue
        counts, _, _ = np.histogram2d(panel["phi"], panel["psi"], bins=(edges, edges), weights=panel["weights"])
        with np.errstate(divide="ignore"):
            free_energy = -np.log(counts / counts.sum())
        free_energy -= free_energy[np.isfinite(free_energy)].min()
        masked = np.ma.masked_invalid(free_energy.T)  # rows = psi, columns = phi
        mesh = ax.pcolormesh(edges, edges, masked, cmap="viridis", vmin=0.0, vmax=max_free_energy)
        if panel["n_effective"] < MIN_EFFECTIVE_SAMPLES:
            ax.text(0, -150, f"only {panel['n_effective']:.0f} effective samples:\nnoise, not an estimate",
                    ha="center", va="bottom", **_WARNING_STYLE)
    colorbar = fig.colorbar(mesh, ax=list(axes), extend="max", shrink=0.85)
    colorbar.set_label("free energy −ln p(φ, ψ) (kT)\nrelative to the minimum; white: no samples")
    fig.suptitle(title)
    _save(fig, path, image_format, overwrite)
    return fig


def plot_energy_histogram(series, path, temperature=None, title=None, overwrite=False, n_bins=80):
    """Write an image overlaying the distributions of reduced energies; return the figure.

    Parameters
    ----------
    series : list of (label, energies, weights)
        Reduced energies ``u = U/kT`` of shape (n,) (dimensionless; e.g. from
        :class:`~openmm_flowplugin.OpenMMEnergy`); ``weights`` (n,) non-negative, or None.
        Non-finite energies (failed evaluations) are dropped and counted in the legend.
    path : str or pathlib.Path
        Image file; the format follows the suffix.
    temperature : openmm.unit.Quantity or float, optional
        If given (K), the x axis shows the potential energy ``U = u kT`` in kJ/mol; otherwise ``u`` in kT.
    title : str, optional
        Figure title; by default it names the quantity plotted.
    overwrite : bool
        Replace an existing ``path``.
    n_bins : int
        Bins over the shown range (0.1th to 99.5th percentile of all finite energies).

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    Each curve is a probability density normalized over *all* its finite samples, so the area
    shown is the probability inside the plotted range (tails beyond it are not drawn).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> u = np.random.default_rng(0).normal(-30.0, 3.0, 1000)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "energies.png"
    >>> fig = plot_energy_histogram([("MD", u, None)], path, temperature=300)
    >>> fig.axes[0].get_xlabel()
    'potential energy U (kJ/mol)'
    """
    if len(series) == 0:
        raise ValueError("plot_energy_histogram needs at least one series (label, energies, weights).")
    prepared = [_energy_series(i, item) for i, item in enumerate(series)]
    drawable = [s for s in prepared if s["n_effective"] > 0]
    if not drawable:
        raise ValueError("no series has a finite energy with non-zero weight: nothing to plot.")
    image_format = _image_format(path)
    check_output_path(path, overwrite)
    if temperature is None:
        scale, xlabel, ylabel = 1.0, "reduced potential energy u = U/kT (kT)", "probability density (1/kT)"
        default_title = "Distribution of the reduced potential energy"
    else:
        from ..units import kelvin, kT

        scale, xlabel, ylabel = kT(temperature), "potential energy U (kJ/mol)", "probability density (mol/kJ)"
        default_title = f"Distribution of the potential energy at {kelvin(temperature):g} K"

    from matplotlib.figure import Figure

    pooled = np.concatenate([s["u"] for s in drawable]) * scale
    low, high = np.percentile(pooled, [0.1, 99.5])
    if high - low < 1e-12:
        low, high = low - 0.5 * scale, high + 0.5 * scale
    edges = np.linspace(low, high, int(n_bins) + 1)
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.subplots()
    for s in prepared:
        if s["n_effective"] == 0:
            ax.plot([], [], color="gray", label=f"{s['label']}: no finite energies, not shown")
            continue
        weights = np.ones_like(s["u"]) if s["weights"] is None else s["weights"]
        counts, _ = np.histogram(s["u"] * scale, bins=edges, weights=weights)
        density = counts / weights.sum() / np.diff(edges)
        small = s["n_effective"] < MIN_EFFECTIVE_SAMPLES
        label = s["legend"] + (f" — only {s['n_effective']:.0f} effective: unreliable" if small else "")
        ax.stairs(density, edges, label=label, linestyle="--" if small else "-", linewidth=1.4)
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(low, high))
    ax.legend(fontsize=8)
    fig.suptitle(title or default_title)
    _save(fig, path, image_format, overwrite)
    return fig


def _ramachandran_panel(index, panel):
    try:
        label, phi, psi, weights = panel
    except (TypeError, ValueError):
        raise ValueError(f"panel {index} must be (label, phi, psi, weights), got {type(panel).__name__}.") from None
    phi = np.asarray(phi, dtype=np.float64).ravel()
    psi = np.asarray(psi, dtype=np.float64).ravel()
    if phi.shape != psi.shape:
        raise ValueError(f"panel {label!r}: phi has {phi.size} values but psi has {psi.size}.")
    keep = np.isfinite(phi) & np.isfinite(psi)
    weights = _checked_weights(label, weights, phi.size)
    if weights is not None:
        keep &= np.isfinite(weights)
    biggest = max(np.abs(phi[keep]).max(initial=0.0), np.abs(psi[keep]).max(initial=0.0))
    if biggest > np.pi + 1e-6:
        raise ValueError(f"panel {label!r}: angles must be in radians in [-π, π], found {biggest:.4g}; "
                         "degrees passed by mistake? Convert with numpy.radians.")
    prepared = {"phi": np.degrees(phi[keep]), "psi": np.degrees(psi[keep]), "weights": None if weights is None else weights[keep]}
    n, n_effective = _counts(prepared["weights"], int(keep.sum()))
    size = f"n = {n:,}" if weights is None else f"n = {n:,}, Kish ESS = {n_effective:,.0f}"
    dropped = phi.size - n
    prepared.update(n_effective=n_effective, title=f"{label}\n({size}" + (f"; {dropped:,} non-finite dropped)" if dropped else ")"))
    return prepared


def _energy_series(index, item):
    try:
        label, u, weights = item
    except (TypeError, ValueError):
        raise ValueError(f"series {index} must be (label, energies, weights), got {type(item).__name__}.") from None
    u = np.asarray(u, dtype=np.float64).ravel()
    weights = _checked_weights(label, weights, u.size)
    keep = np.isfinite(u) if weights is None else np.isfinite(u) & np.isfinite(weights)
    weights = None if weights is None else weights[keep]
    n, n_effective = _counts(weights, int(keep.sum()))
    size = f"n = {n:,}" if weights is None else f"Kish ESS = {n_effective:,.0f} of {n:,}"
    dropped = u.size - n
    legend = f"{label} ({size}" + (f"; {dropped:,} non-finite dropped)" if dropped else ")")
    return {"label": label, "u": u[keep], "weights": weights, "n_effective": n_effective, "legend": legend}


def _checked_weights(label, weights, size):
    if weights is None:
        return None
    weights = np.asarray(weights, dtype=np.float64).ravel()
    if weights.size != size:
        raise ValueError(f"{label!r}: {weights.size} weights for {size} samples.")
    if np.any(weights < 0):
        raise ValueError(f"{label!r}: weights must be non-negative (pass normalized weights, not log weights).")
    return weights


def _counts(weights, n):
    """(number of samples, Kish effective number) of the kept samples."""
    if weights is None:
        return n, float(n)
    total = weights.sum()
    return n, float(total**2 / np.sum(weights**2)) if total > 0 else 0.0


def _image_format(path):
    from matplotlib.backend_bases import FigureCanvasBase

    suffix = Path(path).suffix.lower().lstrip(".")
    supported = FigureCanvasBase.get_supported_filetypes()
    if suffix not in supported:
        raise ValueError(f"cannot tell the image format of {path}: end the file name in one of "
                         f"{', '.join('.' + s for s in sorted(supported))}.")
    return suffix


def _save(fig, path, image_format, overwrite):
    with atomic_output_path(path, overwrite) as tmp:
        fig.savefig(tmp, format=image_format, dpi=110)
