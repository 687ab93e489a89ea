"""Train a small Boltzmann generator for alanine dipeptide from scratch and reweight it to 300 K.

    python examples/boltzmann_generator.py            # about a minute on 2 CPU cores

For the full-quality model see the README (`openmm-flowplugin train ...`) or use the shipped one:
``load_flow("alanine_dipeptide_vacuum")``.
"""

import torch

from openmm_flowplugin import (
    BoltzmannGenerator,
    OpenMMEnergy,
    evaluate_flow,
    simulate,
    systems,
    train_maximum_likelihood,
    train_reverse_kl,
)

torch.manual_seed(0)
ala2 = systems.get("alanine_dipeptide_vacuum")  # openmmtools' AlanineDipeptideVacuum(constraints=None)

# 1. Data: 200 ps of Langevin MD at 300 K (Reference platform is fastest for 22 atoms).
trajectory = simulate(ala2, 200_000, report_interval=50, seed=1)
data = torch.as_tensor(trajectory.xyz, dtype=torch.float64)

# 2. Flow on internal coordinates, maximum likelihood, then a little reverse KL through OpenMM.
flow = BoltzmannGenerator.for_system(ala2, data, n_blocks=2, hidden=(64, 64))
train_maximum_likelihood(flow, data, n_steps=500, batch_size=256)
train_reverse_kl(flow, OpenMMEnergy(ala2.system, ala2.temperature), n_steps=100, data=data)

# 3. Importance sampling against the Boltzmann distribution at 300 K.
result = evaluate_flow(flow, ala2, n_samples=5_000)
print("\n".join(result.summary()))
