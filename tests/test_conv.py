"""conv1d, conv2d, conv3d."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import compare_with_numpy, to_np

from backprop_xp import functional as F
from backprop_xp.functional import conv as conv_module
from backprop_xp.testing import assert_close, gradcheck

CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
BACKWARD = {1: F.conv1d_backward, 2: F.conv2d_backward, 3: F.conv3d_backward}


def _t(v, nd):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def ref_conv(x, w, b=None, stride=1, padding=0, dilation=1, groups=1):
    """Direct loop over output positions (NumPy, float64)."""
    nd = x.ndim - 2
    st, dl, k = _t(stride, nd), _t(dilation, nd), w.shape[2:]
    if padding == "same":
        total = [d * (kk - 1) for d, kk in zip(dl, k, strict=True)]
        lo, hi = [t // 2 for t in total], [t - t // 2 for t in total]
    elif padding == "valid":
        lo = hi = [0] * nd
    else:
        lo = hi = list(_t(padding, nd))
    xpad = np.pad(x.astype(np.float64), [(0, 0), (0, 0), *zip(lo, hi, strict=True)])
    out = [(xpad.shape[2 + i] - dl[i] * (k[i] - 1) - 1) // st[i] + 1 for i in range(nd)]
    n, c = x.shape[:2]
    o = w.shape[0]
    cg, og = c // groups, o // groups
    y = np.zeros((n, o, *out))
    axes = list(range(1, nd + 2))
    for pos in np.ndindex(*out):
        window = tuple(
            slice(p * s, p * s + d * (kk - 1) + 1, d)
            for p, s, d, kk in zip(pos, st, dl, k, strict=True)
        )
        patch = xpad[(slice(None), slice(None), *window)]
        for g in range(groups):
            y[(slice(None), slice(g * og, (g + 1) * og), *pos)] = np.tensordot(
                patch[:, g * cg : (g + 1) * cg], w[g * og : (g + 1) * og], axes=(axes, axes)
            )
    if b is not None:
        y += b.reshape((o,) + (1,) * nd)
    return y


# (nd, C_in, C_out, spatial, kernel, options)
CASES = [
    (1, 3, 4, 9, 3, {}),
    (1, 4, 6, 10, 3, {"stride": 2, "padding": 2, "dilation": 2, "groups": 2}),
    (1, 2, 3, 7, 4, {"padding": "same"}),  # even kernel: odd padding element on the right
    (2, 3, 4, 7, 3, {"padding": 1}),
    (2, 4, 4, 8, (3, 2), {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)}),
    (2, 4, 6, 6, 3, {"padding": "same", "dilation": 2, "groups": 2}),
    (2, 4, 4, 6, 3, {"groups": 4, "padding": "valid"}),  # depthwise
    (2, 2, 3, 6, 1, {}),
    (3, 2, 4, 5, 3, {"padding": 1, "stride": 2}),
    (3, 4, 2, 5, (2, 3, 1), {"padding": "same", "groups": 2}),
]


def _draw(rng, nd, c_in, c_out, spatial, kernel, groups, n=2, bias=True):
    k = _t(kernel, nd)
    x = rng.standard_normal((n, c_in, *_t(spatial, nd)))
    w = rng.standard_normal((c_out, c_in // groups, *k))
    b = rng.standard_normal(c_out) if bias else None
    return x, w, b


@pytest.mark.parametrize(("nd", "c_in", "c_out", "spatial", "kernel", "opts"), CASES)
def test_conv_forward_matches_loop_reference(
    xp, dtype, rng, nd, c_in, c_out, spatial, kernel, opts
):
    x, w, b = _draw(rng, nd, c_in, c_out, spatial, kernel, opts.get("groups", 1))
    y, _ = CONV[nd](
        xp.asarray(x, dtype=dtype), xp.asarray(w, dtype=dtype), xp.asarray(b, dtype=dtype), **opts
    )
    assert y.dtype == dtype
    tol = {"rtol": 1e-4, "atol": 1e-4} if "32" in str(dtype) else {"rtol": 1e-12, "atol": 1e-12}
    np.testing.assert_allclose(to_np(y), ref_conv(x, w, b, **opts), **tol)


@pytest.mark.parametrize(("nd", "c_in", "c_out", "spatial", "kernel", "opts"), CASES)
def test_conv_gradcheck(xp, rng, nd, c_in, c_out, spatial, kernel, opts):
    small = {1: spatial, 2: min(spatial, 6), 3: min(spatial, 4)}[nd]
    x, w, b = _draw(rng, nd, c_in, c_out, small, kernel, opts.get("groups", 1))
    gradcheck(CONV[nd], [xp.asarray(x), xp.asarray(w), xp.asarray(b)], opts)


def test_conv_gradcheck_without_bias(xp, rng):
    x, w, _ = _draw(rng, 2, 2, 3, 5, 3, 1, bias=False)
    out, cache = F.conv2d(xp.asarray(x), xp.asarray(w), None, padding=1)
    grads = F.conv2d_backward(xp.ones_like(out), cache)
    assert len(grads) == 3 and grads[2] is None
    gradcheck(F.conv2d, [xp.asarray(x), xp.asarray(w), None], {"stride": 2, "padding": 1})


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_matches_numpy(xp, dtype, rng, nd):
    name = "float64" if "64" in str(dtype) else "float32"
    x, w, b = _draw(rng, nd, 4, 6, {1: 11, 2: 7, 3: 5}[nd], 3, 2)
    opts = {"stride": 2, "padding": 1, "dilation": 1, "groups": 2}
    y = ref_conv(x, w, b, **opts)
    dy = rng.standard_normal(y.shape)
    compare_with_numpy(xp, CONV[nd], BACKWARD[nd], [x, w, b], opts, dy, name)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize(("nd", "c_in", "c_out", "spatial", "kernel", "opts"), CASES)
def test_conv_matches_torch(xp, rng, nd, c_in, c_out, spatial, kernel, opts):
    torch = pytest.importorskip("torch")
    tf = {
        1: torch.nn.functional.conv1d,
        2: torch.nn.functional.conv2d,
        3: torch.nn.functional.conv3d,
    }
    x, w, b = _draw(rng, nd, c_in, c_out, spatial, kernel, opts.get("groups", 1), n=3)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = tf[nd](tx, tw, tb, **opts)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    y, cache = CONV[nd](xp.asarray(x), xp.asarray(w), xp.asarray(b), **opts)
    grads = BACKWARD[nd](xp.asarray(dy), cache)
    tol = {"rtol": 1e-10, "atol": 1e-10}
    np.testing.assert_allclose(to_np(y), ty.detach().numpy(), **tol)
    for got, t in zip(grads, (tx, tw, tb), strict=True):
        np.testing.assert_allclose(to_np(got), t.grad.numpy(), **tol)


def test_conv1x1_is_linear_over_channels(xp, dtype, rng):
    x, w, b = _draw(rng, 2, 5, 3, (4, 6), 1, 1)
    X, W, B = (xp.asarray(a, dtype=dtype) for a in (x, w, b))
    y, cache = F.conv2d(X, W, B)
    # linear acts on the last axis: move channels there and back
    xl = xp.permute_dims(X, (0, 2, 3, 1))
    yl, lcache = F.linear(xl, xp.reshape(W, (3, 5)), B)
    tol = {"rtol": 1e-5, "atol": 1e-5} if "32" in str(dtype) else {"rtol": 1e-12, "atol": 1e-12}
    assert_close(y, xp.permute_dims(yl, (0, 3, 1, 2)), **tol)
    dy = rng.standard_normal(tuple(y.shape))
    dx, dw, db = F.conv2d_backward(xp.asarray(dy, dtype=dtype), cache)
    dyl = xp.permute_dims(xp.asarray(dy, dtype=dtype), (0, 2, 3, 1))
    dxl, dwl, dbl = F.linear_backward(dyl, lcache)
    assert_close(dx, xp.permute_dims(dxl, (0, 3, 1, 2)), **tol)
    assert_close(dw, xp.reshape(dwl, (3, 5, 1, 1)), **tol)
    assert_close(db, dbl, **tol)


@pytest.mark.parametrize(
    "opts", [{"padding": 1}, {"stride": 2, "dilation": 2, "padding": 2, "groups": 2}]
)
def test_conv_weight_gradient_is_sum_over_positions(xp, rng, opts):
    """Tied weights: dW is the sum, over output positions, of the gradient each position
    alone would give (a 1x1-output convolution of that position's window)."""
    x, w, b = _draw(rng, 2, 4, 4, 7, 3, opts.get("groups", 1))
    X, W, B = (xp.asarray(a) for a in (x, w, b))
    y, cache = F.conv2d(X, W, B, **opts)
    dy = rng.standard_normal(tuple(y.shape))
    _, dw, db = F.conv2d_backward(xp.asarray(dy), cache)
    s, d, p = opts.get("stride", 1), opts.get("dilation", 1), opts["padding"]
    xpad = np.pad(x, [(0, 0), (0, 0), (p, p), (p, p)])
    extent = d * 2 + 1
    dw_sum = np.zeros_like(w)
    db_sum = np.zeros_like(b)
    for i in range(y.shape[2]):
        for j in range(y.shape[3]):
            patch = xpad[:, :, i * s : i * s + extent, j * s : j * s + extent]
            yp, cp = F.conv2d(xp.asarray(patch), W, B, dilation=d, groups=opts.get("groups", 1))
            assert tuple(yp.shape[2:]) == (1, 1)
            _, dwp, dbp = F.conv2d_backward(xp.asarray(dy[:, :, i : i + 1, j : j + 1]), cp)
            dw_sum += to_np(dwp)
            db_sum += to_np(dbp)
    np.testing.assert_allclose(to_np(dw), dw_sum, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(to_np(db), db_sum, rtol=1e-10, atol=1e-10)


def test_conv_batch_chunks_give_the_same_result(xp, rng):
    x, w, b = _draw(rng, 2, 3, 4, 6, 3, 1, n=5)
    args = [xp.asarray(a) for a in (x, w, b)]
    # stride 2 (im2col(x) + col2im backward) and stride 1 (im2col(dy) backward)
    grads_out = {2: rng.standard_normal((5, 4, 3, 3)), 1: rng.standard_normal((5, 4, 6, 6))}

    def run(stride):
        y, cache = F.conv2d(*args, stride=stride, padding=1)
        return (y, *F.conv2d_backward(xp.asarray(grads_out[stride]), cache))

    whole = {s: run(s) for s in (1, 2)}
    try:
        F.set_conv_workspace_bytes(1)  # one batch item per chunk
        assert F.get_conv_workspace_bytes() == 1
        chunked = {s: run(s) for s in (1, 2)}
    finally:
        F.set_conv_workspace_bytes(None)
    for s in (1, 2):
        for a, r in zip(chunked[s], whole[s], strict=True):
            assert_close(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_unbatched_input_is_a_batch_of_one(xp, rng, nd):
    """(C_in, *S) as torch accepts it: the batch of one, without its batch axis."""
    conv, backward = CONV[nd], getattr(F, f"conv{nd}d_backward")
    x = xp.asarray(rng.standard_normal((2, *(5,) * nd)))
    w = xp.asarray(rng.standard_normal((3, 2, *(3,) * nd)))
    b = xp.asarray(rng.standard_normal(3))
    y, cache = conv(x, w, b, padding=1)
    y1, cache1 = conv(x[None, ...], w, b, padding=1)
    assert tuple(y.shape) == (3, *(5,) * nd)
    assert_close(y, y1[0, ...], rtol=0, atol=0)
    dy = xp.asarray(rng.standard_normal(tuple(y.shape)))
    grads, grads1 = backward(dy, cache), backward(dy[None, ...], cache1)
    assert tuple(grads[0].shape) == tuple(x.shape)
    assert_close(grads[0], grads1[0][0, ...], rtol=0, atol=0)
    for g, g1 in zip(grads[1:], grads1[1:], strict=True):
        assert_close(g, g1, rtol=0, atol=0)
    gradcheck(conv, [x, w, b], {"padding": 1})


def test_conv_empty_batch(xp, rng):
    x, w, b = _draw(rng, 2, 2, 3, 5, 3, 1, n=0)
    y, cache = F.conv2d(xp.asarray(x), xp.asarray(w), xp.asarray(b))
    assert tuple(y.shape) == (0, 3, 3, 3)
    dx, dw, db = F.conv2d_backward(y, cache)
    assert tuple(dx.shape) == (0, 2, 5, 5)
    assert not np.any(to_np(dw)) and not np.any(to_np(db))


def test_conv_nan_propagates(xp, rng):
    x = rng.standard_normal((1, 1, 5, 5))
    x[0, 0, 0, 0] = np.nan
    y, _ = F.conv2d(xp.asarray(x), xp.asarray(np.ones((1, 1, 3, 3))))
    y = to_np(y)
    assert np.isnan(y[0, 0, 0, 0]) and np.isfinite(y[0, 0, 1:, :]).all()


def ref_conv_grads(x, w, dy, stride=1, padding=0, dilation=1, groups=1):
    """``(dx, dW)`` summed over output positions as torch's own kernels sum them: ``dW`` pairs
    every output position with its window of the zero-padded input (padding zeros
    included), ``dx`` gets ``W * dy`` only at the real input elements a window reads."""
    nd = x.ndim - 2
    st, dl, k = _t(stride, nd), _t(dilation, nd), w.shape[2:]
    p = _t(padding, nd)
    xpad = np.pad(x, [(0, 0), (0, 0), *((q, q) for q in p)])
    dxpad = np.zeros_like(xpad)
    dw = np.zeros_like(w)
    cg, og = x.shape[1] // groups, w.shape[0] // groups
    with np.errstate(all="ignore"):
        for pos in np.ndindex(*dy.shape[2:]):
            win = tuple(
                slice(a * s, a * s + d * (kk - 1) + 1, d)
                for a, s, d, kk in zip(pos, st, dl, k, strict=True)
            )
            for g in range(groups):
                c, o = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
                g_pos = dy[(slice(None), o, *pos)]  # (N, og)
                dw[o] += np.tensordot(g_pos, xpad[(slice(None), c, *win)], axes=(0, 0))
                dxpad[(slice(None), c, *win)] += np.tensordot(g_pos, w[o], axes=(1, 0))
    interior = tuple(slice(q, q + n) for q, n in zip(p, x.shape[2:], strict=True))
    return dxpad[(slice(None), slice(None), *interior)], dw


def _same_nonfinite(got, want, what, tol=1e-10):
    """Equal NaN, +inf and -inf positions, the finite values close."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    for test in (np.isnan, np.isposinf, np.isneginf):
        bad = np.argwhere(test(got) != test(want))
        assert not bad.size, f"{what}: {test.__name__} differs at {bad[:4].tolist()}"
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=tol, atol=tol, err_msg=what)


# (nd, C_in, C_out, spatial, kernel, options): stride 1 with padding is where the terms of
# a "convolve dy with the flipped kernel" backward would differ from torch's
NONFINITE_CASES = [
    (1, 2, 2, 7, 3, {"padding": 1}),
    (1, 2, 4, 8, 3, {"padding": 2, "dilation": 2, "groups": 2}),
    (1, 2, 2, 9, 3, {"stride": 2}),
    (2, 2, 2, 5, 3, {"padding": 1}),
    (2, 2, 2, 6, 3, {"padding": "same", "dilation": 2}),
    (2, 4, 4, 6, (2, 3), {"stride": 2, "padding": 1, "groups": 2}),
    (2, 2, 3, 5, 3, {}),
    (3, 2, 2, 4, 3, {"padding": 1}),
    (3, 2, 2, 5, 2, {"stride": 2, "padding": 1}),
]
# where the non-finite value goes: (array, index as a function of its shape, value)
PLACEMENTS = [
    ("x", lambda s: (0, 0, *(0 for _ in s[2:])), np.inf),  # a corner: next to the padding
    ("x", lambda s: (1, s[1] - 1, *(n - 1 for n in s[2:])), -np.inf),
    ("x", lambda s: (0, 1, *(n // 2 for n in s[2:])), np.nan),
    ("weight", lambda s: (0, 0, *(0 for _ in s[2:])), np.inf),
    ("weight", lambda s: (s[0] - 1, 0, *(n - 1 for n in s[2:])), np.nan),
    ("dy", lambda s: (0, 0, *(0 for _ in s[2:])), np.inf),
    ("dy", lambda s: (1, s[1] - 1, *(n // 2 for n in s[2:])), np.nan),
]


def _nonfinite_inputs(rng, nd, c_in, c_out, spatial, kernel, opts, where, index, value):
    x, w, _ = _draw(rng, nd, c_in, c_out, spatial, kernel, opts.get("groups", 1), bias=False)
    out_shape = ref_conv(x, w, **opts).shape
    dy = rng.standard_normal(out_shape)
    dy[rng.random(out_shape) < 0.3] = 0.0  # zeros of dy next to the infinities of x: 0 * inf
    a = {"x": x, "weight": w, "dy": dy}[where]
    a[index(a.shape)] = value
    return x, w, dy


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
@pytest.mark.parametrize(("nd", "c_in", "c_out", "spatial", "kernel", "opts"), NONFINITE_CASES)
def test_conv_nonfinite_values_land_where_torch_puts_them(
    rng, nd, c_in, c_out, spatial, kernel, opts
):
    """inf and NaN in x, weight or dy give NaN, +inf and -inf at exactly torch's positions in
    y, dx and dW. torch's own kernels (float64; float32 with oneDNN off) are the reference:
    oneDNN, torch's default for float32 on a CPU, skips the padding in some kernels and not
    in others, a pattern no formulation reproduces."""
    torch = pytest.importorskip("torch")
    tf = getattr(torch.nn.functional, f"conv{nd}d")
    for where, index, value in PLACEMENTS:
        x, w, dy = _nonfinite_inputs(
            rng, nd, c_in, c_out, spatial, kernel, opts, where, index, value
        )
        for dtype, tdtype in ((np.float64, torch.float64), (np.float32, torch.float32)):
            tx, tw = (torch.tensor(a, dtype=tdtype, requires_grad=True) for a in (x, w))
            with torch.backends.mkldnn.flags(enabled=False, deterministic=None, allow_tf32=None):
                ty = tf(tx, tw, **opts)
                ty.backward(torch.tensor(dy, dtype=tdtype))
            y, cache = CONV[nd](x.astype(dtype), w.astype(dtype), **opts)
            dx, dw, _ = BACKWARD[nd](dy.astype(dtype), cache)
            tol = 1e-10 if dtype == np.float64 else 1e-4
            what = f"{value} in {where}, {dtype.__name__}"
            _same_nonfinite(y, ty.detach().numpy(), f"y, {what}", tol)
            _same_nonfinite(dx, tx.grad.numpy(), f"dx, {what}", tol)
            _same_nonfinite(dw, tw.grad.numpy(), f"dW, {what}", tol)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("case", [NONFINITE_CASES[i] for i in (0, 3, 5, 7)])
def test_conv_nonfinite_gradients_match_the_loop_reference(xp, rng, case):
    """The same positions on every backend, against the sum over output positions."""
    nd, c_in, c_out, spatial, kernel, opts = case
    for where, index, value in PLACEMENTS[::2]:
        x, w, dy = _nonfinite_inputs(
            rng, nd, c_in, c_out, spatial, kernel, opts, where, index, value
        )
        _, cache = CONV[nd](xp.asarray(x), xp.asarray(w), **opts)
        dx, dw, _ = BACKWARD[nd](xp.asarray(dy), cache)
        want_dx, want_dw = ref_conv_grads(x, w, dy, **opts)
        _same_nonfinite(to_np(dx), want_dx, f"dx, {value} in {where}")
        _same_nonfinite(to_np(dw), want_dw, f"dW, {value} in {where}")


@pytest.mark.parametrize(
    ("x_shape", "w_shape", "opts", "match"),
    [
        ((1, 2, 4, 4), (3, 2, 5, 5), {}, r"conv2d: argument 'weight' expected a kernel extent"),
        (
            (1, 2, 4, 4),
            (3, 2, 3, 3),
            {"dilation": 2},
            r"conv2d: argument 'weight' expected a kernel",
        ),
        (
            (1, 3, 5, 5),
            (4, 1, 3, 3),
            {"groups": 2},
            r"conv2d: argument 'groups' expected a divisor",
        ),
        (
            (1, 4, 5, 5),
            (4, 3, 3, 3),
            {"groups": 2},
            r"conv2d: argument 'weight' expected shape\[1\]",
        ),
        ((1, 2, 5, 5), (3, 2, 3), {}, r"conv2d: argument 'weight' expected a 4-d array"),
        (
            (5, 5),
            (3, 2, 3, 3),
            {},
            r"conv2d: argument 'x' expected a 4-d array .* or an unbatched 3-d",
        ),
        (
            (1, 2, 5, 5),
            (3, 2, 3, 3),
            {"padding": "same", "stride": 2},
            r"'padding' expected 'same' only with stride 1",
        ),
        (
            (1, 2, 5, 5),
            (3, 2, 3, 3),
            {"padding": "full"},
            r"'padding' expected an int, a tuple, 'valid' or 'same', got 'full'",
        ),
        (
            (1, 2, 5, 5),
            (3, 2, 3, 3),
            {"stride": 0},
            r"conv2d: argument 'stride' expected positive sizes, got 0",
        ),
        (
            (1, 2, 5, 5),
            (3, 2, 3, 3),
            {"stride": (1, -1)},
            r"argument 'stride' expected positive sizes",
        ),
        (
            (1, 2, 5, 5),
            (3, 2, 3, 3),
            {"dilation": 0},
            r"argument 'dilation' expected positive sizes",
        ),
        (
            (1, 2, 5, 5),
            (3, 2, 3, 3),
            {"padding": -1},
            r"argument 'padding' expected >= 0 sizes, got -1",
        ),
        (
            (1, 2, 5, 5),
            (3, 2, 3, 3),
            {"padding": (1, 1, 1)},
            r"'padding' expected an int or a tuple of 2 ints",
        ),
        (
            (1, 2, 5, 5),
            (3, 2, 3, 3),
            {"groups": 0},
            r"conv2d: argument 'groups' expected a positive int, got 0",
        ),
        ((1, 2, 5, 5), (0, 2, 3, 3), {}, r"conv2d: argument 'weight' expected positive C_out"),
        ((1, 2, 0, 5), (3, 2, 1, 1), {}, r"conv2d: argument 'x' expected spatial sizes >= 1"),
        (
            (1, 2, 5),
            (3, 2, 3),
            {"padding": 1, "stride": 2.0},
            r"conv1d: argument 'stride' expected an int or a tuple of 1 ints, got 2.0",
        ),
    ],
)
def test_conv_rejects_bad_input(xp, x_shape, w_shape, opts, match):
    op = CONV[len(x_shape) - 2] if len(x_shape) == len(w_shape) else F.conv2d
    err = TypeError if "got 2.0" in match else ValueError
    with pytest.raises(err, match=match):
        op(xp.asarray(np.ones(x_shape)), xp.asarray(np.ones(w_shape)), **opts)


def _ones(xp, nd, c_in=1, c_out=1):
    return (
        xp.asarray(np.ones((1, c_in, *(4,) * nd))),
        xp.asarray(np.ones((c_out, c_in, *(3,) * nd))),
    )


@pytest.mark.parametrize(("nd", "padding"), [(1, 10**18), (2, 10**9), (2, 10**15), (3, 10**7)])
def test_conv_padding_no_array_can_hold_is_refused(xp, nd, padding):
    """An output of more than 2**63 - 1 bytes cannot exist on any machine: the op's own
    ValueError, before anything is allocated."""
    x, w = _ones(xp, nd)
    with pytest.raises(
        ValueError,
        match=rf"^conv{nd}d: argument 'padding' expected a padding for which the output fits "
        rf"in an array \(at most 2\*\*63 - 1 bytes\), got \({padding}(, {padding})*,?\): the "
        rf"output would have shape \(1, 1, {2 * padding + 2}(, {2 * padding + 2})*\), \d+ bytes$",
    ):
        CONV[nd](x, w, padding=padding)


@pytest.mark.parametrize(("nd", "padding"), [(1, 10**15), (2, 10**7), (3, 10**5)])
def test_conv_padding_no_memory_can_hold_is_a_memory_error(xp, nd, padding):
    """Addressable but far past any machine's memory (10**15 to 10**17 bytes, more than a
    process's address space): the allocation fails, and the MemoryError says which argument
    made the buffer that big and how many bytes it needed."""
    x, w = _ones(xp, nd)
    size = 2 * padding + 2
    nbytes = 8 * size**nd
    with pytest.raises(
        MemoryError,
        match=rf"^conv{nd}d: argument 'padding' \({padding}(, {padding})*,?\) makes the output "
        rf"of shape \(1, 1, {size}(, {size})*\) need {nbytes} bytes, which could not be "
        r"allocated$",
    ):
        CONV[nd](x, w, padding=padding)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize(
    "opts",
    [
        {"padding": 10**12, "stride": 10**12},
        {"padding": 10**12, "dilation": 10**12},
        {"padding": 2, "stride": 10**12},
    ],
    ids=["padding-and-stride", "padding-and-dilation", "stride"],
)
def test_conv_huge_padding_with_a_small_output_computes_as_torch(xp, rng, nd, opts):
    """Padding of 10**12 with stride or dilation of 10**12 has an output of a few positions,
    which torch computes: so do we, without building the padded input."""
    torch = pytest.importorskip("torch")
    x, w, b = _draw(rng, nd, 2, 3, 4, 3, 1)
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    ty = getattr(torch.nn.functional, f"conv{nd}d")(tx, tw, tb, **opts)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    y, cache = CONV[nd](xp.asarray(x), xp.asarray(w), xp.asarray(b), **opts)
    grads = BACKWARD[nd](xp.asarray(dy), cache)
    np.testing.assert_allclose(to_np(y), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    for got, t in zip(grads, (tx, tw, tb), strict=True):
        np.testing.assert_allclose(to_np(got), t.grad.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_conv_dilation_past_the_padded_input_is_refused(xp, nd):
    x, w = _ones(xp, nd)
    with pytest.raises(
        ValueError,
        match=rf"^conv{nd}d: argument 'weight' expected a kernel extent .* no larger than the "
        rf"padded input \(6(, 6)*,?\), got kernel \(3(, 3)*,?\) with dilation \(10+(, 10+)*,?\)$",
    ):
        CONV[nd](x, w, padding=1, dilation=10**12)


def test_conv_groups_may_be_a_numpy_int(xp, rng):
    x = xp.asarray(rng.standard_normal((1, 4, 5, 5)))
    w = xp.asarray(rng.standard_normal((2, 2, 3, 3)))
    assert_close(F.conv2d(x, w, groups=np.int64(2))[0], F.conv2d(x, w, groups=2)[0])


def test_conv_rejects_bad_bias_and_dtypes(xp):
    x, w = xp.asarray(np.ones((1, 2, 5, 5))), xp.asarray(np.ones((3, 2, 3, 3)))
    with pytest.raises(
        ValueError, match=r"conv2d: argument 'bias' expected shape \(3,\), got \(2,\)"
    ):
        F.conv2d(x, w, xp.asarray(np.ones(2)))
    with pytest.raises(
        TypeError, match=r"conv2d: argument 'weight' expected dtype .*got .*float32"
    ):
        F.conv2d(x, xp.asarray(np.ones((3, 2, 3, 3)), dtype=xp.float32))
    with pytest.raises(TypeError, match=r"conv2d: argument 'x' expected a real floating"):
        F.conv2d(xp.asarray(np.ones((1, 2, 5, 5), dtype=np.int64)), w)


def test_conv_backward_rejects_wrong_grad_shape(xp):
    _, cache = F.conv2d(xp.asarray(np.ones((1, 2, 5, 5))), xp.asarray(np.ones((3, 2, 3, 3))))
    with pytest.raises(
        ValueError, match=r"conv2d_backward: argument 'dy' expected shape \(1, 3, 3, 3\)"
    ):
        F.conv2d_backward(xp.asarray(np.ones((1, 3, 3, 4))), cache)


def test_conv_workspace_knob():
    with pytest.raises(ValueError, match=r"set_conv_workspace_bytes: argument 'nbytes'"):
        conv_module.set_conv_workspace_bytes(0)
    cpu = F.get_conv_workspace_bytes()
    assert cpu == F.get_conv_workspace_bytes("cpu") == 8 * 2**20
    assert F.get_conv_workspace_bytes("cuda:0") > cpu


def test_conv_and_pool_accept_non_contiguous_inputs(xp, rng):
    x, w, b = _draw(rng, 2, 3, 4, (6, 7), 3, 1)
    xc = xp.asarray(x)
    # the same values, as a transposed view: not C-contiguous on any strided backend
    xn = xp.permute_dims(xp.asarray(np.ascontiguousarray(x.transpose(0, 1, 3, 2))), (0, 1, 3, 2))
    wn = xp.permute_dims(xp.asarray(np.ascontiguousarray(w.transpose(1, 0, 2, 3))), (1, 0, 2, 3))
    dy = rng.standard_normal((2, 4, 3, 4))
    ref = F.conv2d(xc, xp.asarray(w), xp.asarray(b), stride=2, padding=1)
    got = F.conv2d(xn, wn, xp.asarray(b), stride=2, padding=1)
    assert_close(got[0], ref[0], rtol=1e-12, atol=1e-12)
    for g, r in zip(
        F.conv2d_backward(xp.asarray(dy), got[1]),
        F.conv2d_backward(xp.asarray(dy), ref[1]),
        strict=True,
    ):
        assert_close(g, r, rtol=1e-12, atol=1e-12)
    for op in (F.max_pool2d, F.avg_pool2d):
        assert_close(op(xn, 3, 2, 1)[0], op(xc, 3, 2, 1)[0])
