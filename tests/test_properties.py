"""Property tests (hypothesis): shapes and options drawn at random, where fixed cases miss
edge combinations (output length 1, ceil_mode's last window, padding equal to half the
kernel, spatial targets, empty reductions)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import to_np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backprop_xp import functional as F
from backprop_xp.testing import gradcheck

# The xp fixture is stateless, so sharing it across examples is safe.
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)


def _torch():
    """torch is optional: the tests that compare with it skip where it is absent."""
    return pytest.importorskip("torch")


@st.composite
def logits_and_targets(draw):
    n = draw(st.integers(0, 5))
    c = draw(st.integers(1, 6))
    spatial = draw(st.lists(st.integers(1, 3), max_size=2))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, *spatial)) * draw(st.sampled_from([0.1, 1.0, 30.0]))
    t = rng.integers(0, c, (n, *spatial))
    return x, t


@SETTINGS
@given(data=logits_and_targets(), reduction=st.sampled_from(["mean", "sum", "none"]))
def test_one_hot_equals_indices_and_gradient_rows_sum_to_zero(xp, data, reduction):
    x, t = data
    c = x.shape[1]
    onehot = np.moveaxis(np.eye(c)[t], -1, 1)
    a, ca = F.cross_entropy(xp.asarray(x), xp.asarray(t), reduction=reduction)
    b, cb = F.cross_entropy(xp.asarray(x), xp.asarray(onehot), reduction=reduction)
    if x.shape[0] == 0 and reduction == "mean":
        assert np.isnan(to_np(a)) and np.isnan(to_np(b))  # the mean of nothing, as torch
        return
    np.testing.assert_allclose(to_np(a), to_np(b), rtol=1e-12, atol=1e-12)
    g = xp.asarray(np.ones(tuple(a.shape)))
    da, db = F.cross_entropy_backward(g, ca)[0], F.cross_entropy_backward(g, cb)[0]
    np.testing.assert_allclose(to_np(da), to_np(db), rtol=1e-12, atol=1e-15)
    # softmax - onehot sums to zero over the classes
    np.testing.assert_allclose(to_np(da).sum(axis=1), 0.0, atol=1e-12)


@SETTINGS
@given(
    data=logits_and_targets(),
    weight=st.booleans(),
    smoothing=st.sampled_from([0.0, 0.1, 0.5]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
)
def test_cross_entropy_matches_torch_on_any_shape(data, weight, smoothing, reduction):
    torch = _torch()
    x, t = data
    if x.shape[0] == 0:
        return
    c = x.shape[1]
    w = np.random.default_rng(c).random(c) + 0.5 if weight else None
    opts = {"label_smoothing": smoothing, "reduction": reduction}
    out, cache = F.cross_entropy(x, t, weight=w, **opts)
    xt = torch.tensor(x, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(
        xt, torch.tensor(t), weight=None if w is None else torch.tensor(w), **opts
    )
    ref.backward(torch.ones_like(ref))
    np.testing.assert_allclose(out, ref.detach().numpy(), rtol=1e-10, atol=1e-12)
    dx = F.cross_entropy_backward(np.ones(tuple(ref.shape)), cache)[0]
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)


@st.composite
def pool_config(draw):
    k = draw(st.integers(1, 3))
    d = draw(st.integers(1, 2))
    span = d * (k - 1) + 1
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, k // 2))
    ceil_mode = draw(st.booleans())
    # ceil mode keeps a window that overhangs the padded input by up to s - 1
    length = draw(st.integers(max(span - 2 * p - (s - 1 if ceil_mode else 0), 1), 8))
    return {
        "kernel_size": k,
        "stride": s,
        "padding": p,
        "dilation": d,
        "ceil_mode": ceil_mode,
        "length": length,
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


def _window_wholly_in_padding(length, kernel_size, stride, padding, dilation, ceil_mode):
    """Whether a (dilated) window holds no input element: torch 2.13 aborts (double free)
    on such an input, so torch is not asked."""
    span = length + 2 * padding - dilation * (kernel_size - 1) - 1
    m = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (m - 1) * stride >= length + padding:
        m -= 1
    return any(
        all(not 0 <= w * stride - padding + j * dilation < length for j in range(kernel_size))
        for w in range(m)
    )


@SETTINGS
@given(cfg=pool_config())
def test_max_pool_routes_every_gradient_to_one_input(xp, cfg):
    """Each output's gradient lands on exactly one input: sum(dx) = sum(dy), and dx is
    nonzero only at window maxima. A dilated window can fall wholly in the padding (its max
    is -inf; torch 2.13 aborts on such a case): its gradient has nowhere to go."""
    rng = np.random.default_rng(cfg.pop("seed"))
    length = cfg.pop("length")
    x = rng.permutation(2 * 3 * length * 5).reshape(2, 3, length, 5) / 7.0  # distinct
    y, cache = F.max_pool2d(xp.asarray(x), **cfg)
    dy = rng.random(tuple(y.shape)) + 0.5
    (dx,) = F.max_pool2d_backward(xp.asarray(dy), cache)
    dx = to_np(dx)
    y = to_np(y)
    np.testing.assert_allclose(dx.sum(), dy[np.isfinite(y)].sum(), rtol=1e-12)
    assert set(np.round(x[dx != 0], 12)) <= set(np.round(y.ravel(), 12))


@SETTINGS
@given(
    cfg=pool_config(),
    count_include_pad=st.booleans(),
    values=st.sampled_from(["distinct", "masked", "nan"]),
)
def test_pooling_matches_torch_on_any_window(cfg, count_include_pad, values):
    """Any window shape, on distinct values, on -inf masks with ties, or with NaNs too:
    torch's output (NaN where torch has NaN) and gradients."""
    torch = _torch()
    rng = np.random.default_rng(cfg.pop("seed"))
    length = cfg.pop("length")
    if _window_wholly_in_padding(length, **cfg):
        return
    if values == "distinct":
        x = rng.permutation(2 * 2 * length).reshape(2, 2, length) / 3.0
    else:
        pool = [-np.inf, 1.0, 2.0] + ([np.nan] if values == "nan" else [])
        x = rng.choice(pool, size=(2, 2, length))
    xt = torch.tensor(x, requires_grad=True)
    for ours, theirs, opts in (
        (F.max_pool1d, torch.nn.functional.max_pool1d, cfg),
        (
            F.avg_pool1d,
            torch.nn.functional.avg_pool1d,
            {
                **{k: v for k, v in cfg.items() if k != "dilation"},
                "count_include_pad": count_include_pad,
            },
        ),
    ):
        if ours is F.avg_pool1d and cfg["dilation"] != 1:
            continue
        ref = theirs(xt, **opts)
        y, cache = ours(x, **opts)
        np.testing.assert_allclose(y, ref.detach().numpy(), rtol=1e-12)
        g = rng.standard_normal(tuple(ref.shape))
        xt.grad = None
        ref.backward(torch.tensor(g))
        (dx,) = getattr(F, ours.__name__ + "_backward")(g, cache)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-12, atol=1e-14)


@st.composite
def conv_config(draw):
    groups = draw(st.sampled_from([1, 2]))
    c_in = groups * draw(st.integers(1, 2))
    c_out = groups * draw(st.integers(1, 2))
    k = draw(st.integers(1, 3))
    d = draw(st.integers(1, 2))
    s = draw(st.integers(1, 2))
    same = s == 1 and draw(st.booleans())
    p = "same" if same else draw(st.integers(0, 2))
    span = d * (k - 1) + 1
    pad = 0 if same else p
    length = draw(st.integers(max(span - 2 * pad, 1), 6))
    return {
        "shape": (2, c_in, length),
        "weight": (c_out, c_in // groups, k),
        "opts": {"stride": s, "padding": p, "dilation": d, "groups": groups},
        "bias": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**32 - 1)),
    }


@SETTINGS
@given(cfg=conv_config())
def test_conv1d_gradcheck_on_any_configuration(xp, cfg):
    rng = np.random.default_rng(cfg["seed"])
    inputs = [
        xp.asarray(rng.standard_normal(cfg["shape"])),
        xp.asarray(rng.standard_normal(cfg["weight"])),
    ]
    if cfg["bias"]:
        inputs.append(xp.asarray(rng.standard_normal(cfg["weight"][0])))
    gradcheck(F.conv1d, inputs, cfg["opts"])


def _assert_same_nonfinite(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    for test in (np.isnan, np.isposinf, np.isneginf):
        assert np.array_equal(test(got), test(want)), f"{what}: {test.__name__} differs"
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-10, atol=1e-10, err_msg=what)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@SETTINGS
@given(
    cfg=conv_config(),
    where=st.sampled_from(["x", "weight", "dy"]),
    value=st.sampled_from([np.inf, -np.inf, np.nan]),
)
def test_conv1d_nonfinite_values_land_where_torch_puts_them(cfg, where, value):
    """One inf or NaN anywhere, zeros in dy: NaN, +inf and -inf where torch puts them."""
    torch = _torch()
    rng = np.random.default_rng(cfg["seed"])
    x, w = rng.standard_normal(cfg["shape"]), rng.standard_normal(cfg["weight"])
    opts = cfg["opts"]
    y, cache = F.conv1d(x, w, **opts)
    dy = rng.standard_normal(tuple(y.shape)) * (rng.random(tuple(y.shape)) < 0.7)
    a = {"x": x, "weight": w, "dy": dy}[where]
    a[tuple(int(rng.integers(n)) for n in a.shape)] = value
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    ty = torch.nn.functional.conv1d(tx, tw, **opts)
    ty.backward(torch.tensor(dy))
    with np.errstate(invalid="ignore"):
        y, cache = F.conv1d(x, w, **opts)
        dx, dw, _ = F.conv1d_backward(dy, cache)
    for got, want, what in ((y, ty, "y"), (dx, tx.grad, "dx"), (dw, tw.grad, "dW")):
        _assert_same_nonfinite(got, want.detach().numpy(), f"{what}, {value} in {where}")
