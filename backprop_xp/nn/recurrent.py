"""RNN, LSTM and GRU layers: stacked, optionally bidirectional, over ``F.rnn/lstm/gru``.

Parameter names, shapes, gate orders and the ``h_0`` layout ``(num_layers * num_directions,
N, H)`` are torch's, so a torch state dict loads as is.

Truncated BPTT
--------------
Arrays carry no graph, so a state passed on is already "detached": run a long sequence in
chunks, feeding each chunk's final state as the next chunk's ``hx``, and each chunk's
backprop stops at the chunk boundary (its ``dhx`` is returned, to be used or dropped)::

    h = None
    for chunk in chunks:                      # (k, N, F) pieces of a (T, N, F) sequence
        (out, h), backprop = lstm(chunk, h)
        loss, dloss = criterion(head(out), y)
        backprop(d_output)                    # gradients of this chunk only
        opt.step(); model.zero_grad()
"""

from __future__ import annotations

import math
from typing import Any

from .. import functional as F
from ..backend import device, get_namespace, to_namespace
from ..functional._validation import bool_option, int_option, real_option
from .init import RNG, resolve_rng, uniform
from .layers import Dropout
from .module import Backprop, Module, Parameter, once

__all__ = ["GRU", "LSTM", "RNN"]

Array = Any

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _reverse_time(xp: Any, x: Array, lengths: Array | None) -> Array:
    """Reverse each sequence of a time-major ``(T, N, ...)`` array within its own length.

    Padding (``t >= length``) stays in place. The map is its own inverse, so the backward
    of a reversal is the same reversal.
    """
    if lengths is None:
        return xp.flip(x, axis=0)
    T, N = x.shape[0], x.shape[1]
    dev = device(x)
    t = xp.reshape(xp.arange(T, device=dev), (T, 1))
    n = xp.reshape(xp.arange(N, device=dev), (1, N))
    L = xp.reshape(xp.astype(lengths, t.dtype), (1, N))
    src = xp.where(t < L, L - 1 - t, t)
    flat = xp.reshape(x, (T * N, *x.shape[2:]))
    return xp.reshape(xp.take(flat, xp.reshape(src * N + n, (-1,)), axis=0), x.shape)


class _RNNBase(Module):
    _mode = ""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        rng: RNG = None,
        dtype: str = "float32",
        nonlinearity: str | None = None,
    ):
        super().__init__()
        name = type(self).__name__
        input_size = int_option(name, "input_size", input_size, low=0)
        hidden_size = int_option(name, "hidden_size", hidden_size, low=0)
        num_layers = int_option(name, "num_layers", num_layers, low=1)
        bias = bool_option(name, "bias", bias)
        batch_first = bool_option(name, "batch_first", batch_first)
        bidirectional = bool_option(name, "bidirectional", bidirectional)
        dropout = real_option(name, "dropout", dropout, low=0.0, high=1.0)
        if nonlinearity is not None and self._mode != "rnn":
            raise TypeError(f"{name}: unexpected argument 'nonlinearity' (only RNN has one)")
        nonlinearity = "tanh" if nonlinearity is None else nonlinearity
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(
                f"{name}: argument 'nonlinearity' expected 'tanh' or 'relu', got {nonlinearity!r}"
            )
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.bias, self.batch_first, self.bidirectional = bias, batch_first, bidirectional
        self.nonlinearity = nonlinearity
        self.dropout = dropout
        gen = resolve_rng(rng)
        G = _GATES[self._mode] * hidden_size
        D = 2 if bidirectional else 1
        bound = 1 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0
        # torch's registration (and so initialization) order: per layer, per direction,
        # weight_ih, weight_hh, bias_ih, bias_hh; every one U(-1/sqrt(H), 1/sqrt(H)).
        for layer in range(num_layers):
            in_size = input_size if layer == 0 else hidden_size * D
            for d in range(D):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                setattr(
                    self, "weight_ih" + sfx, Parameter(uniform(gen, (G, in_size), bound, dtype))
                )
                setattr(
                    self, "weight_hh" + sfx, Parameter(uniform(gen, (G, hidden_size), bound, dtype))
                )
                if bias:
                    setattr(self, "bias_ih" + sfx, Parameter(uniform(gen, (G,), bound, dtype)))
                    setattr(self, "bias_hh" + sfx, Parameter(uniform(gen, (G,), bound, dtype)))
        # the inter-layer dropout's seed comes from the same generator, after the weights: a
        # seeded layer (or nn.manual_seed) gives reproducible masks too
        self._dropout = Dropout(dropout, rng=int(gen.integers(2**62))) if dropout > 0 else None

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _weights(self, layer: int, d: int) -> list[Parameter | None]:
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        return [self._parameters.get(n + sfx) for n in names]

    # -- one direction of one layer, over the functional op --------------------------------
    def _run(self, x: Array, h0: Array, c0: Array | None, w: list[Any], lengths: Any) -> Any:
        w_ih, w_hh, b_ih, b_hh = (None if p is None else p.data for p in w)
        if self._mode == "lstm":
            cache: Any
            (out, h, c), cache = F.lstm(x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
            return out, h, c, cache
        if self._mode == "gru":
            (out, h), cache = F.gru(x, h0, w_ih, w_hh, b_ih, b_hh, lengths)
        else:
            (out, h), cache = F.rnn(
                x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity=self.nonlinearity
            )
        return out, h, None, cache

    def _run_backward(self, d_out: Array, d_h: Any, d_c: Any, cache: Any) -> Any:
        """``(d_x, d_h0, d_c0, [d_w_ih, d_w_hh, d_b_ih, d_b_hh])``."""
        g: Any
        if self._mode == "lstm":
            g = F.lstm_backward((d_out, d_h, d_c), cache)
            return g[0], g[1], g[2], list(g[3:7])
        backward: Any = F.gru_backward if self._mode == "gru" else F.rnn_backward
        g = backward((d_out, d_h), cache)
        return g[0], g[1], None, list(g[2:6])

    def forward(self, x: Array, hx: Any = None, lengths: Any = None) -> tuple[Any, Backprop]:
        """Run the stack over a sequence.

        Parameters
        ----------
        x : array, shape (T, N, input_size) (``(N, T, input_size)`` with ``batch_first``) or
            (T, input_size) unbatched
        hx : array (LSTM: a pair ``(h_0, c_0)``), shape (num_layers * num_directions, N, H),
            optional; zeros by default
        lengths : array or sequence of int, shape (N,), optional
            Valid steps of each sequence (sorted or not); outputs past a sequence's length are
            zero and its final state is the one at its last valid step (the reverse direction
            starts there), as with torch's packed sequences.

        Returns
        -------
        (output, h_n) (LSTM: ``(output, (h_n, c_n))``), backprop
            ``output``: (T, N, D * H) (batch-first if so built). ``backprop(d_output=None,
            d_h_n=None)`` (LSTM: ``d_h_n`` a pair, either entry may be None) accumulates the
            weight gradients and returns ``(dx, dhx)`` (``dhx`` None when ``hx`` was None).
        """
        name = type(self).__name__
        xp = get_namespace(x, op=name, names=("x",))
        unbatched = x.ndim == 2
        if unbatched:
            x = x[:, None, :]
        elif self.batch_first:
            x = xp.permute_dims(x, (1, 0, 2))
        if x.ndim != 3 or x.shape[2] != self.input_size:
            raise ValueError(
                f"{name}: argument 'x' expected shape (T, N, {self.input_size}), got "
                f"{tuple(x.shape)}"
            )
        N, H, D, L = x.shape[1], self.hidden_size, self.num_directions, self.num_layers
        dev = device(x)
        given_hx = hx is not None
        h0, c0 = (hx if self._mode == "lstm" else (hx, None)) if given_hx else (None, None)
        if unbatched:
            h0 = None if h0 is None else h0[:, None, :]
            c0 = None if c0 is None else c0[:, None, :]
        zeros = xp.zeros((L * D, N, H), dtype=x.dtype, device=dev)
        h0 = zeros if h0 is None else h0
        if self._mode == "lstm":
            c0 = zeros if c0 is None else c0
        if lengths is not None:  # a list, or an array of any library (torch keeps them on the host)
            lengths = to_namespace(lengths, xp, dev)
        if tuple(h0.shape) != (L * D, N, H):
            raise ValueError(
                f"{name}: argument 'hx' expected shape {(L * D, N, H)}, got {tuple(h0.shape)}"
            )

        caches: list[Any] = []
        drop_bps: list[Backprop | None] = []
        h_n, c_n = [], []
        inp = x
        for layer in range(L):
            if layer > 0 and self._dropout is not None and self.training:
                inp, bp = self._dropout(inp)
                drop_bps.append(bp)
            else:
                drop_bps.append(None)
            outs = []
            for d in range(D):
                k = layer * D + d
                xin = _reverse_time(xp, inp, lengths) if d else inp
                out, h, c, cache = self._run(
                    xin,
                    h0[k, ...],
                    None if c0 is None else c0[k, ...],
                    self._weights(layer, d),
                    lengths,
                )
                outs.append(_reverse_time(xp, out, lengths) if d else out)
                caches.append(cache)
                h_n.append(h)
                c_n.append(c)
            inp = outs[0] if D == 1 else xp.concat(outs, axis=-1)
        output = inp
        hn = xp.stack(h_n, axis=0)
        cn = xp.stack(c_n, axis=0) if self._mode == "lstm" else None

        def backprop(d_output: Array | None = None, d_h_n: Any = None) -> tuple[Any, Any]:
            dh_all, dc_all = (
                (d_h_n if self._mode == "lstm" else (d_h_n, None))
                if (d_h_n is not None)
                else (None, None)
            )
            if d_output is not None:
                if unbatched:
                    d_output = d_output[:, None, :]
                elif self.batch_first:
                    d_output = xp.permute_dims(d_output, (1, 0, 2))
            if unbatched:
                dh_all = None if dh_all is None else dh_all[:, None, :]
                dc_all = None if dc_all is None else dc_all[:, None, :]
            d_h0, d_c0 = [None] * (L * D), [None] * (L * D)
            d_layer = d_output
            for layer in reversed(range(L)):
                d_in = None
                for d in range(D):
                    k = layer * D + d
                    d_o = None
                    if d_layer is not None:
                        d_o = d_layer if D == 1 else d_layer[..., d * H : (d + 1) * H]
                        if d:
                            d_o = _reverse_time(xp, d_o, lengths)
                    dx_k, dh0_k, dc0_k, dws = self._run_backward(
                        d_o,
                        None if dh_all is None else dh_all[k, ...],
                        None if dc_all is None else dc_all[k, ...],
                        caches[k],
                    )
                    for p, g in zip(self._weights(layer, d), dws, strict=True):
                        if p is not None:
                            p.accumulate(g)
                    if d:
                        dx_k = _reverse_time(xp, dx_k, lengths)
                    d_in = dx_k if d_in is None else d_in + dx_k
                    d_h0[k], d_c0[k] = dh0_k, dc0_k
                drop_bp = drop_bps[layer]
                if drop_bp is not None:
                    d_in = drop_bp(d_in)
                d_layer = d_in
            dx: Any = d_layer
            if unbatched:
                dx = dx[:, 0, :]
            elif self.batch_first:
                dx = xp.permute_dims(dx, (1, 0, 2))
            if not given_hx:
                return dx, None
            dh0 = xp.stack(
                [g if g is not None else xp.zeros((N, H), dtype=x.dtype, device=dev) for g in d_h0]
            )
            if unbatched:
                dh0 = dh0[:, 0, :]
            if self._mode != "lstm":
                return dx, dh0
            dc0 = xp.stack(
                [g if g is not None else xp.zeros((N, H), dtype=x.dtype, device=dev) for g in d_c0]
            )
            if unbatched:
                dc0 = dc0[:, 0, :]
            return dx, (dh0, dc0)

        if unbatched:
            output, hn = output[:, 0, :], hn[:, 0, :]
            cn = None if cn is None else cn[:, 0, :]
        elif self.batch_first:
            output = xp.permute_dims(output, (1, 0, 2))
        state = (hn, cn) if self._mode == "lstm" else hn
        return (output, state), once(name, backprop)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.batch_first:
            s += ", batch_first=True"
        return s


class RNN(_RNNBase):
    r"""Elman RNN (``F.rnn``): :math:`h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})`
    (or ReLU with ``nonlinearity="relu"``), torch's ``nn.RNN``."""

    _mode = "rnn"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        *,
        rng: RNG = None,
        dtype: str = "float32",
    ):
        super().__init__(
            input_size,
            hidden_size,
            num_layers,
            bias,
            batch_first,
            dropout,
            bidirectional,
            rng=rng,
            dtype=dtype,
            nonlinearity=nonlinearity,
        )


class LSTM(_RNNBase):
    """LSTM (``F.lstm``), torch's ``nn.LSTM`` (gates i, f, g, o); ``hx = (h_0, c_0)``."""

    _mode = "lstm"


class GRU(_RNNBase):
    """GRU (``F.gru``), torch's ``nn.GRU`` (gates r, z, n)."""

    _mode = "gru"
