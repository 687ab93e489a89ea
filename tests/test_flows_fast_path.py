"""BoltzmannGenerator.log_prob's fused spline path equals the zuko reference path (values, gradients, edge cases).

``log_prob`` runs its coupling layers without zuko transform objects: in torch (differentiable) or, for
a few configurations without gradients, in NumPy. ``_log_prob_zuko`` is the reference (zuko's
``ComposedTransform.call_and_ladj``). Tolerances: measured max |difference| in log q, below.
"""

import copy
import math
import pickle

import pytest
import torch

from openmm_flowplugin import BoltzmannGenerator, load_flow, systems
from openmm_flowplugin.flows import _numpy_log_prob as fast_np
from openmm_flowplugin.flows import boltzmann_generator as bg

# Measured max |fast - reference| in log q (float32 splines, log q ~ -700 to 250): 5.8e-5 over 1000
# perturbed configurations of the shipped flow, < 1e-5 typical. A dropped layer log-det or spline term
# changes log q by O(0.1 - 10) (checked by the controls below).
ATOL = 2e-4


@pytest.fixture(scope="module")
def ala2():
    return systems.get("alanine_dipeptide_vacuum")


@pytest.fixture(scope="module")
def shipped(ala2):
    return load_flow("alanine_dipeptide_vacuum", system=ala2)


@pytest.fixture(scope="module")
def random_flow(ala2):
    """Small flow with all weights far from the identity (splines bend, conditioners matter)."""
    generator = torch.Generator().manual_seed(1)
    x0 = torch.as_tensor(ala2.positions_nm) + 0.003 * torch.randn(64, 22, 3, dtype=torch.float64, generator=generator)
    flow = BoltzmannGenerator.for_system(ala2, x0, n_blocks=1, hidden=(16,), bins=5, narrow_torsions=range(6, 19))
    assert flow.n_circular == 6 and [layer.circular for layer in flow.layers] == [True, True, False, False]
    with torch.no_grad():
        for parameter in flow.parameters():
            parameter.copy_(0.1 * torch.randn(parameter.shape, generator=generator))
    return flow


def _configurations(flow, n, seed, noise=0.01):
    """Flow samples moved off the flow's manifold of likely states by Gaussian noise (nm), as MD would."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x, log_q = flow.sample(n, generator=generator)
    return x + noise * torch.randn(x.shape, generator=generator, dtype=x.dtype), x, log_q


@pytest.mark.parametrize("flow_name", ["shipped", "random_flow"])
def test_fast_log_prob_equals_zuko_path(flow_name, request):
    flow = request.getfixturevalue(flow_name)
    x, _, _ = _configurations(flow, 200, seed=2)
    with torch.no_grad():
        reference = flow._log_prob_zuko(x)
        batched = flow.log_prob(x)  # torch path (batch > _NUMPY_MAX_BATCH)
        singles = torch.cat([flow.log_prob(x[i : i + 1]) for i in range(len(x))])  # NumPy path, batch of one
        small = flow.log_prob(x[:5])  # NumPy path, small batch
    assert len(x) > bg._NUMPY_MAX_BATCH >= 5
    assert torch.isfinite(reference).all() and reference.std() > 1.0
    for fast in (batched, singles):
        assert fast.dtype == torch.float64 and fast.shape == (200,)
        torch.testing.assert_close(fast, reference, atol=ATOL, rtol=0.0)
    torch.testing.assert_close(small, reference[:5], atol=ATOL, rtol=0.0)


def test_fast_path_agrees_with_sample_log_q(random_flow):
    """An independent route: sample's log q comes through zuko's spline inverses and the Cartesian round trip."""
    _, x, log_q = _configurations(random_flow, 64, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(random_flow.log_prob(x), log_q, atol=ATOL, rtol=0.0)
        torch.testing.assert_close(torch.cat([random_flow.log_prob(xi[None]) for xi in x]), log_q, atol=ATOL, rtol=0.0)


def test_control_a_dropped_term_is_detected(random_flow, monkeypatch):
    """The comparison can fail: a fast path missing one kind of layer's log-det, or the splines' log-dets, is far off."""
    x, _, _ = _configurations(random_flow, 32, seed=4)
    with torch.no_grad():
        reference = random_flow._log_prob_zuko(x)
        for circular in (True, False):  # torsion layers, bond/angle layers
            original = bg._Coupling.call_and_ladj
            monkeypatch.setattr(bg._Coupling, "call_and_ladj", lambda layer, z, original=original, circular=circular: (
                original(layer, z)[0], 0.0 if layer.circular == circular else original(layer, z)[1]))
            original_np = fast_np._Layer.__call__
            monkeypatch.setattr(fast_np._Layer, "__call__", lambda layer, z, original=original_np, circular=circular: (
                original(layer, z)[0], 0.0 if layer.circular == circular else original(layer, z)[1]))
            for wrong in (random_flow.log_prob(x), random_flow.log_prob(x[:1])):
                assert (wrong - reference[: len(wrong)]).abs().max() > 100 * ATOL
            monkeypatch.undo()
        for module, name in ((bg, "rqs_forward"), (fast_np, "rqs_forward_numpy")):  # half of every spline log-det
            original = getattr(module, name)
            monkeypatch.setattr(module, name, lambda *args, original=original: (original(*args)[0], 0.5 * original(*args)[1]))
        for wrong in (random_flow.log_prob(x), random_flow.log_prob(x[:1])):
            assert (wrong - reference[: len(wrong)]).abs().max() > 100 * ATOL
        monkeypatch.undo()
        torch.testing.assert_close(random_flow.log_prob(x), reference, atol=ATOL, rtol=0.0)


def test_numpy_snapshot_follows_parameter_changes(random_flow):
    """The NumPy path is a snapshot of the weights: an in-place change of any parameter or buffer, a
    replaced tensor, or new storage behind a parameter makes the next call use the new flow, never the old numbers."""
    flow = copy.deepcopy(random_flow)
    x, _, _ = _configurations(flow, 1, seed=8)
    with torch.no_grad():
        before = flow.log_prob(x)
        flow.layers[1].net[0].weight.mul_(1.5)
        torch.testing.assert_close(flow.log_prob(x), flow._log_prob_zuko(x), atol=ATOL, rtol=0.0)
        assert (flow.log_prob(x) - before).abs().max() > 100 * ATOL
        flow.bond_loc += 0.01
        torch.testing.assert_close(flow.log_prob(x), flow._log_prob_zuko(x), atol=ATOL, rtol=0.0)
        flow.layers[2].net[-1].bias = torch.nn.Parameter(torch.ones_like(flow.layers[2].net[-1].bias))
        torch.testing.assert_close(flow.log_prob(x), flow._log_prob_zuko(x), atol=ATOL, rtol=0.0)
        flow.layers[0].net[0].weight.data = 2 * flow.layers[0].net[0].weight.data  # new storage, same _version
        torch.testing.assert_close(flow.log_prob(x), flow._log_prob_zuko(x), atol=ATOL, rtol=0.0)


def test_gradients_equal_zuko_path(random_flow):
    x, _, _ = _configurations(random_flow, 6, seed=5)
    grads = []
    for method in (random_flow.log_prob, random_flow._log_prob_zuko):
        random_flow.zero_grad()
        x_leaf = x.clone().requires_grad_(True)
        method(x_leaf).sum().backward()
        grads.append([x_leaf.grad] + [p.grad.clone() for p in random_flow.parameters()])
    fast, reference = grads
    assert any(g.abs().max() > 1e-3 for g in reference[1:])
    for g_fast, g_ref in zip(fast, reference):
        # float32 splines: relative agreement ~1e-5 of the largest component (measured)
        torch.testing.assert_close(g_fast, g_ref, atol=1e-4 * float(g_ref.abs().max()) + 1e-6, rtol=1e-3)
    random_flow.zero_grad()


def test_single_log_prob_without_grad_uses_the_fast_path(shipped, monkeypatch):
    from openmm_flowplugin.proposals.protocol import single_log_prob

    x, _, _ = _configurations(shipped, 1, seed=6)
    expected = float(shipped._log_prob_zuko(x)[0])
    monkeypatch.setattr(bg._Coupling, "call_and_ladj", None)  # any use of the torch path would raise
    assert abs(single_log_prob(shipped, x[0].numpy()) - expected) < ATOL


def test_out_of_domain_inputs_as_the_zuko_path(shipped, ala2):
    """Collinear atoms (angle pi: logit inf), stretched bonds (features beyond the spline bound), coincident
    atoms and NaN positions give what the reference gives (-inf or NaN), on both fast paths."""
    x0 = torch.as_tensor(ala2.positions_nm)[None].clone()
    ict = shipped.coordinates
    ic, origin, rotation = ict.to_internal(x0)
    straight = ic.angles.clone()
    straight[0, 5] = math.pi
    stretched = ic.bonds * torch.linspace(0.6, 1.8, ic.bonds.shape[1], dtype=torch.float64)
    cases = [
        ict.to_cartesian(ic._replace(angles=straight), origin, rotation),
        ict.to_cartesian(ic._replace(bonds=stretched), origin, rotation),
        x0.clone().index_fill_(1, torch.tensor([1]), 0.0) * 0 + x0[:, :1],  # every atom on atom 0
        x0.clone().index_fill_(1, torch.tensor([3]), float("nan")),
    ]
    x = torch.cat(cases)
    with torch.no_grad():
        reference = shipped._log_prob_zuko(x)
        singles = torch.cat([shipped.log_prob(xi[None]) for xi in x])
        batched = shipped.log_prob(x.repeat(5, 1, 1))[: len(x)]  # torch path
    assert reference[2:].isnan().all() and torch.isfinite(reference[:2]).all()  # collinear: finite, ~ -1e4
    for fast in (singles, batched):
        torch.testing.assert_close(fast[1:], reference[1:], atol=ATOL, rtol=0.0, equal_nan=True)
        # Collinear: arccos near pi turns the cosine's last-bit rounding (NumPy and torch sum in different
        # orders) into ~1e-8 rad, and logit(angle / pi) amplifies that; measured relative difference 2e-5.
        torch.testing.assert_close(fast[:1], reference[:1], atol=0.0, rtol=1e-4)


def test_copies_and_reloaded_weights_use_fresh_indices(random_flow):
    x, _, _ = _configurations(random_flow, 3, seed=7)
    with torch.no_grad():
        expected = random_flow.log_prob(x)
        for clone in (copy.deepcopy(random_flow), pickle.loads(pickle.dumps(random_flow))):
            torch.testing.assert_close(clone.log_prob(x), expected, atol=0.0, rtol=0.0)
        other = copy.deepcopy(random_flow)
        other.log_prob(x)  # fills the index caches
        state = other.state_dict()
        transformed = state["layers.0.transformed"]
        circular = torch.nonzero(state["layers.0.is_torsion"]).flatten()
        chosen = circular[~transformed[circular]][: int(transformed.sum())]  # as many other torsions
        state["layers.0.transformed"] = torch.zeros_like(transformed).index_fill_(0, chosen, True)
        other.load_state_dict(state)  # copies into the buffers: the cached indices must follow
        torch.testing.assert_close(other.log_prob(x), other._log_prob_zuko(x), atol=ATOL, rtol=0.0)
        assert (other.log_prob(x) - expected).abs().max() > 100 * ATOL
