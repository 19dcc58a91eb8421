"""Buffers (registered, saved, loaded, moved, never optimized) and load_state_dict's
all-or-nothing conversion."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_placement, to_np

from backprop_xp import nn, optim
from backprop_xp.backend import library_name


class WithBuffers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2, rng=0)
        self.register_buffer("running", np.arange(3, dtype=np.float32))
        self.register_buffer("count", np.array(0, dtype=np.int64))
        self.register_buffer("scratch", np.zeros(2, dtype=np.float32), persistent=False)
        self.register_buffer("absent", None)


def test_buffers_are_in_state_dict_in_torchs_order_and_not_parameters():
    m = nn.Sequential(WithBuffers(), nn.Tanh())
    assert list(m.state_dict()) == ["0.running", "0.count", "0.lin.weight", "0.lin.bias"]
    assert [n for n, _ in m.named_buffers()] == ["0.running", "0.count", "0.scratch"]
    assert len(list(m.parameters())) == 2
    opt = optim.SGD(m.parameters(), lr=1.0)
    for p in m.parameters():
        p.grad = np.ones(p.shape, dtype=np.float32)
    opt.step()
    np.testing.assert_array_equal(m[0].running, np.arange(3))


def test_assigning_a_registered_buffer_replaces_it_and_bad_buffers_are_refused():
    m = WithBuffers()
    m.running = np.ones(3, dtype=np.float32)
    np.testing.assert_array_equal(m.state_dict()["running"], np.ones(3))
    with pytest.raises(TypeError, match=r"buffer 'running' expected an array or None, got list"):
        m.running = [1.0, 2.0, 3.0]
    with pytest.raises(KeyError, match="already a parameter"):
        m.lin.register_buffer("weight", np.zeros(1))


def test_to_moves_buffers_and_casts_only_floating_ones(xp):
    m = WithBuffers().to(xp._xp, xp.device, dtype="float64")
    for name, b in m.named_buffers():
        check_placement(xp, b, name)
    assert m.running.dtype == xp.float64 and m.count.dtype == xp.int64
    loaded = WithBuffers().to(xp._xp, xp.device, dtype="float64")
    loaded.load_state_dict(m.state_dict())


def test_loss_weights_are_buffers_under_torchs_keys():
    torch = pytest.importorskip("torch")
    w = np.array([1.0, 2.0, 0.5], dtype=np.float32)
    ours = nn.CrossEntropyLoss(weight=w)
    theirs = torch.nn.CrossEntropyLoss(weight=torch.tensor(w))
    assert list(ours.state_dict()) == list(theirs.state_dict()) == ["weight"]
    fresh = nn.CrossEntropyLoss(weight=np.ones(3, dtype=np.float32))
    fresh.load_state_dict(theirs.state_dict())
    np.testing.assert_array_equal(fresh.weight, w)
    theirs.load_state_dict({k: torch.tensor(v) for k, v in ours.state_dict().items()})
    assert nn.CrossEntropyLoss().state_dict() == {} == torch.nn.CrossEntropyLoss().state_dict()

    bce = torch.nn.BCEWithLogitsLoss(weight=torch.ones(3), pos_weight=torch.full((3,), 2.0))
    mine = nn.BCEWithLogitsLoss(weight=np.zeros(3, np.float32), pos_weight=np.zeros(3, np.float32))
    assert list(mine.state_dict()) == list(bce.state_dict()) == ["weight", "pos_weight"]
    mine.load_state_dict(bce.state_dict())
    np.testing.assert_array_equal(mine.pos_weight, np.full(3, 2.0))
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    t = (x > 0).astype(np.float32)
    loss, _ = mine(x, t)
    ref = bce(torch.tensor(x), torch.tensor(t))
    np.testing.assert_allclose(to_np(loss), ref.item(), rtol=1e-6)


def test_loss_weights_move_with_the_loss(xp):
    loss = nn.CrossEntropyLoss(weight=np.array([1.0, 2.0, 3.0], dtype=np.float32))
    loss.to(xp._xp, xp.device)
    x = xp.asarray(np.zeros((2, 3)), dtype=xp.float32)
    value, _ = loss(x, xp.asarray(np.array([0, 2])))
    assert library_name(value) == library_name(x)


def _bad_values():
    yield "a list", [[0.0] * 3] * 2, "expected an array, got list"
    yield "no dtype", type("Shaped", (), {"shape": (2, 3)})(), "expected an array, got Shaped"
    yield "a number", 1.0, "expected an array, got float"
    torch = pytest.importorskip("torch")
    yield "meta", torch.empty((2, 3), device="meta"), "cannot be converted"
    yield "sparse", torch.zeros((2, 3)).to_sparse(), "cannot be converted"


@pytest.mark.parametrize("case", range(5))
def test_load_state_dict_converts_everything_first_and_leaves_the_model_unchanged(case):
    cases = list(_bad_values())
    if case >= len(cases):
        pytest.skip("torch not installed")
    _, bad, message = cases[case]
    model = nn.Sequential(nn.Linear(3, 2, rng=0), nn.Linear(2, 2, rng=1))
    before = {k: np.array(v, copy=True) for k, v in model.state_dict().items()}
    good = nn.Sequential(nn.Linear(3, 2, rng=5), nn.Linear(2, 2, rng=6)).state_dict()
    state = dict(good)
    state["1.weight"] = np.ones((2, 2), dtype=np.float32)
    state["0.weight"] = bad  # a key before and after it are fine
    with pytest.raises(nn.StateDictError, match=rf"0\.weight: {message}"):
        model.load_state_dict(state)
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_a_big_endian_array_of_the_right_dtype_loads():
    model = nn.Linear(3, 2, rng=0)
    w = np.arange(6, dtype=">f4").reshape(2, 3)
    model.load_state_dict({"weight": w, "bias": np.ones(2, dtype=">f4")})
    assert model.weight.data.dtype == np.float32 and model.weight.data.dtype.isnative
    np.testing.assert_array_equal(model.weight.data, np.arange(6).reshape(2, 3))
