"""max_pool1d/2d/3d, avg_pool1d/2d/3d, global_avg_pool, flatten."""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
import pytest
from helpers import compare_with_numpy, to_np

from backprop_xp import functional as F
from backprop_xp.testing import assert_close, gradcheck

MAX = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
MAX_BW = {1: F.max_pool1d_backward, 2: F.max_pool2d_backward, 3: F.max_pool3d_backward}
AVG = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}
AVG_BW = {1: F.avg_pool1d_backward, 2: F.avg_pool2d_backward, 3: F.avg_pool3d_backward}


def _t(v, nd):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * nd


def _out_size(n, k, s, p, d, ceil_mode):
    span = n + 2 * p - d * (k - 1) - 1
    m = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (m - 1) * s >= n + p:
        m -= 1
    return m


def _windows(x_shape, kernel, stride, padding, dilation, ceil_mode):
    """For every output position, the list of per-axis input indices of its window (indices
    outside [0, n) are padding or ceil-mode overhang)."""
    nd = len(x_shape) - 2
    k, s = _t(kernel, nd), _t(kernel if stride is None else stride, nd)
    p, d = _t(padding, nd), _t(dilation, nd)
    out = [_out_size(x_shape[2 + i], k[i], s[i], p[i], d[i], ceil_mode) for i in range(nd)]
    for pos in np.ndindex(*out):
        axes = [[pos[i] * s[i] - p[i] + j * d[i] for j in range(k[i])] for i in range(nd)]
        yield pos, axes, out


def ref_max_pool(x, dy, kernel, stride=None, padding=0, dilation=1, ceil_mode=False):
    """Loop reference of torch's CPU kernel: each window scans its input elements (never
    the padding) in row-major order, starting from the first with maxval = -inf, and moves
    the argmax on ``val > maxval or isnan(val)``: the first maximum, or the last NaN; all
    -inf, the first element. Returns the output, the gradient (accumulated in Python
    floats: an inf and a -inf meeting give NaN, as in torch, without a NumPy warning) and
    torch's flat indices (-1 for a dilated window wholly in the padding, which passes no
    gradient; torch 2.13 aborts on such a window)."""
    wins = list(_windows(x.shape, kernel, stride, padding, dilation, ceil_mode))
    out = wins[0][2]
    y = np.empty((*x.shape[:2], *out))
    index = np.empty((*x.shape[:2], *out), dtype=np.int64)
    dx = np.zeros(x.shape).tolist() if dy is not None else None
    for pos, axes, _ in wins:
        inside = [[i for i in a if 0 <= i < x.shape[2 + k]] for k, a in enumerate(axes)]
        cells = list(itertools.product(*inside))
        for n, c in np.ndindex(*x.shape[:2]):
            best, arg = -np.inf, cells[0] if cells else None
            for cell in cells:
                v = x[(n, c, *cell)]
                if v > best or np.isnan(v):
                    best, arg = v, cell
            y[(n, c, *pos)] = best
            index[(n, c, *pos)] = -1 if arg is None else np.ravel_multi_index(arg, x.shape[2:])
            if dx is not None and arg is not None:
                row = dx[n][c]
                for i in arg[:-1]:
                    row = row[i]
                row[arg[-1]] = row[arg[-1]] + float(dy[(n, c, *pos)])
    return y, (None if dx is None else np.array(dx)), index


def ref_avg_pool(x, kernel, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    nd = x.ndim - 2
    p = _t(padding, nd)
    wins = list(_windows(x.shape, kernel, stride, padding, 1, ceil_mode))
    y = np.empty((*x.shape[:2], *wins[0][2]))
    for pos, axes, _ in wins:
        inside = [[j for j in a if 0 <= j < x.shape[2 + i]] for i, a in enumerate(axes)]
        if count_include_pad:  # padding counts, the ceil-mode overhang past it does not
            count = math.prod(
                len([j for j in a if j < x.shape[2 + i] + p[i]]) for i, a in enumerate(axes)
            )
        else:
            count = math.prod(len(a) for a in inside)
        block = x[(slice(None), slice(None), *np.ix_(*inside))]
        y[(slice(None), slice(None), *pos)] = block.reshape(*x.shape[:2], -1).sum(-1) / count
    return y


def distinct(rng, shape):
    """Distinct values, spaced far beyond gradcheck's step, so every argmax is stable."""
    return (rng.permutation(math.prod(shape)).reshape(shape) - 50.0) * 0.01


@pytest.fixture
def torch1():
    """torch for many tiny calls: one intra-op thread (a thread pool's wake-up costs far
    more than such an op, and much more on a busy machine), restored afterwards."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


# (nd, spatial, kernel_size, options)
MAX_CASES = [
    (1, 9, 2, {}),
    (1, 10, 3, {"stride": 2, "padding": 1}),
    (1, 9, 3, {"stride": 2, "dilation": 2, "padding": 1, "ceil_mode": True}),
    (2, 6, 2, {}),
    (2, 7, 3, {"stride": 2, "padding": 1}),  # overlapping
    (2, 7, 3, {"stride": 2, "ceil_mode": True}),
    (2, 7, (3, 2), {"stride": (1, 2), "padding": (1, 0), "dilation": (2, 1)}),
    (3, 5, 2, {"ceil_mode": True}),
    (3, 5, (3, 2, 2), {"stride": (2, 1, 2), "padding": (1, 0, 1)}),
]

AVG_CASES = [
    (1, 9, 2, {}),
    (1, 10, 3, {"stride": 2, "padding": 1}),
    (1, 10, 3, {"stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False}),
    (2, 6, 2, {}),
    (2, 7, 3, {"stride": 2, "padding": 1}),
    (2, 7, 3, {"stride": 2, "padding": 1, "count_include_pad": False}),
    (2, 6, 3, {"stride": 2, "padding": 1, "ceil_mode": True}),
    (
        2,
        6,
        (3, 2),
        {"stride": (2, 1), "padding": (1, 1), "ceil_mode": True, "count_include_pad": False},
    ),
    (3, 5, 2, {"ceil_mode": True}),
    (3, 5, 3, {"stride": 2, "padding": 1, "count_include_pad": False}),
]


@pytest.mark.parametrize(("nd", "spatial", "k", "opts"), MAX_CASES)
def test_max_pool_matches_loop_reference(xp, dtype, rng, nd, spatial, k, opts):
    x = distinct(rng, (2, 3, *(spatial,) * nd))
    y_ref, _, _ = ref_max_pool(x, None, k, **opts)
    y, cache = MAX[nd](xp.asarray(x, dtype=dtype), k, **opts)
    assert y.dtype == dtype
    np.testing.assert_allclose(to_np(y), y_ref, rtol=1e-6)
    dy = rng.standard_normal(y_ref.shape)
    _, dx_ref, _ = ref_max_pool(x, dy, k, **opts)
    (dx,) = MAX_BW[nd](xp.asarray(dy, dtype=dtype), cache)
    np.testing.assert_allclose(to_np(dx), dx_ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("nd", "spatial", "k", "opts"), AVG_CASES)
def test_avg_pool_matches_loop_reference(xp, dtype, rng, nd, spatial, k, opts):
    x = rng.standard_normal((2, 3, *(spatial,) * nd))
    y, _ = AVG[nd](xp.asarray(x, dtype=dtype), k, **opts)
    assert y.dtype == dtype
    tol = {"rtol": 1e-5, "atol": 1e-6} if "32" in str(dtype) else {"rtol": 1e-12, "atol": 1e-13}
    np.testing.assert_allclose(to_np(y), ref_avg_pool(x, k, **opts), **tol)


@pytest.mark.parametrize(("nd", "spatial", "k", "opts"), MAX_CASES)
def test_max_pool_gradcheck(xp, rng, nd, spatial, k, opts):
    x = distinct(rng, (2, 2, *(min(spatial, 6 if nd < 3 else 4),) * nd))
    gradcheck(MAX[nd], [xp.asarray(x)], {"kernel_size": k, **opts})


@pytest.mark.parametrize(("nd", "spatial", "k", "opts"), AVG_CASES)
def test_avg_pool_gradcheck(xp, rng, nd, spatial, k, opts):
    x = rng.standard_normal((2, 2, *(min(spatial, 6 if nd < 3 else 4),) * nd))
    gradcheck(AVG[nd], [xp.asarray(x)], {"kernel_size": k, **opts})


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_pooling_matches_numpy(xp, dtype, rng, nd):
    name = "float64" if "64" in str(dtype) else "float32"
    x = distinct(rng, (2, 3, *(7,) * nd))
    opts = {"stride": 2, "padding": 1}
    y, _, _ = ref_max_pool(x, None, 3, **opts)
    dy = rng.standard_normal(y.shape)
    compare_with_numpy(xp, MAX[nd], MAX_BW[nd], [x], {"kernel_size": 3, **opts}, dy, name)
    opts = {"stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False}
    y = ref_avg_pool(x, 3, **opts)
    dy = rng.standard_normal(y.shape)
    compare_with_numpy(xp, AVG[nd], AVG_BW[nd], [x], {"kernel_size": 3, **opts}, dy, name)


def test_max_pool_ties_go_to_first_position_in_window_order(xp, dtype, rng):
    # few distinct values: most windows hold ties; overlapping windows and padding too
    x = rng.integers(0, 3, size=(2, 3, 7, 7)).astype(np.float64)
    x[0, 0] = 1.0  # a plane of all-equal values
    opts = {"stride": 2, "padding": 1}
    y, cache = F.max_pool2d(xp.asarray(x, dtype=dtype), 3, **opts)
    dy = rng.standard_normal(tuple(y.shape))
    (dx,) = F.max_pool2d_backward(xp.asarray(dy, dtype=dtype), cache)
    y_ref, dx_ref, _ = ref_max_pool(x, dy, 3, **opts)
    np.testing.assert_array_equal(to_np(y), y_ref)
    np.testing.assert_allclose(to_np(dx), dx_ref, rtol=1e-6, atol=1e-6)
    # all-equal window: the first (top-left) element takes the whole gradient
    assert to_np(dx)[0, 0, 0, 0] == pytest.approx(float(np.float32(dy[0, 0, 0, 0])), rel=1e-6)
    # identical on every backend: the argmax indices are equal, not merely the values
    _, np_cache = F.max_pool2d(x, 3, **opts)
    for got, ref in zip(cache.argmax, np_cache.argmax, strict=True):
        np.testing.assert_array_equal(to_np(got), ref)


@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize(
    "opts",
    [
        {"kernel_size": 2},
        {"kernel_size": 3, "stride": 2, "padding": 1},
        {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True},
        {"kernel_size": 2, "stride": 2, "padding": 1, "ceil_mode": True},
    ],
)
def test_pooling_matches_torch(xp, rng, nd, opts):
    torch = pytest.importorskip("torch")
    tnf = torch.nn.functional
    x = distinct(rng, (2, 3, *(7,) * nd))
    for cip in (True, False):
        tx = torch.tensor(x, requires_grad=True)
        ty = getattr(tnf, f"avg_pool{nd}d")(tx, **opts, count_include_pad=cip)
        dy = rng.standard_normal(tuple(ty.shape))
        ty.backward(torch.tensor(dy))
        y, cache = AVG[nd](xp.asarray(x), **opts, count_include_pad=cip)
        (dx,) = AVG_BW[nd](xp.asarray(dy), cache)
        np.testing.assert_allclose(to_np(y), ty.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(to_np(dx), tx.grad.numpy(), rtol=1e-12, atol=1e-14)
    for dilation in (1, 2):
        tx = torch.tensor(x, requires_grad=True)
        ty = getattr(tnf, f"max_pool{nd}d")(tx, **opts, dilation=dilation)
        dy = rng.standard_normal(tuple(ty.shape))
        ty.backward(torch.tensor(dy))
        y, cache = MAX[nd](xp.asarray(x), **opts, dilation=dilation)
        (dx,) = MAX_BW[nd](xp.asarray(dy), cache)
        np.testing.assert_array_equal(to_np(y), ty.detach().numpy())
        np.testing.assert_allclose(to_np(dx), tx.grad.numpy(), rtol=1e-12, atol=1e-14)


def _torch_or_none(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except RuntimeError:  # torch's "Output size is too small" and its other refusals
        return None


def test_pooling_keeps_the_windows_torch_keeps(torch1, rng):
    """torch's output size (pooling_output_shape in ATen's Pool.h: ceil mode rounds up but
    its last window starts inside the input or its left padding; at least one window) for
    every 1-d geometry of small sizes, and a few 2-d/3-d ones: the same windows or the same
    refusal, the same values and gradients. In ceil mode a window may overhang the padded
    input, a kernel longer than the input: torch keeps it (avg_pool1d over 3 elements with
    kernel 4 gives one window), and its divisor counts the padding but not the overhang."""
    tnf = torch1.nn.functional
    geometries = [
        (1, (n,), k, s, p, d, ceil)
        for n, k, s, d, ceil in itertools.product(
            range(1, 5), range(1, 6), range(1, 4), (1, 2), (False, True)
        )
        for p in range(k // 2 + 1)
    ]
    geometries += [
        (2, (3, 5), (4, 2), (4, 2), (2, 1), 1, True),
        (2, (2, 3), (3, 5), (2, 5), (1, 2), (1, 1), True),
        (3, (2, 3, 1), (2, 3, 2), 3, (1, 1, 1), (2, 1, 1), True),
    ]
    for nd, spatial, k, s, p, d, ceil in geometries:
        x = rng.standard_normal((2, 2, *spatial))
        tx = torch1.tensor(x, requires_grad=True)
        for kind, extra in (("max", {"dilation": d}), ("avg", {"count_include_pad": True})):
            if kind == "avg" and d not in (1, (1,) * nd):
                continue
            for options in (extra, {"count_include_pad": False}) if kind == "avg" else (extra,):
                opts = {"stride": s, "padding": p, "ceil_mode": ceil, **options}
                ours = getattr(F, f"{kind}_pool{nd}d")
                ty = _torch_or_none(getattr(tnf, f"{kind}_pool{nd}d"), tx.detach(), k, **opts)
                if ty is None:
                    with pytest.raises(ValueError, match=r"argument 'kernel_size' expected a"):
                        ours(x, k, **opts)
                    continue
                y, cache = ours(x, k, **opts)
                assert y.shape == tuple(ty.shape), (spatial, k, opts)
                if kind == "max" and np.isneginf(y).any():
                    continue  # a window wholly in the padding: torch 2.13 aborts on it
                ty = getattr(tnf, f"{kind}_pool{nd}d")(tx, k, **opts)
                dy = rng.standard_normal(y.shape)
                tx.grad = None
                ty.backward(torch1.tensor(dy))
                (dx,) = getattr(F, f"{kind}_pool{nd}d_backward")(dy, cache)
                np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12, atol=1e-14)
                np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12, atol=1e-14)


def test_avg_pool_divisor_is_built_without_a_loop_over_windows():
    """The per-window divisor of a 4-million-sample signal (padding or ceil mode make it
    vary) is a few array operations: well under 0.5 s of CPU (a Python loop over the
    windows, and a list uploaded to the device, took seconds; torch takes ~0.03 s)."""
    x = np.ones((1, 1, 4_000_000))
    for opts in ({"padding": 1, "count_include_pad": False}, {"ceil_mode": True}):
        start = time.process_time()
        y, cache = F.avg_pool1d(x, 3, 2, **opts)  # the divisor is built here
        assert time.process_time() - start < 0.5
        (dx,) = F.avg_pool1d_backward(np.ones(y.shape), cache)
        assert not isinstance(cache.inv_count, float)  # the windows' divisors differ
        # each window averages its input elements (only): a mean of ones, a total of 1
        assert (y == 1.0).all()
        np.testing.assert_allclose(dx.sum(), y.size, rtol=1e-9)


def test_max_pool_ties_match_torch(xp, rng):
    torch = pytest.importorskip("torch")
    x = rng.integers(0, 2, size=(2, 2, 6, 6)).astype(np.float64)
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.max_pool2d(tx, 3, 1, 1)
    dy = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(dy))
    _, cache = F.max_pool2d(xp.asarray(x), 3, 1, 1)
    (dx,) = F.max_pool2d_backward(xp.asarray(dy), cache)
    np.testing.assert_allclose(to_np(dx), tx.grad.numpy(), rtol=1e-12, atol=1e-14)


def every_window_shape():
    """``(kernel, stride, padding, dilation, ceil_mode)``: every kernel size 1-3 with each
    padding torch allows, strides and dilations 1 and 2, both ceil modes."""
    for k in (1, 2, 3):
        for p in range(k // 2 + 1):
            for s, d, ceil in itertools.product((1, 2), (1, 2), (False, True)):
                yield k, s, p, d, ceil


def nonfinite(rng, shape):
    """Inputs whose windows hold it all: -inf masks (whole windows of them, next to the
    padding), several NaNs per window, +inf, and few finite values (ties)."""
    values = np.array([-np.inf, np.nan, np.inf, 0.0, 1.0, 2.0])
    return rng.choice(values, size=shape, p=[0.4, 0.15, 0.05, 0.1, 0.15, 0.15])


def nonfinite_grad(rng, shape):
    """An upstream gradient with some +inf, -inf and NaN entries among normal ones."""
    dy = rng.standard_normal(shape)
    spots = rng.choice(dy.size, size=min(dy.size, 3), replace=False)
    dy.reshape(-1)[spots] = [np.inf, -np.inf, np.nan][: len(spots)]
    return dy


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_pool_routes_as_torch_for_every_window_shape(torch1, rng, nd):
    """torch's rule (the loop reference, checked against torch's indices here) on inputs of
    NaN, -inf masks, +inf and ties, and upstream gradients with inf and NaN, for every
    kernel, padding, dilation, stride and ceil_mode: the output (NaN where torch has NaN),
    the argmax and the gradient, float32 and float64."""
    torch = torch1
    tmax = getattr(torch.nn.functional, f"max_pool{nd}d")
    spatial, lead = {1: ((7,), (2, 3)), 2: ((6, 5), (2, 2)), 3: ((5, 5, 6), (1, 2))}[nd]
    for k, s, p, d, ceil in every_window_shape():
        opts = {"kernel_size": k, "stride": s, "padding": p, "dilation": d, "ceil_mode": ceil}
        x = nonfinite(rng, (*lead, *spatial))
        y_ref, _, _ = ref_max_pool(x, None, k, s, p, d, ceil)
        dy = nonfinite_grad(rng, y_ref.shape)
        _, dx_ref, index = ref_max_pool(x, dy, k, s, p, d, ceil)
        assert (index >= 0).all()  # no window wholly in the padding (torch aborts on those)
        for dt, tol in ((np.float32, 1e-5), (np.float64, 1e-12)):
            tx = torch.tensor(x.astype(dt), requires_grad=True)
            ty, ti = tmax(tx, **opts, return_indices=True)
            ty.backward(torch.tensor(dy.astype(dt)))
            np.testing.assert_array_equal(ti.numpy(), index, err_msg=f"{opts}")
            np.testing.assert_array_equal(ty.detach().numpy(), y_ref.astype(dt))
            np.testing.assert_allclose(tx.grad.numpy(), dx_ref, tol, tol, err_msg=f"{opts}")
            y, cache = MAX[nd](x.astype(dt), **opts)
            (dx,) = MAX_BW[nd](dy.astype(dt), cache)
            assert y.dtype == dx.dtype == dt
            np.testing.assert_array_equal(y, y_ref.astype(dt), err_msg=f"{opts}")
            np.testing.assert_allclose(dx, dx_ref, tol, tol, err_msg=f"{opts}")


def test_max_pool_long_kernels_route_as_torch(torch1, rng):
    """Kernels of more than 8 taps along an axis (NaNs counted as they come rather than
    kept per tap), with -inf masks, NaNs, ties and non-finite gradients, against torch."""
    tnf = torch1.nn.functional
    for nd, spatial, k, s, p, d, ceil in [
        (1, (40,), 9, 1, 4, 1, False),
        (1, (40,), 12, 5, 6, 2, True),
        (1, (33,), 10, 3, 3, 3, True),
        (2, (13, 20), (3, 11), (2, 4), (1, 5), 1, True),
    ]:
        x = nonfinite(rng, (2, 3, *spatial))
        opts = {"stride": s, "padding": p, "dilation": d, "ceil_mode": ceil}
        tx = torch1.tensor(x, requires_grad=True)
        ty = getattr(tnf, f"max_pool{nd}d")(tx, k, **opts)
        dy = nonfinite_grad(rng, tuple(ty.shape))
        ty.backward(torch1.tensor(dy))
        y, cache = MAX[nd](x, k, **opts)
        (dx,) = MAX_BW[nd](dy, cache)
        np.testing.assert_array_equal(y, ty.detach().numpy(), err_msg=f"{k} {opts}")
        np.testing.assert_allclose(dx, tx.grad.numpy(), 1e-12, 1e-12, err_msg=f"{k} {opts}")


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_max_pool_with_nonfinite_values_matches_numpy_on_every_backend(xp, dtype, rng, nd):
    name = "float64" if "64" in str(dtype) else "float32"
    x = nonfinite(rng, (2, 2, *(6,) * nd))
    for k, opts in (
        (3, {"stride": 2, "padding": 1}),
        (3, {"stride": 1, "padding": 1, "dilation": 2, "ceil_mode": True}),
        (2, {"stride": 2, "padding": 1, "ceil_mode": True}),
    ):
        y, _, _ = ref_max_pool(x, None, k, **opts)
        dy = nonfinite_grad(rng, y.shape)
        compare_with_numpy(xp, MAX[nd], MAX_BW[nd], [x], {"kernel_size": k, **opts}, dy, name)


def test_max_pool_all_minus_inf_window_routes_to_its_first_input_element(xp, dtype):
    """A mask of -inf: each window's gradient goes to its first input element, as in torch,
    never into the padding (where it would be lost)."""
    x = np.full((1, 1, 4, 4), -np.inf)
    y, cache = F.max_pool2d(xp.asarray(x, dtype=dtype), 3, 2, 1)
    assert (to_np(y) == -np.inf).all()
    (dx,) = F.max_pool2d_backward(xp.asarray(np.arange(1.0, 5.0).reshape(1, 1, 2, 2)), cache)
    # windows start at rows/columns -1 and 1: their first input rows/columns are 0 and 1
    expected = np.zeros((4, 4))
    expected[:2, :2] = [[1.0, 2.0], [3.0, 4.0]]
    np.testing.assert_array_equal(to_np(dx)[0, 0], expected)


def test_max_pool_nan_gradient_goes_to_the_last_nan_of_the_window(xp, dtype):
    x = np.array([[[np.nan, 1.0, np.nan, 2.0, np.nan, 0.0]]])
    y, cache = F.max_pool1d(xp.asarray(x, dtype=dtype), 4, 2, 1)  # [-1, 3), [1, 5), [3, 7)
    assert np.isnan(to_np(y)).all()
    dy = xp.asarray(np.array([[[1.0, 10.0, 100.0]]]), dtype=dtype)
    (dx,) = F.max_pool1d_backward(dy, cache)
    # window 0 starts with the padding and then a NaN: its last NaN is at 2 (never the pad);
    # the others' last NaN is at 4
    np.testing.assert_array_equal(to_np(dx)[0, 0], [0.0, 0.0, 1.0, 0.0, 110.0, 0.0])


def test_max_pool_nonfinite_gradient_reaches_only_its_argmax(xp, dtype):
    """torch scatters g to the argmax: an inf or NaN g changes that element alone (a mask
    product would make 0 * inf = NaN of the window's other elements, and warn)."""
    x = np.arange(36.0).reshape(1, 1, 6, 6)  # each window's max is its last element
    _, cache = F.max_pool2d(xp.asarray(x, dtype=dtype), 2, 2)
    dy = np.zeros((1, 1, 3, 3))
    dy[0, 0, 0, :] = [np.inf, -np.inf, np.nan]
    (dx,) = F.max_pool2d_backward(xp.asarray(dy, dtype=dtype), cache)
    expected = np.zeros((6, 6))
    expected[1, 1], expected[1, 3], expected[1, 5] = np.inf, -np.inf, np.nan
    np.testing.assert_array_equal(to_np(dx)[0, 0], expected)
    # overlapping windows whose +inf and -inf meet at one element: NaN, as inf + -inf
    _, cache = F.max_pool1d(xp.asarray(np.array([[[0.0, 5.0, 0.0]]]), dtype=dtype), 2, 1)
    dy = xp.asarray(np.array([[[np.inf, -np.inf]]]), dtype=dtype)
    (dx,) = F.max_pool1d_backward(dy, cache)
    np.testing.assert_array_equal(to_np(dx)[0, 0], [0.0, np.nan, 0.0])


def test_max_pool_window_wholly_in_the_padding_passes_no_gradient(xp):
    # kernel 2, dilation 2, padding 1 on one element: positions -1 and 1, none inside
    y, cache = F.max_pool1d(xp.asarray(np.array([[[3.0]]])), 2, 1, 1, 2)
    np.testing.assert_array_equal(to_np(y), [[[-np.inf]]])
    (dx,) = F.max_pool1d_backward(xp.asarray(np.array([[[1.0]]])), cache)
    np.testing.assert_array_equal(to_np(dx), [[[0.0]]])


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_pooling_nan_propagates(xp):
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    x[0, 0, 0, 1] = np.nan
    for op in (F.max_pool2d, F.avg_pool2d):
        y, cache = op(xp.asarray(x), 2)
        y = to_np(y)
        assert np.isnan(y[0, 0, 0, 0]) and np.isfinite(y.reshape(-1)[1:]).all()
    y, cache = F.max_pool2d(xp.asarray(x), 2)
    (dx,) = F.max_pool2d_backward(xp.ones_like(y), cache)
    dx = to_np(dx)
    assert dx[0, 0, :2, :2].sum() == 1.0  # the NaN window's gradient stays in the window
    assert dx.sum() == 4.0


def test_pooling_unbatched_input(xp, rng):
    x = rng.standard_normal((3, 6, 6))
    for op, bw in ((F.max_pool2d, F.max_pool2d_backward), (F.avg_pool2d, F.avg_pool2d_backward)):
        y, cache = op(xp.asarray(x), 3, 2, 1)
        yb, cache_b = op(xp.asarray(x[None]), 3, 2, 1)
        assert_close(y, yb[0, ...])
        dy = rng.standard_normal(tuple(y.shape))
        (dx,) = bw(xp.asarray(dy), cache)
        (dxb,) = bw(xp.asarray(dy[None]), cache_b)
        assert_close(dx, dxb[0, ...])


def test_pooling_does_not_alias_input(xp, rng):
    x = xp.asarray(rng.standard_normal((1, 2, 4, 4)))
    for op in (F.max_pool2d, F.avg_pool2d):
        y, _ = op(x, 1)  # a 1x1 window: the output equals the input, but is a new array
        assert_close(y, x)
        if xp.backend_name in ("numpy", "torch"):
            assert not np.shares_memory(to_np(y), to_np(x))


@pytest.mark.parametrize(
    ("op", "args", "match"),
    [
        (
            F.max_pool2d,
            {"kernel_size": 0},
            r"max_pool2d: argument 'kernel_size' expected positive sizes, got 0",
        ),
        (
            F.max_pool2d,
            {"kernel_size": 2, "stride": -1},
            r"max_pool2d: argument 'stride' expected positive sizes, got -1",
        ),
        (
            F.max_pool2d,
            {"kernel_size": 2, "padding": -1},
            r"max_pool2d: argument 'padding' expected >= 0 sizes",
        ),
        (
            F.max_pool2d,
            {"kernel_size": 2, "dilation": 0},
            r"max_pool2d: argument 'dilation' expected positive sizes",
        ),
        (
            F.max_pool2d,
            {"kernel_size": 3, "padding": 2},
            r"max_pool2d: argument 'padding' expected at most half",
        ),
        (  # torch's rule is on the kernel size, not the dilated extent (5 here)
            F.max_pool2d,
            {"kernel_size": 3, "padding": 2, "dilation": 2},
            r"max_pool2d: argument 'padding' expected at most half the kernel size \(3, 3\)",
        ),
        (
            F.max_pool2d,
            {"kernel_size": 6},
            r"max_pool2d: argument 'kernel_size' expected a kernel extent .* no larger than the padded input \(5, 5\)",
        ),
        (
            F.max_pool2d,
            {"kernel_size": 3, "dilation": 3},
            r"max_pool2d: argument 'kernel_size' expected a kernel extent",
        ),
        (
            F.avg_pool2d,
            {"kernel_size": (2, 2, 2)},
            r"avg_pool2d: argument 'kernel_size' expected an int or a tuple of 2 ints",
        ),
        (
            F.avg_pool2d,
            {"kernel_size": 2, "padding": 2},
            r"avg_pool2d: argument 'padding' expected at most half",
        ),
        (
            F.avg_pool2d,
            {"kernel_size": 7},
            r"avg_pool2d: argument 'kernel_size' expected a kernel extent",
        ),
        (
            F.avg_pool1d,
            {"kernel_size": 2},
            r"avg_pool1d: argument 'x' expected a 3-d \(N, C, \*S\) or 2-d",
        ),
        (
            F.max_pool1d,
            {"kernel_size": 2},
            r"max_pool1d: argument 'x' expected a 3-d \(N, C, \*S\) or 2-d",
        ),
    ],
)
def test_pooling_rejects_bad_input(xp, op, args, match):
    with pytest.raises(ValueError, match=match):
        op(xp.asarray(np.ones((1, 2, 5, 5))), **args)


def zero_size_shapes(nd):
    """Batched and unbatched shapes with one or more zero sizes."""
    s = (4,) * nd
    return [
        (0, 3, *s),
        (2, 0, *s),
        (0, 0, *s),
        (0, *s),
        (2, 3, 0, *s[1:]),
        (2, 3, *s[1:], 0),
        (3, *s[1:], 0),
        (0, 3, 0, *s[1:]),
    ]


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_pooling_refuses_zero_channels_and_spatial_sizes_as_torch(xp, torch1, nd):
    """torch pools a batch of 0 (forward and backward) but refuses no channels or an empty
    spatial axis, batched or not: so do we, for max and average pooling."""
    for shape in zero_size_shapes(nd):
        for kind in ("max", "avg"):
            ours = getattr(F, f"{kind}_pool{nd}d")
            x = torch1.zeros(shape, requires_grad=True)
            ty = _torch_or_none(getattr(torch1.nn.functional, f"{kind}_pool{nd}d"), x, 2)
            if ty is None:
                match = rf"^{kind}_pool{nd}d: argument 'x' expected non-zero channel and spatial"
                with pytest.raises(ValueError, match=match):
                    ours(xp.asarray(np.zeros(shape)), 2)
                continue
            assert shape[0] == 0 and 0 not in shape[1:]  # only a batch of 0 passes
            y, cache = ours(xp.asarray(np.zeros(shape)), 2, 1, 1)
            assert tuple(y.shape) == (0, shape[1], *(5,) * nd)
            (dx,) = getattr(F, f"{kind}_pool{nd}d_backward")(xp.zeros(tuple(y.shape)), cache)
            assert tuple(dx.shape) == shape and dx.dtype == y.dtype


POOLS = [(f"{kind}_pool{nd}d", nd) for kind in ("max", "avg") for nd in (1, 2, 3)]


@pytest.mark.parametrize(("name", "nd"), POOLS)
def test_pooling_refuses_absurd_or_bad_sizes_by_name(xp, name, nd):
    """One ValueError or TypeError from the op, naming the argument: never a MemoryError,
    an OverflowError or a library's own error. Sizes must fit torch's C int."""
    op = getattr(F, name)
    x = xp.asarray(np.ones((1, 2, *(5,) * nd)))
    huge, limit = 10**12, "sizes at most 2147483647"
    bad_values = [
        ({"kernel_size": huge}, "kernel_size", limit),
        ({"kernel_size": huge, "padding": huge // 2, "ceil_mode": True}, "kernel_size", limit),
        ({"kernel_size": 2**31, "ceil_mode": True}, "kernel_size", limit),
        ({"kernel_size": 2, "stride": huge}, "stride", limit),
        ({"kernel_size": 3, "padding": huge}, "padding", limit),
        ({"kernel_size": 0}, "kernel_size", "positive sizes"),
        ({"kernel_size": -3}, "kernel_size", "positive sizes"),
        ({"kernel_size": 2, "stride": 0}, "stride", "positive sizes"),
        ({"kernel_size": 2, "stride": -1}, "stride", "positive sizes"),
        ({"kernel_size": 2, "padding": -1}, "padding", ">= 0 sizes"),
        ({"kernel_size": 2**30, "padding": 2**29 + 1}, "padding", "at most half"),
        ({"kernel_size": 2**30}, "kernel_size", "a kernel extent"),  # no window
        ({"kernel_size": [2] * (nd + 1)}, "kernel_size", f"an int or a tuple of {nd} ints"),
        ({"kernel_size": ()}, "kernel_size", f"an int or a tuple of {nd} ints"),
    ]
    if name.startswith("max"):
        bad_values += [
            ({"kernel_size": 2, "dilation": huge}, "dilation", limit),
            ({"kernel_size": 2, "dilation": 0}, "dilation", "positive sizes"),
            ({"kernel_size": 2, "dilation": 10**6}, "kernel_size", "a kernel extent"),
        ]
    for kwargs, arg, what in bad_values:
        with pytest.raises(ValueError, match=rf"^{name}: argument '{arg}' expected {what}"):
            op(x, **kwargs)
    bad_types = [
        ({"kernel_size": None}, "kernel_size"),
        ({"kernel_size": "2"}, "kernel_size"),
        ({"kernel_size": 2.0}, "kernel_size"),
        ({"kernel_size": True}, "kernel_size"),
        ({"kernel_size": (2, None, 2)[:nd]}, "kernel_size"),
        ({"kernel_size": 2, "stride": "1"}, "stride"),
        ({"kernel_size": 2, "padding": "same"}, "padding"),
    ]
    for kwargs, arg in bad_types:
        if nd == 1 and kwargs["kernel_size"] == (2,):
            continue
        with pytest.raises(TypeError, match=rf"^{name}: argument '{arg}' expected an int"):
            op(x, **kwargs)


def test_pooling_with_huge_but_valid_sizes_matches_torch(torch1):
    """Within torch's int range, a huge kernel, stride or padding works and is cheap: only
    the kernel offsets that reach the input are visited and buffered."""
    x = np.arange(5.0).reshape(1, 1, 5)
    tx = torch1.tensor(x, requires_grad=True)
    for kind, k, s, p, ceil in [
        ("avg", 10**9, None, 0, True),  # one window over the whole input
        ("max", 10**6, None, 0, True),
        ("max", 2 * 10**6, 10**6, 10**6, True),  # two windows a million apart
        ("avg", 2 * 10**6, 10**6, 10**6, True),
        ("max", 2, 10**9, 0, False),
        ("avg", 3, 2**31 - 1, 1, True),
    ]:
        ty = getattr(torch1.nn.functional, f"{kind}_pool1d")(tx, k, s, p, ceil_mode=ceil)
        tx.grad = None
        ty.backward(torch1.ones_like(ty))
        y, cache = getattr(F, f"{kind}_pool1d")(x, k, s, p, ceil_mode=ceil)
        (dx,) = getattr(F, f"{kind}_pool1d_backward")(np.ones(y.shape), cache)
        np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-12)
        np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-12)


def test_pooling_rejects_integer_input_and_bad_grad(xp):
    with pytest.raises(TypeError, match=r"max_pool2d: argument 'x' expected a real floating"):
        F.max_pool2d(xp.asarray(np.ones((1, 1, 4, 4), dtype=np.int64)), 2)
    with pytest.raises(TypeError, match=r"avg_pool2d: argument 'kernel_size' expected an int"):
        F.avg_pool2d(xp.asarray(np.ones((1, 1, 4, 4))), 2.5)
    _, cache = F.max_pool2d(xp.asarray(np.ones((1, 1, 4, 4))), 2)
    with pytest.raises(ValueError, match=r"max_pool2d_backward: argument 'dy' expected shape"):
        F.max_pool2d_backward(xp.asarray(np.ones((1, 1, 3, 3))), cache)


# ------------------------------------------------------------- global pooling and flatten


@pytest.mark.parametrize("spatial", [(5,), (3, 4), (2, 3, 2)])
def test_global_avg_pool(xp, dtype, rng, spatial):
    x = rng.standard_normal((2, 3, *spatial))
    y, _ = F.global_avg_pool(xp.asarray(x, dtype=dtype))
    assert tuple(y.shape) == (2, 3) and y.dtype == dtype
    tol = {"rtol": 1e-5, "atol": 1e-6} if "32" in str(dtype) else {"rtol": 1e-12, "atol": 1e-14}
    np.testing.assert_allclose(to_np(y), x.reshape(2, 3, -1).mean(-1), **tol)
    name = "float64" if "64" in str(dtype) else "float32"
    compare_with_numpy(
        xp,
        F.global_avg_pool,
        F.global_avg_pool_backward,
        [x],
        {},
        rng.standard_normal((2, 3)),
        name,
    )
    gradcheck(F.global_avg_pool, [xp.asarray(x)])


def test_global_avg_pool_matches_torch_adaptive_pool(xp, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal((2, 3, 5, 4))
    tx = torch.tensor(x, requires_grad=True)
    ty = torch.nn.functional.adaptive_avg_pool2d(tx, 1).flatten(1)
    dy = rng.standard_normal((2, 3))
    ty.backward(torch.tensor(dy))
    y, cache = F.global_avg_pool(xp.asarray(x))
    (dx,) = F.global_avg_pool_backward(xp.asarray(dy), cache)
    np.testing.assert_allclose(to_np(y), ty.detach().numpy(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(to_np(dx), tx.grad.numpy(), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_global_avg_pool_and_flatten_take_zero_sizes_as_torch(xp, torch1, nd):
    """As torch's adaptive_avg_pool{1,2,3}d(x, 1).flatten(1) and flatten: any size may be 0;
    with no spatial positions the mean is NaN (without a warning) and the gradient empty."""
    for shape in [s for s in zero_size_shapes(nd) if len(s) == nd + 2]:
        tx = torch1.zeros(shape, requires_grad=True)
        pool = getattr(torch1.nn.functional, f"adaptive_avg_pool{nd}d")
        ty = pool(tx, 1).flatten(1)
        ty.backward(torch1.ones_like(ty))
        y, cache = F.global_avg_pool(xp.asarray(np.zeros(shape)))
        np.testing.assert_array_equal(to_np(y), ty.detach().numpy())
        (dx,) = F.global_avg_pool_backward(xp.ones(tuple(y.shape), dtype=y.dtype), cache)
        assert tuple(dx.shape) == shape == tuple(tx.grad.shape)
        z, fcache = F.flatten(xp.asarray(np.zeros(shape)))
        assert tuple(z.shape) == tuple(torch1.flatten(tx, 1).shape)
        (dz,) = F.flatten_backward(xp.zeros(tuple(z.shape)), fcache)
        assert tuple(dz.shape) == shape


@pytest.mark.parametrize(
    ("start", "end", "shape"),
    [
        (1, -1, (2, 60)),
        (0, -1, (120,)),
        (1, 2, (2, 12, 5)),
        (2, 2, (2, 3, 4, 5)),
        (-2, -1, (2, 3, 20)),
    ],
)
def test_flatten(xp, dtype, rng, start, end, shape):
    x = rng.standard_normal((2, 3, 4, 5))
    y, cache = F.flatten(xp.asarray(x, dtype=dtype), start_axis=start, end_axis=end)
    assert tuple(y.shape) == shape and y.dtype == dtype
    np.testing.assert_array_equal(to_np(y), np.asarray(x, dtype=to_np(y).dtype).reshape(shape))
    dy = rng.standard_normal(shape)
    (dx,) = F.flatten_backward(xp.asarray(dy, dtype=dtype), cache)
    np.testing.assert_array_equal(to_np(dx), np.asarray(dy, dtype=to_np(dx).dtype).reshape(x.shape))
    gradcheck(F.flatten, [xp.asarray(x[:, :, :2, :2])], {"start_axis": start, "end_axis": end})


def test_flatten_rejects_bad_axes(xp):
    x = xp.asarray(np.ones((2, 3, 4)))
    with pytest.raises(
        ValueError, match=r"flatten: argument 'end_axis' expected an axis at or after"
    ):
        F.flatten(x, start_axis=2, end_axis=1)
    with pytest.raises(
        ValueError, match=r"flatten: argument 'start_axis' expected an axis in \[-3, 3\), got 3"
    ):
        F.flatten(x, start_axis=3)


def test_cnn_head_needs_nothing_else(xp, rng):
    """conv -> relu -> max_pool -> global_avg_pool -> linear, forward and backward, gradcheck."""

    def head(x, w, wl):
        h, c1 = F.conv2d(x, w, padding="same")
        r, c2 = F.relu(h)
        p, c3 = F.max_pool2d(r, 2)
        g, c4 = F.global_avg_pool(p)
        y, c5 = F.linear(g, wl)
        return y, (c1, c2, c3, c4, c5)

    def head_backward(dy, caches):
        c1, c2, c3, c4, c5 = caches
        dg, dwl, _ = F.linear_backward(dy, c5)
        (dp,) = F.global_avg_pool_backward(dg, c4)
        (dr,) = F.max_pool2d_backward(dp, c3)
        (dh,) = F.relu_backward(dr, c2)
        dx, dw, _ = F.conv2d_backward(dh, c1)
        return dx, dw, dwl

    x = xp.asarray(rng.standard_normal((2, 2, 4, 4)))
    w = xp.asarray(rng.standard_normal((3, 2, 3, 3)))
    wl = xp.asarray(rng.standard_normal((2, 3)))
    gradcheck(head, [x, w, wl], backward=head_backward)


def test_flatten_takes_torchs_keywords(xp):
    x = xp.asarray(np.zeros((2, 3, 4, 5)))
    assert tuple(F.flatten(x, start_dim=2)[0].shape) == (2, 3, 20)
    assert tuple(F.flatten(x, start_dim=0, end_dim=1)[0].shape) == (6, 4, 5)
    with pytest.raises(TypeError, match="flatten: got both 'start_axis' and torch's name"):
        F.flatten(x, start_axis=2, start_dim=2)
