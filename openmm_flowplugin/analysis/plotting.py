"""Plots for evaluation: Ramachandran maps and energy histograms (matplotlib, Agg backend)."""

__all__ = ["plot_ramachandran", "plot_energy_histogram"]

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_ramachandran(panels, path, title="Ramachandran plot"):
    """Write a PNG of weighted (phi, psi) histograms.

    Parameters
    ----------
    panels : list of (label, phi, psi, weights)
        Angles in radians; ``weights`` may be None.
    path : str or Path
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    bins = np.linspace(-np.pi, np.pi, 61)
    for ax, (label, phi, psi, weights) in zip(axes[0], panels):
        hist, _, _ = np.histogram2d(phi, psi, bins=bins, weights=weights, density=True)
        with np.errstate(divide="ignore"):
            free_energy = -np.log(hist.T)
        ax.pcolormesh(bins, bins, free_energy - np.nanmin(free_energy[np.isfinite(free_energy)]), cmap="viridis", vmax=10)
        ax.set(xlabel=r"$\phi$ (rad)", ylabel=r"$\psi$ (rad)", title=label, aspect="equal")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_energy_histogram(series, path, kT=None):
    """Write a PNG overlaying histograms of reduced energies.

    Parameters
    ----------
    series : list of (label, energies, weights)
    path : str or Path
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    finite = np.concatenate([np.asarray(u)[np.isfinite(u)] for _, u, _ in series])
    low, high = np.percentile(finite, [0.1, 99.5])
    bins = np.linspace(low, high, 80)
    for label, u, weights in series:
        u = np.asarray(u)
        keep = np.isfinite(u)
        ax.hist(u[keep], bins=bins, weights=None if weights is None else np.asarray(weights)[keep], density=True,
                histtype="step", label=label)
    ax.set(xlabel="reduced energy u = U/kT", ylabel="density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
