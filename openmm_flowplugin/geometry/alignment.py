"""Rigid alignment of configurations (Kabsch), symmetric so Metropolis-Hastings moves may use it."""

__all__ = ["kabsch_align"]

import numpy as np
import torch

from ..units import check_position_dtype


def kabsch_align(x, reference):
    """Rigidly move each configuration in ``x`` onto ``reference`` (least-squares, unit weights).

    Parameters
    ----------
    x : numpy.ndarray or torch.Tensor, shape=(n, n_atoms, 3) or (n_atoms, 3)
        float64 or float32 (other dtypes raise ``TypeError``, as in
        :func:`~openmm_flowplugin.units.to_numpy_positions`).
    reference : array_like, shape=(n_atoms, 3)

    Returns
    -------
    numpy.ndarray or torch.Tensor (as ``x``), float64, shape of ``x``
        ``x`` rotated (proper rotation, no reflection) and translated to best overlap ``reference``.

    Notes
    -----
    The optimal alignment is symmetric (aligning ``y`` onto ``x`` and ``x`` onto ``y`` give the
    same relative rotation), so a Metropolis-Hastings move that proposes the aligned
    configuration keeps detailed balance in the rigid degrees of freedom. A single configuration
    (2-D ``x``) takes a faster path than a batch of one.

    Examples
    --------
    >>> reference = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.1, 0.1, 0.0]])
    >>> turned = reference @ np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) + 1.0
    >>> bool(np.allclose(kabsch_align(turned, reference), reference))
    True
    """
    check_position_dtype(x, "x")  # float64 or float32; integer, bool, complex... refused, not cast
    check_position_dtype(reference, "reference")
    as_torch = torch.is_tensor(x)
    x = np.asarray(x.detach().cpu() if as_torch else x, dtype=np.float64)
    reference = np.asarray(reference.detach().cpu() if torch.is_tensor(reference) else reference, dtype=np.float64)
    ref_centre = reference.sum(axis=0) / len(reference)
    centred = x - x.sum(axis=-2, keepdims=True) / x.shape[-2]
    # H = X^T Y = U S V^T; the rotation taking X onto Y is U diag(1, 1, d) V^T, d = sign det H
    # (= det U det V^T, since S >= 0) removing reflections.
    h = np.swapaxes(centred, -1, -2) @ (reference - ref_centre)
    u, _, vt = np.linalg.svd(h)
    if x.ndim == 2:
        if _det3(h) < 0:
            u[:, 2] = -u[:, 2]
    else:
        u[..., :, 2] *= np.where(np.linalg.det(h) < 0, -1.0, 1.0)[..., None]
    aligned = centred @ (u @ vt) + ref_centre
    return torch.from_numpy(aligned) if as_torch else aligned


def _det3(m):
    """Determinant of one 3x3 matrix (cheaper than numpy's batched LU for a single matrix)."""
    return (m[0, 0] * (m[1, 1] * m[2, 2] - m[1, 2] * m[2, 1]) - m[0, 1] * (m[1, 0] * m[2, 2] - m[1, 2] * m[2, 0])
            + m[0, 2] * (m[1, 0] * m[2, 1] - m[1, 1] * m[2, 0]))
