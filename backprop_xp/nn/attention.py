r"""Multi-head attention, torch's ``nn.MultiheadAttention``, over ``F.scaled_dot_product_attention``.

Parameter names, shapes and state-dict keys are torch's (``in_proj_weight``, or
``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` when ``kdim``/``vdim`` differ from
``embed_dim``; ``in_proj_bias``; ``bias_k``/``bias_v``; ``out_proj.weight``/``out_proj.bias``),
so a torch state dict loads as is, and back.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from .. import functional as F
from ..backend import device
from ..functional._validation import (
    bool_option,
    check_cotangent,
    int_option,
    op_inputs,
    real_option,
    shape_error,
)
from ..functional.attention import _attention, _causal_mask
from ..functional.attention import scaled_dot_product_attention_backward as _attention_backward
from .init import RNG, resolve_rng, uniform
from .layers import Linear
from .module import Backprop, Module, Parameter, once

__all__ = ["MultiheadAttention"]

Array = Any
_NAME = "MultiheadAttention"


def _xavier_uniform(gen: np.random.Generator, shape: tuple[int, int], dtype: str) -> np.ndarray:
    r"""torch's ``xavier_uniform_`` of a 2-d ``(out, in)`` weight:
    :math:`U(-b, b)`, :math:`b = \sqrt{6 / (\text{in} + \text{out})}`."""
    return uniform(gen, shape, math.sqrt(6.0 / (shape[0] + shape[1])), dtype)


def _xavier_normal(gen: np.random.Generator, E: int, dtype: str) -> np.ndarray:
    r"""torch's ``xavier_normal_`` of a ``(1, 1, E)`` tensor (fan in = fan out = E):
    :math:`N(0, 1/E)`, drawn in float64 and cast."""
    return gen.normal(0.0, math.sqrt(1.0 / E), size=(1, 1, E)).astype(dtype)


def _split_heads(xp: ModuleType, x: Array, H: int, batch_first: bool) -> Array:
    """``(L, N, E)`` (``(N, L, E)`` batch-first) → ``(N, H, L, E/H)``, a view where it can."""
    if batch_first:
        N, L, E = x.shape
        return xp.permute_dims(xp.reshape(x, (N, L, H, E // H)), (0, 2, 1, 3))
    L, N, E = x.shape
    return xp.permute_dims(xp.reshape(x, (L, N, H, E // H)), (1, 2, 0, 3))


def _merge_heads(xp: ModuleType, x: Array, batch_first: bool) -> Array:
    """The inverse of :func:`_split_heads`: ``(N, H, L, d)`` → ``(L, N, H·d)`` (or batch-first)."""
    N, H, L, d = x.shape
    if batch_first:
        return xp.reshape(xp.permute_dims(x, (0, 2, 1, 3)), (N, L, H * d))
    return xp.reshape(xp.permute_dims(x, (2, 0, 1, 3)), (L, N, H * d))


def _pad_column(xp: ModuleType, mask: Array) -> Array:
    """A zero column appended on the last axis (torch's ``pad(mask, (0, 1))``): the added
    key position is attended."""
    zeros = xp.zeros((*mask.shape[:-1], 1), dtype=mask.dtype, device=device(mask))
    return xp.concat([mask, zeros], axis=-1)


def _split3(a: Array | None, E: int) -> tuple[Any, Any, Any]:
    """The query, key and value blocks of a packed ``(3E, ...)`` weight or ``(3E,)`` bias."""
    if a is None:
        return None, None, None
    return a[:E, ...], a[E : 2 * E, ...], a[2 * E :, ...]


class MultiheadAttention(Module):
    r"""Multi-head attention, torch's ``nn.MultiheadAttention``.

    .. math::
        \mathrm{head}_h = \mathrm{softmax}\!\Big(\frac{(X_q W_q^h)(X_k W_k^h)^\top}{\sqrt{d}}
        + M\Big) X_v W_v^h, \qquad
        \mathrm{out} = [\mathrm{head}_1, \dots, \mathrm{head}_H]\, W_o^\top + b_o,

    with :math:`d = E/H` and the in-projection biases added to each projection.

    Parameters
    ----------
    embed_dim, num_heads : int
        ``embed_dim`` must be divisible by ``num_heads``.
    dropout : float
        Dropout on the attention weights, in training mode only. The mask comes from a seed
        drawn from ``rng`` when the layer is built, one fresh mask per call.
    bias : bool
        ``in_proj_bias`` and ``out_proj.bias``.
    add_bias_kv : bool
        Learned ``bias_k``, ``bias_v`` ``(1, 1, E)`` appended to the keys and values as one
        more source position.
    add_zero_attn : bool
        A zero key and value appended per head as one more source position.
    kdim, vdim : int, optional
        Feature sizes of ``key`` and ``value`` (default ``embed_dim``); when either differs,
        the projections are three parameters ``q_proj_weight`` ``(E, E)``,
        ``k_proj_weight`` ``(E, kdim)``, ``v_proj_weight`` ``(E, vdim)`` instead of
        ``in_proj_weight`` ``(3E, E)``.
    batch_first : bool
        Batched inputs are ``(N, L, E)`` instead of ``(L, N, E)``.
    rng : int, numpy.random.Generator or None
        Seed of the initial weights (see :mod:`backprop_xp.nn.init`) and of the dropout.
    dtype : str
        Parameter dtype, ``"float32"`` (default) or ``"float64"``.

    Attributes
    ----------
    in_proj_weight : Parameter (3E, E) or None
        torch's ``xavier_uniform_``: :math:`U(\pm\sqrt{6/(4E)})`; so ``q_proj_weight`` etc.
        with their own fans.
    in_proj_bias : Parameter (3E,) or None
        Zeros.
    out_proj : Linear(E, E)
        torch's ``NonDynamicallyQuantizableLinear``: Linear's initialization, its bias zero.
    bias_k, bias_v : Parameter (1, 1, E) or None
        torch's ``xavier_normal_``: :math:`N(0, 1/E)`.

    Notes
    -----
    Masks follow torch's ``nn.MultiheadAttention``, whose boolean masks mean the OPPOSITE of
    ``F.scaled_dot_product_attention``'s: ``True`` marks a position that is NOT attended.
    Boolean masks become ``-inf`` where True and 0 elsewhere; floating masks (the query's
    dtype) are added as they are; the two masks are summed, as torch merges them.
    """

    in_proj_weight: Parameter | None
    q_proj_weight: Parameter | None
    k_proj_weight: Parameter | None
    v_proj_weight: Parameter | None
    in_proj_bias: Parameter | None
    bias_k: Parameter | None
    bias_v: Parameter | None
    out_proj: Linear

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        dropout: float = 0.0,
        bias: bool = True,
        add_bias_kv: bool = False,
        add_zero_attn: bool = False,
        kdim: int | None = None,
        vdim: int | None = None,
        batch_first: bool = False,
        *,
        rng: RNG = None,
        dtype: str = "float32",
    ):
        super().__init__()
        E = int_option(_NAME, "embed_dim", embed_dim, low=1)
        H = int_option(_NAME, "num_heads", num_heads, low=1)
        if E % H:
            raise ValueError(
                f"{_NAME}: argument 'embed_dim' expected a multiple of num_heads={H}, got {E}"
            )
        self.embed_dim, self.num_heads, self.head_dim = E, H, E // H
        self.kdim = E if kdim is None else int_option(_NAME, "kdim", kdim, low=1)
        self.vdim = E if vdim is None else int_option(_NAME, "vdim", vdim, low=1)
        self._qkv_same_embed_dim = self.kdim == E and self.vdim == E
        self.dropout = real_option(_NAME, "dropout", dropout, low=0.0, high=1.0)
        bias = bool_option(_NAME, "bias", bias)
        add_bias_kv = bool_option(_NAME, "add_bias_kv", add_bias_kv)
        self.add_zero_attn = bool_option(_NAME, "add_zero_attn", add_zero_attn)
        self.batch_first = bool_option(_NAME, "batch_first", batch_first)
        gen = resolve_rng(rng)
        # torch's registration order (its state_dict order), then its initialization order:
        # out_proj is built (Linear's draws), then the projections are drawn, the biases set
        # to zero, and bias_k, bias_v drawn.
        for name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight"):
            self.register_parameter(name, None)
        self.register_parameter("in_proj_bias", None)
        out_proj = Linear(E, E, bias=bias, rng=gen, dtype=dtype)
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(_xavier_uniform(gen, (3 * E, E), dtype))
        else:
            self.q_proj_weight = Parameter(_xavier_uniform(gen, (E, E), dtype))
            self.k_proj_weight = Parameter(_xavier_uniform(gen, (E, self.kdim), dtype))
            self.v_proj_weight = Parameter(_xavier_uniform(gen, (E, self.vdim), dtype))
        if bias:
            self.in_proj_bias = Parameter(np.zeros((3 * E,), dtype=dtype))
            out_proj.bias = Parameter(np.zeros((E,), dtype=dtype))
        self.out_proj = out_proj
        if add_bias_kv:
            self.bias_k = Parameter(_xavier_normal(gen, E, dtype))
            self.bias_v = Parameter(_xavier_normal(gen, E, dtype))
        else:
            self.bias_k = self.bias_v = None
        self._dropout_seed = int(gen.integers(2**62))
        self._calls = 0

    def extra_repr(self) -> str:
        return (
            f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, dropout={self.dropout}, "
            f"kdim={self.kdim}, vdim={self.vdim}, batch_first={self.batch_first}"
        )

    # -- the projections -------------------------------------------------------------------
    def _in_projection(self) -> tuple[list[Parameter], Parameter | None]:
        """The in-projection's weight parameters (``[in_proj_weight]`` or the three
        ``*_proj_weight``) and ``in_proj_bias``, as the forward found them."""
        names = (
            ("in_proj_weight",)
            if self._qkv_same_embed_dim
            else ("q_proj_weight", "k_proj_weight", "v_proj_weight")
        )
        weights = [self._parameters[n] for n in names]
        return [w for w in weights if w is not None], self.in_proj_bias

    # -- masks -------------------------------------------------------------------------------
    def _canonical_mask(
        self, xp: ModuleType, mask: Array | None, name: str, like: Array
    ) -> Array | None:
        """torch's ``_canonical_mask``: a boolean mask (True = not attended) as ``-inf``/0 in
        the query's dtype; a floating one of the query's dtype as it is."""
        if mask is None:
            return None
        if mask.dtype == xp.bool:
            dev = device(like)
            return xp.where(
                mask,
                xp.full((), -math.inf, dtype=like.dtype, device=dev),
                xp.zeros((), dtype=like.dtype, device=dev),
            )
        if not xp.isdtype(mask.dtype, "real floating"):
            raise TypeError(
                f"{_NAME}: argument '{name}' expected a bool or floating array, got dtype "
                f"{mask.dtype}"
            )
        if mask.dtype != like.dtype:
            raise TypeError(
                f"{_NAME}: argument '{name}' expected dtype {like.dtype} (the query's) or bool, "
                f"got dtype {mask.dtype}"
            )
        return mask

    # -- forward -----------------------------------------------------------------------------
    def forward(
        self,
        query: Array,
        key: Array,
        value: Array,
        key_padding_mask: Array | None = None,
        need_weights: bool = True,
        attn_mask: Array | None = None,
        average_attn_weights: bool = True,
        is_causal: bool = False,
    ) -> tuple[tuple[Array, Array | None], Backprop]:
        r"""Attend from ``query`` to ``key``/``value``.

        Parameters
        ----------
        query : array, shape (L, N, E) (``(N, L, E)`` batch-first) or (L, E) unbatched
        key : array, shape (S, N, kdim) (``(N, S, kdim)``) or (S, kdim)
        value : array, shape (S, N, vdim) (``(N, S, vdim)``) or (S, vdim)
        key_padding_mask : array, shape (N, S) or (S,) unbatched, optional
            Bool (True: that key is ignored) or floating (added to the logits).
        need_weights : bool
            Also return the attention weights. As in torch, this takes the plain softmax:
            a row whose every position is masked gives NaN there (and in the output and
            gradients); with ``need_weights=False`` such a row gives zeros, as torch's SDPA.
        attn_mask : array, shape (L, S) or (N·num_heads, L, S), optional
            Bool (True: not attended) or floating (added). Merged with ``key_padding_mask``
            by addition, as torch.
        average_attn_weights : bool
            Average the returned weights over the heads.
        is_causal : bool
            torch's hint that ``attn_mask`` is the causal mask; it needs ``attn_mask``. As in
            torch, with ``need_weights=False`` and no ``key_padding_mask`` the causal mask is
            applied instead of ``attn_mask``'s values.

        Returns
        -------
        (attn_output, attn_weights), backprop
            ``attn_output`` the query's shape with ``E`` features; ``attn_weights``
            ``(N, L, S)`` averaged, ``(N, num_heads, L, S)`` per head (without N
            unbatched), after dropout as in torch, or None with ``need_weights=False``; the
            weights carry no gradient. ``backprop(d_attn_output)`` accumulates the parameter
            gradients and returns ``(d_query, d_key, d_value)``, one per argument: for
            self-attention (one array passed as query, key and value) its gradient is
            their sum, ``d_query + d_key + d_value`` (torch's autograd adds them for you).
        """
        xp, query, key, value, key_padding_mask, attn_mask = op_inputs(
            _NAME,
            query=query,
            key=key,
            value=value,
            key_padding_mask=key_padding_mask,
            attn_mask=attn_mask,
            optional=("key_padding_mask", "attn_mask"),
        )
        need_weights = bool_option(_NAME, "need_weights", need_weights)
        average_attn_weights = bool_option(_NAME, "average_attn_weights", average_attn_weights)
        is_causal = bool_option(_NAME, "is_causal", is_causal)
        E, H, d = self.embed_dim, self.num_heads, self.head_dim
        unbatched = self._check_shapes(query, key, value, key_padding_mask, attn_mask)
        dtype = self.out_proj.weight.dtype
        for name, a in (("query", query), ("key", key), ("value", value)):
            if a.dtype != dtype:
                raise TypeError(
                    f"{_NAME}: argument '{name}' expected dtype {dtype} (the layer's), got "
                    f"dtype {a.dtype}"
                )
        if is_causal and attn_mask is None:
            raise ValueError(
                f"{_NAME}: is_causal=True needs attn_mask (it is a hint that attn_mask is "
                f"causal, as in torch)"
            )
        bf = self.batch_first and not unbatched
        if unbatched:
            query, key, value = query[:, None, :], key[:, None, :], value[:, None, :]
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask[None, :]
        seq = 1 if bf else 0  # the sequence axis of the (batched) inputs
        L, N = query.shape[seq], query.shape[1 - seq]

        kpm = self._canonical_mask(xp, key_padding_mask, "key_padding_mask", query)
        am = self._canonical_mask(xp, attn_mask, "attn_mask", query)
        use_causal = is_causal and kpm is None and not need_weights
        if use_causal:  # torch's SDPA path: the causal mask replaces attn_mask's values
            am = None

        weights_p, bias_p = self._in_projection()
        Wq, Wk, Wv = (
            _split3(weights_p[0].data, E) if len(weights_p) == 1 else [w.data for w in weights_p]
        )
        bq, bk, bv = _split3(None if bias_p is None else bias_p.data, E)
        q, cq = F.linear(query, Wq, bq)
        k, ck = F.linear(key, Wk, bk)
        v, cv = F.linear(value, Wv, bv)
        if self.bias_k is not None and self.bias_v is not None:
            shape = (1, N, E) if seq == 0 else (N, 1, E)
            bias_k = xp.broadcast_to(xp.reshape(self.bias_k.data, (1, 1, E)), shape)
            bias_v = xp.broadcast_to(xp.reshape(self.bias_v.data, (1, 1, E)), shape)
            k = xp.concat([k, bias_k], axis=seq)
            v = xp.concat([v, bias_v], axis=seq)
            am = None if am is None else _pad_column(xp, am)
            kpm = None if kpm is None else _pad_column(xp, kpm)
        q4, k4, v4 = (_split_heads(xp, a, H, bf) for a in (q, k, v))
        if self.add_zero_attn:
            zeros = xp.zeros((N, H, 1, d), dtype=dtype, device=device(q4))
            k4 = xp.concat([k4, zeros], axis=2)
            v4 = xp.concat([v4, zeros], axis=2)
            am = None if am is None else _pad_column(xp, am)
            kpm = None if kpm is None else _pad_column(xp, kpm)
        S1 = int(k4.shape[2])  # S plus the added positions

        mask = None
        if use_causal:
            mask = _causal_mask(xp, L, S1, dtype, device(q4))
        else:
            if am is not None:
                am = am[None, ...] if am.ndim == 2 else xp.reshape(am, (N, H, L, S1))
            if kpm is not None:
                kpm = xp.reshape(kpm, (N, 1, 1, S1))
            mask = kpm if am is None else (am if kpm is None else am + kpm)

        p = self.dropout if self.training else 0.0
        seed = 0
        if p > 0.0:
            seed = int(
                np.random.SeedSequence([self._dropout_seed, self._calls]).generate_state(1)[0]
            )
            self._calls += 1
        O, cache = _attention(
            xp,
            q4,
            k4,
            v4,
            mask,
            scale=1.0 / math.sqrt(d),
            dropout_p=p,
            seed=seed,
            safe=not need_weights,
        )
        y, backprop_out = self.out_proj(_merge_heads(xp, O, bf))
        del O

        weights = None
        if need_weights:
            weights = cache.e * cache.w  # P
            if cache.keep is not None:
                weights = weights * cache.keep
            if average_attn_weights:
                weights = xp.mean(weights, axis=1)
            if weights.dtype != dtype:
                weights = xp.astype(weights, dtype)
            if unbatched:
                weights = weights[0, ...]
        out_shape = tuple(y.shape[:1]) + tuple(y.shape[2:]) if unbatched else tuple(y.shape)
        y_out = y[:, 0, :] if unbatched else y
        bias_kv = (self.bias_k, self.bias_v) if self.bias_k is not None else None
        zero_attn = self.add_zero_attn

        def backprop(d_attn_output: Array) -> tuple[Array, Array, Array]:
            g = check_cotangent(_NAME, "d_attn_output", d_attn_output, out_shape, dtype)
            if unbatched:
                g = g[:, None, :]
            dO = _split_heads(xp, backprop_out(g), H, bf)
            dq4, dk4, dv4, _ = _attention_backward(dO, cache)
            if zero_attn:
                dk4, dv4 = dk4[:, :, :-1, :], dv4[:, :, :-1, :]
            dq, dk, dv = (_merge_heads(xp, a, bf) for a in (dq4, dk4, dv4))
            if bias_kv is not None:
                last = (slice(-1, None), ...) if seq == 0 else (slice(None), slice(-1, None), ...)
                keep = (slice(None, -1), ...) if seq == 0 else (slice(None), slice(None, -1), ...)
                for p_, da in zip(bias_kv, (dk, dv), strict=True):
                    p_.accumulate(xp.reshape(xp.sum(da[last], axis=1 - seq), (1, 1, E)))  # type: ignore[union-attr]
                dk, dv = dk[keep], dv[keep]
            dW, db = [], []
            grads = []
            for da, c in ((dq, cq), (dk, ck), (dv, cv)):
                dx, dw, dbias = F.linear_backward(da, c)
                grads.append(dx[:, 0, :] if unbatched else dx)
                dW.append(dw)
                db.append(dbias)
            if len(weights_p) == 1:
                weights_p[0].accumulate(xp.concat(dW, axis=0))
            else:
                for p_, g_ in zip(weights_p, dW, strict=True):
                    p_.accumulate(g_)
            if bias_p is not None:
                bias_p.accumulate(xp.concat(db, axis=0))
            return grads[0], grads[1], grads[2]

        return (y_out, weights), once(_NAME, backprop)

    def _check_shapes(
        self,
        query: Array,
        key: Array,
        value: Array,
        key_padding_mask: Array | None,
        attn_mask: Array | None,
    ) -> bool:
        """torch's ``_mha_shape_check`` and the feature sizes; returns whether unbatched."""
        if query.ndim not in (2, 3):
            raise shape_error(
                _NAME,
                "query",
                "a 3-d (L, N, E) batched or 2-d (L, E) unbatched array",
                f"shape {tuple(query.shape)}",
            )
        batched = query.ndim == 3
        nd = query.ndim
        for name, a in (("key", key), ("value", value)):
            if a.ndim != nd:
                raise shape_error(
                    _NAME,
                    name,
                    f"a {nd}-d array (as query is {'batched' if batched else 'unbatched'})",
                    f"shape {tuple(a.shape)}",
                )
        for name, a, size in (
            ("query", query, self.embed_dim),
            ("key", key, self.kdim),
            ("value", value, self.vdim),
        ):
            if a.shape[-1] != size:
                what = {"query": "embed_dim", "key": "kdim", "value": "vdim"}[name]
                raise shape_error(
                    _NAME,
                    name,
                    f"{size} features ({what}) on its last axis",
                    f"shape {tuple(a.shape)}",
                )
        if key.shape[:-1] != value.shape[:-1]:
            raise shape_error(
                _NAME,
                "value",
                f"the sequence and batch axes of key {tuple(key.shape[:-1])}",
                f"shape {tuple(value.shape)}",
            )
        seq = 1 if (batched and self.batch_first) else 0
        L, S = int(query.shape[seq]), int(key.shape[seq])
        N = int(query.shape[1 - seq]) if batched else 1
        if batched and key.shape[1 - seq] != N:
            raise shape_error(
                _NAME, "key", f"batch size {N} (the query's)", f"shape {tuple(key.shape)}"
            )
        if key_padding_mask is not None:
            want = (N, S) if batched else (S,)
            if tuple(key_padding_mask.shape) != want:
                raise shape_error(
                    _NAME,
                    "key_padding_mask",
                    f"shape {want}",
                    f"shape {tuple(key_padding_mask.shape)}",
                )
        if attn_mask is not None:
            shapes = ((L, S), (N * self.num_heads, L, S))
            if tuple(attn_mask.shape) not in shapes:
                raise shape_error(
                    _NAME,
                    "attn_mask",
                    f"shape {shapes[0]} or {shapes[1]} (N·num_heads, L, S)",
                    f"shape {tuple(attn_mask.shape)}",
                )
        return not batched
