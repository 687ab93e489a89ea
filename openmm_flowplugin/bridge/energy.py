"""The OpenMM <-> torch energy bridge.

:class:`OpenMMEnergy` evaluates reduced energies ``u(x) = U(x) / kT`` and forces of an OpenMM
System for a batch of torch positions, and plugs into autograd so that flows can be trained
against the physical energy (reverse KL) with OpenMM computing the forces.
"""

__all__ = ["OpenMMEnergy"]

import multiprocessing
import threading

import numpy as np
import openmm
import torch

from .._openmm_fast import context_energy_and_forces, context_potential_energy  # noqa: F401 (re-exported)
from ..platforms import select_platform
from ..units import kT as _kT
from ..units import to_numpy_positions


class _ContextEvaluator:
    """One OpenMM Context evaluating energies (kJ/mol) and forces (kJ/mol/nm) of full configurations."""

    def __init__(self, system, platform, properties=None):
        self.n_atoms = system.getNumParticles()
        self.integrator = openmm.VerletIntegrator(0.001)
        self.context = openmm.Context(system, self.integrator, platform, properties or {})

    def evaluate(self, positions):
        """positions: float64 array (B, n_atoms, 3). Returns energies (B,), forces (B, n_atoms, 3), failed (B,) bool."""
        n = len(positions)
        energies = np.full(n, np.inf)
        forces = np.zeros((n, self.n_atoms, 3))
        finite_input = np.isfinite(positions).all(axis=(1, 2))
        for i in np.flatnonzero(finite_input):
            try:
                energies[i] = self._evaluate_one(positions[i], forces[i])
            except Exception:  # OpenMM raises on e.g. NaN coordinates: a failed evaluation, not a crash
                energies[i] = np.inf
        failed = ~np.isfinite(energies) | ~np.isfinite(forces).all(axis=(1, 2))
        energies[failed] = np.inf
        forces[failed] = 0.0
        return energies, forces, failed

    def _evaluate_one(self, x, force_out):
        return context_energy_and_forces(self.context, x, force_out)


# Worker processes hold their own Context, built once from the System's XML.
_worker_evaluator = None


def _init_worker(system_xml, platform_name, properties):
    global _worker_evaluator
    system = openmm.XmlSerializer.deserialize(system_xml)
    _worker_evaluator = _ContextEvaluator(system, openmm.Platform.getPlatformByName(platform_name), properties)


def _evaluate_in_worker(positions):
    return _worker_evaluator.evaluate(positions)


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
        Atoms the positions refer to; all other atoms are held at ``reference_positions``.
    reference_positions : array_like or Quantity, shape=(n_atoms, 3), optional
        Positions (nm) of the atoms not in ``atom_indices``; required when ``atom_indices`` is given.
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
        Evaluations that returned ``+inf`` (non-finite input, OpenMM error, or non-finite energy/forces).

    Notes
    -----
    Calling the object returns the reduced energies as a float64 tensor of shape ``(B,)``; it is
    differentiable: ``backward`` propagates ``du/dx = -F / kT`` from OpenMM's forces. A failed
    evaluation gives ``u = +inf`` and a zero gradient, never a stale or zero energy.

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
        self.platform = select_platform(system, platform)
        self.platform_properties = dict(platform_properties or {})
        if atom_indices is not None:
            atom_indices = np.asarray(atom_indices, dtype=np.int64)
            if atom_indices.ndim != 1 or len(np.unique(atom_indices)) != len(atom_indices):
                raise ValueError("atom_indices must be a 1D sequence of distinct atom indices.")
            if atom_indices.min() < 0 or atom_indices.max() >= self.n_system_atoms:
                raise ValueError(f"atom_indices must lie in [0, {self.n_system_atoms}).")
            if reference_positions is None:
                raise ValueError("atom_indices needs reference_positions for the atoms that are held fixed.")
        self.atom_indices = atom_indices
        self.reference_positions = (
            None if reference_positions is None else to_numpy_positions(reference_positions, self.n_system_atoms, "reference_positions")
        )
        self.n_atoms = self.n_system_atoms if atom_indices is None else len(atom_indices)
        self.n_workers = int(n_workers)
        if self.n_workers < 1:
            raise ValueError("n_workers must be at least 1.")
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
        """Reduced energies (B,) and reduced forces ``-du/dx`` (B, n_atoms, 3) in 1/nm, float64 numpy arrays."""
        x = self._as_tensor(positions)
        if x.ndim == 2:
            x = x[None]
        u, du_dx = self._reduced_energy_and_gradient(x)
        return u.numpy(), -du_dx.numpy()

    def _as_tensor(self, positions):
        if not torch.is_tensor(positions):
            from ..units import nanometers

            positions = torch.as_tensor(nanometers(positions))
        if positions.ndim not in (2, 3) or positions.shape[-2:] != (self.n_atoms, 3):
            raise ValueError(
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
