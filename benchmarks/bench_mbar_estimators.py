"""Two MBAR estimators on stored legs: the package's decorrelated subsample, and every production iteration.

:func:`openmm_flowplugin.freeenergy.analyze_leg` (the package's estimate, as in openmmtools' analyzer) keeps every
g-th iteration after equilibration, g the statistical inefficiency of the replicas' summed reduced potential, and
reports pymbar's asymptotic error of that subsample. This script sets beside it MBAR over *every* iteration after
the same equilibration (or after ``--discard`` iterations: 0 for the solvation routes, which store only after their
equilibration run), whose standard error comes from a moving-block bootstrap over iterations (whole iterations,
so the replicas' correlations across states are kept; several block lengths, to show the error has converged in
the block length) and from the spread of separate blocks. Use it to compare two routes' legs (for example the MBAR
route's ``solvent.nc`` with neural TI's ``neural_ti_path.nc``) at equal iterations, ``--iterations`` truncating
each storage. Storages are read from copies, so a running leg may be analysed.

Run: ``python benchmarks/bench_mbar_estimators.py OUT/solvent.nc OUT/neural_ti_path.nc --iterations 110 200``
(each row costs ``--resamples`` × block lengths MBAR solves: about a minute for a 19-state methane leg).
"""

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np


def read_leg(storage):
    """(reduced potentials [iteration, replica, state], sampled states [iteration, replica]) without iteration 0,
    read from a copy of the storage and its checkpoint file."""
    from openmm_flowplugin.freeenergy.mbar_route import _stored_energies

    storage = Path(storage)
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / storage.name
        shutil.copy(storage, copy)
        checkpoint = storage.with_name(storage.stem + "_checkpoint.nc")
        shutil.copy(checkpoint, copy.with_name(checkpoint.name))
        return _stored_energies(copy)


def mbar_delta_f(energies, states, iterations):
    """MBAR f(last state) - f(first state), kT, over the given iterations (every replica of each); NaN where pymbar
    finds no consistent solution (a resample or block without overlap)."""
    from pymbar import MBAR
    from pymbar.utils import ParameterError

    n_states = energies.shape[2]
    u_kn = energies[iterations].reshape(-1, n_states).T
    sampled = states[iterations].reshape(-1)
    order = np.argsort(sampled, kind="stable")
    try:
        mbar = MBAR(u_kn[:, order], np.bincount(sampled, minlength=n_states))
        return float(mbar.compute_free_energy_differences(compute_uncertainty=False)["Delta_f"][0, -1])
    except ParameterError:
        return float("nan")


def block_bootstrap_error(energies, states, production, block_length, n_resamples, rng):
    """Standard deviation of the all-iterations estimate over moving-block resamples of the production iterations."""
    n = len(production)
    n_blocks = -(-n // block_length)
    estimates = []
    for _ in range(n_resamples):
        starts = rng.integers(0, n - block_length + 1, size=n_blocks)
        chosen = np.concatenate([production[start : start + block_length] for start in starts])[:n]
        estimates.append(mbar_delta_f(energies, states, chosen))
    return float(np.std(estimates, ddof=1))


def separate_blocks_error(energies, states, production, n_blocks):
    """Standard error from the spread of estimates over ``n_blocks`` consecutive blocks (their values and the error)."""
    values = [mbar_delta_f(energies, states, block) for block in np.array_split(production, n_blocks)]
    return values, float(np.std(values, ddof=1) / np.sqrt(n_blocks))


def main():
    # The package's private helpers, so that the decorrelated column is analyze_leg's estimate on truncated data.
    from openmm_flowplugin.freeenergy.mbar_route import _decorrelated_samples, _mbar

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("storages", nargs="+", type=Path, help="legs' storage files (solvent.nc, neural_ti_path.nc, ...)")
    parser.add_argument("--iterations", nargs="+", type=int, default=[0], help="truncations (0: every stored iteration)")
    parser.add_argument("--block-lengths", nargs="+", type=int, default=[5, 10, 20], help="bootstrap block lengths, iterations")
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=5, help="separate blocks for the block-spread error")
    parser.add_argument("--discard", type=int, default=None,
                        help="iterations dropped before the all-iterations estimate (default: analyze_leg's t0; 0 when the "
                             "stored iterations follow an equilibration run, as the solvation routes' do)")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    for storage in args.storages:  # every storage checked before the first (long) row
        checkpoint = storage.with_name(storage.stem + "_checkpoint.nc")
        if not (storage.is_file() and checkpoint.is_file()):
            parser.error(f"{storage} or its {checkpoint.name} not found: give a leg's storage (solvent.nc, neural_ti_path.nc, ...)")
    if min(args.block_lengths) < 1 or args.resamples < 2 or args.blocks < 2 or min(args.iterations) < 0:
        parser.error("--block-lengths need at least 1, --resamples and --blocks at least 2, --iterations at least 0")
    rows = []
    for storage in args.storages:
        energies, states = read_leg(storage)
        for n in args.iterations:
            n = n or len(energies)
            if n > len(energies):
                raise SystemExit(f"{storage} holds {len(energies)} iterations, fewer than --iterations {n}.")
            e, s = energies[:n], states[:n]
            iterations, t0, g = _decorrelated_samples(e, s)
            _, delta_f, d_delta_f = _mbar(e, s, iterations, storage)
            start = t0 if args.discard is None else args.discard
            production = np.arange(start, n)
            if len(production) < max(max(args.block_lengths), 2 * args.blocks):
                raise SystemExit(f"{storage}: {len(production)} iterations after {start} are too few for blocks of "
                                 f"{max(args.block_lengths)} and {args.blocks} separate blocks (shorter --block-lengths, "
                                 "fewer --blocks, or more --iterations).")
            rng = np.random.default_rng([args.seed, n])
            bootstrap = [block_bootstrap_error(e, s, production, length, args.resamples, rng) for length in args.block_lengths]
            values, spread_error = separate_blocks_error(e, s, production, args.blocks)
            rows.append((f"{storage.parent.name}/{storage.name}", n, t0, g, delta_f[0, -1], d_delta_f[0, -1], start,
                         mbar_delta_f(e, s, production), bootstrap, spread_error, values))
    lengths = " / ".join(str(length) for length in args.block_lengths)
    print(f"| storage | iterations | t0 | g | decorrelated (package), kT | from iteration | every iteration from there, kT | "
          f"bootstrap error, blocks of {lengths} | {args.blocks} blocks: error (values) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for name, n, t0, g, f_sub, df_sub, start, f_all, bootstrap, spread_error, values in rows:
        print(f"| {name} | {n} | {t0} | {g:.2f} | {f_sub:.3f} ± {df_sub:.3f} | {start} | {f_all:.3f} | "
              f"{' / '.join(f'{b:.3f}' for b in bootstrap)} | {spread_error:.3f} ({', '.join(f'{v:.2f}' for v in values)}) |")


if __name__ == "__main__":
    main()
