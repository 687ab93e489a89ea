"""Evaluating a Boltzmann generator: importance-sampling ESS, reweighted observables, plots."""

__all__ = ["FlowEvaluation", "evaluate_flow", "backbone_dihedrals", "USABLE_ESS_FRACTION"]

from dataclasses import dataclass

import numpy as np
import torch

from .._threads import package_threads
from ..bridge.energy import OpenMMEnergy
from .weights import effective_sample_size, importance_weights, normalized_weights, pareto_k, pareto_k_threshold, weighted_fraction

#: Below this Kish ESS fraction reweighted estimates rest on a handful of samples: reported as unusable.
USABLE_ESS_FRACTION = 0.05


def backbone_dihedrals(positions, mdtraj_topology):
    """phi and psi (radians) of the first residue that has both, for positions (n, n_atoms, 3) nm; None if not a peptide."""
    import mdtraj

    trajectory = mdtraj.Trajectory(np.asarray(positions, dtype=np.float32), mdtraj_topology)
    phi_idx, phi = mdtraj.compute_phi(trajectory)
    psi_idx, psi = mdtraj.compute_psi(trajectory)
    if len(phi_idx) == 0 or len(psi_idx) == 0:
        return None
    return phi[:, 0], psi[:, 0]


@dataclass
class FlowEvaluation:
    """Result of :func:`evaluate_flow`.

    Attributes
    ----------
    n_samples : int
    ess_fraction : float
        Kish ESS / n of the importance weights at the system temperature.
    positions, reduced_energies, log_weights : numpy.ndarray
    phi, psi : numpy.ndarray or None
        Backbone dihedrals of the samples (radians), for peptides.
    phi_positive : tuple of float or None
        Importance-reweighted population of phi > 0 and its standard error (delta method).
    n_failed : int
        Samples whose energy evaluation failed (counted with zero weight).
    """

    n_samples: int
    ess_fraction: float
    positions: np.ndarray
    reduced_energies: np.ndarray
    log_weights: np.ndarray
    phi: np.ndarray = None
    psi: np.ndarray = None
    phi_positive: tuple = None
    n_failed: int = 0

    @property
    def normalized_weights(self):
        """Importance weights normalized to sum 1 (all zeros if no sample has a finite weight)."""
        return normalized_weights(self.log_weights)

    @property
    def n_effective(self):
        """Kish effective number of samples, ``ess_fraction * n_samples``."""
        return self.ess_fraction * self.n_samples

    @property
    def pareto_k(self):
        """Pareto k̂ of the weights' tail (:func:`~openmm_flowplugin.analysis.weights.pareto_k`): above
        :func:`~openmm_flowplugin.analysis.weights.pareto_k_threshold` reweighted estimates are biased with
        high probability, whatever their error bars say."""
        return pareto_k(self.log_weights)

    @property
    def usable(self):
        """Whether the ESS suffices for reweighted estimates (at least :data:`USABLE_ESS_FRACTION` and 50 samples)."""
        return self.ess_fraction >= USABLE_ESS_FRACTION and self.n_effective >= 50

    def summary(self):
        """Human-readable lines; an unusable flow (tiny ESS) says so instead of printing estimates."""
        lines = [
            f"samples: {self.n_samples}",
            f"importance-sampling ESS: {self.ess_fraction * 100:.1f} % ({self.n_effective:.0f} effective samples)",
            f"failed energy evaluations: {self.n_failed}",
        ]
        k, threshold = self.pareto_k, pareto_k_threshold(self.n_samples)
        if k == k:  # not nan (too few samples for a tail fit)
            verdict = "ok" if k < threshold else "heavy: reweighted estimates may be biased beyond their error bars"
            lines.append(f"weights' tail: Pareto k̂ {k:.2f} (threshold {threshold:.2f}; {verdict})")
        if not self.usable:
            lines.append(
                f"ESS {self.ess_fraction * 100:.1f} % ({self.n_effective:.0f} effective samples): the flow is not usable "
                "for reweighted estimates at this sample size; train it longer, on more data, or draw more samples."
            )
        elif self.phi_positive is not None:
            p, se = self.phi_positive
            lines.append(f"phi > 0 population (reweighted): {p:.4f} +- {se:.4f}")
        return lines


def evaluate_flow(flow, molecular_system, n_samples=10_000, platform=None):
    """Sample ``flow``, weight against the system's Boltzmann distribution, and compute ESS and phi statistics.

    Examples
    --------
    >>> from openmm_flowplugin import systems, load_flow
    >>> ala2 = systems.get("alanine_dipeptide_vacuum")
    >>> result = evaluate_flow(load_flow("alanine_dipeptide_vacuum"), ala2, n_samples=500)
    >>> 0.0 < result.ess_fraction <= 1.0
    True
    """
    energy = OpenMMEnergy(molecular_system.system, molecular_system.temperature, platform=platform)
    with package_threads():
        x, u, log_w = importance_weights(flow, energy, int(n_samples))
    log_w_np = log_w.numpy()
    result = FlowEvaluation(
        n_samples=int(n_samples),
        ess_fraction=effective_sample_size(log_w),
        positions=x.numpy(),
        reduced_energies=u.numpy(),
        log_weights=log_w_np,
        n_failed=int((~torch.isfinite(u)).sum()),
    )
    dihedrals = backbone_dihedrals(result.positions, molecular_system.mdtraj_topology)
    if dihedrals is not None:
        result.phi, result.psi = dihedrals
        result.phi_positive = weighted_fraction(result.phi > 0, log_w_np)
    return result
