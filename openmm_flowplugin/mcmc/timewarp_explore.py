"""Biased exploration with a conditional proposal (Timewarp's exploration mode) and seeds for exact runs.

.. warning:: Exploration is **not** a sampler of the Boltzmann distribution. It accepts every proposal whose
   energy rises by less than a cutoff, with no Metropolis-Hastings test, so it climbs barriers that an
   exact chain would rarely cross. Use what it finds only as starting points (:meth:`BiasedExploration.seeds`)
   for exact runs (MD, :class:`~openmm_flowplugin.mcmc.FlowMCMove`, :class:`~openmm_flowplugin.mcmc.TimewarpMove`);
   never average over its frames.
"""

__all__ = ["explore_biased", "BiasedExploration"]

import logging
import math

import numpy as np
from openmm import unit
from tqdm.auto import tqdm

from .._openmm_fast import context_potential_energy
from ..errors import InvalidInputError
from ..proposals.conditional import check_conditional_proposal
from ..proposals.protocol import checked_batch_size, checked_count, proposal_n_atoms
from ..proposals.streams import checked_root_seed, torch_generator
from .flow_move import BrokenStateError
from .timewarp_move import prefetch_size

_EXPLORE = 3  # stream purpose of exploration draws (moves use DRAWS, ACCEPT, VELOCITIES = 0, 1, 2)
_logger = logging.getLogger(__name__)


class BiasedExploration:
    """What :func:`explore_biased` visited. **Biased**: not Boltzmann-distributed (see the module's warning).

    Attributes
    ----------
    positions : numpy.ndarray, shape=(n_frames, n_particles, 3)
        nm, float64: the starting state, then the state after every ``record_interval`` steps.
    reduced_potentials : numpy.ndarray, shape=(n_frames,)
        ``thermodynamic_state.reduced_potential`` of each frame (kT).
    statistics : dict
        ``biased`` (always True), ``max_energy_increase_kT``, ``n_proposed``, ``n_accepted``, ``n_invalid``.
    box_vectors : Quantity or None
        Of the starting sampler state (the proposal moves positions only).
    biased : bool
        Always True; a flag for code that receives frames and must not treat them as samples.
    """

    biased = True

    def __init__(self, positions, reduced_potentials, statistics, box_vectors=None):
        self.positions = np.asarray(positions, dtype=np.float64)
        self.reduced_potentials = np.asarray(reduced_potentials, dtype=np.float64)
        self.statistics = dict(statistics, biased=True)
        self.box_vectors = box_vectors

    def __repr__(self):
        s = self.statistics
        return (f"BiasedExploration(biased=True, frames={len(self.positions)}, accepted {s['n_accepted']} of "
                f"{s['n_proposed']} with energy increase < {s['max_energy_increase_kT']:g} kT)")

    def seeds(self, n_seeds, features=None):
        """``n_seeds`` diverse visited states as :class:`openmmtools.states.SamplerState`, to start exact runs from.

        Farthest-point selection: the lowest-energy frame first, then repeatedly the frame farthest (Euclidean
        distance of ``features``) from those chosen. The seeds are starting points only: equilibrate an exact
        sampler from them (``sampler_state.apply_to_context(context)`` for MD, ``MCMCSampler(thermodynamic_state,
        seed, move)`` or one seed per replica of a ``MultiStateSampler``).

        Parameters
        ----------
        n_seeds : int
            At most the number of frames.
        features : callable, optional
            ``features(positions) -> (n_frames, n_features)`` from positions (n_frames, n_particles, 3) nm, e.g.
            backbone torsions (as ``[cos, sin]``). Default: positions rigidly aligned onto the first frame.

        Returns
        -------
        list of openmmtools.states.SamplerState
        """
        from openmmtools.states import SamplerState

        from ..geometry.alignment import kabsch_align

        n_seeds = checked_count("n_seeds", n_seeds)
        if n_seeds > len(self.positions):
            raise InvalidInputError(f"n_seeds={n_seeds} but the exploration holds {len(self.positions)} frames; ask for fewer.")
        if features is None:
            values = kabsch_align(self.positions, self.positions[0]).reshape(len(self.positions), -1)
        else:
            values = np.asarray(features(self.positions), dtype=np.float64).reshape(len(self.positions), -1)
        chosen = [int(np.nanargmin(self.reduced_potentials))]
        distance = np.linalg.norm(values - values[chosen[0]], axis=1)
        while len(chosen) < n_seeds:
            chosen.append(int(np.argmax(distance)))
            distance = np.minimum(distance, np.linalg.norm(values - values[chosen[-1]], axis=1))
        return [SamplerState(unit.Quantity(self.positions[i].copy(), unit.nanometer), box_vectors=self.box_vectors) for i in chosen]


def explore_biased(proposal, thermodynamic_state, sampler_state, n_steps, max_energy_increase=10.0, atom_indices=None,
                   seed=None, sample_batch_size=64, record_interval=1, context_cache=None, progress=False):
    """Explore with ``proposal``, accepting any proposal whose reduced energy rises by less than a cutoff. **Biased.**

    Each step proposes ``x'`` from the current positions (``proposal.propose``; its Hastings term is ignored) and
    moves there if ``u(x') - u(x) < max_energy_increase`` (non-finite energies are refused), as Timewarp's
    exploration mode. Proposals are drawn ahead from the current state in batches (Timewarp's adaptive size, at
    most ``sample_batch_size``), discarded after an acceptance.

    .. warning:: No Metropolis-Hastings test: the visited states are not Boltzmann-distributed and their
       populations mean nothing. The result, its statistics (``biased: True``) and the log say so. Seed exact
       runs from it with :meth:`BiasedExploration.seeds`.

    Parameters
    ----------
    proposal : ConditionalFlow or object
        Has ``propose(x, n, generator)`` (:mod:`openmm_flowplugin.proposals.conditional`) and ``n_atoms``.
    thermodynamic_state : openmmtools.states.ThermodynamicState
    sampler_state : openmmtools.states.SamplerState
        The start (not modified).
    n_steps : int
        Proposals in total.
    max_energy_increase : float or Quantity, optional
        Cutoff: a float in kT (default 10), or an energy Quantity (e.g. ``300 * unit.kilojoule_per_mole``,
        converted with the state's kT).
    atom_indices : sequence of int, optional
        The atoms the proposal moves, in its order (default: all).
    seed : int, optional
        Root seed; batch ``k`` is drawn from ``torch_generator(seed, 3, k)``.
    sample_batch_size : int, optional
    record_interval : int, optional
        Keep every ``record_interval``-th state (default every step).
    context_cache : openmmtools.cache.ContextCache, optional
    progress : bool, optional

    Returns
    -------
    BiasedExploration

    Examples
    --------
    >>> from openmmtools import cache
    >>> from openmm_flowplugin import systems
    >>> from openmm_flowplugin.flows import ConditionalFlow
    >>> ho = systems.get("harmonic_oscillator", n_particles=3)
    >>> flow = ConditionalFlow.for_system(ho, n_layers=2, hidden=(8,), context_features=4, step_scale=0.05)
    >>> found = explore_biased(flow, ho.thermodynamic_state(), ho.sampler_state(), 50, max_energy_increase=5.0,
    ...                        seed=1, context_cache=cache.ContextCache(platform=None))
    >>> found.biased, found.statistics["biased"], found.positions.shape
    (True, True, (51, 3, 3))
    >>> len(found.seeds(3))
    3
    """
    from openmmtools import cache

    check_conditional_proposal(proposal)
    n_steps, record_interval = checked_count("n_steps", n_steps), checked_count("record_interval", record_interval)
    batch_maximum, seed = checked_batch_size(sample_batch_size), checked_root_seed(seed)
    kT = thermodynamic_state.kT.value_in_unit(unit.kilojoule_per_mole)
    cutoff = (max_energy_increase.value_in_unit(unit.kilojoule_per_mole) / kT if unit.is_quantity(max_energy_increase)
              else float(max_energy_increase))
    if not cutoff > 0 or not math.isfinite(cutoff):
        raise InvalidInputError(f"max_energy_increase must be a finite energy > 0 (kT, or a Quantity), got {max_energy_increase!r}.")
    context, _ = (context_cache or cache.global_context_cache).get_context(thermodynamic_state)
    sampler_state.apply_to_context(context, ignore_velocities=True)
    positions = np.array(sampler_state.positions.value_in_unit(unit.nanometer), dtype=np.float64)
    atoms = slice(None) if atom_indices is None else np.asarray(atom_indices, dtype=int)
    n_moved = len(positions) if atom_indices is None else len(atoms)
    if proposal_n_atoms(proposal) != n_moved:
        raise InvalidInputError(f"the proposal moves {proposal_n_atoms(proposal)} atoms but {n_moved} are given to it; "
                                "pass atom_indices listing the atoms it moves, in its order.")
    if not np.isfinite(positions).all():  # OpenMM would raise its own exception on them
        raise BrokenStateError("the starting positions are not finite (NaN or inf): check them and the system.")
    u_current = thermodynamic_state.reduced_potential(context)
    if not math.isfinite(u_current):
        raise BrokenStateError(f"the starting state has reduced potential {u_current}: minimize it or check the system.")
    u_offset = u_current - context_potential_energy(context) / kT
    _logger.warning("biased exploration (no Metropolis-Hastings; energy increase < %g kT accepted): the states it visits are "
                    "not Boltzmann-distributed; use them only to seed exact runs.", cutoff)
    frames, energies = [positions.copy()], [u_current]
    n_proposed = n_accepted = n_invalid = batch_index = 0
    with tqdm(total=n_steps, desc="biased exploration", disable=not progress) as bar:
        while n_proposed < n_steps:
            size = min(prefetch_size(n_accepted, n_proposed, batch_maximum), n_steps - n_proposed)
            proposed, _ = proposal.propose(positions[atoms], size, generator=torch_generator(seed, _EXPLORE, batch_index))
            batch_index += 1
            for x in np.asarray(proposed, dtype=np.float64):
                n_proposed += 1
                trial = positions.copy()
                trial[atoms] = x
                u_trial = u_offset + context_potential_energy(context, trial) / kT if np.isfinite(x).all() else math.nan
                n_invalid += not math.isfinite(u_trial)
                accepted = math.isfinite(u_trial) and u_trial - u_current < cutoff
                if accepted:
                    positions, u_current = trial, u_trial
                    n_accepted += 1
                if n_proposed % record_interval == 0:
                    frames.append(positions.copy())
                    energies.append(u_current)
                if accepted:
                    break
            bar.set_postfix_str(f"accepted {n_accepted}/{n_proposed} (biased)", refresh=False)
            bar.update(n_proposed - bar.n)
    statistics = dict(max_energy_increase_kT=cutoff, n_proposed=n_proposed, n_accepted=n_accepted, n_invalid=n_invalid)
    return BiasedExploration(np.array(frames), np.array(energies), statistics, box_vectors=sampler_state.box_vectors)
