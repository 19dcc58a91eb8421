r"""Recurrent layers (Elman RNN, LSTM, GRU) with backpropagation through time.

Time-major like torch's default (``batch_first=False``), with torch's weight layouts and gate
orders, so the weights of ``torch.nn.RNN``/``LSTM``/``GRU`` (one layer, one direction) load
unchanged.

Notation
--------
- :math:`T` time steps, :math:`N` batch, :math:`D` input features, :math:`H` hidden features.
- :math:`G` gates per cell: 1 (RNN), 4 (LSTM: i, f, g, o), 3 (GRU: r, z, n).
- ``input (T, N, D)``, ``h0 (N, H)``, ``w_ih (G·H, D)``, ``w_hh (G·H, H)``, ``b_* (G·H,)``.

Protocol
--------
The array inputs are the parameters before the keyword-only options (pass them by position
or by name, ``lengths=...`` included); the gradient tuple has one entry per such parameter,
in order, whether or not it was passed: ``None`` for an absent bias and always
``None`` for ``lengths`` (integers have no gradient). ``rnn_backward`` thus returns 7 entries
``(d_input, d_h0, d_w_ih, d_w_hh, d_b_ih, d_b_hh, None)``.

Variable lengths
----------------
``lengths (N,)`` lets sequences of different lengths share a batch, in any order: at steps
``t >= lengths[n]`` the state of sequence ``n`` is carried unchanged and its output is zero,
which is what torch returns for a packed sequence (``pack_padded_sequence(...,
enforce_sorted=False)``); ``h_n`` is each sequence's last valid state.

Speed
-----
The input projection of all steps is one GEMM before the loop, the weight gradients one GEMM
each after it; inside the loop there is only the recurrent GEMM and elementwise gate math.

Truncated BPTT
--------------
Every backward takes ``truncate=k``: backpropagate through the last ``k`` steps only (see
:func:`rnn_backward`). To run a long sequence chunk by chunk, pass ``h_n`` of one chunk as
``h0`` of the next and drop the ``d_h0`` of each chunk's backward; see :func:`rnn`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple

from array_api_compat import is_writeable_array
from array_api_extra import at

from ..backend import device
from ._validation import (
    backward_op,
    check_choice,
    check_floating,
    check_integer,
    check_ndim,
    forward_op,
    int_option,
    op_inputs,
    shape_error,
    tuple_cotangents,
    value_checks,
)

__all__ = [
    "gru",
    "gru_backward",
    "lstm",
    "lstm_backward",
    "rnn",
    "rnn_backward",
]

Array = Any


# ---------------------------------------------------------------------------------------------
# Shared checks and helpers


class _Dims(NamedTuple):
    T: int
    N: int
    D: int
    H: int


def _check(
    op: str,
    gates: int,
    input: Array,
    states: dict[str, Array],
    w_ih: Array,
    w_hh: Array,
    b_ih: Array | None,
    b_hh: Array | None,
    lengths: Array | None,
) -> tuple[ModuleType, _Dims, Array | None, tuple[Array, ...]]:
    """Validate shapes and dtypes; return the namespace, the sizes, the (T, N, 1) mask, and
    the arrays ``(input, *states, w_ih, w_hh, b_ih, b_hh)`` as :func:`op_inputs` gives them."""
    xp, input, *rest = op_inputs(
        op,
        input=input,
        **states,
        w_ih=w_ih,
        w_hh=w_hh,
        b_ih=b_ih,
        b_hh=b_hh,
        lengths=lengths,
        optional=("b_ih", "b_hh", "lengths"),
    )
    states = dict(zip(states, rest[: len(states)], strict=True))
    w_ih, w_hh, b_ih, b_hh, lengths = rest[len(states) :]
    check_floating(op, "input", input, xp)
    check_ndim(op, "input", input, 3, "(T, N, D)")
    T, N, D = (int(s) for s in input.shape)
    first = next(iter(states))
    check_ndim(op, first, states[first], 2, "(N, H)")
    H = int(states[first].shape[1])
    GH = gates * H
    expected: dict[str, tuple[int, ...]] = {name: (N, H) for name in states}
    expected.update(w_ih=(GH, D), w_hh=(GH, H), b_ih=(GH,), b_hh=(GH,))
    given = dict(states, w_ih=w_ih, w_hh=w_hh, b_ih=b_ih, b_hh=b_hh)
    for name, a in given.items():
        if a is None:
            continue
        if tuple(a.shape) != expected[name]:
            raise shape_error(
                op,
                name,
                f"shape {expected[name]} for input {tuple(input.shape)} (T, N, D) and hidden "
                f"size H={H}" + (f" ({gates} gates)" if gates > 1 else ""),
                f"shape {tuple(a.shape)}",
            )
        if a.dtype != input.dtype:
            raise TypeError(
                f"{op}: argument '{name}' expected dtype {input.dtype} (the dtype of 'input'), "
                f"got dtype {a.dtype}"
            )
    mask = None
    if lengths is not None:
        check_integer(op, "lengths", lengths, xp)
        if tuple(lengths.shape) != (N,):
            raise shape_error(
                op, "lengths", f"shape ({N},) (one per sequence)", f"shape {tuple(lengths.shape)}"
            )
        if lengths.dtype != xp.int64:  # a narrow type would wrap in arange(T) and in t < T
            lengths = xp.astype(lengths, xp.int64)
        # One host sync per call, like the class-index check of the losses.
        if value_checks(lengths) and N and bool(xp.any((lengths < 0) | (lengths > T))):
            raise ValueError(
                f"{op}: argument 'lengths' expected values in [0, {T}] (T = input.shape[0]), "
                f"got values in [{int(xp.min(lengths))}, {int(xp.max(lengths))}]"
            )
        steps = xp.arange(T, dtype=lengths.dtype, device=device(input))
        mask = (steps[:, None] < lengths[None, :])[:, :, None]
    arrays = (input, *states.values(), w_ih, w_hh, b_ih, b_hh)
    return xp, _Dims(T, N, D, H), mask, arrays


def _check_truncate(op: str, truncate: int | None, T: int) -> int:
    if truncate is None:
        return T
    return min(int_option(op, "truncate", truncate, low=1), T)


def _gate_vector(xp: ModuleType, values: tuple[float, ...], H: int, like: Array) -> Array:
    """``(G·H,)`` vector repeating ``values[g]`` over gate ``g``'s block of ``H`` rows."""
    return xp.concat(
        [xp.full((H,), v, dtype=like.dtype, device=device(like)) for v in values], axis=0
    )


class _Steps:
    """A ``(T, *shape)`` buffer that the time loop fills one step at a time.

    One buffer per cached quantity instead of a list of per-step arrays: the memory comes in
    one allocation (NumPy asks for huge pages from 4 MiB on), not as T fresh blocks that each
    page-fault on first touch (an LSTM of T=64, N=32, H=256 went from ~4700 to ~2000 page
    faults and from 11 to 6 ms of system time per forward+backward), and the weight GEMMs read
    it without a final ``stack``. Writes are in place where the library allows it, else
    through ``array_api_extra.at`` (immutable arrays).

    ``over=`` fills an intermediate the op created itself instead of a new buffer, when each
    step reads its own slot before writing it and never reads it again.
    """

    def __init__(
        self, xp: ModuleType, shape: tuple[int, ...], like: Array, over: Array | None = None
    ):
        if over is None:
            self.data = xp.empty(shape, dtype=like.dtype, device=device(like))
        else:
            self.data = over
        self._inplace = is_writeable_array(self.data)

    def __setitem__(self, t: int, value: Array) -> None:
        if self._inplace:
            self.data[t, ...] = value
        else:
            self.data = at(self.data, (t, ...)).set(value)


def _weight_grads(
    xp: ModuleType, dG: Array, X: Array, H_prev: Array, w_ih: Array, dims: _Dims, s: int
) -> tuple[Array, Array, Array, Array]:
    """dW_ih, dW_hh, db, d_input from the gate gradients ``dG (k, N, G·H)`` of the steps
    ``s..T-1``: one GEMM each, after the loop."""
    T, N, D, _ = dims
    dG = xp.reshape(dG, ((T - s) * N, dG.shape[-1]))
    dGT = dG.T
    dW_ih = dGT @ X[s * N :, ...]
    dW_hh = dGT @ H_prev[s * N :, ...]
    db = xp.sum(dG, axis=0)
    dX = xp.reshape(dG @ w_ih, (T - s, N, D))
    if s:
        dX = xp.concat([xp.zeros((s, N, D), dtype=dX.dtype, device=device(dX)), dX], axis=0)
    return dW_ih, dW_hh, db, dX


def _transposed_copy(xp: ModuleType, w: Array) -> Array:
    """``w.T`` as a new C-ordered array: BLAS runs the small per-step GEMM ``h @ W^T``
    markedly faster (~30% for N=32, H=256 in OpenBLAS) on a contiguous right operand than on
    the transposed view. Reshaping the view to 1-D is what makes the (C-ordered) copy."""
    rows, cols = w.shape
    return xp.reshape(xp.reshape(w.T, (rows * cols,)), (cols, rows))


def _bias_grads(
    xp: ModuleType, db: Array, has_b_ih: bool, has_b_hh: bool
) -> tuple[Array | None, Array | None]:
    """Both biases enter as one sum, so they share one gradient: two distinct arrays, so
    that accumulating into one parameter's gradient never changes the other's."""
    return (
        db if has_b_ih else None,
        (xp.asarray(db, copy=True) if has_b_ih else db) if has_b_hh else None,
    )


def _own(xp: ModuleType, state: Array) -> Array:
    """A final state as its own array, not a view into the cache: resetting it in place
    (``h_n[done] = 0`` between chunks) must not change what the backward reads."""
    return xp.asarray(state, copy=True)


def _bias_sum(b_ih: Array | None, b_hh: Array | None) -> Array | None:
    if b_ih is None:
        return b_hh
    return b_ih if b_hh is None else b_ih + b_hh


# ---------------------------------------------------------------------------------------------
# Elman RNN


class RNNCache(NamedTuple):
    X: Array  # input, (T·N, D)
    Hs: Array  # h0, h_1, ..., h_T (carried states), (T+1, N, H)
    w_ih: Array
    w_hh: Array
    mask: Array | None  # (T, N, 1) bool, t < lengths
    nonlinearity: str
    has_b_ih: bool
    has_b_hh: bool


@forward_op
def rnn(
    input: Array,
    h0: Array,
    w_ih: Array,
    w_hh: Array,
    b_ih: Array | None = None,
    b_hh: Array | None = None,
    lengths: Array | None = None,
    *,
    nonlinearity: str = "tanh",
) -> tuple[tuple[Array, Array], RNNCache]:
    r"""Elman RNN over a sequence (one layer of ``torch.nn.RNN``).

    .. math::
        h_t = \phi(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}), \qquad
        \phi = \tanh \text{ or } \operatorname{relu}.

    Parameters
    ----------
    input : array, shape (T, N, D), real floating
    h0 : array, shape (N, H)
    w_ih : array, shape (H, D)
        torch's ``weight_ih_l0``.
    w_hh : array, shape (H, H)
        torch's ``weight_hh_l0``.
    b_ih, b_hh : array, shape (H,), optional
    lengths : integer array, shape (N,), optional
        Valid steps of each sequence, in ``[0, T]``, any order, on the device of ``input``
        (unlike torch's ``pack_padded_sequence``, which wants them on the CPU); see the
        module docstring.
    nonlinearity : {"tanh", "relu"}

    Returns
    -------
    (output, h_n) : arrays, shapes (T, N, H) and (N, H)
        ``output[t]`` is :math:`h_t` (zero past a sequence's length); ``h_n`` the last
        valid state.
    cache : RNNCache

    Notes
    -----
    Backward (:func:`rnn_backward`): with :math:`a_t` the pre-activation and
    :math:`\delta_t = \partial L/\partial h_t` (the output cotangent plus what flows back from
    step :math:`t+1`),
    :math:`\partial L/\partial a_t = \delta_t \odot \phi'(a_t)` and
    :math:`\delta_{t-1} \mathrel{+}= W_{hh}^\top \partial L/\partial a_t`.

    A long sequence runs chunk by chunk by carrying the state; the backward of each chunk
    then stops at its ``h0`` (truncated BPTT with chunk-sized windows)::

        h = h0
        for x in chunks:                       # x: (T_chunk, N, D)
            (y, h), cache = rnn(x, h, w_ih, w_hh, b_ih, b_hh)
            grads = rnn_backward((dL_dy(y), None), cache)   # grads[1] (d_h0) is dropped
    """
    op = "rnn"
    check_choice(op, "nonlinearity", nonlinearity, ("tanh", "relu"))
    xp, dims, mask, arrays = _check(op, 1, input, {"h0": h0}, w_ih, w_hh, b_ih, b_hh, lengths)
    input, h0, w_ih, w_hh, b_ih, b_hh = arrays
    T, N, D, H = dims
    X = xp.reshape(input, (T * N, D))
    XW = X @ w_ih.T
    b = _bias_sum(b_ih, b_hh)
    if b is not None:
        XW = XW + b
    XW = xp.reshape(XW, (T, N, H))
    W_hhT = _transposed_copy(xp, w_hh)
    zero = xp.zeros((), dtype=input.dtype, device=device(input))
    h = h0
    hs = _Steps(xp, (T + 1, N, H), input)
    hs[0] = h0
    for t in range(T):
        a = XW[t, ...] + h @ W_hhT
        # where(), not maximum(): NaN must propagate.
        h_new = xp.tanh(a) if nonlinearity == "tanh" else xp.where(a < 0, zero, a)
        h = h_new if mask is None else xp.where(mask[t, ...], h_new, h)
        hs[t + 1] = h
    Hs = hs.data
    output = Hs[1:, ...] if mask is None else xp.where(mask, Hs[1:, ...], zero)
    cache = RNNCache(X, Hs, w_ih, w_hh, mask, nonlinearity, b_ih is not None, b_hh is not None)
    return (output, _own(xp, Hs[T, ...])), cache


@backward_op(RNNCache)
def rnn_backward(
    grad: tuple[Array | None, Array | None], cache: RNNCache, /, *, truncate: int | None = None
) -> tuple[Array, Array, Array, Array, Array | None, Array | None, None]:
    r"""Backpropagation through time for :func:`rnn`.

    Parameters
    ----------
    grad : (d_output, d_h_n)
        Cotangents of ``output (T, N, H)`` and ``h_n (N, H)``; either may be ``None``.
    cache : RNNCache
    truncate : int, optional
        Truncated BPTT: walk back through the last ``k = truncate`` steps only,
        :math:`t = T-k, \dots, T-1`. ``d_output`` of earlier steps is ignored, ``d_input`` is
        zero there and ``d_h0`` is zero (the state entering step :math:`T-k` counts as a
        constant). The result equals the full backward of a chunk holding the last ``k``
        steps, started from the state the forward reached at :math:`T-k`. ``truncate >= T``
        (and None) is full BPTT.

    Returns
    -------
    (d_input, d_h0, d_w_ih, d_w_hh, d_b_ih, d_b_hh, None)
        ``None`` for an absent bias; the last entry stands for ``lengths``.
    """
    op = "rnn_backward"
    X, Hs, w_ih, w_hh, mask, nonlinearity, has_b_ih, has_b_hh = cache
    T, N, H = (int(s) for s in Hs.shape)
    T -= 1
    xp, (dout, dh_n) = tuple_cotangents(op, grad, ("d_output", "d_h_n"), ((T, N, H), (N, H)), Hs)
    dims = _Dims(T, N, int(X.shape[1]), H)
    k = _check_truncate(op, truncate, T)
    s = T - k
    zero = xp.zeros((), dtype=Hs.dtype, device=device(Hs))
    if dout is not None and mask is not None:
        dout = xp.where(mask, dout, zero)  # padded outputs are constants
    dh = dh_n if dh_n is not None else xp.zeros((N, H), dtype=Hs.dtype, device=device(Hs))
    dAs = _Steps(xp, (k, N, H), Hs)
    for t in range(T - 1, s - 1, -1):
        if dout is not None:
            dh = dh + dout[t, ...]
        h = Hs[t + 1, ...]
        if nonlinearity == "tanh":
            da = dh * (1 - h * h)
        else:
            da = xp.where(h <= 0, zero, dh)  # as F.relu: NaN passes the gradient
        if mask is not None:
            da = xp.where(mask[t, ...], da, zero)
            dh = xp.where(mask[t, ...], da @ w_hh, dh)
        else:
            dh = da @ w_hh
        dAs[t - s] = da
    H_prev = xp.reshape(Hs[:T, ...], (T * N, H))
    dW_ih, dW_hh, db, dX = _weight_grads(xp, dAs.data, X, H_prev, w_ih, dims, s)
    dh0 = dh if s == 0 else xp.zeros((N, H), dtype=Hs.dtype, device=device(Hs))
    return (
        dX,
        dh0,
        dW_ih,
        dW_hh,
        *_bias_grads(xp, db, has_b_ih, has_b_hh),
        None,
    )


# ---------------------------------------------------------------------------------------------
# LSTM


class LSTMCache(NamedTuple):
    X: Array  # input, (T·N, D)
    Hs: Array  # h0, h_1, ..., h_T (carried), (T+1, N, H)
    Cs: Array  # c0, c_1, ..., c_T (carried), (T+1, N, H)
    TZ: Array  # tanh of the scaled pre-activations, internal gate order (T, N, 4H)
    w_ih: Array
    w_hh: Array
    mask: Array | None
    has_b_ih: bool
    has_b_hh: bool


# Inside the loops the gates run in the order (i, f, o, g): the three sigmoids are then one
# contiguous block. _swap_og maps torch's (i, f, g, o) rows to it and back (it is its own
# inverse). sigmoid(z) = ½ tanh(z/2) + ½, so one tanh over all 4H columns serves every gate:
# the ½ is folded into the i, f, o rows of the weights and biases (_LSTM_SCALE), and the
# derivative of each activation with respect to its unscaled pre-activation is
# _LSTM_DERIV·(1 − tanh²), whose constant factor the backward folds into the weights.
_LSTM_SCALE = (0.5, 0.5, 0.5, 1.0)
_LSTM_DERIV = (0.25, 0.25, 0.25, 1.0)


def _swap_og(xp: ModuleType, a: Array, H: int) -> Array:
    """Swap the third and fourth blocks of ``H`` rows (axis 0): torch's (i, f, g, o) ⇄ the
    internal (i, f, o, g)."""
    return xp.concat([a[: 2 * H, ...], a[3 * H :, ...], a[2 * H : 3 * H, ...]], axis=0)


@forward_op
def lstm(
    input: Array,
    h0: Array,
    c0: Array,
    w_ih: Array,
    w_hh: Array,
    b_ih: Array | None = None,
    b_hh: Array | None = None,
    lengths: Array | None = None,
) -> tuple[tuple[Array, Array, Array], LSTMCache]:
    r"""LSTM over a sequence (one layer of ``torch.nn.LSTM``), gates in torch's order i, f, g, o.

    .. math::
        \begin{aligned}
        [\tilde i, \tilde f, \tilde g, \tilde o] &= W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh}\\
        i, f, o &= \sigma(\tilde i), \sigma(\tilde f), \sigma(\tilde o), \quad g = \tanh \tilde g\\
        c_t &= f \odot c_{t-1} + i \odot g, \qquad h_t = o \odot \tanh c_t
        \end{aligned}

    Parameters
    ----------
    input : array, shape (T, N, D)
    h0, c0 : arrays, shape (N, H)
    w_ih : array, shape (4H, D)
    w_hh : array, shape (4H, H)
    b_ih, b_hh : arrays, shape (4H,), optional
    lengths : integer array, shape (N,), optional

    Returns
    -------
    (output, h_n, c_n) : arrays, shapes (T, N, H), (N, H), (N, H)
    cache : LSTMCache

    Notes
    -----
    Backward (:func:`lstm_backward`), with :math:`\delta h_t, \delta c_t` the total cotangents
    of the states: :math:`\delta o = \delta h_t \tanh c_t`,
    :math:`\delta c_t \mathrel{+}= \delta h_t\, o\, (1 - \tanh^2 c_t)`,
    :math:`\delta i = \delta c_t\, g`, :math:`\delta f = \delta c_t\, c_{t-1}`,
    :math:`\delta g = \delta c_t\, i`, :math:`\delta c_{t-1} = \delta c_t\, f`; through the
    activations :math:`\sigma' = \sigma(1-\sigma)`, :math:`\tanh' = 1 - g^2`; and
    :math:`\delta h_{t-1} = W_{hh}^\top \delta[\tilde i, \tilde f, \tilde g, \tilde o]`.
    """
    op = "lstm"
    states = {"h0": h0, "c0": c0}
    xp, dims, mask, arrays = _check(op, 4, input, states, w_ih, w_hh, b_ih, b_hh, lengths)
    input, h0, c0, w_ih, w_hh, b_ih, b_hh = arrays
    T, N, D, H = dims
    scale = _gate_vector(xp, _LSTM_SCALE, H, input)
    X = xp.reshape(input, (T * N, D))
    XW = X @ (_swap_og(xp, w_ih, H) * scale[:, None]).T
    b = _bias_sum(b_ih, b_hh)
    if b is not None:
        XW = XW + _swap_og(xp, b, H) * scale
    XW = xp.reshape(XW, (T, N, 4 * H))
    W_hhT = _transposed_copy(xp, _swap_og(xp, w_hh, H) * scale[:, None])
    h, c = h0, c0
    hs, cs = _Steps(xp, (T + 1, N, H), input), _Steps(xp, (T + 1, N, H), input)
    # tanh of step t's pre-activations goes where step t's input projection was: it is the
    # largest cached array, and fresh memory is what costs (page faults) at large T·N·H.
    tzs = _Steps(xp, (T, N, 4 * H), input, over=XW)
    hs[0], cs[0] = h0, c0
    for t in range(T):
        tz = xp.tanh(XW[t, ...] + h @ W_hhT)
        ifo = tz[:, : 3 * H] * 0.5 + 0.5
        i, f, o, g = ifo[:, :H], ifo[:, H : 2 * H], ifo[:, 2 * H :], tz[:, 3 * H :]
        c_new = f * c + i * g
        tc = xp.tanh(c_new)
        h_new = o * tc
        if mask is None:
            h, c = h_new, c_new
        else:
            h = xp.where(mask[t, ...], h_new, h)
            c = xp.where(mask[t, ...], c_new, c)
        hs[t + 1], cs[t + 1], tzs[t] = h, c, tz
    Hs = hs.data
    zero = xp.zeros((), dtype=input.dtype, device=device(input))
    output = Hs[1:, ...] if mask is None else xp.where(mask, Hs[1:, ...], zero)
    has_b = (b_ih is not None, b_hh is not None)
    cache = LSTMCache(X, Hs, cs.data, tzs.data, w_ih, w_hh, mask, *has_b)
    return (output, _own(xp, Hs[T, ...]), _own(xp, cs.data[T, ...])), cache


@backward_op(LSTMCache)
def lstm_backward(
    grad: tuple[Array | None, Array | None, Array | None],
    cache: LSTMCache,
    /,
    *,
    truncate: int | None = None,
) -> tuple[Array, Array, Array, Array, Array, Array | None, Array | None, None]:
    r"""Backpropagation through time for :func:`lstm`.

    Parameters
    ----------
    grad : (d_output, d_h_n, d_c_n)
        Cotangents of the three outputs; any may be ``None``.
    cache : LSTMCache
    truncate : int, optional
        Walk back through the last ``truncate`` steps only; see :func:`rnn_backward`.
        ``d_h0`` and ``d_c0`` are zero when ``truncate < T``.

    Returns
    -------
    (d_input, d_h0, d_c0, d_w_ih, d_w_hh, d_b_ih, d_b_hh, None)
    """
    op = "lstm_backward"
    X, Hs, Cs, TZ, w_ih, w_hh, mask, has_b_ih, has_b_hh = cache
    T, N, H = (int(s) for s in Hs.shape)
    T -= 1
    names = ("d_output", "d_h_n", "d_c_n")
    xp, (dout, dh_n, dc_n) = tuple_cotangents(op, grad, names, ((T, N, H), (N, H), (N, H)), Hs)
    dims = _Dims(T, N, int(X.shape[1]), H)
    k = _check_truncate(op, truncate, T)
    s = T - k
    zero = xp.zeros((), dtype=Hs.dtype, device=device(Hs))
    # The loop keeps dZ = dA ⊙ (1 − tanh²), the pre-activation gradient without the constant
    # factor _LSTM_DERIV per gate; that factor is applied to the weights (for d_h) and to the
    # results of the GEMMs after the loop, never per step.
    deriv = _gate_vector(xp, _LSTM_DERIV, H, Hs)
    W_hh_d = _swap_og(xp, w_hh, H) * deriv[:, None]
    if dout is not None and mask is not None:
        dout = xp.where(mask, dout, zero)

    def zeros() -> Array:
        return xp.zeros((N, H), dtype=Hs.dtype, device=device(Hs))

    dh = dh_n if dh_n is not None else zeros()
    dc = dc_n if dc_n is not None else zeros()
    dZs = _Steps(xp, (k, N, 4 * H), Hs)
    for t in range(T - 1, s - 1, -1):
        if dout is not None:
            dh = dh + dout[t, ...]
        if mask is None:
            dh_t, dc_t = dh, dc
        else:
            m = mask[t, ...]
            dh_t, dc_t = xp.where(m, dh, zero), xp.where(m, dc, zero)
        # tanh c_t again rather than cached: cheaper than the memory (on padded rows Cs holds
        # the carried state, but dh_t and dc_t are zero there)
        tz, tc = TZ[t, ...], xp.tanh(Cs[t + 1, ...])
        ifo = tz[:, : 3 * H] * 0.5 + 0.5
        i, f, o, g = ifo[:, :H], ifo[:, H : 2 * H], ifo[:, 2 * H :], tz[:, 3 * H :]
        dc_t = dc_t + dh_t * o * (1 - tc * tc)
        dA = xp.concat([dc_t * g, dc_t * Cs[t, ...], dh_t * tc, dc_t * i], axis=1)
        dZ = dA * (1 - tz * tz)
        dZs[t - s] = dZ
        if mask is None:
            dh = dZ @ W_hh_d
            dc = dc_t * f
        else:
            dh = xp.where(m, dZ @ W_hh_d, dh)
            dc = xp.where(m, dc_t * f, dc)
    H_prev = xp.reshape(Hs[:T, ...], (T * N, H))
    w_ih_d = _swap_og(xp, w_ih, H) * deriv[:, None]
    dW_ih, dW_hh, db, dX = _weight_grads(xp, dZs.data, X, H_prev, w_ih_d, dims, s)
    dW_ih = _swap_og(xp, dW_ih * deriv[:, None], H)
    dW_hh = _swap_og(xp, dW_hh * deriv[:, None], H)
    db = _swap_og(xp, db * deriv, H)
    if s:
        dh, dc = zeros(), zeros()
    return (
        dX,
        dh,
        dc,
        dW_ih,
        dW_hh,
        *_bias_grads(xp, db, has_b_ih, has_b_hh),
        None,
    )


# ---------------------------------------------------------------------------------------------
# GRU


class GRUCache(NamedTuple):
    X: Array  # input, (T·N, D)
    Hs: Array  # h0, h_1, ..., h_T (carried), (T+1, N, H)
    RZ: Array  # [r, z] of each step, (T, N, 2H)
    HN: Array  # W_hn h_{t-1} + b_hn of each step, (T, N, H)
    NS: Array  # candidate n of each step, (T, N, H)
    w_ih: Array
    w_hh: Array
    mask: Array | None
    has_b_ih: bool
    has_b_hh: bool


@forward_op
def gru(
    input: Array,
    h0: Array,
    w_ih: Array,
    w_hh: Array,
    b_ih: Array | None = None,
    b_hh: Array | None = None,
    lengths: Array | None = None,
) -> tuple[tuple[Array, Array], GRUCache]:
    r"""GRU over a sequence (one layer of ``torch.nn.GRU``), gates in torch's order r, z, n.

    .. math::
        \begin{aligned}
        r &= \sigma(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr}), \quad
        z = \sigma(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz})\\
        n &= \tanh(W_{in} x_t + b_{in} + r \odot (W_{hn} h_{t-1} + b_{hn}))\\
        h_t &= (1 - z) \odot n + z \odot h_{t-1}
        \end{aligned}

    Parameters
    ----------
    input : array, shape (T, N, D)
    h0 : array, shape (N, H)
    w_ih : array, shape (3H, D)
    w_hh : array, shape (3H, H)
    b_ih, b_hh : arrays, shape (3H,), optional
    lengths : integer array, shape (N,), optional

    Returns
    -------
    (output, h_n) : arrays, shapes (T, N, H), (N, H)
    cache : GRUCache

    Notes
    -----
    Backward (:func:`gru_backward`): :math:`\delta n = \delta h_t (1 - z)`,
    :math:`\delta z = \delta h_t (h_{t-1} - n)`, :math:`\delta \tilde n = \delta n (1 - n^2)`,
    :math:`\delta r = \delta \tilde n \odot (W_{hn} h_{t-1} + b_{hn})`, and
    :math:`\delta h_{t-1} = \delta h_t\, z + W_{hh}^\top [\delta\tilde r, \delta\tilde z,
    r \odot \delta\tilde n]`.
    """
    op = "gru"
    xp, dims, mask, arrays = _check(op, 3, input, {"h0": h0}, w_ih, w_hh, b_ih, b_hh, lengths)
    input, h0, w_ih, w_hh, b_ih, b_hh = arrays
    T, N, D, H = dims
    # sigmoid(z) = ½ tanh(z/2) + ½: fold the ½ into the r and z rows of the weights.
    scale = _gate_vector(xp, (0.5, 0.5, 1.0), H, input)
    X = xp.reshape(input, (T * N, D))
    XW = X @ (w_ih * scale[:, None]).T
    # b_hr and b_hz join the input projection; b_hn stays inside r ⊙ (W_hn h + b_hn).
    b = None
    if b_ih is not None:
        b = b_ih * scale
    if b_hh is not None:
        b_rz = b_hh * _gate_vector(xp, (0.5, 0.5, 0.0), H, input)
        b = b_rz if b is None else b + b_rz
    if b is not None:
        XW = XW + b
    b_hn = b_hh[2 * H :] if b_hh is not None else None
    XW = xp.reshape(XW, (T, N, 3 * H))
    W_hhT = _transposed_copy(xp, w_hh * scale[:, None])
    h = h0
    hs, rzs = _Steps(xp, (T + 1, N, H), input), _Steps(xp, (T, N, 2 * H), input)
    hns, ns = _Steps(xp, (T, N, H), input), _Steps(xp, (T, N, H), input)
    hs[0] = h0
    for t in range(T):
        xw = XW[t, ...]
        hw = h @ W_hhT
        rz = xp.tanh(xw[:, : 2 * H] + hw[:, : 2 * H]) * 0.5 + 0.5
        r, z = rz[:, :H], rz[:, H:]
        hn = hw[:, 2 * H :] if b_hn is None else hw[:, 2 * H :] + b_hn
        n = xp.tanh(xw[:, 2 * H :] + r * hn)
        h_new = n + z * (h - n)
        h = h_new if mask is None else xp.where(mask[t, ...], h_new, h)
        hs[t + 1], rzs[t], hns[t], ns[t] = h, rz, hn, n
    Hs = hs.data
    zero = xp.zeros((), dtype=input.dtype, device=device(input))
    output = Hs[1:, ...] if mask is None else xp.where(mask, Hs[1:, ...], zero)
    has_b = (b_ih is not None, b_hh is not None)
    cache = GRUCache(X, Hs, rzs.data, hns.data, ns.data, w_ih, w_hh, mask, *has_b)
    return (output, _own(xp, Hs[T, ...])), cache


@backward_op(GRUCache)
def gru_backward(
    grad: tuple[Array | None, Array | None], cache: GRUCache, /, *, truncate: int | None = None
) -> tuple[Array, Array, Array, Array, Array | None, Array | None, None]:
    r"""Backpropagation through time for :func:`gru`.

    Parameters
    ----------
    grad : (d_output, d_h_n)
        Either may be ``None``.
    cache : GRUCache
    truncate : int, optional
        Walk back through the last ``truncate`` steps only; see :func:`rnn_backward`.

    Returns
    -------
    (d_input, d_h0, d_w_ih, d_w_hh, d_b_ih, d_b_hh, None)
    """
    op = "gru_backward"
    X, Hs, RZ, HN, NS, w_ih, w_hh, mask, has_b_ih, has_b_hh = cache
    T, N, H = (int(s) for s in Hs.shape)
    T -= 1
    xp, (dout, dh_n) = tuple_cotangents(op, grad, ("d_output", "d_h_n"), ((T, N, H), (N, H)), Hs)
    D = int(X.shape[1])
    k = _check_truncate(op, truncate, T)
    s = T - k
    zero = xp.zeros((), dtype=Hs.dtype, device=device(Hs))
    if dout is not None and mask is not None:
        dout = xp.where(mask, dout, zero)
    dh = dh_n if dh_n is not None else xp.zeros((N, H), dtype=Hs.dtype, device=device(Hs))
    dGis, dGhs = _Steps(xp, (k, N, 3 * H), Hs), _Steps(xp, (k, N, 3 * H), Hs)
    for t in range(T - 1, s - 1, -1):
        if dout is not None:
            dh = dh + dout[t, ...]
        dh_t = dh if mask is None else xp.where(mask[t, ...], dh, zero)
        rz, hn, n = RZ[t, ...], HN[t, ...], NS[t, ...]
        r, z = rz[:, :H], rz[:, H:]
        dn = dh_t * (1 - z) * (1 - n * n)
        drz = xp.concat([dn * hn, dh_t * (Hs[t, ...] - n)], axis=1) * (rz * (1 - rz))
        dGis[t - s] = xp.concat([drz, dn], axis=1)
        dGh = xp.concat([drz, dn * r], axis=1)
        dGhs[t - s] = dGh
        dh_prev = dGh @ w_hh + dh_t * z
        dh = dh_prev if mask is None else xp.where(mask[t, ...], dh_prev, dh)
    dGi = xp.reshape(dGis.data, (k * N, 3 * H))
    dGh_all = xp.reshape(dGhs.data, (k * N, 3 * H))
    H_prev = xp.reshape(Hs[:T, ...], (T * N, H))
    dW_ih = dGi.T @ X[s * N :, ...]
    dW_hh = dGh_all.T @ H_prev[s * N :, ...]
    dX = xp.reshape(dGi @ w_ih, (k, N, D))
    if s:
        dX = xp.concat([xp.zeros((s, N, D), dtype=dX.dtype, device=device(dX)), dX], axis=0)
        dh = xp.zeros((N, H), dtype=Hs.dtype, device=device(Hs))
    return (
        dX,
        dh,
        dW_ih,
        dW_hh,
        xp.sum(dGi, axis=0) if has_b_ih else None,
        xp.sum(dGh_all, axis=0) if has_b_hh else None,
        None,
    )
