"""Elementwise activations: sigmoid, tanh, relu, leaky_relu, elu, softplus, gelu, silu, mish,
hardtanh, logsigmoid, softsign; the error function behind gelu."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import compare_with_numpy, to_np

from backprop_xp import functional as F
from backprop_xp import nn
from backprop_xp.functional import _special
from backprop_xp.functional._special import erf_erfc
from backprop_xp.testing import gradcheck


def _sigmoid(v):
    return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))


def _softplus(v, beta=1.0, threshold=20.0):
    return v if beta * v > threshold else math.log1p(math.exp(beta * v)) / beta


def _gelu(v):
    return v * 0.5 * math.erfc(-v / math.sqrt(2))


def _gelu_tanh(v):
    return 0.5 * v * (1 + math.tanh(math.sqrt(2 / math.pi) * (v + 0.044715 * v**3)))


def _logsigmoid(v):
    return min(v, 0.0) - math.log1p(math.exp(-abs(v)))


# op, options, scalar reference, torch name
ACTIVATIONS = [
    (F.sigmoid, {}, _sigmoid, "sigmoid"),
    (F.tanh, {}, math.tanh, "tanh"),
    (F.relu, {}, lambda v: max(v, 0.0), "relu"),
    (F.leaky_relu, {"negative_slope": 0.2}, lambda v: v if v > 0 else 0.2 * v, "leaky_relu"),
    (F.elu, {"alpha": 1.5}, lambda v: v if v > 0 else 1.5 * math.expm1(v), "elu"),
    (F.softplus, {}, _softplus, "softplus"),
    (F.softplus, {"beta": 2.0, "threshold": 3.0}, lambda v: _softplus(v, 2.0, 3.0), "softplus"),
    (F.gelu, {}, _gelu, "gelu"),
    (F.gelu, {"approximate": "tanh"}, _gelu_tanh, "gelu"),
    (F.silu, {}, lambda v: v * _sigmoid(v), "silu"),
    (F.mish, {}, lambda v: v * math.tanh(_softplus(v)), "mish"),
    (F.hardtanh, {}, lambda v: min(max(v, -1.0), 1.0), "hardtanh"),
    (
        F.hardtanh,
        {"min_val": -0.5, "max_val": 2.0},
        lambda v: min(max(v, -0.5), 2.0),
        "hardtanh",
    ),
    (F.logsigmoid, {}, _logsigmoid, "logsigmoid"),
    (F.softsign, {}, lambda v: v / (1 + abs(v)), "softsign"),
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
    if op is F.hardtanh:  # away from the kinks at min_val and max_val
        lo, hi = opts.get("min_val", -1.0), opts.get("max_val", 1.0)
        x = np.where((np.abs(x - lo) < 0.1) | (np.abs(x - hi) < 0.1), 0.5, x)
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
    atol = _torch_atol(opts)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=atol)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=atol)


def _torch_atol(opts):
    # torch's tanh-gelu computes 1 + tanh(u) and 1 - tanh(u)^2, which cancel for negative x
    # (absolute errors up to ~5e-15 in float64 at |x| < 12); ours does not
    return 1e-14 if opts.get("approximate") == "tanh" else 1e-15


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


# -- gelu's error function ------------------------------------------------------------------


def _ulps(got, ref, dtype):
    """|got - ref| in ulps of ``ref`` in ``dtype`` (where ``ref`` is a normal number)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    normal = np.abs(ref) >= np.finfo(dtype).tiny
    spacing = np.spacing(np.abs(ref[normal]).astype(dtype)).astype(np.float64)
    return np.abs(got[normal] - ref[normal]) / spacing


def _erf_grid(dtype, n):
    top = 27.5 if dtype == np.float64 else 10.5
    tiny = np.finfo(dtype).tiny
    mag = np.concatenate([np.linspace(0, top, n), np.geomspace(tiny, top, n // 4)])
    return np.concatenate([mag, -mag]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_erf_and_erfc_within_a_few_ulps_of_math(dtype):
    """The Array API erf/erfc (NumPy, array-api-strict and CuPy have no erf of their own)
    against math.erf/math.erfc over a dense grid: erf within 2 ulps, erfc within 6 where it
    is a normal number (against mpmath: 1.0 and 4.8 at most, tools/fit_erf.py)."""
    x = _erf_grid(dtype, 200_001)
    erf, erfc = erf_erfc(np, x)
    assert erf.dtype == dtype and erfc.dtype == dtype
    wide = x.astype(np.float64)
    assert _ulps(erf, [math.erf(v) for v in wide], dtype).max() <= 2
    assert _ulps(erfc, [math.erfc(v) for v in wide], dtype).max() <= 6


def test_erf_on_every_backend(xp):
    x = _erf_grid(np.float64, 2001)
    erf, erfc = erf_erfc(xp, xp.asarray(x))
    assert _ulps(to_np(erf), [math.erf(v) for v in x], np.float64).max() <= 2
    assert _ulps(to_np(erfc), [math.erfc(v) for v in x], np.float64).max() <= 6
    # the public helpers: the namespace's own erf where it has one (torch), else ours
    np.testing.assert_allclose(to_np(_special.erf(xp, xp.asarray(x))), to_np(erf), rtol=1e-15)
    np.testing.assert_allclose(to_np(_special.erfc(xp, xp.asarray(x))), to_np(erfc), rtol=4e-15)


def test_erf_special_values(xp):
    x = xp.asarray([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-300, -1e-300, 30.0], dtype=xp.float64)
    erf, erfc = (to_np(a) for a in erf_erfc(xp, x))
    np.testing.assert_array_equal(erf, [0.0, -0.0, 1.0, -1.0, np.nan, erf[5], -erf[5], 1.0])
    assert np.signbit(erf[1]) and not np.signbit(erf[0])
    np.testing.assert_allclose(erf[5], 2 / math.sqrt(math.pi) * 1e-300, rtol=1e-15)
    np.testing.assert_array_equal(erfc, [1.0, 1.0, 0.0, 2.0, np.nan, 1.0, 1.0, 0.0])


def test_erf_float16_computes_in_float32():
    x = np.linspace(-4, 4, 101).astype(np.float16)
    erf, erfc = erf_erfc(np, x)
    assert erf.dtype == np.float16 and erfc.dtype == np.float16
    ref = [math.erf(v) for v in x.astype(np.float64)]
    np.testing.assert_allclose(erf.astype(np.float64), ref, rtol=1e-3, atol=1e-4)


# -- the new activations' own conventions ---------------------------------------------------


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize(("op", "opts", "ref", "torch_name"), ACTIVATIONS[7:], ids=IDS[7:])
def test_new_activations_in_float32_match_torch_in_float64(rng, op, opts, ref, torch_name):
    """float32 to float32 accuracy, with torch's float64 results (NaN pattern included) as
    the reference: torch's own float32 kernels are less accurate in places (its gelu
    backward is 0 near x = -5, where the gradient is -1.5e-6; its float32 gelu(+inf) is
    NaN, its float64 one +inf, as ours in both)."""
    torch = pytest.importorskip("torch")
    x = _inputs(rng, (4, 64)).astype(np.float32)
    x[0, :5] = [np.nan, -np.inf, np.inf, 1e4, -1e4]
    xt = torch.tensor(x.astype(np.float64), requires_grad=True)
    yt = getattr(torch.nn.functional, torch_name)(xt, **opts)
    g = rng.standard_normal(x.shape).astype(np.float32)
    yt.backward(torch.tensor(g.astype(np.float64)))
    y, cache = op(x, **opts)
    (dx,) = getattr(F, op.__name__ + "_backward")(g, cache)
    assert y.dtype == np.float32 and dx.dtype == np.float32
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=5e-6, atol=1e-6)


def test_gelu_at_infinity_follows_torch_float64():
    with np.errstate(invalid="ignore"):  # -inf * 0
        y, cache = F.gelu(np.array([np.inf, -np.inf, -40.0, 40.0], dtype=np.float32))
        (dx,) = F.gelu_backward(np.ones(4, np.float32), cache)
    assert y[0] == np.inf and np.isnan(y[1]) and y[2] == 0 and y[3] == 40
    assert np.isnan(dx[:2]).all() and dx[2] == 0 and dx[3] == 1


def test_gelu_is_accurate_where_its_cdf_is_tiny():
    """Φ from erfc: no cancellation of 1 + erf for negative x (torch's gives 0 at x = -10)."""
    x = np.array([-10.0, -20.0, -37.0])
    y, cache = F.gelu(x)
    (dx,) = F.gelu_backward(np.ones(3), cache)
    cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
    pdf = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(y, x * cdf, rtol=1e-12)
    np.testing.assert_allclose(dx, cdf + x * pdf, rtol=1e-11)


def test_hardtanh_gradient_is_zero_at_its_bounds_and_at_nan(xp, dtype):
    x = xp.asarray([-1.0, 1.0, -0.999, 0.999, -3.0, 3.0, np.nan], dtype=dtype)
    y, cache = F.hardtanh(x)
    (dx,) = F.hardtanh_backward(xp.ones_like(x), cache)
    np.testing.assert_array_equal(to_np(dx), [0, 0, 1, 1, 0, 0, 0])
    assert np.isnan(to_np(y)[-1])
    y, cache = F.hardtanh(x, 0.5, 0.5)  # equal bounds: a constant, as torch allows
    np.testing.assert_array_equal(to_np(y)[:-1], 0.5)
    with pytest.raises(ValueError, match=r"^hardtanh: argument 'max_val' expected a value >= "):
        F.hardtanh(x, 1.0, -1.0)


def test_logsigmoid_keeps_tiny_values_and_gradients():
    x = np.array([40.0, 800.0, -800.0, -40.0])
    y, cache = F.logsigmoid(x)
    (dx,) = F.logsigmoid_backward(np.ones(4), cache)
    np.testing.assert_allclose(y, [-math.exp(-40.0), -0.0, -800.0, -40.0 - math.exp(-40.0)])
    np.testing.assert_allclose(dx, [math.exp(-40.0), 0.0, 1.0, 1.0], rtol=1e-15)


def test_softsign_gradient_is_exact_for_large_inputs():
    x = np.array([1e4, -1e8, 0.5])
    _, cache = F.softsign(x)
    (dx,) = F.softsign_backward(np.ones(3), cache)
    np.testing.assert_allclose(dx, 1 / (1 + np.abs(x)) ** 2, rtol=1e-15)


def test_gelu_rejects_an_unknown_approximation():
    with pytest.raises(ValueError, match=r"^gelu: argument 'approximate' expected one of"):
        F.gelu(np.ones(2), approximate="erf")


# -- layers ---------------------------------------------------------------------------------

LAYERS = [
    (lambda m: m.GELU(), {}),
    (lambda m: m.GELU(approximate="tanh"), {}),
    (lambda m: m.SiLU(), {}),
    (lambda m: m.Mish(), {}),
    (lambda m: m.Hardtanh(-0.5, 2.0), {}),
    (lambda m: m.LogSigmoid(), {}),
    (lambda m: m.Softsign(), {}),
]


@pytest.mark.parametrize(("build", "_"), LAYERS)
def test_activation_layers_match_torch(xp, rng, build, _):
    torch = pytest.importorskip("torch")
    x = _inputs(rng, (5, 7))
    g = rng.standard_normal(x.shape)
    layer = build(nn)
    y, backprop = layer(xp.asarray(x))
    dx = backprop(xp.asarray(g))
    xt = torch.tensor(x, requires_grad=True)
    yt = build(torch.nn)(xt)
    yt.backward(torch.tensor(g))
    atol = 1e-14 if getattr(layer, "approximate", "none") == "tanh" else 1e-15
    np.testing.assert_allclose(to_np(y), yt.detach().numpy(), rtol=1e-12, atol=atol)
    np.testing.assert_allclose(to_np(dx), xt.grad.numpy(), rtol=1e-12, atol=atol)
    assert repr(layer).split("(")[0] == repr(build(torch.nn)).split("(")[0]


def test_activation_layer_options_are_checked():
    with pytest.raises(ValueError, match=r"^GELU: argument 'approximate' expected one of"):
        nn.GELU("fast")
    with pytest.raises(ValueError, match=r"^Hardtanh: argument 'max_val' expected a value >"):
        nn.Hardtanh(1.0, 1.0)  # torch's layer asserts max_val > min_val too
    with pytest.raises(TypeError, match=r"^Hardtanh: argument 'min_val' expected a real"):
        nn.Hardtanh("0")
    assert repr(nn.Hardtanh(-2, 2)) == "Hardtanh(min_val=-2.0, max_val=2.0)"
    assert repr(nn.GELU("tanh")) == "GELU(approximate='tanh')"
