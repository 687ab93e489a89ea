"""The OpenMM <-> torch energy bridge.

:class:`OpenMMEnergy` evaluates reduced energies ``u(x) = U(x) / kT`` and forces of an OpenMM
System for a batch of torch positions, and plugs into autograd so that flows can be trained
against the physical energy (reverse KL) with OpenMM computing the forces.
"""

__all__ = ["OpenMMEnergy", "EnergyEvaluationError"]

import multiprocessing
import threading

import numpy as np
import openmm
import torch

from .._openmm_fast import context_energy_and_forces, context_potential_energy  # noqa: F401 (re-exported)
from ..platforms import select_platform
from ..units import check_position_dtype, nanometers, to_atom_indices, to_numpy_positions
from ..units import kT as _kT
from ._evaluator import EnergyEvaluationError, _ContextEvaluator, _evaluate_in_worker, _init_worker
from ..errors import InvalidInputError


class _ReducedEnergyFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, positions, bridge):
        u, du_dx = bridge._reduced_energy_and_gradient(positions.detach())
        ctx.save_for_backward(du_dx)
        ctx.input_dtype = positions.dtype
        return u

    @staticmethod
    def backward(ctx, grad_output):
        (du_dx,) = ctx.saved_tensors
        grad = grad_output.to(du_dx.dtype)[:, None, None] * du_dx
        return grad.to(ctx.input_dtype), None


class OpenMMEnergy:
    """Reduced energies and forces of an OpenMM System for batches of torch positions.

    Parameters
    ----------
    system : openmm.System
        The Hamiltonian. It is not modified.
    temperature : openmm.unit.Quantity or float
        Temperature (K if a bare number) defining ``u = U / kT``.
    platform : str or openmm.Platform, optional
        Default: automatic (see :func:`openmm_flowplugin.platforms.select_platform`), overridable
        with the environment variable ``OPENMM_FLOWPLUGIN_PLATFORM``.
    atom_indices : sequence of int, optional
        Atoms the positions refer to (distinct integers, non-empty; floats and bools are refused);
        all other atoms are held at ``reference_positions``.
    reference_positions : array_like or Quantity, shape=(n_atoms, 3), optional
        Positions (nm) of the atoms not in ``atom_indices``; required when ``atom_indices`` is given.
        Same dtype rule as the positions (below).
    n_workers : int
        Number of processes (each with its own Context) a large batch is split over. ``1`` (default)
        evaluates in this process; more pays only for large batches of small systems on a
        multi-core machine (see ``benchmarks/bench_energy.py``).
    platform_properties : dict, optional
        OpenMM platform properties (e.g. ``{"Precision": "double"}``).

    Attributes
    ----------
    n_evaluations : int
        Configurations evaluated so far.
    n_failures : int
        Evaluations that returned ``+inf`` (bad configurations, see Notes).

    Raises
    ------
    EnergyEvaluationError
        When OpenMM cannot evaluate the System at all (a broken setup, see Notes).
    TypeError
        For positions of another dtype than float64 or float32.

    Notes
    -----
    Calling the object with positions of shape ``(B, n_atoms, 3)`` or ``(n_atoms, 3)`` in nm returns
    the reduced energies as a float64 tensor of shape ``(B,)`` (or a scalar); it is differentiable:
    ``backward`` propagates ``du/dx = -F / kT`` from OpenMM's forces. Positions may be torch tensors,
    numpy arrays or Quantities of dtype float64 or float32 (computed in float64; the gradient has the
    input's dtype), or Python sequences of real numbers; integer, bool, complex and float16 inputs are
    refused (``TypeError``) instead of being cast.

    A *bad configuration* — non-finite coordinates, OpenMM's exception for NaN coordinates, or a
    non-finite energy or force — gives ``u = +inf`` and a zero gradient, never a stale or zero energy,
    so samplers reject it. Any other exception from OpenMM (a force whose Python function raises, a
    failed platform or lost GPU context) is a broken setup and raises :class:`EnergyEvaluationError`,
    whose message says whether the Context still evaluates the previous configuration.

    Examples
    --------
    >>> import torch
    >>> from openmm_flowplugin import systems, OpenMMEnergy
    >>> ala2 = systems.get("alanine_dipeptide_vacuum")
    >>> energy = OpenMMEnergy(ala2.system, ala2.temperature)
    >>> x = torch.as_tensor(ala2.positions_nm)[None].repeat(4, 1, 1).requires_grad_()
    >>> u = energy(x)
    >>> u.shape, u.dtype
    (torch.Size([4]), torch.float64)
    >>> u.sum().backward(); x.grad.shape
    torch.Size([4, 22, 3])
    """

    def __init__(
        self,
        system,
        temperature,
        platform=None,
        atom_indices=None,
        reference_positions=None,
        n_workers=1,
        platform_properties=None,
    ):
        self.system = system
        self.n_system_atoms = system.getNumParticles()
        self.kT = _kT(temperature)
        self.platform = select_platform(system, platform, purpose="energy")
        self.platform_properties = dict(platform_properties or {})
        if atom_indices is not None:
            atom_indices = to_atom_indices(atom_indices, self.n_system_atoms)
            if reference_positions is None:
                raise InvalidInputError("atom_indices needs reference_positions for the atoms that are held fixed.")
        self.atom_indices = atom_indices
        self.reference_positions = (
            None if reference_positions is None else to_numpy_positions(reference_positions, self.n_system_atoms, "reference_positions")
        )
        self.n_atoms = self.n_system_atoms if atom_indices is None else len(atom_indices)
        if isinstance(n_workers, (bool, np.bool_)) or not isinstance(n_workers, (int, np.integer)) or n_workers < 1:
            raise InvalidInputError(f"n_workers must be an integer >= 1, got {n_workers!r}.")
        self.n_workers = int(n_workers)
        self.n_evaluations = 0
        self.n_failures = 0
        self._evaluator = None
        self._pool = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ evaluation
    def __call__(self, positions):
        """Reduced energies u = U/kT, float64 tensor of shape (B,), differentiable w.r.t. ``positions``."""
        positions = self._as_tensor(positions)
        squeeze = positions.ndim == 2
        if squeeze:
            positions = positions[None]
        u = _ReducedEnergyFunction.apply(positions, self)
        return u[0] if squeeze else u

    energy = __call__

    def energy_and_forces(self, positions):
        """Reduced energies (B,) and reduced forces ``-du/dx`` (B, n_atoms, 3) in 1/nm, float64 numpy arrays.

        ``positions`` as for calling the object; a bad configuration gives ``u = +inf`` and zero forces.
        """
        x = self._as_tensor(positions)
        if x.ndim == 2:
            x = x[None]
        u, du_dx = self._reduced_energy_and_gradient(x)
        return u.numpy(), -du_dx.numpy()

    def _as_tensor(self, positions):
        check_position_dtype(positions)  # float64 or float32 tensors and arrays; integer, bool, complex... refused
        if not torch.is_tensor(positions):
            positions = torch.as_tensor(nanometers(positions))
        if positions.ndim not in (2, 3) or positions.shape[-2:] != (self.n_atoms, 3):
            raise InvalidInputError(
                f"positions must have shape (batch, {self.n_atoms}, 3) or ({self.n_atoms}, 3) in nm, got {tuple(positions.shape)}."
            )
        return positions

    def _reduced_energy_and_gradient(self, positions):
        x = positions.detach().to("cpu", torch.float64).numpy()
        if self.atom_indices is not None:
            full = np.broadcast_to(self.reference_positions, (len(x), self.n_system_atoms, 3)).copy()
            full[:, self.atom_indices] = x
        else:
            full = np.ascontiguousarray(x)
        energies, forces, failed = self._evaluate(full)
        if self.atom_indices is not None:
            forces = forces[:, self.atom_indices]
        self.n_evaluations += len(x)
        self.n_failures += int(failed.sum())
        u = torch.from_numpy(energies / self.kT)
        du_dx = torch.from_numpy(-forces / self.kT)
        return u.to(positions.device), du_dx.to(positions.device)

    def _evaluate(self, full_positions):
        if self.n_workers > 1 and len(full_positions) >= 4 * self.n_workers:
            pool = self._get_pool()
            chunks = np.array_split(full_positions, self.n_workers)
            results = pool.map(_evaluate_in_worker, chunks)
            return tuple(np.concatenate(parts) for parts in zip(*results))
        with self._lock:  # one Context, one configuration at a time
            if self._evaluator is None:
                self._evaluator = _ContextEvaluator(self.system, self.platform, self.platform_properties)
            return self._evaluator.evaluate(full_positions)

    def _get_pool(self):
        if self._pool is None:
            ctx = multiprocessing.get_context("spawn")
            self._pool = ctx.Pool(
                self.n_workers,
                initializer=_init_worker,
                initargs=(openmm.XmlSerializer.serialize(self.system), self.platform.getName(), self.platform_properties),
            )
        return self._pool

    def close(self):
        """Stop worker processes (if any) and release the Context."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None
        self._evaluator = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------------ pickling
    def __getstate__(self):
        state = self.__dict__.copy()
        state["system"] = openmm.XmlSerializer.serialize(self.system)
        state["platform"] = self.platform.getName()
        for live in ("_evaluator", "_pool", "_lock"):
            state.pop(live)
        return state

    def __setstate__(self, state):
        state = dict(state)
        state["system"] = openmm.XmlSerializer.deserialize(state["system"])
        state["platform"] = openmm.Platform.getPlatformByName(state["platform"])
        self.__dict__.update(state)
        self._evaluator = None
        self._pool = None
        self._lock = threading.Lock()

    def __repr__(self):
        return (
            f"OpenMMEnergy(n_atoms={self.n_atoms}, kT={self.kT:.4f} kJ/mol, platform={self.platform.getName()!r}, "
            f"n_workers={self.n_workers})"
        )
