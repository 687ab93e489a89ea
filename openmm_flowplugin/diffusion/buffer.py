"""A first-in-first-out replay buffer of chain end points and their energy gradients (and, with a bias, their CVs).

Examples
--------
>>> import torch
>>> buffer = ReplayBuffer(capacity=4)
>>> buffer.add(x_initial=torch.zeros(3, 2), x_final=torch.ones(3, 2), energy_gradient=torch.ones(3, 2))
>>> buffer.add(x_initial=torch.zeros(3, 2), x_final=torch.ones(3, 2), energy_gradient=torch.ones(3, 2))
>>> len(buffer)
4
"""

__all__ = ["ReplayBuffer", "ROW_FIELDS"]

import torch

from ..errors import InvalidInputError
from ._checks import integer_at_least

#: The fields every row has; a sampler with a bias adds its CV values and their Jacobians.
ROW_FIELDS = ("x_initial", "x_final", "energy_gradient")


class ReplayBuffer:
    """The latest ``capacity`` rows of (X_0, X_K, ∇u(X_K)) and any further per-row ``fields``, float64.

    Parameters
    ----------
    capacity : int
    fields : tuple of str
        The row fields; the default is ``("x_initial", "x_final", "energy_gradient")``.
    """

    def __init__(self, capacity, fields=ROW_FIELDS):
        self.capacity = integer_at_least(capacity, 1, "buffer capacity")
        self.fields = tuple(fields)
        self.data = None

    def __len__(self):
        return 0 if self.data is None else len(self.data["x_final"])

    def add(self, **tensors):
        """Append rows (one keyword per field), dropping the oldest beyond capacity."""
        if set(tensors) != set(self.fields):
            raise InvalidInputError(f"a buffer entry has the fields {self.fields}, got {sorted(tensors)}.")
        new = {key: value.detach().to(torch.float64) for key, value in tensors.items()}
        if self.data is not None:
            new = {key: torch.cat([self.data[key], new[key]]) for key in self.fields}
        self.data = {key: value[-self.capacity:] for key, value in new.items()}

    def sample(self, n, generator):
        """``n`` rows drawn uniformly with replacement, as a dict of tensors."""
        if not len(self):
            raise InvalidInputError("the replay buffer is empty: refill it before training.")
        index = torch.randint(len(self), (n,), generator=generator)
        return {key: value[index] for key, value in self.data.items()}

    def state_dict(self):
        """Plain tensors (for checkpoints)."""
        return {} if self.data is None else dict(self.data)

    def load_state_dict(self, state):
        """Restore from :meth:`state_dict`; fields the state lacks are returned (the caller recomputes them with :meth:`set_field`)."""
        if not state:
            self.data = None
            return []
        self.data = {key: torch.as_tensor(state[key], dtype=torch.float64) for key in self.fields if key in state}
        return [key for key in self.fields if key not in state]

    def set_field(self, name, values):
        """Replace one field for all rows (e.g. recomputed after loading an older checkpoint)."""
        if name not in self.fields or self.data is None or len(values) != len(self):
            raise InvalidInputError(f"cannot set {name!r}: fields {self.fields}, {len(self)} rows, {len(values)} values given.")
        self.data[name] = values.detach().to(torch.float64)
