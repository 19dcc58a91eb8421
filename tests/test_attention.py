"""scaled_dot_product_attention and nn.MultiheadAttention: a loop reference, float64 gradient
checks of every option, every backend against NumPy, torch parity of values and of every
gradient (parameters too), fully masked rows as torch, bad input."""

from __future__ import annotations

import itertools
import math
import warnings
from typing import Any

import numpy as np
import pytest
from helpers import compare_with_numpy, to_np

from backprop_xp import functional as F
from backprop_xp import nn
from backprop_xp.testing import assert_close, gradcheck

SDPA = F.scaled_dot_product_attention
SDPA_BW = F.scaled_dot_product_attention_backward


def _torch():
    return pytest.importorskip("torch")


# ---------------------------------------------------------------------------------------------
# The reference: loops over batch items and target positions


def ref_sdpa(q, k, v, mask=None, is_causal=False, scale=None, enable_gqa=False):
    """Plain NumPy: for each batch item and target row, the softmax over the source
    positions that take part (a bool mask: True attends; a float mask is added). GQA repeats
    each key and value head for its group of query heads, as torch's repeat_interleave."""
    causal = is_causal
    if enable_gqa:
        k = np.repeat(k, q.shape[-3] // k.shape[-3], axis=-3)
        v = np.repeat(v, q.shape[-3] // v.shape[-3], axis=-3)
    batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    L, E = q.shape[-2:]
    S, Ev = v.shape[-2:]
    s = 1 / math.sqrt(E) if scale is None else scale
    qb, kb, vb = (np.broadcast_to(a, batch + a.shape[-2:]) for a in (q, k, v))
    mb = None if mask is None else np.broadcast_to(mask, (*batch, L, S))
    out = np.zeros((*batch, L, Ev))
    for idx in np.ndindex(*batch):
        for i in range(L):
            logits = np.array([s * np.dot(qb[idx][i], kb[idx][j]) for j in range(S)])
            if mb is not None and mb.dtype == bool:
                logits = np.where(mb[idx][i], logits, -np.inf)
            elif mb is not None:
                logits = logits + mb[idx][i]
            if causal:
                logits = np.where(np.arange(S) <= i, logits, -np.inf)
            if S == 0 or np.all(logits == -np.inf):
                continue  # a row masked entirely: zeros, as torch
            p = np.exp(logits - logits.max())
            p /= p.sum()
            out[idx][i] = p @ vb[idx]
    return out


def _inputs(rng, qs=(2, 3), ks=None, vs=None, L=4, S=5, E=3, Ev=2):
    ks = qs if ks is None else ks
    vs = ks if vs is None else vs
    return (
        rng.standard_normal((*qs, L, E)),
        rng.standard_normal((*ks, S, E)),
        rng.standard_normal((*vs, S, Ev)),
    )


def _bool_mask(rng, shape, dead_row=True):
    m = rng.random(shape) < 0.6
    m[..., 0] = True  # every row attends something ...
    if dead_row:
        m[..., 1, :] = False  # ... except row 1, which is masked entirely
    return m


def _float_mask(rng, shape, dead_row=True):
    m = rng.standard_normal(shape)
    m[..., 2] = -np.inf  # a column that never takes part
    if dead_row:
        m[..., 1, :] = -np.inf
    return m


# name -> (build(rng) -> (q, k, v, mask), options)
CASES: dict[str, Any] = {
    "plain": (lambda r: (*_inputs(r), None), {}),
    "bool_mask": (lambda r: (*_inputs(r), _bool_mask(r, (4, 5))), {}),
    "bool_mask_batched": (lambda r: (*_inputs(r), _bool_mask(r, (2, 1, 4, 5))), {}),
    "float_mask": (lambda r: (*_inputs(r), _float_mask(r, (4, 5))), {}),
    "float_mask_per_head": (lambda r: (*_inputs(r), _float_mask(r, (3, 4, 5))), {}),
    "float_mask_full": (lambda r: (*_inputs(r), _float_mask(r, (2, 3, 4, 5))), {}),
    "causal": (lambda r: (*_inputs(r), None), {"is_causal": True}),
    "causal_L_gt_S": (lambda r: (*_inputs(r, L=6, S=3), None), {"is_causal": True}),
    "scale": (lambda r: (*_inputs(r), None), {"scale": 0.3}),
    "negative_scale": (lambda r: (*_inputs(r), _float_mask(r, (4, 5), False)), {"scale": -1.5}),
    "broadcast_batch": (lambda r: (*_inputs(r, qs=(2, 1), ks=(3,), vs=(1, 1)), None), {}),
    "broadcast_v": (lambda r: (*_inputs(r, qs=(3,), ks=(1,), vs=(2, 3)), None), {}),
    "2d": (lambda r: (*_inputs(r, qs=()), None), {}),
    "L_ne_S_E_ne_Ev": (lambda r: (*_inputs(r, L=2, S=7, E=5, Ev=4), None), {}),
    "gqa": (lambda r: (*_inputs(r, qs=(2, 6), ks=(2, 2), vs=(2, 3)), None), {"enable_gqa": True}),
    "gqa_mask": (
        lambda r: (*_inputs(r, qs=(1, 4), ks=(2, 2), vs=(1,)), _float_mask(r, (4, 4, 5))),
        {"enable_gqa": True},
    ),
    "gqa_causal": (
        lambda r: (*_inputs(r, qs=(4,), ks=(1,), vs=(2,)), None),
        {"enable_gqa": True, "is_causal": True},
    ),
}


def _build(name: str, rng: np.random.Generator):
    build, options = CASES[name]
    return list(build(rng)), dict(options)


# ---------------------------------------------------------------------------------------------
# scaled_dot_product_attention


@pytest.mark.parametrize("case", list(CASES))
def test_forward_matches_loop_reference(xp, dtype, rng, case):
    (q, k, v, m), opts = _build(case, rng)
    args = [xp.asarray(a, dtype=dtype) for a in (q, k, v)]
    if m is not None:
        args.append(xp.asarray(m) if m.dtype == bool else xp.asarray(m, dtype=dtype))
    out, _ = SDPA(*args, **opts)
    assert out.dtype == dtype
    want = ref_sdpa(q, k, v, m, **opts)
    np.testing.assert_allclose(to_np(out), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", list(CASES))
def test_gradcheck(rng, case):
    """Every input, the float mask included (its gradient is that of the logits)."""
    (q, k, v, m), opts = _build(case, rng)
    gradcheck(SDPA, [q, k, v, m], opts)


def test_gradcheck_on_every_backend(xp, rng):
    (q, k, v, m), opts = _build("float_mask_per_head", rng)
    gradcheck(SDPA, [xp.asarray(a) for a in (q, k, v, m)], opts)


@pytest.mark.parametrize("p", [0.3, 1.0])
def test_gradcheck_dropout(rng, p):
    """A seed fixes the dropout mask, so the op is a function and differences apply."""
    q, k, v = _inputs(rng)
    gradcheck(SDPA, [q, k, v, _float_mask(rng, (4, 5))], {"dropout_p": p, "seed": 7})


@pytest.mark.parametrize(
    "case", ["bool_mask", "float_mask_per_head", "causal", "broadcast_batch", "gqa_mask"]
)
def test_matches_numpy(xp, dtype, rng, case):
    (q, k, v, m), opts = _build(case, rng)
    name = "float64" if "64" in str(dtype) else "float32"
    inputs = [q, k, v] + ([] if m is None else [m])
    out_shape = ref_sdpa(q, k, v, m, **opts).shape
    compare_with_numpy(xp, SDPA, SDPA_BW, inputs, opts, rng.standard_normal(out_shape), name)


def test_gradient_tuple_layout(xp, rng):
    q, k, v = (xp.asarray(a) for a in _inputs(rng))
    for mask, has_grad in ((None, False), (xp.asarray(_bool_mask(rng, (4, 5))), False)):
        out, cache = SDPA(q, k, v, mask)
        grads = SDPA_BW(xp.ones_like(out), cache)
        assert len(grads) == 4 and (grads[3] is not None) == has_grad
    out, cache = SDPA(q, k, v, is_causal=True)
    assert SDPA_BW(xp.ones_like(out), cache)[3] is None
    fm = xp.asarray(_float_mask(rng, (1, 4, 5)))
    out, cache = SDPA(q, k, v, fm)
    dm = SDPA_BW(xp.ones_like(out), cache)[3]
    assert tuple(dm.shape) == (1, 4, 5) and dm.dtype == fm.dtype


def test_float_mask_gradient_is_the_logits_gradient_summed(rng):
    """A broadcast mask's gradient is the full one summed over the broadcast axes."""
    q, k, v = _inputs(rng)
    full = _float_mask(rng, (2, 3, 4, 5))
    small = full[:1, :1]  # (1, 1, 4, 5)
    g = rng.standard_normal((2, 3, 4, 2))
    _, c_small = SDPA(q, k, v, small)
    _, c_full = SDPA(q, k, v, np.broadcast_to(small, full.shape).copy())
    d_small = SDPA_BW(g, c_small)[3]
    d_full = SDPA_BW(g, c_full)[3]
    np.testing.assert_allclose(d_small, d_full.sum(axis=(0, 1), keepdims=True), atol=1e-14)
    np.testing.assert_allclose(d_full.sum(axis=-1), 0, atol=1e-12)  # softmax rows sum to 1


def test_rowsum_form_equals_softmax_jacobian(rng):
    """dA = P ⊙ (dP - rowsum(dO ⊙ O)) equals the softmax Jacobian product written out."""
    q, k, v = _inputs(rng, L=3, S=4)
    m = rng.standard_normal((2, 3, 3, 4))  # full shape: its gradient is dA itself
    g = rng.standard_normal((2, 3, 3, 2))
    _, cache = SDPA(q, k, v, m)
    dA = SDPA_BW(g, cache)[3]
    A = q @ np.swapaxes(k, -1, -2) / math.sqrt(3) + m
    P = np.exp(A - A.max(-1, keepdims=True))
    P /= P.sum(-1, keepdims=True)
    dP = g @ np.swapaxes(v, -1, -2)
    J = P[..., :, None] * (np.eye(4) - P[..., None, :])  # J[..., l, i, j] = dP_li / dA_lj
    want = np.einsum("...li,...lij->...lj", dP, J)
    np.testing.assert_allclose(dA, want, atol=1e-13)


# -- torch parity --------------------------------------------------------------------------


def _torch_sdpa(torch, q, k, v, m, opts, g, dtype):
    tdt = getattr(torch, dtype)
    tq, tk, tv = (torch.tensor(a, dtype=tdt, requires_grad=True) for a in (q, k, v))
    tm = None
    if m is not None:
        tm = torch.tensor(m) if m.dtype == bool else torch.tensor(m, dtype=tdt, requires_grad=True)
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, tm, **opts)
    out.backward(torch.tensor(g, dtype=tdt))
    grads = [t.grad for t in (tq, tk, tv)] + [None if tm is None or m.dtype == bool else tm.grad]
    return out.detach(), grads


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_torch(rng, case, dtype):
    """Values and every gradient (the float mask's included) against torch: 3-d inputs take
    its math kernel, 4-d ones its CPU flash kernel (or the math kernel when the mask needs a
    gradient)."""
    torch = _torch()
    (q, k, v, m), opts = _build(case, rng)
    ours = [a.astype(dtype) for a in (q, k, v)]
    if m is not None:
        ours.append(m if m.dtype == bool else m.astype(dtype))
    out, cache = SDPA(*ours, **opts)
    g = rng.standard_normal(out.shape)
    grads = SDPA_BW(g.astype(dtype), cache)
    t_out, t_grads = _torch_sdpa(torch, q, k, v, m, opts, g, dtype)
    tol = {"rtol": 1e-10, "atol": 1e-12} if dtype == "float64" else {"rtol": 2e-5, "atol": 2e-6}
    np.testing.assert_allclose(out, t_out.numpy(), **tol)
    for i, (a, b) in enumerate(zip(grads, t_grads, strict=True)):
        assert (a is None) == (b is None), i
        if a is not None:
            assert a.dtype == np.dtype(dtype)
            np.testing.assert_allclose(a, b.numpy(), err_msg=f"gradient {i}", **tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["bool", "float"])
@pytest.mark.parametrize("ndim", [3, 4])
def test_fully_masked_rows_as_torch(rng, dtype, kind, ndim):
    """torch 2.13 (math kernel for 3-d, CPU flash kernel for 4-d): a row masked entirely gives
    zeros in the output and zero gradients (never NaN), in float64 and float32."""
    torch = _torch()
    batch = (2, 2) if ndim == 4 else (2,)
    q, k, v = _inputs(rng, qs=batch)
    m = _bool_mask(rng, (4, 5)) if kind == "bool" else _float_mask(rng, (4, 5))
    ours = [a.astype(dtype) for a in (q, k, v)] + [m if kind == "bool" else m.astype(dtype)]
    out, cache = SDPA(*ours)
    g = rng.standard_normal(out.shape)
    grads = SDPA_BW(g.astype(dtype), cache)
    assert (out[..., 1, :] == 0).all()
    assert (grads[0][..., 1, :] == 0).all()
    if kind == "float":
        assert (grads[3][1] == 0).all()
    t_out, t_grads = _torch_sdpa(torch, q, k, v, m, {}, g, dtype)
    assert (t_out.numpy()[..., 1, :] == 0).all()
    for a, b in zip((out, *grads), (t_out, *t_grads), strict=True):
        if a is not None:
            assert np.isfinite(a).all()
            np.testing.assert_allclose(a, b.numpy(), rtol=2e-5, atol=2e-6)


def test_masked_nan_propagates_as_torch(rng):
    """Masks are additive (a bool mask is 0/-inf), as in torch: a NaN in a masked key or
    value still reaches the output, in every row."""
    torch = _torch()
    q, k, v = _inputs(rng)
    m = np.ones((4, 5), bool)
    m[:, 3] = False
    for which in ("k", "v"):
        kk, vv = k.copy(), v.copy()
        (kk if which == "k" else vv)[..., 3, :] = np.nan
        with np.errstate(invalid="ignore"):
            out, _ = SDPA(q, kk, vv, m)
        t = torch.nn.functional.scaled_dot_product_attention(
            *(torch.tensor(a) for a in (q, kk, vv)), torch.tensor(m)
        )
        assert np.isnan(out).all() and t.isnan().all()


def test_float16_is_computed_in_float32_as_torch(rng):
    """torch's CPU math kernel upcasts float16 to float32 and rounds the results once: ours
    too (outputs and gradients equal float32 results rounded to float16)."""
    torch = _torch()
    q, k, v = (a.astype(np.float16) for a in _inputs(rng, L=6, S=7, E=8, Ev=4))
    m = _float_mask(rng, (6, 7)).astype(np.float16)
    out, cache = SDPA(q, k, v, m)
    assert out.dtype == np.float16
    g = rng.standard_normal(out.shape).astype(np.float16)
    grads = SDPA_BW(g, cache)
    assert all(a.dtype == np.float16 for a in grads)
    out32, c32 = SDPA(*(a.astype(np.float32) for a in (q, k, v, m)))
    grads32 = SDPA_BW(g.astype(np.float32), c32)
    for a, b in zip((out, *grads), (out32, *grads32), strict=True):
        np.testing.assert_array_equal(a, b.astype(np.float16))
    t_out, t_grads = _torch_sdpa(torch, q, k, v, m, {}, g, "float16")
    for a, b in zip((out, *grads), (t_out, *t_grads), strict=True):
        np.testing.assert_allclose(a.astype(np.float32), b.float().numpy(), rtol=2e-3, atol=2e-3)


def test_float32_mask_with_float64_query_as_torch(rng):
    """torch takes a float32 mask for any query dtype; its gradient comes back float32."""
    q, k, v = _inputs(rng)
    m = _float_mask(rng, (4, 5)).astype(np.float32)
    out, cache = SDPA(q, k, v, m)
    assert out.dtype == np.float64
    dm = SDPA_BW(np.ones(out.shape), cache)[3]
    assert dm.dtype == np.float32
    want, c64 = SDPA(q, k, v, m.astype(np.float64))
    np.testing.assert_allclose(out, want, atol=1e-15)
    np.testing.assert_allclose(dm, SDPA_BW(np.ones(out.shape), c64)[3], rtol=1e-6, atol=1e-7)


def test_empty_source_gives_zeros_as_torch(xp):
    q = xp.asarray(np.ones((2, 3, 4)))
    k, v = xp.asarray(np.ones((2, 0, 4))), xp.asarray(np.ones((2, 0, 5)))
    out, cache = SDPA(q, k, v)
    assert tuple(out.shape) == (2, 3, 5) and not np.any(to_np(out))
    dq, dk, dv, _ = SDPA_BW(xp.ones_like(out), cache)
    assert not np.any(to_np(dq)) and tuple(dk.shape) == (2, 0, 4) and tuple(dv.shape) == (2, 0, 5)
    out, _ = SDPA(xp.asarray(np.ones((2, 0, 4))), xp.asarray(np.ones((2, 3, 4))), q)
    assert tuple(out.shape) == (2, 0, 4)


@pytest.mark.parametrize("options", [{}, {"is_causal": True}, {"mask": True}])
def test_memory_at_most_two_then_three_logit_sized_arrays(rng, options):
    """The forward holds at most two (..., L, S) arrays at once (the cached exponentials
    among them), the backward allocates at most two more beside the cache (NumPy's
    allocations as tracemalloc sees them)."""
    import tracemalloc

    q, k, v = _inputs(rng, qs=(4, 2), L=64, S=64, E=4, Ev=4)
    mask = _float_mask(rng, (64, 64), dead_row=False) if options.pop("mask", False) else None
    ls = 4 * 2 * 64 * 64 * 8  # bytes of one (N, H, L, S) float64 array
    small = 8 * q.nbytes  # (L, E)-sized arrays, row vectors, a (L, S) mask: 128 KiB
    SDPA_BW(np.ones((4, 2, 64, 4)), SDPA(q, k, v, mask, **options)[1])  # first-call imports
    tracemalloc.start()
    try:
        out, cache = SDPA(q, k, v, mask, **options)
        _, fwd_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        grads = SDPA_BW(np.ones(out.shape), cache)
        _, bwd_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fwd_peak <= 2 * ls + small, fwd_peak / ls
    assert bwd_peak - before <= 2 * ls + 2 * small, (bwd_peak - before) / ls
    assert grads[0].shape == q.shape


# -- dropout -------------------------------------------------------------------------------


def test_dropout_seed_repeats_and_masks_differ(xp, rng):
    q, k, v = (xp.asarray(a) for a in _inputs(rng, L=8, S=8))
    a, _ = SDPA(q, k, v, dropout_p=0.5, seed=1)
    b, _ = SDPA(q, k, v, dropout_p=0.5, seed=1)
    c, _ = SDPA(q, k, v, dropout_p=0.5, seed=2)
    assert_close(a, b, rtol=0, atol=0)
    assert not np.allclose(to_np(a), to_np(c))
    zero, _ = SDPA(q, k, v, dropout_p=1.0, seed=3)
    assert not np.any(to_np(zero))
    plain, _ = SDPA(q, k, v)
    same, _ = SDPA(q, k, v, dropout_p=0.0, seed=5)
    assert_close(same, plain, rtol=0, atol=0)


def test_dropout_keeps_weights_with_probability_1_minus_p(rng):
    """With v = I the output rows are the dropped-out weights: a fraction p is zero, the rest
    are P / (1 - p); averaged over many seeds they are P."""
    L = S = 16
    q, k = rng.standard_normal((1, L, 4)), rng.standard_normal((1, S, 4))
    v = np.eye(S)[None]
    P, _ = SDPA(q, k, v)
    p = 0.25
    outs = np.stack([SDPA(q, k, v, dropout_p=p, seed=s)[0] for s in range(200)])
    assert abs((outs == 0).mean() - p) < 0.01
    np.testing.assert_allclose(outs[0][outs[0] != 0], (P / (1 - p))[outs[0] != 0])
    sigma = P * np.sqrt(p / ((1 - p) * len(outs)))  # of the mean of 200 draws
    assert (np.abs(outs.mean(axis=0) - P) <= 5 * sigma + 1e-12).all()


def test_dropout_p_as_numpy_scalar_keeps_float32(rng):
    q, k, v = (a.astype(np.float32) for a in _inputs(rng))
    a, cache = SDPA(q, k, v, dropout_p=np.float64(0.3), seed=np.int64(4))
    b, _ = SDPA(q, k, v, dropout_p=0.3, seed=4)
    assert a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert all(g.dtype == np.float32 for g in SDPA_BW(np.ones(a.shape), cache)[:3])


# -- cotangents and bad input --------------------------------------------------------------


def test_cotangent_checks(xp, rng):
    q, k, v = (xp.asarray(a, dtype=xp.float32) for a in _inputs(rng))
    out, cache = SDPA(q, k, v)
    g32 = SDPA_BW(xp.ones_like(out), cache)
    g64 = SDPA_BW(xp.asarray(np.ones(tuple(out.shape))), cache)
    for a, b in zip(g64[:3], g32[:3], strict=True):
        assert a.dtype == xp.float32
        assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"scaled_dot_product_attention_backward: argument 'dy'"):
        SDPA_BW(xp.asarray(np.ones((2, *out.shape)), dtype=xp.float32), cache)
    with pytest.raises(TypeError, match=r"argument 'dy' expected an array, got float"):
        SDPA_BW(1.0, cache)


BAD = {
    "E mismatch": ((2, 4, 3), (2, 5, 2), (2, 5, 2), None, {}, ValueError, "'key' expected shape"),
    "S mismatch": ((2, 4, 3), (2, 5, 3), (2, 6, 2), None, {}, ValueError, "'value' expected"),
    "1-d query": ((3,), (5, 3), (5, 2), None, {}, ValueError, "'query' expected an array of at"),
    "batch": ((2, 4, 3), (3, 5, 3), (3, 5, 2), None, {}, ValueError, "leading axes of 'query'"),
    "v batch": ((2, 4, 3), (2, 5, 3), (3, 5, 2), None, {}, ValueError, "leading axes of 'value'"),
    "mask shape": ((2, 4, 3), (2, 5, 3), (2, 5, 2), (4, 4), {}, ValueError, "'attn_mask' expected"),
    "mask batch": ((2, 4, 3), (2, 5, 3), (2, 5, 2), (3, 2, 4, 5), {}, ValueError, "'attn_mask'"),
    "mask+causal": (
        (2, 4, 3),
        (2, 5, 3),
        (2, 5, 2),
        (4, 5),
        {"is_causal": True},
        ValueError,
        "'attn_mask' and 'is_causal=True' are exclusive",
    ),
    "dropout_p": (
        (2, 4, 3),
        (2, 5, 3),
        (2, 5, 2),
        None,
        {"dropout_p": 1.5},
        ValueError,
        "'dropout_p'",
    ),
    "seed": ((2, 4, 3), (2, 5, 3), (2, 5, 2), None, {"seed": 1.5}, TypeError, "'seed'"),
    "no seed": (
        (2, 4, 3),
        (2, 5, 3),
        (2, 5, 2),
        None,
        {"dropout_p": 0.1},
        TypeError,
        "'seed' expected an int with dropout_p=0.1",
    ),
    "gqa heads": (
        (6, 4, 3),
        (4, 5, 3),
        (2, 5, 2),
        None,
        {"enable_gqa": True},
        ValueError,
        "'key' expected a number of heads .* divides the query's 6",
    ),
    "gqa 2-d": (
        (4, 3),
        (5, 3),
        (5, 2),
        None,
        {"enable_gqa": True},
        ValueError,
        "'query' expected an array of at least 3 axes",
    ),
    "no gqa": ((6, 4, 3), (2, 5, 3), (2, 5, 2), None, {}, ValueError, "leading axes of 'query'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input(xp, case):
    qs, ks, vs, ms, opts, err, msg = BAD[case]
    args = [xp.asarray(np.ones(s)) for s in (qs, ks, vs)]
    if ms is not None:
        args.append(xp.asarray(np.zeros(ms)))
    with pytest.raises(err, match=rf"^scaled_dot_product_attention: .*{msg}"):
        SDPA(*args, **opts)


def test_bad_dtypes(xp):
    f = xp.asarray(np.ones((2, 4, 3)), dtype=xp.float32)
    k = xp.asarray(np.ones((2, 5, 3)), dtype=xp.float32)
    v = xp.asarray(np.ones((2, 5, 2)), dtype=xp.float32)
    op = "^scaled_dot_product_attention: argument"
    with pytest.raises(TypeError, match=rf"{op} 'query' expected a real floating"):
        SDPA(xp.asarray(np.ones((2, 4, 3), dtype=np.int64)), k, v)
    with pytest.raises(TypeError, match=rf"{op} 'key' expected dtype"):
        SDPA(f, xp.asarray(np.ones((2, 5, 3))), v)
    with pytest.raises(TypeError, match=rf"{op} 'value' expected dtype"):
        SDPA(f, k, xp.asarray(np.ones((2, 5, 2))))
    for bad in (np.ones((4, 5), dtype=np.int64), np.ones((4, 5))):  # int; float64 for float32
        with pytest.raises(TypeError, match=rf"{op} 'attn_mask' expected a bool array"):
            SDPA(f, k, v, xp.asarray(bad))
    with pytest.raises(TypeError, match=rf"{op} 'attn_mask' expected an array"):
        SDPA(f, k, v, [[True] * 5] * 4)


# ---------------------------------------------------------------------------------------------
# nn.MultiheadAttention


E, H, L, S, N = 8, 2, 3, 4, 2


def _mha_pair(torch, **kw):
    """Ours and torch's with the same weights: torch's initial state dict loaded into ours."""
    th = torch.nn.MultiheadAttention(E, H, dtype=torch.float64, **kw)
    with torch.no_grad():  # nonzero biases, so that their gradients and uses are tested
        for name, p in th.named_parameters():
            if "bias" in name:
                p.copy_(torch.randn(p.shape, dtype=torch.float64))
    ours = nn.MultiheadAttention(E, H, dtype="float64", rng=0, **kw)
    assert list(ours.state_dict()) == list(th.state_dict())
    ours.load_state_dict(th.state_dict())
    return ours, th


def _seq(rng, T, F, batch_first, unbatched=False):
    if unbatched:
        return rng.standard_normal((T, F))
    return rng.standard_normal((N, T, F) if batch_first else (T, N, F))


def _mask(rng, kind, shape):
    if kind is None:
        return None
    if kind == "bool":
        m = rng.random(shape) < 0.3
        m[..., 0] = False  # never a row masked entirely here (the NaN case is tested apart)
        return m
    m = rng.standard_normal(shape)
    m[..., 1] = -np.inf
    return m


def _check_mha(torch, rng, kw, call, unbatched=False, query_is_kv=False):
    ours, th = _mha_pair(torch, **kw)
    bf = kw.get("batch_first", False)
    q = _seq(rng, L, E, bf, unbatched)
    k = q if query_is_kv else _seq(rng, S, kw.get("kdim") or E, bf, unbatched)
    v = q if query_is_kv else _seq(rng, S, kw.get("vdim") or E, bf, unbatched)
    (out, w), backprop = ours(q, k, v, **call)
    g = rng.standard_normal(out.shape)
    dq, dk, dv = backprop(g)
    tq = torch.tensor(q, requires_grad=True)
    tk = tq if query_is_kv else torch.tensor(k, requires_grad=True)
    tv = tq if query_is_kv else torch.tensor(v, requires_grad=True)
    tcall = {n: torch.tensor(a) if isinstance(a, np.ndarray) else a for n, a in call.items()}
    with warnings.catch_warnings():  # torch deprecates a bool mask beside a float one
        warnings.filterwarnings("ignore", "Support for mismatched", UserWarning)
        t_out, t_w = th(tq, tk, tv, **tcall)
    t_out.backward(torch.tensor(g))
    tol = {"rtol": 1e-9, "atol": 1e-11, "equal_nan": True}
    what = f"{kw} {sorted(call)}"
    np.testing.assert_allclose(out, t_out.detach().numpy(), err_msg=what, **tol)
    assert (w is None) == (t_w is None), what
    if w is not None:
        np.testing.assert_allclose(w, t_w.detach().numpy(), err_msg=what, **tol)
    if query_is_kv:
        np.testing.assert_allclose(dq + dk + dv, tq.grad.numpy(), err_msg=what, **tol)
    else:
        for a, b in zip((dq, dk, dv), (tq, tk, tv), strict=True):
            np.testing.assert_allclose(a, b.grad.numpy(), err_msg=what, **tol)
    t_params = dict(th.named_parameters())
    assert [n for n, _ in ours.named_parameters()] == list(t_params)
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(p.grad, t_params[name].grad.numpy(), err_msg=name, **tol)
    return out, w, ours


def test_mha_state_dict_keys_and_shapes_are_torchs():
    torch = _torch()
    for kw in itertools.product([None, 5], [None, 6], [True, False], [True, False]):
        kdim, vdim, bias, bkv = kw
        args = {"kdim": kdim, "vdim": vdim, "bias": bias, "add_bias_kv": bkv}
        th = torch.nn.MultiheadAttention(E, H, **args)
        ours = nn.MultiheadAttention(E, H, rng=0, **args)
        assert list(ours.state_dict()) == list(th.state_dict()), args
        for (n, a), (_, b) in zip(ours.state_dict().items(), th.state_dict().items(), strict=True):
            assert tuple(a.shape) == tuple(b.shape), n
        # both ways: torch's weights into ours, ours into torch's
        ours.load_state_dict(th.state_dict())
        th.load_state_dict({n: torch.tensor(a) for n, a in ours.state_dict().items()})


def test_mha_initialization_is_torchs():
    m = nn.MultiheadAttention(64, 4, rng=0)
    w = m.in_proj_weight.data
    bound = math.sqrt(6 / (64 + 3 * 64))  # xavier_uniform_ of (3E, E)
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    assert not m.in_proj_bias.data.any() and not m.out_proj.bias.data.any()
    assert np.abs(m.out_proj.weight.data).max() <= 1 / 8  # Linear's U(±1/sqrt(E))
    sep = nn.MultiheadAttention(64, 4, kdim=32, vdim=16, add_bias_kv=True, rng=0)
    assert np.abs(sep.k_proj_weight.data).max() <= math.sqrt(6 / (64 + 32))
    assert np.abs(sep.v_proj_weight.data).max() <= math.sqrt(6 / (64 + 16))
    assert abs(sep.bias_k.data.std() - 1 / 8) < 0.05  # xavier_normal_: N(0, 1/E)
    again = nn.MultiheadAttention(64, 4, rng=0)
    np.testing.assert_array_equal(again.in_proj_weight.data, w)


KPM = [None, "bool", "float"]
AM = [None, "bool2", "float2", "bool3", "float3"]


def test_mha_matches_torch_every_combination(rng):
    """kdim/vdim, bias, batch_first, key_padding_mask (none, bool, float), attn_mask (none,
    bool or float, (L, S) or (N·H, L, S)), need_weights, average_attn_weights: outputs,
    weights, the three input gradients and every parameter gradient."""
    torch = _torch()
    for kdim, bias, bf, kpm, am, nw, avg in itertools.product(
        [None, 5], [True, False], [False, True], KPM, AM, [True, False], [True, False]
    ):
        if not nw and not avg:
            continue  # average_attn_weights has no effect without the weights
        kw = {"kdim": kdim, "vdim": None if kdim is None else 6, "bias": bias, "batch_first": bf}
        call = {"need_weights": nw, "average_attn_weights": avg}
        if kpm is not None:
            call["key_padding_mask"] = _mask(rng, kpm, (N, S))
        if am is not None:
            shape = (L, S) if am.endswith("2") else (N * H, L, S)
            call["attn_mask"] = _mask(rng, am[:-1], shape)
        _check_mha(torch, rng, kw, call)


@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("kpm", [None, "bool"])
@pytest.mark.parametrize("mask", ["causal", "other"])
def test_mha_is_causal_hint_as_torch(rng, need_weights, kpm, mask):
    """torch's is_causal is a hint that attn_mask is causal: with need_weights=False and no
    key_padding_mask the causal mask is applied (whatever attn_mask holds), else attn_mask."""
    torch = _torch()
    am = np.triu(np.ones((L, S), bool), 1) if mask == "causal" else _mask(rng, "bool", (L, S))
    call = {"attn_mask": am, "is_causal": True, "need_weights": need_weights}
    if kpm:
        call["key_padding_mask"] = _mask(rng, "bool", (N, S))
    _check_mha(torch, rng, {}, call)


@pytest.mark.parametrize("bias_kv", [False, True])
@pytest.mark.parametrize("zero_attn", [False, True])
@pytest.mark.parametrize("masks", [False, True])
@pytest.mark.parametrize("batch_first", [False, True])
def test_mha_bias_kv_and_zero_attn_match_torch(rng, bias_kv, zero_attn, masks, batch_first):
    torch = _torch()
    kw = {"add_bias_kv": bias_kv, "add_zero_attn": zero_attn, "batch_first": batch_first}
    call: dict[str, Any] = {}
    if masks:
        call = {
            "key_padding_mask": _mask(rng, "bool", (N, S)),
            "attn_mask": _mask(rng, "float", (L, S)),
        }
    _check_mha(torch, rng, kw, call)
    if masks:
        am = np.triu(np.ones((L, S), bool), 1)
        _check_mha(torch, rng, kw, {"attn_mask": am, "is_causal": True, "need_weights": False})


@pytest.mark.parametrize("avg", [True, False])
@pytest.mark.parametrize("masks", [False, True])
def test_mha_unbatched_matches_torch(rng, avg, masks):
    torch = _torch()
    call: dict[str, Any] = {"average_attn_weights": avg}
    if masks:
        call["key_padding_mask"] = _mask(rng, "bool", (S,))
        call["attn_mask"] = _mask(rng, "float", (H, L, S))
    out, w, _ = _check_mha(torch, rng, {"batch_first": True}, call, unbatched=True)
    assert out.shape == (L, E) and w.shape == ((L, S) if avg else (H, L, S))


def test_mha_self_attention_gradient_is_the_sum(rng):
    """One array passed as query, key and value: torch returns one gradient, the sum of ours."""
    torch = _torch()
    _check_mha(torch, rng, {}, {"attn_mask": _mask(rng, "float", (L, L))}, query_is_kv=True)


@pytest.mark.parametrize("need_weights", [True, False])
def test_mha_fully_masked_rows_as_torch(rng, need_weights):
    """torch's MHA takes a plain softmax when it returns the weights (NaN in a row masked
    entirely, and NaN gradients) and SDPA's (zeros) when it does not: ours the same."""
    torch = _torch()
    kpm = np.zeros((N, S), bool)
    kpm[1] = True  # every key of batch item 1 is padding
    with np.errstate(invalid="ignore"):
        out, _, m = _check_mha(
            torch, rng, {}, {"key_padding_mask": kpm, "need_weights": need_weights}
        )
    assert np.isfinite(out[:, 0]).all()
    if need_weights:
        assert np.isnan(out[:, 1]).all()
    else:  # the attention rows are zero: what remains is out_proj's bias
        np.testing.assert_allclose(out[:, 1], np.broadcast_to(m.out_proj.bias.data, (L, E)))


def test_mha_dropout(rng):
    """Training mode drops attention weights (a new mask per call, repeatable from rng);
    eval mode and dropout=0 do not."""
    m = nn.MultiheadAttention(E, H, dropout=0.5, rng=3, dtype="float64")
    q = _seq(rng, L, E, False)
    (a, wa), _ = m(q, q, q, average_attn_weights=False)
    (b, wb), _ = m(q, q, q, average_attn_weights=False)
    assert not np.allclose(a, b) and (wa == 0).any() and (wb == 0).any()
    again = nn.MultiheadAttention(E, H, dropout=0.5, rng=3, dtype="float64")
    (c, _), _ = again(q, q, q)
    np.testing.assert_array_equal(a, c)
    m.eval()
    (d, wd), _ = m(q, q, q)
    (e, _), _ = nn.MultiheadAttention(E, H, rng=3, dtype="float64")(q, q, q)
    np.testing.assert_allclose(d, e)
    np.testing.assert_allclose(wd.sum(-1), 1.0)
    m.train()
    m.dropout = 1.0  # every weight dropped: the output is out_proj's bias
    (f, _), bp = m(q, q, q)
    np.testing.assert_allclose(f, np.broadcast_to(m.out_proj.bias.data, f.shape))
    dq, dk, dv = bp(np.ones(f.shape))
    assert not dq.any() and not dk.any() and not dv.any()


def test_mha_layer_gradient_matches_differences(rng):
    """Central differences of the whole layer along random directions, every parameter."""
    m = nn.MultiheadAttention(
        E, H, kdim=5, vdim=6, add_bias_kv=True, add_zero_attn=True, rng=1, dtype="float64"
    )
    q, k, v = _seq(rng, L, E, False), _seq(rng, S, 5, False), _seq(rng, S, 6, False)
    kpm = _mask(rng, "float", (N, S))
    g = rng.standard_normal((L, N, E))

    def loss() -> float:
        (out, _), _ = m(q, k, v, key_padding_mask=kpm)
        return float(np.sum(out * g))

    (_, _), bp = m(q, k, v, key_padding_mask=kpm)
    bp(g)
    for name, p in m.named_parameters():
        base = p.data.copy()
        d = rng.standard_normal(base.shape)
        p.data = base + 1e-6 * d
        lp = loss()
        p.data = base - 1e-6 * d
        lm = loss()
        p.data = base
        np.testing.assert_allclose((lp - lm) / 2e-6, np.sum(p.grad * d), rtol=1e-6, err_msg=name)


def test_mha_on_every_backend(xp, rng):
    """The layer moved to each backend gives NumPy's outputs, input and parameter gradients."""
    kw = {"kdim": 5, "vdim": 6, "add_bias_kv": True, "batch_first": True}
    ref = nn.MultiheadAttention(E, H, rng=2, dtype="float64", **kw)
    moved = nn.MultiheadAttention(E, H, rng=2, dtype="float64", **kw).to(xp._xp, xp.device)
    q, k, v = _seq(rng, L, E, True), _seq(rng, S, 5, True), _seq(rng, S, 6, True)
    kpm = _mask(rng, "bool", (N, S))
    am = _mask(rng, "float", (L, S))
    call = {"key_padding_mask": kpm, "attn_mask": am}
    (want, w_want), bp = ref(q, k, v, **call)
    g = rng.standard_normal(want.shape)
    d_want = bp(g)
    (got, w_got), bp2 = moved(
        *(xp.asarray(a) for a in (q, k, v)), **{n: xp.asarray(a) for n, a in call.items()}
    )
    d_got = bp2(xp.asarray(g))
    for a, b in zip((got, w_got, *d_got), (want, w_want, *d_want), strict=True):
        np.testing.assert_allclose(to_np(a), b, rtol=1e-12, atol=1e-13)
    for (n, p), (_, r) in zip(moved.named_parameters(), ref.named_parameters(), strict=True):
        np.testing.assert_allclose(to_np(p.grad), r.grad, rtol=1e-12, atol=1e-13, err_msg=n)


def test_mha_backprop_once_and_dtypes(rng):
    m = nn.MultiheadAttention(E, H, rng=0)
    q = _seq(rng, L, E, False).astype(np.float32)
    (out, w), bp = m(q, q, q)
    assert out.dtype == np.float32 and w.dtype == np.float32
    grads = bp(np.ones(out.shape))  # a float64 gradient is cast, as torch
    assert all(g.dtype == np.float32 for g in grads)
    assert m.in_proj_weight.grad.dtype == np.float32
    with pytest.raises(RuntimeError, match="already run"):
        bp(np.ones(out.shape, np.float32))
    (out, _), bp = m(q, q, q)
    with pytest.raises(
        ValueError, match=r"MultiheadAttention: argument 'd_attn_output' expected shape"
    ):
        bp(np.ones((1, *out.shape), np.float32))


MHA_BAD = {
    "4-d query": (dict(q=(1, L, N, E)), ValueError, "'query' expected a 3-d"),
    "2-d key for 3-d query": (dict(k=(S, E)), ValueError, "'key' expected a 3-d"),
    "features": (dict(q=(L, N, 4)), ValueError, "'query' expected 8 features"),
    "value length": (dict(v=(S + 1, N, E)), ValueError, "'value' expected the sequence"),
    "batch": (dict(k=(S, 1, E), v=(S, 1, E)), ValueError, "'key' expected batch size 2"),
    "kpm shape": (
        dict(kpm=np.zeros((N, S + 1), bool)),
        ValueError,
        "'key_padding_mask' expected shape",
    ),
    "kpm dtype": (
        dict(kpm=np.zeros((N, S), np.int64)),
        TypeError,
        "'key_padding_mask' expected a bool or",
    ),
    "am shape": (dict(am=np.zeros((N, L, S))), ValueError, "'attn_mask' expected shape"),
    "am dtype": (
        dict(am=np.zeros((L, S), np.float64)),
        TypeError,
        "'attn_mask' expected dtype float32",
    ),
    "query dtype": (dict(dtype=np.float64), TypeError, "'query' expected dtype float32"),
    "is_causal": (dict(causal=True), ValueError, "is_causal=True needs attn_mask"),
    "is_causal, int am": (
        dict(causal=True, am=np.zeros((L, S), np.int64), need_weights=False),
        TypeError,
        "'attn_mask' expected a bool or floating",
    ),
}


@pytest.mark.parametrize("case", list(MHA_BAD))
def test_mha_bad_input(case):
    spec, err, msg = MHA_BAD[case]
    m = nn.MultiheadAttention(E, H, rng=0)
    dt = spec.get("dtype", np.float32)
    q, k, v = (
        np.ones(spec.get(n, d), dt)
        for n, d in (("q", (L, N, E)), ("k", (S, N, E)), ("v", (S, N, E)))
    )
    kw = {
        "key_padding_mask": spec.get("kpm"),
        "attn_mask": spec.get("am"),
        "is_causal": spec.get("causal", False),
        "need_weights": spec.get("need_weights", True),
    }
    with pytest.raises(err, match=rf"^MultiheadAttention: .*{msg}"):
        m(q, k, v, **kw)


def test_mha_bad_constructor_arguments():
    with pytest.raises(
        ValueError, match=r"^MultiheadAttention: argument 'embed_dim' expected a multiple"
    ):
        nn.MultiheadAttention(10, 3)
    with pytest.raises(ValueError, match=r"'num_heads' expected a positive int"):
        nn.MultiheadAttention(8, 0)
    with pytest.raises(TypeError, match=r"'dropout' expected a real number"):
        nn.MultiheadAttention(8, 2, dropout="0.1")
    with pytest.raises(TypeError, match=r"'batch_first' expected a bool"):
        nn.MultiheadAttention(8, 2, batch_first=1)
