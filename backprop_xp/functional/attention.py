r"""Scaled dot-product attention, as ``torch.nn.functional.scaled_dot_product_attention``.

Notation
--------
- ``query (..., L, E)``, ``key (..., S, E)``, ``value (..., S, Ev)``: ``L`` target and ``S``
  source positions; the leading (batch, head) axes broadcast against each other as in
  ``matmul``.
- :math:`s` the scale (default :math:`1/\sqrt{E}`), :math:`M` the additive mask,
  :math:`A = s\,QK^\top + M` the logits, :math:`P = \mathrm{softmax}(A)` over the last axis,
  :math:`O = PV` the output.

Masks
-----
A boolean ``attn_mask`` marks with ``True`` the positions that take part (torch's SDPA
convention; ``nn.MultiheadAttention`` uses the opposite one) and becomes
:math:`M = 0` there and :math:`-\infty` elsewhere; a floating mask is added as it is and
gets a gradient (:math:`\partial L/\partial A`, summed over the axes it was broadcast
along). ``is_causal=True`` is the upper-left aligned causal mask: target ``i`` sees source
``j <= i``. A row that is masked everywhere (all of its logits :math:`-\infty`) gives zeros
in the output and zero gradients, as torch's math kernel and its CPU flash kernel do (both
checked against torch 2.13).

Speed and memory
----------------
Six batched matmuls, each one call over all batch and head axes: :math:`QK^\top` and
:math:`PV` forward; :math:`G V^\top`, :math:`P^\top G`, :math:`dA\,K` and
:math:`dA^\top Q` backward. The scale is folded into ``query`` (an ``(L, E)`` pass, not an
``(L, S)`` one), and the softmax's division by the row sums into the ``(L, Ev)`` output and
its gradient (:math:`P` itself is never formed: the cache keeps :math:`e^{A - \max A}` and
the row factors). A boolean or causal mask becomes an additive ``0``/``-inf`` array of the
mask's own shape (the causal one built on the device from two ``arange``), added in the
one pass that would otherwise apply it. The largest arrays are ``(..., L, S)``: at most two
live at once in the forward (the cached exponentials among them), and three in the backward
(the cached exponentials, :math:`dP` and one temporary), plus a dropout mask when
``dropout_p > 0``.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, NamedTuple

from ..backend import device
from ._validation import (
    backward_op,
    bool_option,
    broadcasts_to,
    check_floating,
    check_same_dtype,
    cotangent_namespace,
    forward_op,
    op_inputs,
    real_option,
    shape_error,
)
from .dropout import dropout_seed, keep_mask
from .losses import _accumulator

__all__ = ["scaled_dot_product_attention", "scaled_dot_product_attention_backward"]

Array = Any

_OP = "scaled_dot_product_attention"


# --------------------------------------------------------------------------- attention dropout


# --------------------------------------------------------------------------- shapes


def _broadcast(op: str, a: tuple[int, ...], b: tuple[int, ...], what: str) -> tuple[int, ...]:
    """The broadcast of two batch shapes (NumPy's rule), or an error naming ``what``."""
    n = max(len(a), len(b))
    a, b = (1,) * (n - len(a)) + a, (1,) * (n - len(b)) + b
    out = []
    for x, y in zip(a, b, strict=True):
        if x != y and 1 not in (x, y):
            raise ValueError(f"{op}: {what}")
        out.append(y if x == 1 else x)
    return tuple(out)


def _sum_to(xp: ModuleType, g: Array, shape: tuple[int, ...]) -> Array:
    """``g`` summed over the axes along which an array of ``shape`` was broadcast to it."""
    if tuple(g.shape) == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1
    )
    return xp.reshape(xp.sum(g, axis=axes, keepdims=True), shape)


def _group(xp: ModuleType, x: Array, G: int) -> Array:
    """``(..., H·G, L, n)`` → ``(..., H, G·L, n)``: the ``G`` query heads that share one key
    (value) head stacked as rows of one matrix, so one GEMM serves them (grouped-query
    attention; head ``h`` uses key head ``h // G``, torch's ``repeat_interleave``)."""
    if G == 1:
        return x
    *lead, HG, L, n = x.shape
    return xp.reshape(x, (*lead, HG // G, G * L, n))


def _ungroup(xp: ModuleType, x: Array, G: int) -> Array:
    """The inverse of :func:`_group`."""
    if G == 1:
        return x
    *lead, H, GL, n = x.shape
    return xp.reshape(x, (*lead, H * G, GL // G, n))


# --------------------------------------------------------------------------- the op


class SDPACache(NamedTuple):
    q: Array  # scale * query, compute dtype: the key gradient is dSᵀ (sQ)
    k: Array  # compute dtype
    v: Array  # compute dtype
    e: Array  # exp(A - max A), (..., L, S): the probabilities P = e ⊙ w, before dropout
    w: Array  # 1 / rowsum(e), (..., L, 1)
    out: Array  # O in the compute dtype: rowsum(dO ⊙ O) replaces rowsum(dP ⊙ P)
    keep: Array | None  # dropout: 0 or 1/(1-p) per logit, (..., L, S)
    scale: float
    shapes: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]  # query, key, value
    mask_shape: tuple[int, ...] | None  # a floating mask's shape (it gets a gradient)
    mask_dtype: Any
    dtype: Any  # of the inputs and the output
    groups: tuple[int, int]  # query heads per key head, per value head (1, 1 without GQA)


def _attention(
    xp: ModuleType,
    query: Array,
    key: Array,
    value: Array,
    mask: Array | None,
    *,
    scale: float,
    dropout_p: float = 0.0,
    seed: int = 0,
    mask_grad: bool = False,
    safe: bool = True,
    groups: tuple[int, int] = (1, 1),
) -> tuple[Array, SDPACache]:
    """The forward on checked inputs. ``mask`` is additive (floating) or None; ``safe=False``
    gives NaN rows where every logit is ``-inf`` (a plain softmax, what
    ``nn.MultiheadAttention`` returns with ``need_weights=True``) instead of zeros."""
    dtype = query.dtype
    ct = _accumulator(xp, dtype)  # float16 runs in float32, as torch's CPU math kernel
    shapes = (tuple(query.shape), tuple(key.shape), tuple(value.shape))
    mask_shape = tuple(mask.shape) if (mask is not None and mask_grad) else None
    mask_dtype = None if mask is None else mask.dtype
    if ct != dtype:
        query, key, value = (xp.astype(a, ct) for a in (query, key, value))
    if mask is not None and mask.dtype != ct:
        mask = xp.astype(mask, ct)
    dev = device(query)
    q = query * scale
    Gk, Gv = groups
    A = _ungroup(xp, xp.matmul(_group(xp, q, Gk), xp.matrix_transpose(key)), Gk)
    if mask is not None:
        A = A + mask
    one = xp.ones((), dtype=ct, device=dev)
    if A.shape[-1] == 0:  # no source positions: the output is zero, as in torch
        w = xp.ones((*A.shape[:-1], 1), dtype=ct, device=dev)
    else:
        m = xp.max(A, axis=-1, keepdims=True)
        dead = m == -math.inf  # every logit -inf: the row is masked entirely
        fill = xp.full((), 0.0 if safe else math.nan, dtype=ct, device=dev)
        A = A - xp.where(dead, fill, m)
        A = xp.exp(A)
        # 1/rowsum: s >= 1 (exp(0) at the max) except in a dead row, where e = 0 and w = 1
        w = 1.0 / xp.where(dead, one, xp.sum(A, axis=-1, keepdims=True))
    e = A
    del A
    keep = None
    ed = e
    if dropout_p > 0.0:
        kept = 0.0 if dropout_p == 1.0 else 1.0 / (1.0 - dropout_p)
        zero = xp.zeros((), dtype=ct, device=dev)
        mask_kept = keep_mask(xp, tuple(e.shape), dropout_p, seed, dev)
        keep = xp.where(mask_kept, xp.full((), kept, dtype=ct, device=dev), zero)
        del mask_kept
        ed = e * keep
    # P = e ⊙ w is never formed: normalizing the (L, Ev) output is cheaper than the (L, S)
    # probabilities
    out = _ungroup(xp, xp.matmul(_group(xp, ed, Gv), value), Gv) * w
    del ed
    cache = SDPACache(
        q, key, value, e, w, out, keep, scale, shapes, mask_shape, mask_dtype, dtype, groups
    )
    return (out if ct == dtype else xp.astype(out, dtype)), cache


def _additive_mask(xp: ModuleType, mask: Array, dtype: Any) -> Array:
    """A boolean mask (True = attends) as the additive one: 0 where True, -inf elsewhere."""
    dev = device(mask)
    return xp.where(
        mask,
        xp.zeros((), dtype=dtype, device=dev),
        xp.full((), -math.inf, dtype=dtype, device=dev),
    )


def _causal_mask(xp: ModuleType, L: int, S: int, dtype: Any, dev: Any) -> Array:
    """The additive upper-left causal mask ``(L, S)``: 0 where ``j <= i``, ``-inf`` above
    the diagonal; built on the device from two ``arange`` (nothing uploaded)."""
    rows = xp.reshape(xp.arange(L, device=dev), (L, 1))
    cols = xp.reshape(xp.arange(S, device=dev), (1, S))
    return _additive_mask(xp, cols <= rows, dtype)


@forward_op
def scaled_dot_product_attention(
    query: Array,
    key: Array,
    value: Array,
    attn_mask: Array | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    seed: int | None = None,
) -> tuple[Array, SDPACache]:
    r"""Attention :math:`\mathrm{softmax}(s\,QK^\top + M)\,V`, as torch's
    ``F.scaled_dot_product_attention``.

    .. math::
        A = s\, Q K^\top + M, \qquad P = \mathrm{softmax}_{\text{last axis}}(A),
        \qquad O = \mathrm{dropout}(P)\, V.

    Parameters
    ----------
    query : array, shape (..., L, E), real floating
    key : array, shape (..., S, E), the dtype of ``query``
    value : array, shape (..., S, Ev), the dtype of ``query``
        The leading axes of the three broadcast together (torch's ``(N, H, L, E)`` layout is
        one case); at least 2-d each.
    attn_mask : array, optional
        Broadcastable to ``(..., L, S)`` (the broadcast of the query's and key's leading axes).
        Boolean: ``True`` where a target position attends a source position. Floating (the
        query's dtype, or float32 as torch allows): added to the logits; it has a gradient.
    dropout_p : float in [0, 1]
        Probability of zeroing each attention weight (the rest are scaled by
        :math:`1/(1-p)`), as torch. The mask is a function of ``seed``, which is then
        required.
    is_causal : bool
        Apply the upper-left causal mask (target ``i`` attends source ``j <= i``); not
        together with ``attn_mask`` (an error, as in torch).
    scale : float, optional
        :math:`s`; default :math:`1/\sqrt{E}`.
    enable_gqa : bool
        Grouped-query attention, as torch: ``query (..., Hq, L, E)``, ``key (..., Hk, S, E)``,
        ``value (..., Hv, S, Ev)`` with ``Hk`` and ``Hv`` dividing ``Hq``; query head ``h``
        attends key head ``h // (Hq/Hk)`` and value head ``h // (Hq/Hv)`` (torch repeats
        them with ``repeat_interleave``; here the heads of a group share one GEMM and nothing
        is copied).
    seed : int, optional
        Seed of the dropout mask, required when ``dropout_p > 0``: the same seed gives the
        same mask (pass a new one per call, as ``nn.MultiheadAttention`` does).

    Returns
    -------
    out : array, shape (..., L, Ev)
        The query's dtype (float16 is computed in float32 and rounded once, as torch's CPU
        kernel does). Rows masked entirely are zero.
    cache : SDPACache

    Notes
    -----
    Backward (:func:`scaled_dot_product_attention_backward`), with :math:`G = \partial L /
    \partial O`, :math:`D` the dropout multipliers (0 or :math:`1/(1-p)`; all ones without
    dropout) and :math:`\tilde P = P \odot D`:
    :math:`dV = \tilde P^\top G`, :math:`dP = (G V^\top) \odot D`,
    :math:`dA = P \odot (dP - \mathrm{rowsum}(G \odot O))` (equal to
    :math:`P \odot (dP - \mathrm{rowsum}(dP \odot P))`, but summed over ``Ev`` columns
    instead of ``S``), :math:`dQ = s\, dA\, K`, :math:`dK = s\, dA^\top Q`, and the floating
    mask's gradient :math:`dA` summed to the mask's shape. See ``docs/derivations.md``.
    """
    xp, query, key, value, attn_mask = op_inputs(
        _OP, query=query, key=key, value=value, attn_mask=attn_mask, optional=("attn_mask",)
    )
    dropout_p = real_option(_OP, "dropout_p", dropout_p, low=0.0, high=1.0)
    is_causal = bool_option(_OP, "is_causal", is_causal)
    enable_gqa = bool_option(_OP, "enable_gqa", enable_gqa)
    if scale is not None:
        scale = real_option(_OP, "scale", scale)
    if seed is not None:
        seed = dropout_seed(_OP, seed, query)
    elif dropout_p > 0.0:
        raise TypeError(
            f"{_OP}: argument 'seed' expected an int with dropout_p={dropout_p:g} (the dropout "
            f"mask is a function of the seed), got None"
        )
    check_floating(_OP, "query", query, xp)
    check_same_dtype(_OP, "key", key, "query", query)
    check_same_dtype(_OP, "value", value, "query", query)
    for name, a, layout in (
        ("query", query, "(..., L, E)"),
        ("key", key, "(..., S, E)"),
        ("value", value, "(..., S, Ev)"),
    ):
        if a.ndim < 2:
            raise shape_error(
                _OP, name, f"an array of at least 2 axes {layout}", f"shape {tuple(a.shape)}"
            )
    L, E = int(query.shape[-2]), int(query.shape[-1])
    S = int(key.shape[-2])
    if key.shape[-1] != E:
        raise shape_error(
            _OP, "key", f"shape (..., S, {E}) (E = query.shape[-1])", f"shape {tuple(key.shape)}"
        )
    if value.shape[-2] != S:
        raise shape_error(
            _OP, "value", f"shape (..., {S}, Ev) (S = key.shape[-2])", f"shape {tuple(value.shape)}"
        )
    qb, kb, vb = (tuple(a.shape[:-2]) for a in (query, key, value))
    groups = (1, 1)
    if enable_gqa:
        groups, qb, kb, vb = _gqa_groups(query, key, value)
    batch = _broadcast(
        _OP, qb, kb, f"the leading axes of 'query' {qb} and 'key' {kb} do not broadcast"
    )
    _broadcast(_OP, batch, vb, f"the leading axes of 'value' {vb} do not broadcast with {batch}")
    if enable_gqa:
        batch = (*batch, int(query.shape[-3]))
    mask = None
    mask_grad = False
    if attn_mask is not None:
        if is_causal:
            raise ValueError(
                f"{_OP}: 'attn_mask' and 'is_causal=True' are exclusive (as in torch): pass "
                f"one of them"
            )
        if not broadcasts_to(tuple(attn_mask.shape), (*batch, L, S)):
            raise shape_error(
                _OP,
                "attn_mask",
                f"a shape that broadcasts to {(*batch, L, S)}",
                f"shape {tuple(attn_mask.shape)}",
            )
        if attn_mask.dtype == xp.bool:
            mask = _additive_mask(xp, attn_mask, _accumulator(xp, query.dtype))
        elif xp.isdtype(attn_mask.dtype, "real floating") and attn_mask.dtype in (
            query.dtype,
            xp.float32,
        ):
            mask, mask_grad = attn_mask, True
        else:
            raise TypeError(
                f"{_OP}: argument 'attn_mask' expected a bool array or one of dtype "
                f"{query.dtype} (the query's) or float32, got dtype {attn_mask.dtype}"
            )
    elif is_causal:
        mask = _causal_mask(xp, L, S, _accumulator(xp, query.dtype), device(query))
    s = (1.0 / math.sqrt(E) if E else math.inf) if scale is None else scale
    return _attention(
        xp,
        query,
        key,
        value,
        mask,
        scale=s,
        dropout_p=dropout_p,
        seed=0 if seed is None else seed,
        mask_grad=mask_grad,
        groups=groups,
    )


def _gqa_groups(
    query: Array, key: Array, value: Array
) -> tuple[tuple[int, int], tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """``enable_gqa``: the query heads per key head and per value head, and the leading
    axes without the head axis (which broadcast as usual)."""
    for name, a in (("query", query), ("key", key), ("value", value)):
        if a.ndim < 3:
            raise shape_error(
                _OP,
                name,
                "an array of at least 3 axes (..., heads, positions, features) with "
                "enable_gqa=True",
                f"shape {tuple(a.shape)}",
            )
    Hq, Hk, Hv = (int(a.shape[-3]) for a in (query, key, value))
    for name, h in (("key", Hk), ("value", Hv)):
        if Hq % h:
            raise ValueError(
                f"{_OP}: argument '{name}' expected a number of heads (axis -3) that divides "
                f"the query's {Hq} (enable_gqa=True), got {h}"
            )
    qb, kb, vb = (tuple(int(n) for n in a.shape[:-3]) for a in (query, key, value))
    return (Hq // Hk, Hq // Hv), qb, kb, vb


@backward_op(SDPACache)
def scaled_dot_product_attention_backward(
    dy: Array, cache: SDPACache, /
) -> tuple[Array, Array, Array, Array | None]:
    r"""Gradients of :func:`scaled_dot_product_attention`.

    Returns
    -------
    (dquery, dkey, dvalue, dattn_mask)
        ``dattn_mask`` for a floating mask only (its shape and dtype); None for a boolean
        mask, ``is_causal`` and no mask.
    """
    q, k, v, e, w, O, keep, scale, shapes, mask_shape, mask_dtype, dtype, (Gk, Gv) = cache
    op = "scaled_dot_product_attention_backward"
    xp, G = cotangent_namespace(op, dy, O, tuple(O.shape), dtype)
    if G.dtype != O.dtype:  # float16: the backward runs in float32 too
        G = xp.astype(G, O.dtype)
    # with P = e ⊙ w, fold the row factor w into the (L, Ev) gradients, not the (L, S) ones:
    # Gw = G ⊙ w gives dV = (e ⊙ keep)ᵀ Gw and dP ⊙ w = Gw Vᵀ
    Gw = G * w
    ed = e if keep is None else e * keep
    # grouped heads (GQA): the sums over a group's query heads are the GEMMs' inner sums
    dV = xp.matmul(xp.matrix_transpose(_group(xp, ed, Gv)), _group(xp, Gw, Gv))
    del ed
    dPw = _ungroup(xp, xp.matmul(_group(xp, Gw, Gv), xp.matrix_transpose(v)), Gv)
    del Gw
    if keep is not None:
        dPw = dPw * keep
    # rowsum(dP ⊙ P) = rowsum(G ⊙ O): a pass over (L, Ev) instead of (L, S)
    dPw = dPw - xp.sum(G * O, axis=-1, keepdims=True) * w
    dA = e * dPw  # = P ⊙ (dP - rowsum(G ⊙ O))
    del dPw
    dQ = _ungroup(xp, xp.matmul(_group(xp, dA, Gk), k), Gk) * scale
    dK = xp.matmul(xp.matrix_transpose(_group(xp, dA, Gk)), _group(xp, q, Gk))
    dmask = None
    if mask_shape is not None:
        dmask = xp.astype(_sum_to(xp, dA, mask_shape), mask_dtype, copy=False)
    del dA
    grads = (
        _sum_to(xp, dQ, shapes[0]),
        _sum_to(xp, dK, shapes[1]),
        _sum_to(xp, dV, shapes[2]),
    )
    if grads[0].dtype != dtype:
        grads = tuple(xp.astype(g, dtype) for g in grads)
    return (*grads, dmask)
