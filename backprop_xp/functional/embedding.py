r"""Embedding lookup: rows of a table gathered by integer indices, and its scatter-add
backward (repeated indices add up)."""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

import array_api_extra as xpx

from ..backend import device, scatter_add_rows
from ._validation import (
    backward_op,
    bool_option,
    check_floating,
    check_integer,
    cotangent_namespace,
    forward_op,
    int_option,
    op_inputs,
    shape_error,
    value_checks,
)

__all__ = ["embedding", "embedding_backward"]

Array = Any


class EmbeddingCache(NamedTuple):
    index: Array  # the flattened indices, int32 or int64
    num_embeddings: int
    padding_idx: int | None  # normalized to [0, num_embeddings)
    scale_grad_by_freq: bool
    out_shape: tuple[int, ...]
    dtype: Any  # the weight's


def _padding_idx(op: str, padding_idx: Any, n: int) -> int | None:
    """torch's rule: ``padding_idx`` in ``[-n, n)``, a negative one counted from the end."""
    if padding_idx is None:
        return None
    p = int_option(op, "padding_idx", padding_idx)
    if not -n <= p < n:
        raise ValueError(
            f"{op}: argument 'padding_idx' expected None or an int in [{-n}, {n}) (the "
            f"number of embeddings is {n}), got {p}"
        )
    return p + n if p < 0 else p


def _check_indices(xp: ModuleType, index: Array, n: int, original: Any) -> None:
    """Every index in ``[0, n)``: one host synchronization. ``index`` is the int32/int64
    array the lookup uses; ``original`` the input's dtype, to report its values."""
    bad = (index < 0) | (index >= n)
    if not bool(xp.any(bad)):  # the one host synchronization of this op
        return
    first = int(xp.argmax(xp.astype(bad, xp.int8)))
    value = int(index[first])
    info = xp.iinfo(original)
    if info.min == 0 and value < 0:  # a uint64 value past int64's range: its own value
        value += 2**64
    count = int(xp.sum(xp.astype(bad, xp.int64)))
    more = f"; {count} indices are out of range" if count > 1 else ""
    raise ValueError(
        f"embedding: argument 'input' expected indices in [0, {n}) (num_embeddings={n}), "
        f"got {value} at flat position {first}{more}"
    )


@forward_op
def embedding(
    input: Array,
    weight: Array,
    padding_idx: int | None = None,
    *,
    scale_grad_by_freq: bool = False,
) -> tuple[Array, EmbeddingCache]:
    r"""Look up rows of ``weight``: :math:`y[\ldots, :] = W[i_{\ldots}, :]`, as
    ``torch.nn.functional.embedding``.

    Equivalently :math:`y = \mathrm{onehot}(i)\, W`, which is how the backward is derived;
    the forward is a gather, O(indices × D), never a product with a one-hot matrix.

    Parameters
    ----------
    input : array of integers, any shape
        Indices into the rows of ``weight``, each in ``[0, num_embeddings)`` (checked, one
        host synchronization, unless :func:`backprop_xp.set_index_checks` is off). Any
        integer dtype, signed or unsigned, of any width (torch takes int32 and int64 only);
        the range is checked on exact values, so a uint64 ``2**64 - 1`` is out of range,
        not the last row.
    weight : array, shape (num_embeddings, D), real floating
    padding_idx : int, optional
        A row that gets no gradient (its lookups still return its values, as in torch);
        negative values count from the end (``-1`` is the last row).
    scale_grad_by_freq : bool
        Divide each row's gradient by the number of times its index occurs in ``input``
        (torch's option of that name).

    Returns
    -------
    y : array, shape (*input.shape, D), dtype of ``weight``
    cache : EmbeddingCache

    Notes
    -----
    Backward: ``(None, dweight)`` with :math:`\partial L/\partial W_r = \sum_{k : i_k = r}
    g_k` (divided by the count of :math:`r` with ``scale_grad_by_freq``; zero for
    ``padding_idx``): a scatter-add of the gradient rows, in O(indices × D) plus the
    zeroed ``(num_embeddings, D)`` output. NumPy, torch and CuPy run their own
    duplicate-safe scatter-add (:func:`backprop_xp.backend.scatter_add_rows`); elsewhere the
    rows are sorted by index, summed as differences of a running sum (in float64 for
    narrower dtypes) and gathered per table row by ``searchsorted``, which needs no indexed
    write at all. torch's ``max_norm`` (which rescales rows of ``weight`` in place during
    the forward) and ``sparse`` gradients are not provided.
    """
    op = "embedding"
    xp, input, weight = op_inputs(op, input=input, weight=weight)
    check_integer(op, "input", input, xp)
    check_floating(op, "weight", weight, xp)
    if weight.ndim != 2:
        raise shape_error(
            op, "weight", "a 2-d array (num_embeddings, embedding_dim)", f"shape {weight.shape}"
        )
    n, dim = weight.shape
    padding_idx = _padding_idx(op, padding_idx, n)
    scale_grad_by_freq = bool_option(op, "scale_grad_by_freq", scale_grad_by_freq)
    index = xp.reshape(input, (-1,))
    # int64 holds every other integer dtype's values exactly, except uint64's past 2^63,
    # which it wraps to negative numbers: the range check below catches those before any
    # lookup (so 2^64 - 1 is never row -1). torch gathers with int32 or int64 only.
    if index.dtype != xp.int32 and index.dtype != xp.int64:
        index = xp.astype(index, xp.int64)
    if value_checks(index):
        _check_indices(xp, index, n, input.dtype)
    y = xp.reshape(xp.take(weight, index, axis=0), (*input.shape, dim))
    cache = EmbeddingCache(index, n, padding_idx, scale_grad_by_freq, tuple(y.shape), weight.dtype)
    return y, cache


def _sorted_segment_sums(xp: ModuleType, index: Array, g: Array, n: int) -> tuple[Array, Array]:
    """Row sums of ``g`` grouped by ``index`` into ``(n, D)``, and each row's count, with
    no indexed write (array-api-strict has none; JAX's would need no fallback).

    Sorted by index, the positions of table row ``r`` are a run ``[lo_r, hi_r)``
    (``searchsorted``), and the run's sum is ``C[hi_r] - C[lo_r]`` for the running sum ``C``
    of the sorted rows. The sums are taken once per run, at its last position (O(N·D)), and
    gathered into the table's rows, rows without a run reading a zero row. Each difference
    costs ``ε·|C|``, so narrower dtypes accumulate in float64.
    """
    m = index.shape[0]
    dev = device(g)
    order = xp.argsort(index)
    sorted_index = xp.take(index, order)
    acc = g.dtype if xp.finfo(g.dtype).bits >= 64 else xp.float64
    running = xp.cumulative_sum(
        xp.astype(xp.take(g, order, axis=0), acc), axis=0, include_initial=True
    )  # (m + 1, D)
    # per sorted position i: the sum of its run up to i, C[i + 1] - C[start of the run]; one
    # extra entry, C[0] - C[0], is the zero row
    zero = xp.zeros((1,), dtype=index.dtype, device=dev)
    upto = xp.concat([xp.arange(1, m + 1, dtype=index.dtype, device=dev), zero])
    start = xp.concat([xp.searchsorted(sorted_index, sorted_index, side="left"), zero])
    run_sums = xp.astype(xp.take(running, upto, axis=0) - xp.take(running, start, axis=0), g.dtype)
    rows = xp.arange(n, dtype=index.dtype, device=dev)
    lo = xp.searchsorted(sorted_index, rows, side="left")
    hi = xp.searchsorted(sorted_index, rows, side="right")
    counts = hi - lo
    last = xp.where(counts > 0, hi - 1, xp.full_like(hi, m))  # a run's end, or the zero row
    return xp.take(run_sums, last, axis=0), counts


@backward_op(EmbeddingCache)
def embedding_backward(dy: Array, cache: EmbeddingCache, /) -> tuple[None, Array]:
    """``(None, dweight)``: no gradient for the integer indices."""
    index, n, padding_idx, scale_grad_by_freq, out_shape, dtype = cache
    xp, dy = cotangent_namespace("embedding_backward", dy, index, out_shape, dtype)
    dim = out_shape[-1]
    g = xp.reshape(dy, (index.shape[0], dim))
    # float16 sums in float32 (an often-repeated row overflows or stalls in float16)
    acc = xp.float32 if xp.finfo(dtype).bits < 32 else dtype
    g = xp.astype(g, acc, copy=False)
    dweight = scatter_add_rows(xp, index, g, n)
    counts = None
    if dweight is None:
        dweight, counts = _sorted_segment_sums(xp, index, g, n)
    if scale_grad_by_freq:
        if counts is None:
            ones = xp.ones((index.shape[0], 1), dtype=acc, device=device(g))
            counts = scatter_add_rows(xp, index, ones, n)[:, 0]  # type: ignore[index]
        counts = xp.astype(counts, acc)
        dweight = dweight / xp.reshape(xp.where(counts > 0, counts, xp.ones_like(counts)), (-1, 1))
    if padding_idx is not None:
        dweight = xpx.at(dweight, (padding_idx, ...)).set(0.0)  # our own array: in place
    return None, xp.astype(dweight, dtype, copy=False)
