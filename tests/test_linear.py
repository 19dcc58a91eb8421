"""linear: the dense layer."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import compare_with_numpy, to_np

from backprop_xp import functional as F
from backprop_xp.testing import gradcheck


def _name(dtype) -> str:
    return "float64" if "64" in str(dtype) else "float32"


def ref_linear(x, w, b):
    y = np.zeros((*x.shape[:-1], w.shape[0]))
    for idx in np.ndindex(*x.shape[:-1]):
        for o in range(w.shape[0]):
            y[(*idx, o)] = sum(x[(*idx, i)] * w[o, i] for i in range(w.shape[1]))
            y[(*idx, o)] += 0.0 if b is None else b[o]
    return y


@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_forward_matches_reference(xp, dtype, rng, shape, bias):
    x, w = rng.standard_normal(shape), rng.standard_normal((5, 4))
    b = rng.standard_normal(5) if bias else None
    y, _ = F.linear(
        xp.asarray(x, dtype=dtype),
        xp.asarray(w, dtype=dtype),
        None if b is None else xp.asarray(b, dtype=dtype),
    )
    assert y.dtype == dtype
    np.testing.assert_allclose(to_np(y), ref_linear(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(4,), (3, 4), (2, 3, 4)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck(xp, rng, shape, bias):
    x, w = rng.standard_normal(shape), rng.standard_normal((5, 4))
    inputs = [xp.asarray(x), xp.asarray(w)] + ([xp.asarray(rng.standard_normal(5))] if bias else [])
    gradcheck(F.linear, inputs)
    _, cache = F.linear(*inputs)
    grads = F.linear_backward(xp.asarray(rng.standard_normal((*shape[:-1], 5))), cache)
    assert len(grads) == 3 and (grads[2] is None) == (not bias)


def test_linear_matches_numpy(xp, dtype, rng):
    x, w, b = rng.standard_normal((2, 3, 6)), rng.standard_normal((4, 6)), rng.standard_normal(4)
    compare_with_numpy(
        xp, F.linear, F.linear_backward, [x, w, b], {}, rng.standard_normal((2, 3, 4)), _name(dtype)
    )


def test_linear_matches_torch(rng):
    torch = pytest.importorskip("torch")
    x, w, b = rng.standard_normal((3, 6)), rng.standard_normal((4, 6)), rng.standard_normal(4)
    ts = [torch.tensor(a, requires_grad=True) for a in (x, w, b)]
    ref = torch.nn.functional.linear(*ts)
    g = rng.standard_normal((3, 4))
    ref.backward(torch.tensor(g))
    y, cache = F.linear(x, w, b)
    np.testing.assert_allclose(y, ref.detach().numpy(), rtol=1e-12)
    for got, t in zip(F.linear_backward(g, cache), ts, strict=True):
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_linear_empty_batch(xp, rng):
    y, cache = F.linear(xp.asarray(np.zeros((0, 4))), xp.asarray(rng.standard_normal((3, 4))))
    dx, dw, _ = F.linear_backward(xp.asarray(np.zeros((0, 3))), cache)
    assert tuple(y.shape) == (0, 3) and tuple(dx.shape) == (0, 4)
    np.testing.assert_array_equal(to_np(dw), np.zeros((3, 4)))


def test_linear_bad_inputs(xp):
    x, w = xp.asarray(np.zeros((2, 4))), xp.asarray(np.zeros((3, 4)))
    with pytest.raises(
        ValueError,
        match=r"linear: argument 'x' expected shape \(\.\.\., 4\) to "
        r"match weight, got \(2, 5\)",
    ):
        F.linear(xp.asarray(np.zeros((2, 5))), w)
    with pytest.raises(ValueError, match=r"linear: argument 'weight' expected a 2-d array"):
        F.linear(x, xp.asarray(np.zeros(4)))
    with pytest.raises(ValueError, match=r"linear: argument 'bias' expected shape \(3,\)"):
        F.linear(x, w, xp.asarray(np.zeros(4)))
    with pytest.raises(TypeError, match=r"linear: argument 'bias' expected dtype .*float32"):
        F.linear(
            xp.asarray(np.zeros((2, 4)), dtype=xp.float32),
            xp.asarray(np.zeros((3, 4)), dtype=xp.float32),
            xp.asarray(np.zeros(3)),
        )
    with pytest.raises(TypeError, match=r"linear: argument 'weight' expected dtype .*float32"):
        F.linear(xp.asarray(np.zeros((2, 4)), dtype=xp.float32), w)
    with pytest.raises(TypeError, match=r"linear: argument 'x' expected a real floating"):
        F.linear(xp.asarray(np.zeros((2, 4), dtype=np.int64)), w)
