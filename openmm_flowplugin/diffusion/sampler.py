"""The CV-biased diffusion sampler: adjoint matching, corrector matching, a well-tempered bias, exact weights.

Training alternates three things per iteration (Adjoint Sampling, Havens et al. 2025; Adjoint
Schrödinger Bridge Sampling; WT-ASBS, Nam, Máté et al. 2025):

1. *refill*: simulate ``batch_size`` chains with the current controller, evaluate u and ∇u at their end
   points through the OpenMM bridge (one batch call), add them to the replay buffer, and deposit a
   well-tempered hill at each end point's CVs;
2. *adjoint matching*: regress u_θ(t, X_t) on −σ(t) [∇u(X_K) + β∇V(s(X_K)) + h(X_K)], X_t drawn from the
   reference bridge between stored (X_0, X_K), h the corrector (exactly −X_K / V_K for the memoryless
   source, learned otherwise);
3. *corrector matching* (Gaussian source only): regress h_φ(X_K) on ∇ log p_ref(X_K | X_0).

Training targets the biased density exp(−u − βV); nothing of it has to converge for the results to be
right: :meth:`DiffusionSampler.sample` returns exact importance weights for the unbiased Boltzmann
density (:mod:`.chain`), and training only buys effective sample size.
"""

__all__ = ["DiffusionSampler", "DiffusionSamples"]

import copy
import dataclasses
import hashlib
import math
import numbers
import os
from pathlib import Path

import numpy as np
import openmm
import torch

from .._threads import package_threads
from ..analysis.weights import effective_sample_size
from ..bridge import OpenMMEnergy
from ..errors import InvalidInputError
from ..geometry.collective_variables import CartesianComponent
from ..proposals.streams import checked_root_seed, torch_generator
from ._checks import finite_positive, integer_at_least
from .buffer import ROW_FIELDS, ReplayBuffer
from .chain import DivergedTrainingError, run_chains
from .coordinates import CartesianSpace, InternalCoordinateSpace
from .networks import Controller, Corrector
from .schedule import NoiseSchedule

CHECKPOINT_FORMAT = "openmm_flowplugin.diffusion/1"
_RETRAIN = ("Its random streams would repeat the failure: train again with a smaller learning_rate or sigma_max, or a "
            "max_gradient_norm, into a new checkpoint path (a checkpoint resumes only with its own settings).")
# settings keys that checkpoints written before them lack: such a checkpoint is not compared on them
_SETTINGS_ADDED_LATER = ("bias",)  # 2026-12-01: the bias's CVs and grid
# Stream purposes (proposals.streams uses 0-2).
_REFILL, _TRAIN, _SAMPLE, _INITIALISE, _WARM_START = 10, 11, 12, 13, 14


def check_system_and_cvs(molecular_system, cvs):
    """Refuse a System with constraints and CVs reading atoms it does not have (before any work: the ``diffuse``
    workflow calls it ahead of its standardization MD)."""
    n_atoms = molecular_system.system.getNumParticles()
    if molecular_system.system.getNumConstraints():
        raise InvalidInputError(f"{molecular_system.name!r} has {molecular_system.system.getNumConstraints()} constraints, but the diffusion "
                                "sampler moves every degree of freedom (its weights are for the unconstrained density): build the "
                                "System without constraints (e.g. createSystem(..., constraints=None)).")
    for cv in cvs:
        if max(cv.atoms) >= n_atoms:
            raise InvalidInputError(f"the CV {cv!r} reads atom {max(cv.atoms)}, but {molecular_system.name!r} has "
                                    f"{n_atoms} atoms (indices 0..{n_atoms - 1}).")


@dataclasses.dataclass
class DiffusionSamples:
    """Independent samples of the sampler with exact importance weights for the Boltzmann density.

    Attributes
    ----------
    positions : numpy.ndarray, shape=(n, n_atoms, 3)
        nm.
    reduced_energies : numpy.ndarray, shape=(n,)
        u = U/kT (``inf`` where OpenMM could not evaluate: weight 0).
    log_weights : numpy.ndarray, shape=(n,)
        Exact, unnormalised log importance weights for exp(−u) (the main result).
    cv_values : numpy.ndarray or None, shape=(n, 2)
        The bias's CVs, if the sampler has a bias.
    bias : numpy.ndarray or None, shape=(n,)
        V(s) in kJ/mol at the samples (frozen bias).
    kT : float
        kJ/mol.
    n_invalid : int
        Samples whose energy OpenMM returned as NaN or infinite (weight 0, included in the weights'
        normalisation as zeros): count them, since a failed evaluation of a finite-energy configuration
        biases the estimates.
    """

    positions: np.ndarray
    reduced_energies: np.ndarray
    log_weights: np.ndarray
    cv_values: np.ndarray
    bias: np.ndarray
    kT: float
    n_invalid: int = 0

    @property
    def ess_fraction(self):
        """Kish effective sample size of the exact weights, as a fraction of the samples."""
        return effective_sample_size(self.log_weights)

    @property
    def n_effective(self):
        """Kish effective number of samples of the exact weights."""
        return self.ess_fraction * len(self.log_weights)

    def pooled(self, other):
        """These samples and ``other``'s (e.g. :meth:`DiffusionSampler.training_samples`) as one weighted set.

        Each set's log weights are exact for the same unnormalised density exp(−u), so the union is
        too; only ``cv_values`` and ``log_weights`` are pooled (the other fields are ``None`` unless
        both sets have them).

        Examples
        --------
        >>> a = DiffusionSamples(None, None, np.zeros(2), np.zeros((2, 2)), None, kT=2.5)
        >>> a.pooled(a).log_weights.shape
        (4,)
        """
        def both(name):
            mine, theirs = getattr(self, name), getattr(other, name)
            return None if mine is None or theirs is None else np.concatenate([mine, theirs])

        if self.kT != other.kT:
            raise InvalidInputError(f"these samples are at kT = {self.kT} kJ/mol and the others at {other.kT}: "
                                    "pool samples of one temperature.")
        if self.cv_values is None or other.cv_values is None or self.cv_values.shape[1:] != other.cv_values.shape[1:]:
            raise InvalidInputError("pool samples with the same CVs: one set has no CV values (a sampler without a bias) "
                                    "or other CVs.")
        return DiffusionSamples(positions=both("positions"), reduced_energies=both("reduced_energies"),
                                log_weights=np.concatenate([self.log_weights, other.log_weights]), cv_values=both("cv_values"),
                                bias=both("bias"), kT=self.kT, n_invalid=self.n_invalid + other.n_invalid)

    @property
    def approximate_log_weights(self):
        """exp(+βV(s)) weights, exact only if the sampler had converged to exp(−u − βV): approximate."""
        if self.bias is None:
            raise InvalidInputError("these samples come from a sampler without a bias.")
        return self.bias / self.kT


class DiffusionSampler:
    """An energy-trained diffusion sampler for an OpenMM system, optionally pushed by a well-tempered CV bias.

    Parameters
    ----------
    molecular_system : MolecularSystem
        From :mod:`openmm_flowplugin.systems` (``system``, ``temperature``, ``topology``).
    bias : WellTemperedBias, optional
        Deposited on during training, frozen in :meth:`sample`.
    schedule : NoiseSchedule, optional
        Default ``NoiseSchedule(sigma_max=2.0, sigma_min=0.01, n_steps=100)`` (nm).
    hidden, n_layers : int
        Size of the controller and corrector MLPs.
    batch_size : int
        Chains per refill (energy evaluations per iteration).
    buffer_size : int, optional
        Replay-buffer capacity (default 50 × ``batch_size``: a long memory keeps every basin the
        sampler has visited in the regression, which counters mode collapse).
    n_adjoint_steps, n_corrector_steps : int
        Gradient steps per iteration for each objective.
    training_batch_size : int
        Buffer rows per gradient step.
    learning_rate : float
    coordinates : CartesianSpace or InternalCoordinateSpace, optional
        The sampler's variables: flattened Cartesian positions (default) or standardized internal
        coordinates (:mod:`.coordinates`; molecules). The schedule's scales are in these units.
    max_gradient_norm : float or None
        Clip each ∇u(X_K) (u = U/kT; per nm in Cartesian coordinates, per standardized unit in internal
        coordinates) to this norm in the regression target (default 20): early
        chains end far from the target where forces are huge, and unclipped targets make the drift
        overshoot and training diverge. Only training sees it; the weights stay exact. ``None``: no clip.
    n_snapshots, snapshot_interval : int
        :meth:`sample` mixes up to ``n_snapshots`` controllers saved during training, first every
        ``snapshot_interval`` iterations; when there are more, every other one is dropped and the
        interval doubles, so they stay spread over the whole training.
    seed : int, optional
        Root seed of every random stream (:mod:`openmm_flowplugin.proposals.streams`).
    platform : str, optional
        OpenMM platform of the energy bridge.

    Examples
    --------
    >>> from openmm_flowplugin import systems
    >>> from openmm_flowplugin.diffusion import DiffusionSampler, NoiseSchedule
    >>> sampler = DiffusionSampler(systems.get("double_well_2d"), schedule=NoiseSchedule(2.0, 0.01, 20),
    ...                            batch_size=32, n_adjoint_steps=5, seed=1)
    >>> sampler.train(2)
    >>> samples = sampler.sample(64)
    >>> samples.positions.shape, samples.log_weights.shape
    ((64, 1, 3), (64,))
    """

    def __init__(self, molecular_system, bias=None, schedule=None, hidden=128, n_layers=3, batch_size=256, buffer_size=None,
                 n_adjoint_steps=50, n_corrector_steps=50, training_batch_size=256, learning_rate=3e-4, max_gradient_norm=20.0,
                 n_snapshots=10, snapshot_interval=10, coordinates=None, seed=None, platform=None):
        self.molecular_system = molecular_system
        self.bias = bias
        self.schedule = schedule if schedule is not None else NoiseSchedule(2.0, 0.01, 100)
        if not isinstance(self.schedule, NoiseSchedule):
            raise InvalidInputError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}.")
        self.n_atoms = molecular_system.system.getNumParticles()
        check_system_and_cvs(molecular_system, [] if bias is None else bias.cvs)
        self.coordinates = coordinates if coordinates is not None else CartesianSpace(self.n_atoms)
        if self.coordinates.n_atoms != self.n_atoms:
            raise InvalidInputError(f"the coordinate space is for {self.coordinates.n_atoms} atoms, {molecular_system.name!r} has {self.n_atoms}.")
        self.energy = OpenMMEnergy(molecular_system.system, molecular_system.temperature, platform=platform)
        self.kT = self.energy.kT
        if bias is not None:
            for cv in bias.cvs:
                if isinstance(self.coordinates, InternalCoordinateSpace) and isinstance(cv, CartesianComponent):
                    raise InvalidInputError(
                        f"the CV {cv!r} is a Cartesian component, which depends on the molecule's position and orientation; "
                        "internal coordinates sample neither (positions come out in the Z-matrix's standard frame). Use "
                        "distances, angles or torsions, or the default Cartesian coordinates.")
        if bias is not None and not math.isclose(bias.kT, self.kT, rel_tol=1e-9):
            raise InvalidInputError(f"the bias was built for kT = {bias.kT:.4f} kJ/mol but the system's is {self.kT:.4f} kJ/mol.")
        self._seed_given = seed is not None
        self.settings = dict(
            schedule=self.schedule.as_dict(), hidden=integer_at_least(hidden, 1, "hidden"), n_layers=integer_at_least(n_layers, 1, "n_layers"),
            batch_size=integer_at_least(batch_size, 1, "batch_size"),
            buffer_size=integer_at_least(buffer_size if buffer_size is not None else 50 * batch_size, 1, "buffer_size"),
            n_adjoint_steps=integer_at_least(n_adjoint_steps, 0, "n_adjoint_steps"),
            n_corrector_steps=integer_at_least(n_corrector_steps, 0, "n_corrector_steps"),
            training_batch_size=integer_at_least(training_batch_size, 1, "training_batch_size"),
            learning_rate=finite_positive(learning_rate, "learning_rate"),
            max_gradient_norm=None if max_gradient_norm is None else finite_positive(max_gradient_norm, "max_gradient_norm"),
            seed=checked_root_seed(seed),
            n_snapshots=integer_at_least(n_snapshots, 1, "n_snapshots"),
            snapshot_interval=integer_at_least(snapshot_interval, 1, "snapshot_interval"),
            kT=self.kT, hamiltonian=hamiltonian_digest(molecular_system.system), has_bias=bias is not None,
            coordinates=self.coordinates.describe(), bias=None if bias is None else bias.describe(),
        )
        dimension = self.coordinates.dimension
        # torch's layer initialisers draw from the global generator: seed it from our stream inside a fork,
        # so the networks are reproducible and the caller's global state is left as it was.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch_generator(self.settings["seed"], _INITIALISE).initial_seed()))
            self.controller = Controller(dimension, hidden=hidden, n_layers=n_layers)
            self.corrector = None if self.schedule.memoryless else Corrector(dimension, hidden=hidden, n_layers=n_layers)
        self.controller_optimizer = torch.optim.Adam(self.controller.parameters(), lr=learning_rate)
        self.corrector_optimizer = None if self.corrector is None else torch.optim.Adam(self.corrector.parameters(), lr=learning_rate)
        cv_fields = ("cv_values", "cv_jacobian") if bias is not None else ()
        self.buffer = ReplayBuffer(self.settings["buffer_size"], fields=ROW_FIELDS + cv_fields)
        self.iteration = 0
        self.n_sample_batches = 0
        self.n_invalid = 0
        self.n_warm_start = 0
        self.history = []
        self.snapshots = []
        self.snapshot_stride = self.settings["snapshot_interval"]
        self._training_end_points = {}  # iteration -> (CV values, log weights): one entry per refill, no copying as it grows

    # ------------------------------------------------------------------ energies
    @property
    def n_energy_evaluations(self):
        """Energy/force evaluations so far (warm start, training and sampling), this process and resumed ones."""
        return self._evaluations_before + self.energy.n_evaluations

    _evaluations_before = 0

    def _energies(self, z):
        """Reduced target energies u_z = u(x(z)) − log J(z) (J the volume factor) and their gradients in z (float64)."""
        if isinstance(self.coordinates, CartesianSpace):
            u, forces = self.energy.energy_and_forces(z.reshape(-1, self.n_atoms, 3))
            return torch.from_numpy(u), torch.from_numpy(-forces).reshape(len(u), -1)
        z = z.detach().to(torch.float64).requires_grad_(True)
        x, log_volume = self.coordinates.to_positions(z)
        u = self.energy(x) - log_volume
        finite = torch.isfinite(u)
        gradient = torch.zeros_like(z)
        if finite.any():
            (gradient,) = torch.autograd.grad(u[finite].sum(), z)
        u = torch.where(finite, u.detach(), torch.full_like(u.detach(), math.inf))
        return u, torch.where(finite[:, None], gradient, torch.zeros_like(gradient))

    def positions(self, z):
        """Positions (batch, n_atoms, 3) in nm of the sampler's variables ``z`` (batch, d)."""
        return self.coordinates.to_positions(z)[0]

    def _cv_rows(self, z):
        """CV values s(x(z)) (batch, 2) and their Jacobians ds/dz (batch, 2, d), for buffer rows.

        The bias changes with every deposit but s and ds/dz of a row do not: stored once, they turn the
        bias gradient of a regression step into ∇_s βV(s) · ds/dz, without the coordinate transform.
        """
        z = z.detach().to(torch.float64).requires_grad_(True)
        s = self.bias.cv_values(self.positions(z))
        rows = [torch.autograd.grad(s[:, i].sum(), z, retain_graph=i + 1 < s.shape[1])[0] for i in range(s.shape[1])]
        return s.detach(), torch.nan_to_num(torch.stack(rows, 1), nan=0.0)

    def _bias_gradient(self, batch):
        """∇_z βV(s(x(z))) of buffer rows (zero without a bias), from their stored CVs and Jacobians."""
        if self.bias is None:
            return torch.zeros_like(batch["x_final"])
        s = batch["cv_values"].clone().requires_grad_(True)
        (gradient,) = torch.autograd.grad(self.bias.of_cvs(s).sum() / self.kT, s)
        return torch.einsum("nc,ncd->nd", torch.nan_to_num(gradient, nan=0.0), batch["cv_jacobian"])

    def _add_to_buffer(self, x_initial, x_final, energy_gradient, cv_rows=None):
        fields = dict(x_initial=x_initial, x_final=x_final, energy_gradient=self._clipped(energy_gradient))
        if self.bias is not None:
            fields["cv_values"], fields["cv_jacobian"] = cv_rows if cv_rows is not None else self._cv_rows(x_final)
        self.buffer.add(**fields)

    # ------------------------------------------------------------------ training
    def warm_start(self, positions):
        """Add configurations (e.g. from a short MD run) to the replay buffer; their energies count as evaluations.

        Parameters
        ----------
        positions : array_like or Quantity, shape=(n, n_atoms, 3)
            nm. Only the regression targets use them; the weights of :meth:`sample` stay exact.
        """
        from ..units import nanometers

        x = torch.as_tensor(np.asarray(nanometers(positions), dtype=np.float64))
        if x.ndim != 3 or tuple(x.shape[1:]) != (self.n_atoms, 3) or len(x) == 0:
            raise InvalidInputError(f"warm_start needs positions of shape (n, {self.n_atoms}, 3) with n >= 1, got {tuple(x.shape)}.")
        x = x.reshape(len(x), -1) if isinstance(self.coordinates, CartesianSpace) else self.coordinates.from_positions_to_z(x)
        u, gradient = self._energies(x)
        valid = torch.isfinite(u)
        self.n_invalid += int((~valid).sum())
        x0 = torch.randn(x.shape, generator=torch_generator(self.settings["seed"], _WARM_START, self.n_warm_start),
                         dtype=torch.float64) * self.schedule.source_scale
        self._add_to_buffer(x0[valid], x[valid], gradient[valid])
        self.n_warm_start += 1

    def _clipped(self, gradient):
        limit = self.settings["max_gradient_norm"]
        if limit is None:
            return gradient
        norm = gradient.norm(dim=-1, keepdim=True)
        return gradient * torch.clamp(limit / torch.clamp(norm, min=1e-300), max=1.0)

    def refill(self, deposit=True):
        """Simulate a batch of chains, add their end points to the buffer, deposit hills (if ``deposit``); returns statistics."""
        generator = torch_generator(self.settings["seed"], _REFILL, self.iteration)
        with package_threads():
            chains = run_chains(self.controller, self.schedule, self.settings["batch_size"], generator)
        u, gradient = self._energies(chains.x_final)
        valid = torch.isfinite(u)
        n_invalid = int((~valid).sum())
        self.n_invalid += n_invalid
        if not valid.any():
            raise DivergedTrainingError(f"all {len(u)} chain end points of iteration {self.iteration} have non-finite energies "
                                        f"(the iteration is undone). {_RETRAIN}")
        bias_reduced, cvs, cv_rows = torch.zeros_like(u), None, None
        if self.bias is not None:  # positions and CVs once: for the weights, the buffer and the hills
            cvs, jacobians = self._cv_rows(chains.x_final)
            cv_rows = (cvs[valid], jacobians[valid])
            bias_reduced = self.bias.of_cvs(cvs).detach() / self.kT
        log_weights = torch.where(valid, -(u + bias_reduced) + chains.log_path_ratio, torch.full_like(u, -math.inf))
        self._add_to_buffer(chains.x_initial[valid], chains.x_final[valid], gradient[valid], cv_rows)
        if cvs is not None:  # exact weights for exp(-u) of every end point, kept for training_samples()
            self._record_end_points(cvs, torch.where(valid, chains.log_path_ratio - u, torch.full_like(u, -math.inf)))
        if cvs is not None and deposit:
            self.bias.deposit(cvs[valid].numpy())
        return dict(buffer_ess=effective_sample_size(log_weights.numpy()), n_invalid=n_invalid)

    def _record_end_points(self, cvs, log_weights):
        # keyed by iteration: a refill repeated at one iteration (a retry in this process, the same stream) replaces its rows
        self._training_end_points[self.iteration] = (cvs.detach().to(torch.float64), log_weights.detach().to(torch.float64))

    def _end_point_arrays(self, first_iteration=0):
        """The recorded end points from ``first_iteration`` on, in iteration order, as three tensors."""
        iterations = [i for i in sorted(self._training_end_points) if i >= first_iteration]
        cvs, weights = zip(*(self._training_end_points[i] for i in iterations)) if iterations else ((), ())
        n_cvs = len(self.bias.cvs) if self.bias is not None else 0
        return dict(cv_values=torch.cat([torch.zeros(0, n_cvs, dtype=torch.float64), *cvs]),
                    log_weights=torch.cat([torch.zeros(0, dtype=torch.float64), *weights]),
                    iterations=torch.cat([torch.zeros(0, dtype=torch.int64)]
                                         + [torch.full((len(w),), i, dtype=torch.int64) for i, w in zip(iterations, weights)]))

    def training_samples(self, discard=0.5):
        """The training chains' end points with exact Boltzmann importance weights (needs a bias: its CVs).

        Every refill draws ``batch_size`` chains from the controller of that iteration and evaluates
        their energies; the weight of each end point, computed as in :meth:`sample` for the controller
        that drew it, is exact for exp(−u) whatever the controller was. Pooled with :meth:`sample`'s
        (:meth:`DiffusionSamples.pooled`), the estimate uses every evaluation the training spent.
        The controllers depend on earlier chains, so the pooled weights are those of adaptive
        importance sampling: consistent, and the bootstrap treats them as independent.

        Parameters
        ----------
        discard : float
            Fraction of the iterations run so far whose end points are left out (from the start of
            training: the untrained controller's chains carry almost no weight but add variance).

        Returns
        -------
        DiffusionSamples
            ``cv_values`` and ``log_weights`` only (``positions`` and ``reduced_energies`` are ``None``:
            only what the FES needs is kept, 2 CVs and a weight per chain).

        Examples
        --------
        >>> from openmm_flowplugin import systems
        >>> from openmm_flowplugin.diffusion import WellTemperedBias
        >>> from openmm_flowplugin.geometry import CartesianComponent
        >>> well = systems.get("double_well_2d")
        >>> bias = WellTemperedBias([CartesianComponent(0, "x"), CartesianComponent(0, "y")], lower=(-2.5, -2.5), upper=(2.5, 2.5),
        ...                         n_nodes=(26, 26), hill_width=0.5, hill_height=0.5, bias_factor=5.0, temperature=well.temperature)
        >>> sampler = DiffusionSampler(well, bias=bias, hidden=16, n_layers=1, batch_size=8, n_adjoint_steps=1, n_corrector_steps=1, seed=1)
        >>> sampler.train(4)
        >>> sampler.training_samples(discard=0.5).log_weights.shape
        (16,)
        """
        if self.bias is None:
            raise InvalidInputError("training_samples() keeps the bias's CVs of each end point, and this sampler has no bias: "
                                    "use sample() alone.")
        if isinstance(discard, bool) or not isinstance(discard, numbers.Real) or not 0.0 <= discard < 1.0:
            raise InvalidInputError(f"discard must be a fraction in [0, 1), got {discard!r}.")
        recorded = self._end_point_arrays(first_iteration=int(discard * self.iteration))
        log_weights = recorded["log_weights"].numpy()
        return DiffusionSamples(positions=None, reduced_energies=None, log_weights=log_weights, cv_values=recorded["cv_values"].numpy(),
                                bias=None, kT=self.kT, n_invalid=int(np.sum(~np.isfinite(log_weights))))

    def _adjoint_loss(self, generator):
        batch = self.buffer.sample(self.settings["training_batch_size"], generator)
        x0, x1 = batch["x_initial"], batch["x_final"]
        bias_gradient = self._bias_gradient(batch)
        if self.corrector is None:
            correction = -x1 / float(self.schedule.variances[-1])
        else:
            with torch.no_grad():
                correction = self.corrector(x1).to(torch.float64)
        k = torch.randint(self.schedule.n_steps, (len(x1),), generator=generator)
        xk = self.schedule.sample_bridge(x0, x1, k, generator)
        sigma = torch.as_tensor(self.schedule.sigmas)[k][:, None]
        target = -sigma * (batch["energy_gradient"] + bias_gradient + correction)
        t = torch.as_tensor(self.schedule.times)[k]
        return ((self.controller(t, xk) - target.to(torch.float32)) ** 2).sum(-1).mean()

    def _corrector_loss(self, generator):
        batch = self.buffer.sample(self.settings["training_batch_size"], generator)
        target = self.schedule.terminal_transition_score(batch["x_initial"], batch["x_final"])
        return ((self.corrector(batch["x_final"]) - target.to(torch.float32)) ** 2).sum(-1).mean()

    def _optimise(self, loss_function, optimizer, parameters, n_steps, generator):
        losses = []
        for _ in range(n_steps):
            loss = loss_function(generator)
            if not torch.isfinite(loss):
                raise DivergedTrainingError(f"non-finite training loss at iteration {self.iteration} (the iteration is undone). {_RETRAIN}")
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(parameters, 100.0)
            optimizer.step()
            losses.append(float(loss.detach()))
        return float(np.mean(losses)) if losses else float("nan")

    def train(self, n_iterations, checkpoint=None, checkpoint_interval=10, progress=False, deposit=True):
        """Train until ``n_iterations`` iterations in total (a resumed run continues its count).

        Parameters
        ----------
        n_iterations : int
            Total iterations (refill + adjoint matching + corrector matching).
        checkpoint : str or Path, optional
            Saved every ``checkpoint_interval`` iterations and at the end (written to a temporary file
            and renamed, so an interruption never leaves it half written). If it exists, training
            resumes from it; it must come from the same system and settings.
        progress : bool
            A tqdm bar with the loss, the buffer's ESS fraction and the bias height.
        deposit : bool
            Deposit hills (default). ``False`` trains the controller on the frozen bias, e.g. for a
            final phase before :meth:`sample`.

        Notes
        -----
        An iteration that raises (a non-finite loss, an interrupt) is undone before the exception
        propagates: its buffer rows, hills, end points and network steps are removed, so the sampler
        is as after the last completed iteration and may continue (the energy evaluations it spent
        stay counted).
        """
        from tqdm.auto import tqdm

        n_iterations = integer_at_least(n_iterations, 0, "n_iterations")
        checkpoint_interval = integer_at_least(checkpoint_interval, 1, "checkpoint_interval")
        if checkpoint is not None and Path(checkpoint).exists():
            if self.iteration == 0:
                self.load_checkpoint(checkpoint)
            else:
                self._check_own_checkpoint(checkpoint)
        bar = tqdm(total=n_iterations, initial=self.iteration, desc="diffusion sampler", disable=not progress)
        with package_threads():
            while self.iteration < n_iterations:
                before = self._iteration_state()
                try:
                    stats = self._iterate(deposit)
                except BaseException:  # a diverged loss, a failed energy, an interrupt: undo the half-done iteration
                    self._restore_iteration_state(before)
                    raise
                stats.update(iteration=self.iteration, bias_max_kJ=0.0 if self.bias is None else self.bias.max_value,
                             energy_evaluations=self.n_energy_evaluations)
                self.history.append(stats)
                self.iteration += 1
                if self.iteration % self.snapshot_stride == 0:
                    self._take_snapshot()
                bar.update(1)
                bar.set_postfix(loss=f"{stats['adjoint_loss']:.3g}", ess=f"{stats['buffer_ess']:.3f}",
                                bias=f"{stats['bias_max_kJ']:.2f} kJ/mol", invalid=self.n_invalid)
                if checkpoint is not None and (self.iteration % checkpoint_interval == 0 or self.iteration == n_iterations):
                    self.save_checkpoint(checkpoint)
        bar.close()

    def _iterate(self, deposit):
        """One iteration's refill and regressions (the iteration count is advanced by :meth:`train`)."""
        stats = self.refill(deposit=deposit)
        generator = torch_generator(self.settings["seed"], _TRAIN, self.iteration)
        stats["adjoint_loss"] = self._optimise(self._adjoint_loss, self.controller_optimizer, list(self.controller.parameters()),
                                               self.settings["n_adjoint_steps"], generator)
        if self.corrector is not None:
            stats["corrector_loss"] = self._optimise(self._corrector_loss, self.corrector_optimizer, list(self.corrector.parameters()),
                                                     self.settings["n_corrector_steps"], generator)
        return stats

    def _iteration_state(self):
        """What an iteration changes, kept so that one that raises can be undone.

        The buffer replaces its tensors on every addition (never writes into them), so the dict of
        references keeps its rows; the networks and optimizers change in place and are copied.
        """
        modules = [m for m in (self.controller, self.controller_optimizer, self.corrector, self.corrector_optimizer) if m is not None]
        return dict(buffer=None if self.buffer.data is None else dict(self.buffer.data),
                    bias=None if self.bias is None else self.bias.state_dict(), n_invalid=self.n_invalid,
                    end_points=self._training_end_points.get(self.iteration),
                    modules=[(module, copy.deepcopy(module.state_dict())) for module in modules])

    def _restore_iteration_state(self, state):
        self.buffer.data = state["buffer"]
        if self.bias is not None:
            self.bias.load_state_dict(state["bias"])
        self.n_invalid = state["n_invalid"]
        if state["end_points"] is None:
            self._training_end_points.pop(self.iteration, None)
        else:
            self._training_end_points[self.iteration] = state["end_points"]
        for module, module_state in state["modules"]:
            module.load_state_dict(module_state)

    def _take_snapshot(self):
        """Keep the controller; beyond ``n_snapshots``, keep every other one and double the stride.

        The snapshots so stay spread over the whole training (at iterations that are multiples of the
        stride) instead of its last few iterations: with a bias, the sampler swings between basins on
        time scales that grow with the bias, and a mixture over a short window can miss one.
        """
        self.snapshots.append({key: value.detach().clone() for key, value in self.controller.state_dict().items()})
        if len(self.snapshots) > self.settings["n_snapshots"]:
            self.snapshots = self.snapshots[1::2]
            self.snapshot_stride *= 2

    def production_controllers(self):
        """The controllers :meth:`sample` mixes: the stored snapshots and the current controller."""
        controllers = []
        with torch.random.fork_rng(devices=[]):  # the layers' initialisers draw from torch's global generator: leave it alone
            for state in self.snapshots:
                controller = Controller(self.controller.dimension, hidden=self.settings["hidden"], n_layers=self.settings["n_layers"])
                controller.load_state_dict(state)
                controllers.append(controller)
        return controllers + [self.controller]

    # ------------------------------------------------------------------ production
    def sample(self, n_samples, batch_size=None, checkpoint=None):
        """``n_samples`` independent samples with exact Boltzmann importance weights (bias frozen).

        The chains come from the uniform mixture of the controller snapshots (spread over the
        training, see ``n_snapshots``) and are weighted by the mixture's
        exact path density (:func:`~openmm_flowplugin.diffusion.chain.run_chains`): a sampler trained
        with a well-tempered bias keeps moving between basins as hills are added, and the mixture
        averages over that motion instead of depending on where the last iteration happened to be.
        Each call draws new chains (its own random stream), so repeated calls in one process never
        repeat samples. A process resumed from a checkpoint continues the stream from the counter the
        checkpoint holds: pass ``checkpoint`` to store it there after drawing, or a rerun of the same
        script draws the same chains again (its seeded result, reproduced).

        Parameters
        ----------
        n_samples : int
        batch_size : int, optional
            Chains per batch (default: the training ``batch_size``).
        checkpoint : str or Path, optional
            Written after drawing (:meth:`save_checkpoint`), e.g. the path given to :meth:`train`;
            another run's checkpoint there is refused before any chain is drawn.

        Returns
        -------
        DiffusionSamples
        """
        batch_size = self.settings["batch_size"] if batch_size is None else integer_at_least(batch_size, 1, "batch_size")
        if checkpoint is not None and Path(checkpoint).exists():
            self._check_own_checkpoint(checkpoint)
        parts = []
        controllers = self.production_controllers()
        with package_threads():
            for start in range(0, integer_at_least(n_samples, 1, "n_samples"), batch_size):
                generator = torch_generator(self.settings["seed"], _SAMPLE, self.n_sample_batches)
                chains = run_chains(controllers, self.schedule, min(batch_size, n_samples - start), generator)
                self.n_sample_batches += 1
                u, _ = self._energies(chains.x_final)
                parts.append((chains.x_final, u, chains.log_path_ratio - u))
        z = torch.cat([p[0] for p in parts])
        x, log_volume = self.coordinates.to_positions(z)
        u = (torch.cat([p[1] for p in parts]) + log_volume).numpy()  # the physical u = U/kT (u_z = u − log J)
        log_weights = torch.cat([p[2] for p in parts]).numpy()
        log_weights = np.where(np.isfinite(u), log_weights, -np.inf)
        cv_values = bias = None
        if self.bias is not None:
            s = self.bias.cv_values(x)
            cv_values, bias = s.detach().numpy(), self.bias.of_cvs(s).detach().numpy()
        if checkpoint is not None:
            self.save_checkpoint(checkpoint)
        return DiffusionSamples(positions=x.numpy(), reduced_energies=u, log_weights=log_weights, cv_values=cv_values, bias=bias, kT=self.kT,
                                n_invalid=int(np.sum(~np.isfinite(u))))

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self):
        """Everything needed to resume, as plain data (tensors, numbers, strings, lists, dicts)."""
        return dict(
            format=CHECKPOINT_FORMAT, settings=dict(self.settings), iteration=self.iteration, n_sample_batches=self.n_sample_batches,
            n_invalid=self.n_invalid, n_warm_start=self.n_warm_start, energy_evaluations=self.n_energy_evaluations,
            controller=self.controller.state_dict(), controller_optimizer=self.controller_optimizer.state_dict(),
            corrector=None if self.corrector is None else self.corrector.state_dict(),
            corrector_optimizer=None if self.corrector is None else self.corrector_optimizer.state_dict(),
            buffer=self.buffer.state_dict(), bias=None if self.bias is None else self.bias.state_dict(),
            history=[dict(h) for h in self.history], snapshots=list(self.snapshots), snapshot_stride=self.snapshot_stride,
            training_end_points=self._end_point_arrays(),
        )

    def save_checkpoint(self, path):
        """Write :meth:`state_dict` to ``path`` atomically (temporary file, then rename)."""
        path = Path(path)
        temporary = path.with_name(path.name + ".partial")
        torch.save(self.state_dict(), temporary)
        os.replace(temporary, path)

    def _settings_differing_from(self, stored, settings=None):
        """The keys in which a checkpoint's ``stored`` settings differ from ``settings`` (default: this sampler's), sorted."""
        settings = self.settings if settings is None else settings
        return sorted(key for key in settings
                      if stored.get(key) != settings[key] and not (key in _SETTINGS_ADDED_LATER and key not in stored))

    def _check_own_checkpoint(self, path):
        """Refuse to write over a checkpoint of another run (or of a later point of this one)."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        stored = state.get("settings", {}) if isinstance(state, dict) else {}
        if self._settings_differing_from(stored) or int(state.get("iteration", -1)) > self.iteration:
            raise InvalidInputError(f"{path} holds another run's checkpoint (or a later one of this run); give another path.")

    def load_checkpoint(self, path):
        """Resume from a checkpoint of the same system and settings (plain data only: ``weights_only`` loading)."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 (any unreadable file gets the same one-line answer)
            raise InvalidInputError(f"{path} is not a readable diffusion-sampler checkpoint ({type(error).__name__}: {error}).") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise InvalidInputError(f"{path} is not a diffusion-sampler checkpoint (format {CHECKPOINT_FORMAT!r}).")
        stored = state["settings"]
        if stored.get("hamiltonian") != self.settings["hamiltonian"]:
            raise InvalidInputError(f"{path} was trained for another system (its Hamiltonian differs from {self.molecular_system.name!r}'s); "
                                    "give another checkpoint path.")
        settings = dict(self.settings)
        if not self._seed_given and "seed" in stored:  # seed=None: continue the stored run's streams
            settings["seed"] = stored["seed"]
        differs = self._settings_differing_from(stored, settings)
        if differs:
            hint = ""
            stored_space, space = stored.get("coordinates", {}), settings["coordinates"]
            if "coordinates" in differs and stored_space.get("kind") == space["kind"] == "internal" and stored_space.get("mean") != space["mean"]:
                hint = (" (its internal coordinates were standardized on another MD run: resume with the same md_frames, md_interval, "
                        "seed and platform, on the command line --md-frames, --md-interval, --seed and --platform)")
            elif "coordinates" in differs and stored_space.get("kind") == space["kind"] == "internal":
                hint = (" (standardized on the same MD run with another rotor spread: resume with the rotor_scale it was trained "
                        "with, on the command line --rotor-scale, default 1 rad; a run made before rotors were widened resumes with "
                        "rotor_scale=None, --rotor-scale 0)")
            elif "coordinates" in differs and stored_space.get("kind") == "cartesian":
                hint = (" (it ran on Cartesian coordinates, the command's default before 'auto': resume it with coordinates='cartesian', "
                        "on the command line --coordinates cartesian)")
            elif "bias" in differs and stored.get("bias") and self.settings["bias"]:
                hint = f" (its bias: {_bias_summary(stored['bias'])}; this one: {_bias_summary(settings['bias'])})"
            raise InvalidInputError(f"{path} was trained with other settings ({', '.join(differs)}){hint}; use the same ones to resume, "
                                    "or another checkpoint path.")
        if self.bias is not None:  # checked (and loaded) before anything else changes: a refused checkpoint leaves the sampler as it was
            self.bias.load_state_dict(state["bias"])
        self.settings = settings
        self.controller.load_state_dict(state["controller"])
        self.controller_optimizer.load_state_dict(state["controller_optimizer"])
        if self.corrector is not None:
            self.corrector.load_state_dict(state["corrector"])
            self.corrector_optimizer.load_state_dict(state["corrector_optimizer"])
        for name in self.buffer.load_state_dict(state["buffer"]):  # a checkpoint written before the CV rows were stored
            if name == "cv_values":
                cvs, jacobians = self._cv_rows(self.buffer.data["x_final"])
                self.buffer.set_field("cv_values", cvs)
                self.buffer.set_field("cv_jacobian", jacobians)
        self.iteration, self.n_sample_batches = int(state["iteration"]), int(state["n_sample_batches"])
        self.n_invalid, self.n_warm_start = int(state["n_invalid"]), int(state["n_warm_start"])
        self._evaluations_before = int(state["energy_evaluations"]) - self.energy.n_evaluations
        self.history = list(state["history"])
        self.snapshots = list(state["snapshots"])
        self.snapshot_stride = int(state["snapshot_stride"])
        # a checkpoint of before 2026-12-01 kept no end points: training_samples() starts at the resumed iteration
        kept = state.get("training_end_points")
        self._training_end_points = {}
        if kept is not None and len(kept["iterations"]):
            iterations, counts = torch.unique_consecutive(kept["iterations"], return_counts=True)
            for i, cvs, weights in zip(iterations.tolist(), kept["cv_values"].split(counts.tolist()),
                                       kept["log_weights"].split(counts.tolist())):
                self._training_end_points[i] = (cvs, weights)


def _bias_summary(description):
    return f"CVs {', '.join(cv['cv'] for cv in description['cvs'])}, " + ", ".join(
        f"{key} {description[key]}" for key in ("lower", "upper", "n_nodes", "hill_width", "hill_height", "bias_factor"))


def hamiltonian_digest(system):
    """sha256 of the serialized System (every force and parameter): a checkpoint's system identity."""
    return hashlib.sha256(openmm.XmlSerializer.serialize(system).encode()).hexdigest()
