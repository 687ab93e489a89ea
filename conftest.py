"""Shared pytest configuration (tests and doctests): seeding, one torch thread, the ``gpu`` marker."""

# Scripts under tests/data made the fixtures; they are not tests.
collect_ignore_glob = ["tests/data/*"]

import numpy as np
import pytest
import torch


def _cuda_platform_available():
    try:
        import openmm

        openmm.Platform.getPlatformByName("CUDA")
        return True
    except Exception:
        return False


def pytest_collection_modifyitems(config, items):
    if _cuda_platform_available() and torch.cuda.is_available():
        return
    reason = "needs a CUDA GPU: no OpenMM CUDA platform and/or no CUDA torch on this machine"
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(1234)
    np.random.seed(1234)
    yield


@pytest.fixture(autouse=True, scope="session")
def _single_torch_thread():
    # Tests run on 2 cores; one torch thread avoids oversubscription with OpenMM.
    torch.set_num_threads(1)
    yield
