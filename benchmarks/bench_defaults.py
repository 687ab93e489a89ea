"""The package's default of one torch thread against torch's default thread count, same run.

    python benchmarks/bench_defaults.py [--samples 10000] [--steps 10] [--repeats 1] [--busy 0]

Three jobs on the shipped alanine-dipeptide flow, each timed with the package default (its own
work on one torch thread) and with ``set_package_threads(0)`` (torch's default count, the
behaviour before the default existed):

- the demo's work: draw samples, their OpenMM energies and importance weights;
- ``openmm-flowplugin evaluate`` of the same number of samples (in-process, no plots);
- one maximum-likelihood training step (batch 256) of the shipped architecture;
- one Metropolis-Hastings ``log q`` (a single configuration, as a flow move evaluates per step).

Settings alternate within each repeat and the best repeat counts. ``--busy N`` keeps N other
processes spinning meanwhile (a machine shared with other jobs, or with OpenMM's own threads).
Prints a markdown table.
"""

import argparse
import multiprocessing
import os
import time

import openmm
import torch

from openmm_flowplugin import OpenMMEnergy, load_flow, set_package_threads, systems
from openmm_flowplugin.analysis.weights import importance_weights
from openmm_flowplugin.flows.training import train_maximum_likelihood
from openmm_flowplugin.proposals.protocol import single_log_prob

NAME = "alanine_dipeptide_vacuum"
SETTINGS = {"default (1 thread)": None, "torch default threads": 0}


def demo_work(n_samples):
    flow = load_flow(NAME)
    molecular_system = systems.get(NAME)
    energy = OpenMMEnergy(molecular_system.system, molecular_system.temperature)

    def run():
        importance_weights(flow, energy, n_samples)

    return run


def evaluate_command(n_samples):
    from click.testing import CliRunner

    from openmm_flowplugin.cli import main

    def run():
        result = CliRunner().invoke(main, ["evaluate", NAME, "-n", str(n_samples)])
        if result.exit_code != 0:
            raise RuntimeError(result.output)

    return run


def training_step(n_steps, batch_size=256):
    flow = load_flow(NAME, cache=False).requires_grad_(True)  # a private, trainable copy of the shipped model
    with torch.no_grad():
        data, _ = flow.sample(2048)
    train_maximum_likelihood(flow, data, n_steps=2, batch_size=batch_size, progress=False)  # optimizer warm-up

    def run():
        train_maximum_likelihood(flow, data, n_steps=n_steps, batch_size=batch_size, progress=False)

    return run


def mh_log_q(n_calls):
    flow = load_flow(NAME)
    x = systems.get(NAME).positions_nm

    def run():
        for _ in range(n_calls):
            single_log_prob(flow, x)

    return run


def _spin():
    while True:
        pass


def timed(run):
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=10, help="training steps timed (reported per step)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--busy", type=int, default=0, help="other processes kept spinning during the timings")
    args = parser.parse_args()
    torch_default = torch.get_num_threads()
    print(
        f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__} (default {torch_default} threads), OpenMM {openmm.__version__}, "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, {args.busy} busy processes started\n"
    )
    jobs = [
        (f"demo's work: sample {args.samples:,} + energies + weights", demo_work(args.samples), 1),
        (f"`evaluate` of {args.samples:,} samples", evaluate_command(args.samples), 1),
        ("one training step (maximum likelihood, batch 256)", training_step(args.steps), args.steps),
        ("one Metropolis-Hastings log q (1 configuration)", mh_log_q(100), 100),
    ]
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(args.busy)]
    print(f"| job | {' | '.join(SETTINGS)} | speed-up |")
    print("|---|---|---|---|")
    try:
        for spinner in spinners:
            spinner.start()
        for label, run, per in jobs:
            best = {setting: float("inf") for setting in SETTINGS}
            for _ in range(args.repeats):
                for setting, threads in SETTINGS.items():
                    set_package_threads(threads)
                    best[setting] = min(best[setting], timed(run) / per)
            default, before = best.values()
            print(f"| {label} | {_seconds(default)} | {_seconds(before)} | {before / default:.1f}x |", flush=True)
    finally:
        set_package_threads(None)
        for spinner in spinners:
            spinner.terminate()


def _seconds(value):
    return f"{value:.2f} s" if value >= 0.1 else f"{value * 1e3:.1f} ms"


if __name__ == "__main__":
    main()
