"""Recurrent ops of issue 4: Elman RNN (tanh) and LSTM, forward + BPTT.

One call is the forward over ``T`` steps and the full backward (gradients of the input, the
initial state and all weights and biases) against ``torch.nn.RNN`` / ``torch.nn.LSTM`` with
autograd, weights loaded unchanged. Targets (``ms ours / ms torch``): <= 1.2 on CPU, <= 3 on
GPU (cuDNN's fused kernels).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from _harness import Case, Context

from backprop_xp import functional as F

FAMILY = "rnn"
SHAPES = [(64, 32, 128, 256), (64, 256, 512, 512)]  # (T, N, D, H)
QUICK_SHAPES = [(8, 4, 8, 16)]


def cases(ctx: Context) -> list[Case]:
    out: list[Case] = []
    for shape in QUICK_SHAPES if ctx.quick else SHAPES:
        out.append(_case(ctx, "rnn", *shape))
        out.append(_case(ctx, "lstm", *shape))
    return out


def _flops(cell: str, T: int, N: int, D: int, H: int) -> float:
    """GEMM flops of forward + backward: per gate block, the input projection (forward, d_input,
    d_w_ih) and the recurrent product (forward, d_h, d_w_hh), 2 flops per multiply-add."""
    G = 4 if cell == "lstm" else 1
    return 3 * 2 * T * N * G * H * (D + H)


def _case(ctx: Context, cell: str, T: int, N: int, D: int, H: int) -> Case:
    G = 4 if cell == "lstm" else 1
    rng = ctx.rng
    k = 1 / np.sqrt(H)  # torch's default initialization range
    x = rng.standard_normal((T, N, D))
    h0 = rng.standard_normal((N, H)) * 0.1
    c0 = rng.standard_normal((N, H)) * 0.1
    w_ih, w_hh = rng.uniform(-k, k, (G * H, D)), rng.uniform(-k, k, (G * H, H))
    b_ih, b_hh = rng.uniform(-k, k, G * H), rng.uniform(-k, k, G * H)
    dy = rng.standard_normal((T, N, H))

    o = [ctx.ours(a) for a in (x, h0, c0, w_ih, w_hh, b_ih, b_hh, dy)]
    x_o, h0_o, c0_o, w_ih_o, w_hh_o, b_ih_o, b_hh_o, dy_o = o

    torch = ctx.torch
    module = (torch.nn.LSTM if cell == "lstm" else torch.nn.RNN)(D, H).to(
        device=ctx.torch_device, dtype=getattr(torch, ctx.dtype)
    )
    with torch.no_grad():
        module.weight_ih_l0.copy_(ctx.theirs(w_ih))
        module.weight_hh_l0.copy_(ctx.theirs(w_hh))
        module.bias_ih_l0.copy_(ctx.theirs(b_ih))
        module.bias_hh_l0.copy_(ctx.theirs(b_hh))
    params = list(module.parameters())
    x_t = ctx.theirs(x, requires_grad=True)
    h0_t = ctx.theirs(h0[None], requires_grad=True)
    c0_t = ctx.theirs(c0[None], requires_grad=True)
    dy_t = ctx.theirs(dy)

    if cell == "lstm":

        def ours() -> Any:
            _, cache = F.lstm(x_o, h0_o, c0_o, w_ih_o, w_hh_o, b_ih_o, b_hh_o)
            return F.lstm_backward((dy_o, None, None), cache)

        def theirs() -> Any:
            ctx.zero_grad(x_t, h0_t, c0_t, *params)
            y, _ = module(x_t, (h0_t, c0_t))
            y.backward(dy_t)

    else:

        def ours() -> Any:
            _, cache = F.rnn(x_o, h0_o, w_ih_o, w_hh_o, b_ih_o, b_hh_o)
            return F.rnn_backward((dy_o, None), cache)

        def theirs() -> Any:
            ctx.zero_grad(x_t, h0_t, *params)
            y, _ = module(x_t, h0_t)
            y.backward(dy_t)

    name = "lstm" if cell == "lstm" else "rnn_tanh"
    return Case(
        name,
        FAMILY,
        f"T{T} N{N} D{D} H{H}",
        ours,
        theirs,
        flops=_flops(cell, T, N, D, H),
        target_cpu=1.2,
        target_gpu=3.0,
    )
