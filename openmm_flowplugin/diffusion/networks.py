"""Networks of the diffusion sampler: the controller u_θ(t, x) and the corrector h_φ(x).

Both are plain MLPs on flattened Cartesian coordinates (nm), sized for CPU training of small systems;
the controller also reads Fourier features of t. The last layer starts at zero, so an untrained
controller is the reference process and an untrained corrector adds nothing.

Examples
--------
>>> import torch
>>> controller = Controller(dimension=3)
>>> controller(torch.full((5,), 0.5), torch.zeros(5, 3)).shape
torch.Size([5, 3])
"""

__all__ = ["Controller", "Corrector"]

import math

import torch
from torch import nn

from ._checks import integer_at_least


def _mlp(n_in, n_out, hidden, n_layers):
    hidden, n_layers = integer_at_least(hidden, 1, "hidden"), integer_at_least(n_layers, 1, "n_layers")
    layers, width = [], n_in
    for _ in range(n_layers):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    last = nn.Linear(width, n_out)
    nn.init.zeros_(last.weight)
    nn.init.zeros_(last.bias)
    return nn.Sequential(*layers, last)


class Controller(nn.Module):
    """u_θ(t, x): drift of the controlled SDE per unit σ(t), on flattened coordinates.

    Parameters
    ----------
    dimension : int
        d, the number of coordinates (3 × atoms).
    hidden : int
        Width of the hidden layers.
    n_layers : int
        Hidden layers.
    n_frequencies : int
        Fourier features of t (sin and cos of 2^j π t).
    """

    def __init__(self, dimension, hidden=128, n_layers=3, n_frequencies=6):
        super().__init__()
        self.dimension = int(dimension)
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(n_frequencies, dtype=torch.float32))
        self.net = _mlp(self.dimension + 2 * n_frequencies, self.dimension, hidden, n_layers)

    def forward(self, t, x):
        """Control at times ``t`` (batch,) and positions ``x`` (batch, d); float32 in, float32 out."""
        phases = t[:, None].to(torch.float32) * self.frequencies
        features = torch.cat([x.to(torch.float32), torch.sin(phases), torch.cos(phases)], -1)
        return self.net(features)


class Corrector(nn.Module):
    """h_φ(x): the learned score of the terminal reference potential, ∇ log φ̂₁(x) (Adjoint Schrödinger bridge sampling).

    Parameters
    ----------
    dimension, hidden, n_layers : int
        As for :class:`Controller`.
    """

    def __init__(self, dimension, hidden=128, n_layers=3):
        super().__init__()
        self.dimension = int(dimension)
        self.net = _mlp(self.dimension, self.dimension, hidden, n_layers)

    def forward(self, x):
        """h_φ at positions ``x`` (batch, d)."""
        return self.net(x.to(torch.float32))
