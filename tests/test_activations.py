"""Elementwise activations: sigmoid, tanh, relu, leaky_relu, elu, softplus."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import compare_with_numpy, to_np

from backprop_xp import functional as F
from backprop_xp.testing import gradcheck


def _sigmoid(v):
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


def _softplus(v, beta=1.0, threshold=20.0):
    return v if beta * v > threshold else math.log1p(math.exp(beta * v)) / beta


# op, options, scalar reference, torch name
ACTIVATIONS = [
    (F.sigmoid, {}, _sigmoid, "sigmoid"),
    (F.tanh, {}, math.tanh, "tanh"),
    (F.relu, {}, lambda v: max(v, 0.0), "relu"),
    (F.leaky_relu, {"negative_slope": 0.2}, lambda v: v if v > 0 else 0.2 * v, "leaky_relu"),
    (F.elu, {"alpha": 1.5}, lambda v: v if v > 0 else 1.5 * math.expm1(v), "elu"),
    (F.softplus, {}, _softplus, "softplus"),
    (F.softplus, {"beta": 2.0, "threshold": 3.0}, lambda v: _softplus(v, 2.0, 3.0), "softplus"),
]
IDS = [f"{a[3]}-{i}" for i, a in enumerate(ACTIVATIONS)]


def _inputs(rng, shape=(3, 4)):
    # keep away from the kinks (0, softplus's threshold) so central differences are valid
    x = rng.standard_normal(shape) * 3
    return np.where(np.abs(x) < 0.05, 0.5, x)


@pytest.mark.parametrize(("op", "opts", "ref", "_"), ACTIVATIONS, ids=IDS)
def test_activation_forward_matches_reference(xp, dtype, rng, op, opts, ref, _):
    x = _inputs(rng)
    y, _cache = op(xp.asarray(x, dtype=dtype), **opts)
    assert y.dtype == dtype and tuple(y.shape) == x.shape
    expected = np.vectorize(ref)(x)
    np.testing.assert_allclose(to_np(y), expected, rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize(("op", "opts", "ref", "_"), ACTIVATIONS, ids=IDS)
def test_activation_gradcheck(xp, rng, op, opts, ref, _):
    x = _inputs(rng)
    if op is F.softplus and "threshold" in opts:
        x = np.where(np.abs(2 * x - 3) < 0.1, 0.5, x)
    gradcheck(op, [xp.asarray(x)], opts)


@pytest.mark.parametrize(("op", "opts", "ref", "_"), ACTIVATIONS, ids=IDS)
def test_activation_matches_numpy(xp, dtype, rng, op, opts, ref, _):
    name = "float64" if "64" in str(dtype) else "float32"
    backward = getattr(F, op.__name__ + "_backward")
    compare_with_numpy(xp, op, backward, [_inputs(rng)], opts, rng.standard_normal((3, 4)), name)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize(("op", "opts", "ref", "torch_name"), ACTIVATIONS, ids=IDS)
def test_activation_matches_torch(rng, op, opts, ref, torch_name):
    torch = pytest.importorskip("torch")
    x = _inputs(rng)
    x[0, :3] = [np.nan, np.inf, -np.inf]
    xt = torch.tensor(x, requires_grad=True)
    yt = getattr(torch.nn.functional, torch_name)(xt, **opts)
    g = rng.standard_normal(x.shape)
    yt.backward(torch.tensor(g))
    y, cache = op(x, **opts)
    (dx,) = getattr(F, op.__name__ + "_backward")(g, cache)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize(("op", "opts", "ref", "_"), ACTIVATIONS, ids=IDS)
def test_activation_extremes_finite_and_nan_propagates(xp, dtype, op, opts, ref, _):
    x = xp.asarray([1e4, -1e4, 0.0, np.nan], dtype=dtype)
    y, cache = op(x, **opts)
    (dx,) = getattr(F, op.__name__ + "_backward")(xp.ones_like(y), cache)
    y, dx = to_np(y), to_np(dx)
    assert np.isfinite(y[:3]).all() and np.isfinite(dx[:3]).all()
    assert np.isnan(y[3])  # the gradient at NaN follows torch: checked in the torch test


@pytest.mark.parametrize(("op", "opts", "ref", "_"), ACTIVATIONS, ids=IDS)
def test_activation_rejects_integers(xp, op, opts, ref, _):
    with pytest.raises(TypeError, match=rf"{op.__name__}: argument 'x' expected a real floating"):
        op(xp.asarray([1, 2]), **opts)


def test_elu_gradient_keeps_precision_for_very_negative_inputs(xp, dtype):
    """alpha·e^x, not y + alpha, which cancels (0 at x = -20 in float32; torch: 2.06e-9)."""
    x = np.array([-17.0, -20.0, -60.0, -0.5])
    _, cache = F.elu(xp.asarray(x, dtype=dtype), alpha=1.5)
    (dx,) = F.elu_backward(xp.ones_like(xp.asarray(x, dtype=dtype)), cache)
    np.testing.assert_allclose(to_np(dx), 1.5 * np.exp(x), rtol=1e-6)
