"""The package's own torch work runs on its thread count (default 1) and gives the user's count back."""

import numpy as np
import pytest
import torch

from openmm_flowplugin import _threads
from openmm_flowplugin._threads import (
    THREADS_ENV_VAR,
    package_thread_count,
    package_threads,
    set_package_threads,
)
from openmm_flowplugin.analysis.weights import importance_weights
from openmm_flowplugin.flows.training import train_maximum_likelihood
from openmm_flowplugin.proposals.protocol import single_log_prob

USER_THREADS = 3  # differs from the package default (1) and from the machine's default


@pytest.fixture(autouse=True)
def user_threads(monkeypatch):
    monkeypatch.delenv(THREADS_ENV_VAR, raising=False)
    saved_torch, saved_override = torch.get_num_threads(), _threads._override
    torch.set_num_threads(USER_THREADS)
    yield
    torch.set_num_threads(saved_torch)
    _threads._override = saved_override


class _RecordingFlow(torch.nn.Module):
    """A stand-in flow on 2 atoms that records torch's thread count whenever the package calls it."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones((), dtype=torch.float64))
        self.seen = []

    def sample(self, n):
        self.seen.append(torch.get_num_threads())
        return torch.zeros(n, 2, 3, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)

    def log_prob(self, x):
        self.seen.append(torch.get_num_threads())
        return -self.scale * (x**2).sum(dim=(1, 2))


def _package_work(flow):
    """Sampling + weights, one Metropolis-Hastings log q, one training step: every entry point that switches."""
    importance_weights(flow, lambda x: torch.zeros(len(x), dtype=torch.float64), 4, batch_size=2)
    single_log_prob(flow, np.zeros((2, 3)))
    train_maximum_likelihood(flow, np.zeros((8, 2, 3)), n_steps=1, batch_size=4, progress=False)


def test_package_work_runs_on_one_thread_and_restores_the_users_count():
    flow = _RecordingFlow()
    flow.sample(1)  # control: outside the package the user's count holds, so the recorder can tell
    assert flow.seen == [USER_THREADS]
    _package_work(flow)
    assert flow.seen[1:] == [1] * (len(flow.seen) - 1) and len(flow.seen) == 5
    assert torch.get_num_threads() == USER_THREADS


def test_environment_variable_and_set_package_threads_choose_the_count(monkeypatch):
    flow = _RecordingFlow()
    monkeypatch.setenv(THREADS_ENV_VAR, "2")
    _package_work(flow)
    assert set(flow.seen) == {2}
    set_package_threads(1)  # wins over the environment variable
    flow.seen.clear()
    _package_work(flow)
    assert set(flow.seen) == {1}
    set_package_threads(None)
    assert package_thread_count() == 2
    monkeypatch.setenv(THREADS_ENV_VAR, "0")  # 0: leave torch's setting alone
    flow.seen.clear()
    _package_work(flow)
    assert set(flow.seen) == {USER_THREADS}
    assert torch.get_num_threads() == USER_THREADS


def test_restored_after_an_error_and_unchanged_when_nested():
    with pytest.raises(RuntimeError, match="inside"):
        with package_threads():
            assert torch.get_num_threads() == 1
            raise RuntimeError("inside")
    assert torch.get_num_threads() == USER_THREADS
    with package_threads():
        with package_threads():
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == USER_THREADS


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_bad_environment_value_is_a_clear_error(monkeypatch, value):
    monkeypatch.setenv(THREADS_ENV_VAR, value)
    with pytest.raises(ValueError, match=rf"{THREADS_ENV_VAR}=.*integer >= 0"):
        with package_threads():
            pass
    assert torch.get_num_threads() == USER_THREADS


def test_empty_environment_value_means_the_default(monkeypatch):
    monkeypatch.setenv(THREADS_ENV_VAR, " ")
    assert package_thread_count() == 1


@pytest.mark.parametrize("value", [-1, 1.5, "2", True, float("nan")])
def test_bad_set_package_threads_is_a_clear_error(value):
    with pytest.raises(ValueError, match=r"set_package_threads: the thread count must be an integer >= 0"):
        set_package_threads(value)
    assert _threads._override is None
