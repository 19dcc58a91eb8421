"""batch_norm, layer_norm, group_norm, rms_norm and their layers."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from helpers import compare_with_numpy, to_np

from backprop_xp import functional as F
from backprop_xp import nn
from backprop_xp.backend import library_name
from backprop_xp.testing import assert_close, gradcheck

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")


def _name(dtype: Any) -> str:
    return "float64" if "64" in str(dtype) else "float32"


def _opt(xp: Any, a: np.ndarray | None, dtype: Any = None) -> Any:
    return None if a is None else xp.asarray(a, dtype=dtype)


def _spread(rng: np.random.Generator, shape: tuple[int, ...], lo: float = -3, hi: float = 3):
    """Distinct values at least (hi - lo) / (2 size) apart, in random order: a set of a few
    of them (group norm's groups of 2) is never nearly constant, whose normalization float32
    cannot resolve (the reference tests compare float32 with float64)."""
    n = math.prod(shape)
    ticks = rng.permutation(n) + rng.uniform(0, 0.5, n)
    return (lo + (hi - lo) * ticks / n).reshape(shape)


def _as(dtype: Any, *arrays: np.ndarray | None) -> list[np.ndarray | None]:
    """The inputs as the op sees them in ``dtype`` (rounded to float32), in float64 for the
    references."""
    kind = np.float64 if _name(dtype) == "float64" else np.float32
    return [None if a is None else a.astype(kind).astype(np.float64) for a in arrays]


# -- plain references (loops over channels, rows and groups) ----------------------------------


def ref_batch_norm(x, rm, rv, w, b, training, momentum=0.1, eps=1e-5):
    """Channel by channel; returns (y, new_rm, new_rv) (the stats None when not given)."""
    y = np.empty_like(x)
    c_n = x.shape[1]
    new_rm = None if rm is None else np.array(rm, dtype=np.float64)
    new_rv = None if rv is None else np.array(rv, dtype=np.float64)
    for c in range(c_n):
        v = x[:, c, ...]
        if training:
            mu, var = v.mean(), v.var()
            if rm is not None:
                n = v.size
                new_rm[c] = (1 - momentum) * rm[c] + momentum * mu
                new_rv[c] = (1 - momentum) * rv[c] + momentum * v.var() * n / (n - 1)
        else:
            mu, var = rm[c], rv[c]
        out = (v - mu) / math.sqrt(var + eps)
        y[:, c, ...] = out * (1.0 if w is None else w[c]) + (0.0 if b is None else b[c])
    return y, new_rm, new_rv


def _norm(v, eps):
    return (v - v.mean()) / math.sqrt(v.var() + eps)


def ref_layer_norm(x, shape, w, b, eps=1e-5):
    k = len(shape)
    y = np.empty_like(x)
    for idx in np.ndindex(*x.shape[: x.ndim - k]):
        y[idx] = _norm(x[idx], eps) * (1.0 if w is None else w) + (0.0 if b is None else b)
    return y


def ref_group_norm(x, groups, w, b, eps=1e-5):
    y = np.empty_like(x)
    cg = x.shape[1] // groups
    for n in range(x.shape[0]):
        for g in range(groups):
            y[n, g * cg : (g + 1) * cg] = _norm(x[n, g * cg : (g + 1) * cg], eps)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
    if w is not None:
        y = y * w.reshape(shape)
    if b is not None:
        y = y + b.reshape(shape)
    return y


def ref_rms_norm(x, shape, w, eps):
    k = len(shape)
    y = np.empty_like(x)
    for idx in np.ndindex(*x.shape[: x.ndim - k]):
        v = x[idx]
        y[idx] = v / math.sqrt((v * v).mean() + eps) * (1.0 if w is None else w)
    return y


# -- batch norm ------------------------------------------------------------------------------

BN_SHAPES = [(5, 3), (4, 3, 3), (2, 3, 2, 2, 2)]
# (training, weight, bias, stats): evaluation needs the running statistics
BN_OPTIONS = [(t, w, b, s) for t, w, b, s in itertools.product([True, False], repeat=4) if t or s]


def _bn_inputs(rng, shape, weight=True, bias=True, stats=True):
    c = shape[1]
    x = rng.standard_normal(shape) * 1.5 + 0.5
    rm = rng.standard_normal(c) if stats else None
    rv = rng.random(c) + 0.5 if stats else None
    w = rng.standard_normal(c) if weight else None
    b = rng.standard_normal(c) if bias else None
    return x, rm, rv, w, b


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_forward_matches_reference(xp, dtype, rng, shape, training):
    x, rm, rv, w, b = _as(dtype, *_bn_inputs(rng, shape))
    x = _as(dtype, _spread(rng, shape))[0]
    out, _ = F.batch_norm(
        *(xp.asarray(a, dtype=dtype) for a in (x, rm, rv, w, b)), training=training, momentum=0.3
    )
    want_y, want_rm, want_rv = ref_batch_norm(x, rm, rv, w, b, training, 0.3)
    tol = 1e-12 if _name(dtype) == "float64" else 2e-5
    if training:
        y, new_rm, new_rv = out
        np.testing.assert_allclose(to_np(new_rm), want_rm, rtol=tol, atol=tol)
        np.testing.assert_allclose(to_np(new_rv), want_rv, rtol=tol, atol=tol)
        assert new_rm.dtype == dtype and new_rv.dtype == dtype
    else:
        y = out
    assert y.dtype == dtype
    np.testing.assert_allclose(to_np(y), want_y, rtol=tol, atol=tol)


@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize(("training", "weight", "bias", "stats"), BN_OPTIONS)
def test_batch_norm_gradcheck(rng, shape, training, weight, bias, stats):
    """On NumPy; every option on every backend: test_batch_norm_matches_numpy."""
    inputs = list(_bn_inputs(rng, shape, weight, bias, stats))
    wrt = [i for i in (0, 3, 4) if inputs[i] is not None]  # the statistics get no gradient
    grad_outputs = None
    if training and stats:  # (y, new_running_mean, new_running_var): only y has a gradient
        grad_outputs = (rng.standard_normal(shape), None, None)
    gradcheck(F.batch_norm, inputs, {"training": training}, wrt=wrt, grad_outputs=grad_outputs)
    out, cache = F.batch_norm(*inputs, training=training)
    y = out[0] if isinstance(out, tuple) else out
    dy = np.ones_like(y)
    grads = F.batch_norm_backward((dy, None, None) if isinstance(out, tuple) else dy, cache)
    assert len(grads) == 5 and grads[1] is None and grads[2] is None
    assert (grads[3] is None) == (not weight) and (grads[4] is None) == (not bias)


def test_batch_norm_training_output_has_zero_mean_unit_variance_per_channel(xp, rng):
    x = rng.standard_normal((8, 4, 5, 3)) * rng.uniform(0.3, 10, (1, 4, 1, 1)) + 3
    y, _ = F.batch_norm(xp.asarray(x), None, None, training=True, eps=1e-30)
    y = to_np(y)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=(0, 2, 3)), 1, rtol=1e-9)
    # and its input gradient is orthogonal to the constants and to x̂ in each channel
    _, cache = F.batch_norm(xp.asarray(x), None, None, training=True, eps=1e-30)
    dx = to_np(F.batch_norm_backward(xp.asarray(rng.standard_normal(x.shape)), cache)[0])
    for v in (dx, dx * y):  # zero up to the rounding of sums of terms as large as |v|
        scale = np.abs(v).sum(axis=(0, 2, 3))
        assert np.all(np.abs(v.sum(axis=(0, 2, 3))) <= 1e-12 * scale)


def test_batch_norm_eval_with_the_batch_statistics_equals_training(xp, rng):
    x, _, _, w, b = _bn_inputs(rng, (6, 3, 4))
    mean, var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    args = [xp.asarray(a) for a in (x, mean, var, w, b)]
    (y_train, _, _), _ = F.batch_norm(*args, training=True)
    y_eval, _ = F.batch_norm(*args, training=False)
    assert_close(y_eval, y_train, rtol=1e-12, atol=1e-12)


def test_batch_norm_never_writes_into_its_inputs_and_returns_new_statistics(xp, rng):
    x, rm, rv, w, b = _bn_inputs(rng, (4, 3, 2))
    args = [xp.asarray(a) for a in (x, rm, rv, w, b)]
    (_, new_rm, new_rv), cache = F.batch_norm(*args, training=True)
    F.batch_norm_backward((xp.ones_like(args[0]), None, None), cache)
    for a, host in zip(args, (x, rm, rv, w, b), strict=True):
        np.testing.assert_array_equal(to_np(a), host)
    assert new_rm is not args[1] and new_rv is not args[2]


@pytest.mark.parametrize(("training", "weight", "bias", "stats"), BN_OPTIONS)
def test_batch_norm_matches_numpy(xp, dtype, rng, training, weight, bias, stats):
    x, rm, rv, w, b = _bn_inputs(rng, (4, 3, 2, 3), weight, bias, stats)
    grad = rng.standard_normal(x.shape)

    def forward(x, *params, **options):  # the absent arrays as None, by position
        it = iter(params)
        return F.batch_norm(
            x, *(None if a is None else next(it) for a in (rm, rv, w, b)), **options
        )

    compare_with_numpy(
        xp,
        forward,
        F.batch_norm_backward,
        [a for a in (x, rm, rv, w, b) if a is not None],
        {"training": training},
        (grad, None, None) if training and stats else grad,
        _name(dtype),
    )


def _torch_grads(fn, arrays, requires, dy):
    ts = [
        None if a is None else torch.tensor(a, requires_grad=bool(r))
        for a, r in zip(arrays, requires, strict=True)
    ]
    y = fn(*ts)
    y.backward(torch.tensor(dy))
    return ts, y


@needs_torch
@pytest.mark.parametrize("shape", BN_SHAPES)
@pytest.mark.parametrize(("training", "weight", "bias", "stats"), BN_OPTIONS)
def test_batch_norm_matches_torch(rng, shape, training, weight, bias, stats):
    x, rm, rv, w, b = _bn_inputs(rng, shape, weight, bias, stats)
    dy = rng.standard_normal(shape)
    out, cache = F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.25, eps=1e-3)
    ts, yt = _torch_grads(
        lambda *t: torch.nn.functional.batch_norm(*t, training=training, momentum=0.25, eps=1e-3),
        [x, rm, rv, w, b],
        [1, 0, 0, 1, 1],
        dy,
    )
    if isinstance(out, tuple):
        y, new_rm, new_rv = out
        # torch updated its tensors in place: ours came back as new arrays
        np.testing.assert_allclose(new_rm, ts[1].numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(new_rv, ts[2].numpy(), rtol=1e-12, atol=1e-14)
        grads = F.batch_norm_backward((dy, None, None), cache)
    else:
        y, grads = out, F.batch_norm_backward(dy, cache)
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
    for g, t in zip(grads, ts, strict=True):
        want = None if t is None or t.grad is None else t.grad.numpy()
        assert (g is None) == (want is None)
        if g is not None:
            np.testing.assert_allclose(g, want, rtol=1e-10, atol=1e-12)


def test_batch_norm_empty_batch_leaves_the_statistics_as_torch(xp):
    x = xp.asarray(np.zeros((0, 3)))
    rm, rv = xp.asarray(np.arange(3.0)), xp.asarray(np.ones(3))
    w = xp.asarray(np.ones(3))
    (y, new_rm, new_rv), cache = F.batch_norm(x, rm, rv, w, None, training=True)
    assert tuple(y.shape) == (0, 3)
    np.testing.assert_array_equal(to_np(new_rm), np.arange(3.0))
    np.testing.assert_array_equal(to_np(new_rv), np.ones(3))
    dx, _, _, dw, _ = F.batch_norm_backward((xp.zeros((0, 3), dtype=xp.float64), None, None), cache)
    assert tuple(dx.shape) == (0, 3)
    np.testing.assert_array_equal(to_np(dw), np.zeros(3))


def test_batch_norm_tuple_backward_takes_none_for_the_statistics_only(xp, rng):
    x, rm, rv, w, b = _bn_inputs(rng, (4, 3))
    (y, new_rm, _), cache = F.batch_norm(*(xp.asarray(a) for a in (x, rm, rv, w, b)), training=True)
    with pytest.raises(ValueError, match=r"'d_running_mean' expected None \(the updated running"):
        F.batch_norm_backward((xp.ones_like(y), xp.ones_like(new_rm), None), cache)
    with pytest.raises(ValueError, match=r"'d_running_var' expected None"):
        F.batch_norm_backward((xp.ones_like(y), None, xp.ones_like(new_rm)), cache)
    with pytest.raises(ValueError, match=r"expected a tuple of 3 cotangents"):
        F.batch_norm_backward(xp.ones_like(y), cache)
    dx, _, _, dw, db = F.batch_norm_backward((None, None, None), cache)  # no gradient: zeros
    for g in (dx, dw, db):
        np.testing.assert_array_equal(to_np(g), 0)


def test_batch_norm_bad_inputs(xp):
    def a(*shape, dtype=None):
        return xp.asarray(np.ones(shape), dtype=dtype)

    x, s = a(4, 3), a(3)
    cases = [
        (ValueError, r"batch_norm: argument 'x' expected shape \(N, C\)", (a(3), s, s)),
        (ValueError, r"'running_mean' and 'running_var' expected both", (x, s, None)),
        (ValueError, r"'running_mean' expected an array in evaluation mode", (x, None, None)),
        (ValueError, r"'running_mean' expected shape \(3,\) \(one per channel\)", (x, a(4), s)),
        (ValueError, r"'weight' expected shape \(3,\)", (x, s, s, a(2))),
        (ValueError, r"'bias' expected shape \(3,\)", (x, s, s, None, a(3, 1))),
        (TypeError, r"'running_var' expected dtype .*float32", (a(4, 3, dtype=xp.float32), a(3, dtype=xp.float32), s)),
        (TypeError, r"'x' expected a real floating", (xp.asarray(np.ones((4, 3), dtype=np.int64)), s, s)),
    ]  # fmt: skip
    for error, message, args in cases:
        with pytest.raises(error, match=message):
            F.batch_norm(*args)
    with pytest.raises(ValueError, match=r"'x' expected more than 1 value per channel when"):
        F.batch_norm(a(1, 3, 1), s, s, training=True)
    with pytest.raises(ValueError, match=r"'eps' expected a value > 0, got 0"):
        F.batch_norm(x, s, s, training=True, eps=0)
    with pytest.raises(ValueError, match=r"'eps' expected a value >= 0, got -1"):
        F.batch_norm(x, s, s, eps=-1)
    with pytest.raises(TypeError, match=r"'momentum' expected a real number, got None"):
        F.batch_norm(x, s, s, training=True, momentum=None)  # the layer's option, not F's


# -- layer norm, group norm, RMS norm ---------------------------------------------------------


def _bound(op: Any, arg: Any) -> Any:
    """``op`` with its non-array second argument (normalized_shape, num_groups) bound, so
    that the positional inputs are the arrays, one gradient each."""

    def bound(x: Any, *arrays: Any, **options: Any) -> Any:
        return op(x, arg, *arrays, **options)

    bound.__name__ = op.__name__
    return bound


LN_CASES = [((3, 5), (5,)), ((2, 3, 4), (4,)), ((2, 3, 4), (3, 4)), ((3, 2, 2, 3), (2, 2, 3))]
AFFINE = [(True, True), (True, False), (False, True), (False, False)]


@pytest.mark.parametrize(("shape", "normalized"), LN_CASES)
def test_layer_norm_forward_matches_reference(xp, dtype, rng, shape, normalized):
    x, w, b = _as(
        dtype,
        _spread(rng, shape, -1, 5),
        rng.standard_normal(normalized),
        rng.standard_normal(normalized),
    )
    y, _ = F.layer_norm(
        xp.asarray(x, dtype=dtype), normalized, *(xp.asarray(a, dtype=dtype) for a in (w, b))
    )
    assert y.dtype == dtype
    tol = 1e-12 if _name(dtype) == "float64" else 2e-5
    np.testing.assert_allclose(to_np(y), ref_layer_norm(x, normalized, w, b), rtol=tol, atol=tol)


@pytest.mark.parametrize(("shape", "normalized"), LN_CASES[:3])
@pytest.mark.parametrize(("weight", "bias"), AFFINE)
def test_layer_norm_gradcheck(xp, rng, shape, normalized, weight, bias):
    x = rng.standard_normal(shape)
    w = _opt(xp, rng.standard_normal(normalized) if weight else None)
    b = _opt(xp, rng.standard_normal(normalized) if bias else None)
    gradcheck(
        _bound(F.layer_norm, normalized),
        [xp.asarray(x), w, b],
        {"eps": 1e-3},
        backward=F.layer_norm_backward,
    )
    _, cache = F.layer_norm(xp.asarray(x), normalized, w, b)
    grads = F.layer_norm_backward(xp.ones_like(xp.asarray(x)), cache)
    assert (
        len(grads) == 3 and (grads[1] is None) == (not weight) and (grads[2] is None) == (not bias)
    )


def test_layer_norm_rows_have_zero_mean_unit_variance_and_an_int_shape(xp, rng):
    x = rng.standard_normal((4, 6, 10)) * 50 + 1e3  # a large mean: two-pass moments
    y, _ = F.layer_norm(xp.asarray(x), 10, eps=0.0)
    y = to_np(y)
    np.testing.assert_allclose(y.mean(axis=-1), 0, atol=1e-10)
    np.testing.assert_allclose(y.var(axis=-1), 1, rtol=1e-9)
    y2, _ = F.layer_norm(xp.asarray(x), [6, 10])
    np.testing.assert_allclose(to_np(y2).reshape(4, -1).var(axis=-1), 1, rtol=1e-6)


GN_CASES = [((2, 6, 3), 1), ((2, 6, 3), 3), ((2, 6, 3), 6), ((3, 4), 2), ((2, 4, 2, 1, 2), 2)]


@pytest.mark.parametrize(("shape", "groups"), GN_CASES)
def test_group_norm_forward_matches_reference(xp, dtype, rng, shape, groups):
    x, w, b = _as(
        dtype, _spread(rng, shape), rng.standard_normal(shape[1]), rng.standard_normal(shape[1])
    )
    y, _ = F.group_norm(
        xp.asarray(x, dtype=dtype), groups, xp.asarray(w, dtype=dtype), xp.asarray(b, dtype=dtype)
    )
    tol = 1e-12 if _name(dtype) == "float64" else 2e-5
    np.testing.assert_allclose(to_np(y), ref_group_norm(x, groups, w, b), rtol=tol, atol=tol)


@pytest.mark.parametrize(("shape", "groups"), GN_CASES)
@pytest.mark.parametrize(("weight", "bias"), AFFINE)
def test_group_norm_gradcheck(rng, shape, groups, weight, bias):
    """On NumPy; the options on every backend: test_group_norm_options_match_numpy."""
    x = rng.standard_normal(shape)
    w = rng.standard_normal(shape[1]) if weight else None
    b = rng.standard_normal(shape[1]) if bias else None
    gradcheck(
        _bound(F.group_norm, groups), [x, w, b], {"eps": 1e-3}, backward=F.group_norm_backward
    )


@pytest.mark.parametrize(("weight", "bias"), AFFINE)
def test_group_norm_options_match_numpy(xp, rng, weight, bias):
    x = rng.standard_normal((3, 4, 5))
    w = rng.standard_normal(4) if weight else None
    b = rng.standard_normal(4) if bias else None

    def forward(x, *params):
        it = iter(params)
        return F.group_norm(x, 2, *(None if a is None else next(it) for a in (w, b)))

    arrays = [a for a in (x, w, b) if a is not None]
    compare_with_numpy(xp, forward, F.group_norm_backward, arrays, {}, rng.standard_normal(x.shape))


def test_group_norm_identities(xp, rng):
    """One group is layer norm over (C, *S); C groups is instance norm (per sample and
    channel), which is batch norm of a batch of one sample with its channels as the batch."""
    x = rng.standard_normal((3, 4, 5))
    one, _ = F.group_norm(xp.asarray(x), 1)
    ln, _ = F.layer_norm(xp.asarray(x), (4, 5))
    assert_close(one, ln, rtol=1e-12, atol=1e-12)
    inst, _ = F.group_norm(xp.asarray(x), 4)
    ln_rows, _ = F.layer_norm(xp.asarray(x), 5)
    assert_close(inst, ln_rows, rtol=1e-12, atol=1e-12)


RMS_CASES = [((3, 5), (5,), None), ((2, 3, 4), (3, 4), None), ((2, 3, 4), (4,), 1e-3)]


@pytest.mark.parametrize(("shape", "normalized", "eps"), RMS_CASES)
@pytest.mark.parametrize("weight", [True, False])
def test_rms_norm_forward_and_gradcheck(xp, dtype, rng, shape, normalized, eps, weight):
    x, w = _as(dtype, _spread(rng, shape), rng.standard_normal(normalized) if weight else None)
    y, _ = F.rms_norm(xp.asarray(x, dtype=dtype), normalized, _opt(xp, w, dtype), eps=eps)
    e = float(np.finfo(_name(dtype)).eps) if eps is None else eps
    tol = 1e-12 if _name(dtype) == "float64" else 2e-5
    np.testing.assert_allclose(to_np(y), ref_rms_norm(x, normalized, w, e), rtol=tol, atol=tol)
    if _name(dtype) == "float64":
        gradcheck(
            _bound(F.rms_norm, normalized),
            [xp.asarray(x), _opt(xp, w)],
            {"eps": eps},
            backward=F.rms_norm_backward,
        )


@pytest.mark.parametrize(
    ("op", "args"),
    [
        (_bound(F.layer_norm, (4, 5)), lambda r: [r.standard_normal((3, 4, 5)), r.standard_normal((4, 5)), r.standard_normal((4, 5))]),
        (_bound(F.group_norm, 2), lambda r: [r.standard_normal((3, 4, 5)), r.standard_normal(4), r.standard_normal(4)]),
        (_bound(F.rms_norm, 5), lambda r: [r.standard_normal((3, 4, 5)), r.standard_normal(5)]),
    ],
    ids=["layer_norm", "group_norm", "rms_norm"],
)  # fmt: skip
def test_row_norms_match_numpy(xp, dtype, rng, op, args):
    backward = getattr(F, op.__name__ + "_backward")
    grad = rng.standard_normal((3, 4, 5))
    compare_with_numpy(xp, op, backward, args(rng), {}, grad, _name(dtype))


@needs_torch
@pytest.mark.parametrize(("shape", "normalized"), LN_CASES)
@pytest.mark.parametrize(("weight", "bias"), AFFINE)
def test_layer_norm_matches_torch(rng, shape, normalized, weight, bias):
    x = rng.standard_normal(shape)
    w = rng.standard_normal(normalized) if weight else None
    b = rng.standard_normal(normalized) if bias else None
    dy = rng.standard_normal(shape)
    y, cache = F.layer_norm(x, normalized, w, b, eps=1e-4)
    ts, yt = _torch_grads(
        lambda *t: torch.nn.functional.layer_norm(t[0], normalized, t[1], t[2], eps=1e-4),
        [x, w, b],
        [1, 1, 1],
        dy,
    )
    _check_torch(y, F.layer_norm_backward(dy, cache), yt, ts)


def _check_torch(y, grads, yt, ts, tol=1e-10):
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=tol, atol=tol)
    for g, t in zip(grads, ts, strict=True):
        assert (g is None) == (t is None)
        if g is not None:
            np.testing.assert_allclose(g, t.grad.numpy(), rtol=tol, atol=tol)


@needs_torch
@pytest.mark.parametrize(("shape", "groups"), GN_CASES)
@pytest.mark.parametrize(("weight", "bias"), AFFINE)
def test_group_norm_matches_torch(rng, shape, groups, weight, bias):
    x = rng.standard_normal(shape)
    w = rng.standard_normal(shape[1]) if weight else None
    b = rng.standard_normal(shape[1]) if bias else None
    dy = rng.standard_normal(shape)
    y, cache = F.group_norm(x, groups, w, b, eps=1e-4)

    def theirs(x, w, b):
        if w is None and b is not None:  # torch 2.13's backward fails there ("tensor does
            # not have a device"): its bias added by hand instead
            return torch.nn.functional.group_norm(x, groups, eps=1e-4) + b.reshape(_channels(x))
        return torch.nn.functional.group_norm(x, groups, w, b, eps=1e-4)

    ts, yt = _torch_grads(theirs, [x, w, b], [1, 1, 1], dy)
    _check_torch(y, F.group_norm_backward(dy, cache), yt, ts)


def _channels(x: Any) -> tuple[int, ...]:
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


@needs_torch
@pytest.mark.parametrize(("shape", "normalized", "eps"), RMS_CASES)
@pytest.mark.parametrize("weight", [True, False])
def test_rms_norm_matches_torch(rng, shape, normalized, eps, weight):
    x = rng.standard_normal(shape)
    w = rng.standard_normal(normalized) if weight else None
    dy = rng.standard_normal(shape)
    y, cache = F.rms_norm(x, normalized, w, eps=eps)
    ts, yt = _torch_grads(
        lambda *t: torch.nn.functional.rms_norm(t[0], normalized, t[1], eps=eps),
        [x, w],
        [1, 1],
        dy,
    )
    _check_torch(y, F.rms_norm_backward(dy, cache), yt, ts)


def test_row_norms_bad_inputs(xp):
    x = xp.asarray(np.ones((2, 3, 4)))
    cases = [
        (ValueError, r"layer_norm: argument 'x' expected shape \(\*, 3\) \(trailing dims", lambda: F.layer_norm(x, 3)),
        (ValueError, r"layer_norm: argument 'x' expected shape \(\*, 1, 2, 3, 4\)", lambda: F.layer_norm(x, (1, 2, 3, 4))),
        (ValueError, r"layer_norm: argument 'normalized_shape' expected at least one dim", lambda: F.layer_norm(x, ())),
        (TypeError, r"layer_norm: argument 'normalized_shape' expected an int, got float", lambda: F.layer_norm(x, 4.0)),
        (ValueError, r"layer_norm: argument 'weight' expected shape \(3, 4\) \(normalized_shape\), got shape \(12,\)", lambda: F.layer_norm(x, (3, 4), xp.asarray(np.ones(12)))),
        (ValueError, r"layer_norm: argument 'bias' expected shape \(4,\)", lambda: F.layer_norm(x, 4, None, xp.asarray(np.ones(3)))),
        (ValueError, r"group_norm: argument 'num_groups' expected a divisor of the 3 channels", lambda: F.group_norm(x, 2)),
        (ValueError, r"group_norm: argument 'num_groups' expected a positive int, got 0", lambda: F.group_norm(x, 0)),
        (TypeError, r"group_norm: argument 'num_groups' expected an int, got float", lambda: F.group_norm(x, 1.0)),
        (ValueError, r"group_norm: argument 'x' expected shape \(N, C, \*spatial\)", lambda: F.group_norm(xp.asarray(np.ones(6)), 3)),
        (ValueError, r"group_norm: argument 'weight' expected shape \(3,\) \(one per channel\)", lambda: F.group_norm(x, 3, xp.asarray(np.ones(4)))),
        (ValueError, r"rms_norm: argument 'x' expected shape \(\*, 3\)", lambda: F.rms_norm(x, (3,))),
        (ValueError, r"rms_norm: argument 'weight' expected shape \(4,\)", lambda: F.rms_norm(x, (4,), xp.asarray(np.ones(3)))),
        (TypeError, r"rms_norm: argument 'weight' expected dtype .*float32", lambda: F.rms_norm(xp.asarray(np.ones((2, 4)), dtype=xp.float32), 4, xp.asarray(np.ones(4)))),
        (TypeError, r"layer_norm: argument 'x' expected a real floating", lambda: F.layer_norm(xp.asarray(np.ones((2, 4), dtype=np.int64)), 4)),
    ]  # fmt: skip
    for error, message, fn in cases:
        with pytest.raises(error, match=message):
            fn()


def test_empty_inputs(xp):
    for op, args, grads in [
        (F.layer_norm, (xp.asarray(np.zeros((0, 4))), 4, xp.asarray(np.ones(4)), xp.asarray(np.ones(4))), 3),
        (F.layer_norm, (xp.asarray(np.zeros((3, 0))), 0), 3),
        (F.group_norm, (xp.asarray(np.zeros((0, 4, 2))), 2, xp.asarray(np.ones(4))), 3),
        (F.rms_norm, (xp.asarray(np.zeros((0, 4))), 4, xp.asarray(np.ones(4))), 2),
    ]:  # fmt: skip
        y, cache = op(*args)
        assert tuple(y.shape) == tuple(args[0].shape)
        got = getattr(F, op.__name__ + "_backward")(xp.zeros_like(y), cache)
        assert len(got) == grads and tuple(got[0].shape) == tuple(y.shape)
        for g in got[1:]:
            if g is not None:  # torch: zeros for the parameters of an empty batch
                np.testing.assert_array_equal(to_np(g), 0)


# -- every op: cotangents, float16, non-finite values ----------------------------------------


def _forwards(r: np.random.Generator) -> dict[str, tuple[Any, list[np.ndarray], dict]]:
    x = r.standard_normal((4, 6, 5))
    c6, c5 = r.standard_normal(6), r.standard_normal(5)
    return {
        "batch_norm": (F.batch_norm, [x, c6, r.random(6) + 0.5, c6, c6], {}),
        "batch_norm_train": (F.batch_norm, [x, None, None, c6, c6], {"training": True}),
        "layer_norm": (lambda x, w, b: F.layer_norm(x, 5, w, b), [x, c5, c5], {}),
        "group_norm": (lambda x, w, b: F.group_norm(x, 3, w, b), [x, c6, c6], {}),
        "rms_norm": (lambda x, w: F.rms_norm(x, 5, w), [x, c5], {}),
    }


@pytest.mark.parametrize(
    "case", ["batch_norm", "batch_norm_train", "layer_norm", "group_norm", "rms_norm"]
)
def test_cotangents_are_checked_and_cast(xp, rng, case):  # fmt: skip
    fn, arrays, opts = _forwards(rng)[case]
    op = case.removesuffix("_train")
    backward = getattr(F, op + "_backward")
    y, cache = fn(*(_opt(xp, a, xp.float32) for a in arrays), **opts)
    g32 = backward(xp.ones_like(y), cache)
    g64 = backward(xp.asarray(np.ones(tuple(y.shape)), dtype=xp.float64), cache)
    for a, b in zip(g64, g32, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert a.dtype == xp.float32
            assert_close(a, b, rtol=0, atol=0)
    bad = xp.asarray(np.ones((2, *y.shape)), dtype=xp.float32)
    with pytest.raises(ValueError, match=rf"{op}_backward: argument 'dy' expected shape"):
        backward(bad, cache)
    with pytest.raises(TypeError, match=r"argument 'dy' expected an array, got list"):
        backward(np.ones(tuple(y.shape)).tolist(), cache)


@needs_torch
@pytest.mark.parametrize("case", ["batch_norm", "layer_norm", "group_norm", "rms_norm"])
def test_cotangent_from_another_library_is_named(rng, case):
    fn, arrays, opts = _forwards(rng)[case]
    y, cache = fn(*arrays, **opts)
    with pytest.raises(TypeError, match=r"different libraries: '\w+' is a torch array"):
        getattr(F, case + "_backward")(torch.ones(tuple(y.shape), dtype=torch.float64), cache)


@needs_torch
@pytest.mark.parametrize(
    "case", ["batch_norm", "batch_norm_train", "layer_norm", "group_norm", "rms_norm"]
)
def test_float16_is_computed_in_float32_as_torch(rng, case):  # fmt: skip
    fn, arrays, opts = _forwards(rng)[case]
    arrays = [None if a is None else (a * 3 + 1).astype(np.float16) for a in arrays]
    op = case.removesuffix("_train")
    y, cache = fn(*arrays, **opts)
    assert y.dtype == np.float16
    dy = rng.standard_normal(y.shape).astype(np.float16)
    grads = getattr(F, op + "_backward")(dy, cache)
    stats = (1, 2) if op == "batch_norm" else ()  # the running statistics get no gradient
    ts = [
        None if a is None else torch.tensor(a, requires_grad=i not in stats)
        for i, a in enumerate(arrays)
    ]
    yt = _torch_forward(case, ts)
    yt.backward(torch.tensor(dy))
    # ours is the float32 computation rounded once; torch's CPU float16 kernels are up to
    # about 4 float16 ulps (4 · 2⁻¹⁰ relative) from the exact value (rms_norm, layer_norm)
    np.testing.assert_allclose(
        y.astype(np.float32), yt.detach().float().numpy(), rtol=5e-3, atol=2e-3
    )
    want = _float64_forward(case, arrays).astype(np.float16)  # the exact value, rounded
    np.testing.assert_allclose(y.astype(np.float32), want.astype(np.float32), rtol=2e-3, atol=1e-3)
    for g, t in zip(grads, ts, strict=True):
        if g is not None:
            assert g.dtype == np.float16
            want = t.grad.float().numpy()
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(g.astype(np.float32), want, rtol=4e-3, atol=4e-3 * scale)


def _float64_forward(case: str, arrays: list) -> np.ndarray:
    """The op on the float16 inputs computed in float64 (the exact value, nearly)."""
    ts = [None if a is None else torch.tensor(a.astype(np.float64)) for a in arrays]
    return _torch_forward(case, ts).numpy()


def _torch_forward(case: str, ts: list) -> Any:
    tf = torch.nn.functional
    if case == "batch_norm":
        return tf.batch_norm(*ts)
    if case == "batch_norm_train":
        return tf.batch_norm(*ts, training=True)
    if case == "layer_norm":
        return tf.layer_norm(ts[0], (5,), ts[1], ts[2])
    if case == "group_norm":
        return tf.group_norm(ts[0], 3, ts[1], ts[2])
    return tf.rms_norm(ts[0], (5,), ts[1])


@needs_torch
@pytest.mark.parametrize(
    "case", ["batch_norm", "batch_norm_train", "layer_norm", "group_norm", "rms_norm"]
)
def test_non_finite_values_propagate_as_torch(rng, case):  # fmt: skip
    fn, arrays, opts = _forwards(rng)[case]
    x = arrays[0].copy()
    x[0, 0, 0] = np.nan  # sample 0, channel 0
    x[1, 2, 3] = np.inf  # sample 1, channel 2
    x[3, 4, 1] = -np.inf  # sample 3, channel 4
    arrays = [x, *arrays[1:]]
    op = case.removesuffix("_train")
    with np.errstate(invalid="ignore"):
        y, cache = fn(*arrays, **opts)
        dy = rng.standard_normal(y.shape)
        grads = getattr(F, op + "_backward")(dy, cache)
    ts = [None if a is None else torch.tensor(a) for a in arrays]
    ts[0].requires_grad_(True)
    yt = _torch_forward(case, ts)
    yt.backward(torch.tensor(dy))
    want = yt.detach().numpy()
    np.testing.assert_array_equal(np.isnan(y), np.isnan(want))
    np.testing.assert_allclose(y, want, rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(np.isfinite(grads[0]), np.isfinite(ts[0].grad.numpy()))


# -- layers -----------------------------------------------------------------------------------

LAYERS = [
    ("BatchNorm1d(3)", (5, 3)),
    ("BatchNorm1d(3, momentum=None)", (4, 3, 6)),
    ("BatchNorm2d(3, momentum=0.3, eps=1e-3)", (4, 3, 4, 5)),
    ("BatchNorm2d(3, affine=False)", (4, 3, 2, 2)),
    ("BatchNorm2d(3, momentum=None, bias=False)", (4, 3, 2, 2)),
    ("BatchNorm3d(3, track_running_stats=False)", (2, 3, 2, 3, 2)),
    ("LayerNorm(6)", (3, 4, 6)),
    ("LayerNorm((4, 6), bias=False)", (3, 4, 6)),
    ("LayerNorm(6, elementwise_affine=False)", (3, 4, 6)),
    ("GroupNorm(2, 4)", (3, 4, 5)),
    ("GroupNorm(4, 4, affine=False)", (3, 4, 5)),
    ("GroupNorm(1, 4, eps=1e-3, bias=False)", (3, 4, 2, 2)),
    ("RMSNorm(6)", (3, 4, 6)),
    ("RMSNorm([4, 6], eps=1e-3, elementwise_affine=False)", (3, 4, 6)),
]


@needs_torch
@pytest.mark.parametrize(("spec", "shape"), LAYERS)
def test_layers_match_torch_in_train_and_eval_over_steps(rng, spec, shape):
    ours = eval(f"nn.{spec}").to("numpy", dtype="float64")
    theirs = eval(f"torch.nn.{spec}").double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    # perturbed parameters and buffers, loaded into torch's module
    for k, v in ours.state_dict().items():
        if np.issubdtype(np.asarray(v).dtype, np.floating):
            ours.load_state_dict({**ours.state_dict(), k: v + 0.3 * rng.random(v.shape)})
    theirs.load_state_dict({k: torch.tensor(np.asarray(v)) for k, v in ours.state_dict().items()})
    for step, training in enumerate([True, True, True, False, True, False]):
        ours.train(training)
        theirs.train(training)
        x = rng.standard_normal(shape) * 2 + step
        dy = rng.standard_normal(shape)
        before = {k: np.array(v, copy=True) for k, v in ours.state_dict().items()}
        y, backprop = ours(x)
        after_forward = {k: np.array(v, copy=True) for k, v in ours.state_dict().items()}
        xt = torch.tensor(x, requires_grad=True)
        yt = theirs(xt)
        yt.backward(torch.tensor(dy))
        dx = backprop(dy)
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
        for (name, p), tp in zip(ours.named_parameters(), theirs.parameters(), strict=True):
            np.testing.assert_allclose(
                p.grad, tp.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=name
            )
        state = ours.state_dict()
        for k, v in theirs.state_dict().items():  # buffers after the update
            np.testing.assert_allclose(
                np.asarray(state[k]), v.numpy(), rtol=1e-12, atol=1e-14, err_msg=k
            )
            np.testing.assert_array_equal(
                np.asarray(state[k]), after_forward[k]
            )  # backprop: no change
            if not training:
                np.testing.assert_array_equal(np.asarray(state[k]), before[k])
        ours.zero_grad()
        theirs.zero_grad()
    # and torch's trained state back into a fresh layer of ours
    fresh = eval(f"nn.{spec}").to("numpy", dtype="float64")
    fresh.load_state_dict(theirs.state_dict())
    for k, v in fresh.state_dict().items():
        np.testing.assert_array_equal(np.asarray(v), theirs.state_dict()[k].numpy())


def test_batch_norm_layer_buffers(rng):
    layer = nn.BatchNorm1d(4)
    assert list(layer.state_dict()) == [
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "num_batches_tracked",
    ]
    assert layer.num_batches_tracked.dtype == np.int64 and layer.num_batches_tracked.shape == ()
    old_mean = layer.running_mean
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y, backprop = layer(x)
    assert layer.running_mean is not old_mean  # reassigned, the old array untouched
    np.testing.assert_array_equal(old_mean, 0)
    assert int(layer.num_batches_tracked) == 1 and isinstance(layer.num_batches_tracked, np.ndarray)
    backprop(np.ones_like(y))
    layer.eval()
    y_eval, _ = layer(x)
    assert int(layer.num_batches_tracked) == 1
    assert y_eval.dtype == np.float32
    layer.to("numpy", dtype="float64")
    assert layer.running_var.dtype == np.float64 and layer.num_batches_tracked.dtype == np.int64
    assert nn.BatchNorm2d(3, track_running_stats=False).state_dict().keys() == {"weight", "bias"}
    assert list(nn.BatchNorm2d(3, affine=False, track_running_stats=False).state_dict()) == []


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: nn.BatchNorm1d(3)(np.ones((2, 3, 4, 5))), r"BatchNorm1d: expected 2D or 3D input \(got 4D input\)"),
        (lambda: nn.BatchNorm2d(3)(np.ones((2, 3, 4))), r"BatchNorm2d: expected 4D input \(got 3D input\)"),
        (lambda: nn.BatchNorm3d(3)(np.ones((2, 3, 4))), r"BatchNorm3d: expected 5D input \(got 3D input\)"),
        (lambda: nn.GroupNorm(3, 4), r"GroupNorm: num_channels \(4\) must be divisible by num_groups \(3\)"),
        (lambda: nn.BatchNorm1d(3, momentum="0.1"), r"BatchNorm1d: argument 'momentum' expected a real number"),
        (lambda: nn.BatchNorm1d(3, affine=1), r"BatchNorm1d: argument 'affine' expected a bool"),
        (lambda: nn.LayerNorm(4.0), r"LayerNorm: argument 'normalized_shape' expected an int"),
        (lambda: nn.RMSNorm(4, eps="1e-6"), r"RMSNorm: argument 'eps' expected a real number"),
        (lambda: nn.GroupNorm(2, 4, dtype="int64"), r"GroupNorm: argument 'dtype' expected a real floating"),
    ],
)  # fmt: skip
def test_layer_errors(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_layers_run_on_every_backend_and_match_numpy(xp, rng):
    """A few training steps of BatchNorm2d (buffers updated on the backend's device), then
    the other layers, against the same layers on NumPy."""
    x = rng.standard_normal((4, 3, 2, 5))
    for build in (
        lambda: nn.BatchNorm2d(3, momentum=None),
        lambda: nn.LayerNorm(5),
        lambda: nn.GroupNorm(3, 3),
        lambda: nn.RMSNorm((2, 5)),
    ):
        ref, got = build(), build().to(xp._xp, xp.device)
        for _ in range(2):
            y_ref, bp_ref = ref(x.astype(np.float32))
            y, bp = got(xp.asarray(x, dtype=xp.float32))
            assert library_name(y) == library_name(xp.asarray(np.ones(1)))
            np.testing.assert_allclose(to_np(y), y_ref, rtol=1e-5, atol=1e-5)
            dy = np.ones(y_ref.shape, dtype=np.float32)
            np.testing.assert_allclose(to_np(bp(xp.asarray(dy))), bp_ref(dy), rtol=1e-4, atol=1e-5)
        for (k, a), (_, b) in zip(got.state_dict().items(), ref.state_dict().items(), strict=True):
            np.testing.assert_allclose(to_np(a), b, rtol=1e-5, atol=1e-6, err_msg=k)
        got.eval()
        ref.eval()
        np.testing.assert_allclose(
            to_np(got(xp.asarray(x, dtype=xp.float32))[0]),
            ref(x.astype(np.float32))[0],
            rtol=1e-5,
            atol=1e-5,
        )
