"""Embedding: the lookup, its scatter-add backward (repeated indices add up), the index
checks, and the layer (torch's init, padding row, from_pretrained and freezing)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import compare_with_numpy, to_np

import backprop_xp
from backprop_xp import functional as F
from backprop_xp import nn, optim
from backprop_xp.backend import library_name
from backprop_xp.functional.embedding import _sorted_segment_sums
from backprop_xp.testing import gradcheck


def _reference(index, weight, g, padding_idx=None, scale=False):
    """Loops: y = W[i]; dW[r] = sum of g over the positions where i == r."""
    flat = index.reshape(-1)
    y = np.array([weight[i] for i in flat]).reshape((*index.shape, weight.shape[1]))
    dW = np.zeros(weight.shape, dtype=np.float64)
    counts = np.zeros(weight.shape[0])
    for i, row in zip(flat, g.reshape(-1, weight.shape[1]), strict=True):
        dW[i] += row
        counts[i] += 1
    if scale:
        dW /= np.maximum(counts, 1)[:, None]
    if padding_idx is not None:
        dW[padding_idx] = 0
    return y, dW


CASES = [
    # input shape or fixed indices, num_embeddings, padding_idx, scale_grad_by_freq
    pytest.param((6,), 9, None, False, id="1d"),
    pytest.param((3, 5), 4, 2, False, id="2d-repeats-padding"),
    pytest.param(np.full((4, 8), 3), 6, None, False, id="every-index-the-same"),
    pytest.param(np.full((4, 8), 3), 6, None, True, id="every-index-the-same-scaled"),
    pytest.param((2, 3, 4), 5, -1, True, id="3d-negative-padding-scaled"),
    pytest.param((), 7, None, False, id="0d"),
    pytest.param((0, 3), 5, 1, True, id="empty"),
]


def _indices(rng, spec, n):
    return spec if isinstance(spec, np.ndarray) else rng.integers(0, n, size=spec)


@pytest.mark.parametrize(("spec", "n", "padding_idx", "scale"), CASES)
def test_embedding_matches_the_loop_reference(xp, dtype, rng, spec, n, padding_idx, scale):
    index = _indices(rng, spec, n)
    weight = rng.standard_normal((n, 3))
    g = rng.standard_normal((*index.shape, 3))
    y, cache = F.embedding(
        xp.asarray(index), xp.asarray(weight, dtype=dtype), padding_idx, scale_grad_by_freq=scale
    )
    none, dW = F.embedding_backward(xp.asarray(g, dtype=dtype), cache)
    y_ref, dW_ref = _reference(index, weight, g, padding_idx, scale)
    assert none is None and y.dtype == dtype and dW.dtype == dtype
    assert tuple(y.shape) == (*index.shape, 3) and tuple(dW.shape) == (n, 3)
    tol = 1e-12 if dtype == xp.float64 else 1e-5
    np.testing.assert_allclose(to_np(y), y_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(to_np(dW), dW_ref, rtol=tol, atol=tol)


@pytest.mark.parametrize(("spec", "n", "padding_idx", "scale"), CASES)
def test_embedding_matches_numpy(xp, dtype, rng, spec, n, padding_idx, scale):
    name = "float64" if dtype == xp.float64 else "float32"
    index = _indices(rng, spec, n)
    g = rng.standard_normal((*index.shape, 3))
    compare_with_numpy(
        xp,
        F.embedding,
        F.embedding_backward,
        [index, rng.standard_normal((n, 3))],
        {"padding_idx": padding_idx, "scale_grad_by_freq": scale},
        g,
        name,
    )


@pytest.mark.parametrize(
    ("spec", "n"), [((6,), 9), ((3, 5), 4), (np.full((4, 8), 3), 6), ((), 7)], ids=str
)
def test_embedding_gradcheck(xp, rng, spec, n):
    """The true gradient; padding_idx and scale_grad_by_freq depart from it by design (the
    loop reference checks them)."""
    index = xp.asarray(_indices(rng, spec, n))
    weight = xp.asarray(rng.standard_normal((n, 3)), dtype=xp.float64)
    gradcheck(F.embedding, [index, weight])


@pytest.mark.parametrize(("spec", "n", "padding_idx", "scale"), CASES)
def test_embedding_matches_torch(rng, spec, n, padding_idx, scale):
    torch = pytest.importorskip("torch")
    index = _indices(rng, spec, n)
    weight = rng.standard_normal((n, 3))
    g = rng.standard_normal((*index.shape, 3))
    wt = torch.tensor(weight, requires_grad=True)
    yt = torch.nn.functional.embedding(
        torch.tensor(index), wt, padding_idx, scale_grad_by_freq=scale
    )
    yt.backward(torch.tensor(g))
    y, cache = F.embedding(index, weight, padding_idx, scale_grad_by_freq=scale)
    _, dW = F.embedding_backward(g, cache)
    np.testing.assert_array_equal(y, yt.detach().numpy())
    np.testing.assert_allclose(dW, wt.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "dtype", ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"]
)
def test_any_integer_dtype_indexes(xp, rng, dtype):
    index = rng.integers(0, 7, size=(3, 4)).astype(dtype)
    weight = rng.standard_normal((7, 2))
    try:
        given = xp.asarray(index)
    except (TypeError, ValueError):  # pragma: no cover - a backend without this dtype
        pytest.skip(f"{xp.backend_name} has no {dtype}")
    y, cache = F.embedding(given, xp.asarray(weight))
    _, dW = F.embedding_backward(xp.ones_like(y), cache)
    np.testing.assert_array_equal(to_np(y), weight[index.astype(np.int64)])
    np.testing.assert_array_equal(to_np(dW)[:, 0], np.bincount(index.reshape(-1), minlength=7))


@pytest.mark.parametrize(
    ("index", "shown"),
    [
        (np.array([0, 7, 2]), "got 7 at flat position 1"),
        (np.array([[1, -1], [-3, 0]]), "got -1 at flat position 1; 2 indices are out of range"),
        (np.array([3, 255], dtype=np.uint8), "got 255 at flat position 1"),
        # checked on its value: not wrapped to -1 (the last row) by a cast to int64
        (np.array([2**64 - 1], dtype=np.uint64), f"got {2**64 - 1} at flat position 0"),
        (np.array([2**63], dtype=np.uint64), f"got {2**63} at flat position 0"),
    ],
)
def test_out_of_range_indices_are_one_clear_error(xp, index, shown):
    weight = xp.asarray(np.zeros((7, 2)))
    try:
        given = xp.asarray(index)
    except (TypeError, ValueError, OverflowError):  # pragma: no cover
        pytest.skip(f"{xp.backend_name} has no {index.dtype}")
    msg = (
        rf"^embedding: argument 'input' expected indices in \[0, 7\) \(num_embeddings=7\), {shown}$"
    )
    with pytest.raises(ValueError, match=msg):
        F.embedding(given, weight)


def test_index_checks_can_be_switched_off():
    weight = np.arange(6.0).reshape(3, 2)
    with backprop_xp.index_checks(False):  # no host synchronization: NumPy's take wraps -1
        y, _ = F.embedding(np.array([-1]), weight)
    np.testing.assert_array_equal(y, weight[[-1]])
    with pytest.raises(ValueError, match="expected indices in"):
        F.embedding(np.array([-1]), weight)


def test_bad_arguments_are_named():
    w = np.zeros((4, 2))
    with pytest.raises(TypeError, match=r"^embedding: argument 'input' expected an integer array"):
        F.embedding(np.array([0.0, 1.0]), w)
    with pytest.raises(TypeError, match=r"^embedding: argument 'input' expected an integer array"):
        F.embedding(np.array([True]), w)
    with pytest.raises(TypeError, match=r"^embedding: argument 'weight' expected a real floating"):
        F.embedding(np.array([0]), np.zeros((4, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"^embedding: argument 'weight' expected a 2-d array"):
        F.embedding(np.array([0]), np.zeros(4))
    for bad in (4, -5, 100):
        with pytest.raises(
            ValueError,
            match=r"^embedding: argument 'padding_idx' expected None or an int in \[-4, 4\)",
        ):
            F.embedding(np.array([0]), w, bad)
    with pytest.raises(TypeError, match=r"^embedding: argument 'padding_idx' expected an int"):
        F.embedding(np.array([0]), w, 1.0)
    _, cache = F.embedding(np.array([[0, 1]]), w)
    with pytest.raises(
        ValueError, match=r"^embedding_backward: argument 'dy' expected shape \(1, 2, 2\)"
    ):
        F.embedding_backward(np.ones((2, 2)), cache)


@pytest.mark.parametrize("xp_name", ["numpy", "torch"])
@pytest.mark.parametrize("kind", ["random", "all-same", "sorted-runs"])
def test_the_portable_segment_sums_equal_the_native_scatter_add(rng, xp_name, kind):
    """The algorithm array-api-strict (and any library without a scatter-add) runs, on
    NumPy and torch against their native paths: sorted by index, differences of a running
    sum, gathered per table row by searchsorted."""
    if xp_name == "torch":
        pytest.importorskip("torch")
    from backprop_xp.backend import namespace, scatter_add_rows

    xp = namespace(xp_name)
    n = 50
    index = {
        "random": rng.integers(0, n, 300),
        "all-same": np.full(300, 17),
        "sorted-runs": np.repeat(np.arange(0, n, 5), 30),
    }[kind]
    g = rng.standard_normal((300, 4)).astype(np.float32)
    sums, counts = _sorted_segment_sums(xp, xp.asarray(index), xp.asarray(g), n)
    native = scatter_add_rows(xp, xp.asarray(index), xp.asarray(g), n)
    assert sums.dtype == xp.float32 and library_name(sums) == xp_name
    np.testing.assert_allclose(to_np(sums), to_np(native), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(to_np(counts), np.bincount(index, minlength=n))


# -- the layer ------------------------------------------------------------------------------


def test_embedding_layer_init_is_torchs():
    layer = nn.Embedding(2000, 16, padding_idx=-2, rng=0)
    w = to_np(layer.weight.data)
    assert layer.padding_idx == 1998 and w.dtype == np.float32
    np.testing.assert_array_equal(w[1998], 0)
    rest = np.delete(w, 1998, axis=0)
    assert abs(rest.mean()) < 0.01 and abs(rest.std() - 1) < 0.01  # N(0, 1)
    np.testing.assert_array_equal(to_np(nn.Embedding(2000, 16, -2, rng=0).weight.data), w)
    assert repr(layer) == "Embedding(2000, 16, padding_idx=1998)"
    assert list(layer.state_dict()) == ["weight"]


def test_embedding_layer_matches_torch_both_ways(xp, rng):
    torch = pytest.importorskip("torch")
    theirs = torch.nn.Embedding(10, 4, padding_idx=3, scale_grad_by_freq=True).double()
    ours = nn.Embedding(10, 4, padding_idx=3, scale_grad_by_freq=True, dtype="float64")
    assert repr(ours) == repr(theirs)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    ours.to(xp._xp, xp.device)
    index = rng.integers(0, 10, size=(5, 6))
    index[0, :3] = 3
    g = rng.standard_normal((5, 6, 4))
    y, backprop = ours(xp.asarray(index))
    assert backprop(xp.asarray(g)) is None  # no gradient for integer indices
    yt = theirs(torch.tensor(index))
    yt.backward(torch.tensor(g))
    np.testing.assert_array_equal(to_np(y), yt.detach().numpy())
    np.testing.assert_allclose(to_np(ours.weight.grad), theirs.weight.grad.numpy(), rtol=1e-12)
    # and back: our state dict loads into torch's module
    fresh = torch.nn.Embedding(10, 4, padding_idx=3).double()
    fresh.load_state_dict({k: torch.tensor(to_np(v)) for k, v in ours.state_dict().items()})
    np.testing.assert_array_equal(fresh.weight.detach().numpy(), to_np(ours.weight.data))


def test_from_pretrained_freezes_by_default():
    table = np.arange(12.0, dtype=np.float32).reshape(4, 3)
    layer = nn.Embedding.from_pretrained(table, padding_idx=1)
    w = layer.weight
    assert not w.requires_grad and "requires_grad=False" in repr(w)
    # still a parameter (in parameters() and the state dict, as torch's), row 1 not zeroed
    assert list(layer.parameters()) == [w] and list(layer.state_dict()) == ["weight"]
    np.testing.assert_array_equal(w.data, table)
    opt = optim.SGD(layer.parameters(), lr=1.0)
    y, backprop = layer(np.array([0, 2, 2]))
    backprop(np.ones_like(y))
    assert w.grad is None
    opt.step()
    np.testing.assert_array_equal(w.data, table)
    # unfreezing, or freeze=False: gradients accumulate again
    w.requires_grad = True
    y, backprop = layer(np.array([0, 2, 2]))
    backprop(np.ones_like(y))
    np.testing.assert_array_equal(w.grad, [[1] * 3, [0] * 3, [2] * 3, [0] * 3])
    trainable = nn.Embedding.from_pretrained(table, freeze=False)
    assert trainable.weight.requires_grad


def test_from_pretrained_matches_torch():
    torch = pytest.importorskip("torch")
    table = np.random.default_rng(0).standard_normal((5, 2))
    theirs = torch.nn.Embedding.from_pretrained(torch.tensor(table), padding_idx=-1)
    ours = nn.Embedding.from_pretrained(table, padding_idx=-1)
    assert repr(ours) == repr(theirs) and theirs.weight.requires_grad is False
    np.testing.assert_array_equal(to_np(ours.weight.data), theirs.weight.detach().numpy())


def test_embedding_layer_arguments_are_checked():
    with pytest.raises(ValueError, match=r"^Embedding: argument 'padding_idx' expected None or"):
        nn.Embedding(4, 2, padding_idx=4)
    with pytest.raises(TypeError, match=r"^Embedding: argument 'num_embeddings' expected an int"):
        nn.Embedding(4.0, 2)
    with pytest.raises(ValueError, match=r"^Embedding: argument '_weight' expected shape \(4, 2\)"):
        nn.Embedding(4, 2, _weight=np.zeros((4, 3)))
    with pytest.raises(
        ValueError, match=r"^Embedding.from_pretrained: argument 'embeddings' expected a 2-d"
    ):
        nn.Embedding.from_pretrained(np.zeros(3))
    with pytest.raises(
        TypeError, match=r"^Embedding.from_pretrained: argument 'freeze' expected a bool"
    ):
        nn.Embedding.from_pretrained(np.zeros((3, 2)), freeze=1)
