"""Cost of one flow jump: ``BoltzmannGenerator.log_prob`` of a few configurations, fused path vs zuko path.

    python benchmarks/bench_log_prob.py [--name alanine_dipeptide_vacuum] [--repeats 200] [--threads 1]

Both paths run in the same process on the same configurations (flow samples moved by 0.01 nm noise, as
MD would move them), under ``torch.no_grad`` as ``FlowMCMove``/``FlowMCIntegrator`` call them. A jump
costs ``log_prob`` of the current state plus its share of a buffered ``sample`` batch
(``sample_batch_size`` 512 by default).
"""

import argparse
import statistics
import time

import torch

from openmm_flowplugin import load_flow


def _median_seconds(*functions, repeats):
    """Median seconds per call of each function, calls interleaved so that machine load hits both alike."""
    times = [[] for _ in functions]
    for function in functions:
        function()  # warm-up
    for _ in range(repeats):
        for function, spent in zip(functions, times):
            start = time.perf_counter()
            function()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", default="alanine_dipeptide_vacuum")
    parser.add_argument("--repeats", type=int, default=200, help="timed calls per batch size (fewer for large batches)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--sample-batch-size", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flow = load_flow(args.name)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        x, _ = flow.sample(1000, generator=generator)
        x = x + 0.01 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        difference = (flow.log_prob(x) - flow._log_prob_zuko(x)).abs().max().item()
        rows = []
        for batch in (1, 10, 1000):
            repeats = max(5, args.repeats * 10 // (10 + batch))
            xb = x[:batch]
            old, new = _median_seconds(lambda: flow._log_prob_zuko(xb), lambda: flow.log_prob(xb), repeats=repeats)
            rows.append((batch, old, new))
        sample = _median_seconds(lambda: flow.sample(args.sample_batch_size, generator=generator), repeats=5)[0] / args.sample_batch_size

    print(f"\n{args.name}, {args.threads} torch thread(s), median over repeats; max |new - old| log q = {difference:.1e}\n")
    print("| batch | zuko path (ms/call) | fused path (ms/call) | speed-up |")
    print("|---|---|---|---|")
    for batch, old, new in rows:
        print(f"| {batch} | {old * 1e3:.3f} | {new * 1e3:.3f} | {old / new:.1f}x |")
    old1, new1 = rows[0][1], rows[0][2]
    print(f"\nPer FlowMCIntegrator jump (log_prob of the current state + 1/{args.sample_batch_size} of a sample batch, "
          f"{sample * 1e3:.3f} ms):\n")
    print("| path | ms per jump |")
    print("|---|---|")
    print(f"| zuko | {(old1 + sample) * 1e3:.3f} |")
    print(f"| fused | {(new1 + sample) * 1e3:.3f} |")


if __name__ == "__main__":
    main()
