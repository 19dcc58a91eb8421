"""Convolution and pooling (issue 3).

Targets (``ms ours / ms torch``, forward+backward): conv2d N=32, 64->64 channels, 32x32,
3x3, padding 1: <= 1.5 on CPU, <= 2.5 on GPU (also at N=256, GPU only); max_pool2d 2x2/2
and 3x3/2 on the same input: <= 1.0 on CPU, <= 1.5 on GPU. avg_pool2d and the global average pool are shown
for reference (no target).
"""

from __future__ import annotations

from typing import Any

from _harness import Case, Context

from backprop_xp import functional as F

FAMILY = "conv"


def cases(ctx: Context) -> list[Case]:
    if ctx.quick:
        n_list, c, hw = [(2, False)], 4, 8
    else:
        n_list, c, hw = [(32, False), (256, True)], 64, 32
    out: list[Case] = []
    for n, gpu_only in n_list:
        if gpu_only and not ctx.gpu:
            continue  # do not build the large inputs a CPU run skips anyway
        out.append(_conv2d(ctx, n, c, c, hw, 3, 1, gpu_only))
    n = n_list[0][0]
    x = ctx.rng.standard_normal((n, c, hw, hw))
    out.append(_pool2d(ctx, "max_pool2d", x, 2, 2, target_cpu=1.0, target_gpu=1.5))
    out.append(_pool2d(ctx, "max_pool2d", x, 3, 2, target_cpu=1.0, target_gpu=1.5))
    out.append(_pool2d(ctx, "avg_pool2d", x, 3, 2, target_cpu=None, target_gpu=None))
    out.append(_global_avg_pool(ctx, x))
    return out


def _conv2d(
    ctx: Context, n: int, c_in: int, c_out: int, hw: int, k: int, pad: int, gpu_only: bool
) -> Case:
    x = ctx.rng.standard_normal((n, c_in, hw, hw))
    w = ctx.rng.standard_normal((c_out, c_in, k, k)) / (c_in * k * k) ** 0.5
    b = ctx.rng.standard_normal(c_out)
    h_out = hw + 2 * pad - k + 1
    dy = ctx.rng.standard_normal((n, c_out, h_out, h_out))
    x_o, w_o, b_o, dy_o = (ctx.ours(a) for a in (x, w, b, dy))
    x_t, w_t, b_t = (ctx.theirs(a, requires_grad=True) for a in (x, w, b))
    dy_t = ctx.theirs(dy)
    tnf = ctx.torch.nn.functional

    def ours() -> Any:
        _, cache = F.conv2d(x_o, w_o, b_o, padding=pad)
        return F.conv2d_backward(dy_o, cache)

    def theirs() -> Any:
        ctx.zero_grad(x_t, w_t, b_t)
        tnf.conv2d(x_t, w_t, b_t, padding=pad).backward(dy_t)

    # forward 2*N*C_out*C_in*k^2*H_out*W_out; backward twice that (dx and dW GEMMs)
    flops = 3 * 2.0 * n * c_out * c_in * k * k * h_out * h_out
    return Case(
        "conv2d",
        FAMILY,
        f"{n}x{c_in}x{hw}x{hw} {k}x{k}->{c_out} pad{pad}",
        ours,
        theirs,
        flops=flops,
        target_cpu=1.5,
        target_gpu=2.5,
        gpu_only=gpu_only,
    )


def _pool2d(
    ctx: Context,
    op: str,
    x: Any,
    k: int,
    s: int,
    target_cpu: float | None,
    target_gpu: float | None,
) -> Case:
    """``F.max_pool2d`` or ``F.avg_pool2d`` (same name in torch), kernel k, stride s."""
    x_o, x_t = ctx.ours(x), ctx.theirs(x, requires_grad=True)
    shape_out = (x.shape[0], x.shape[1], *((d - k) // s + 1 for d in x.shape[2:]))
    dy = ctx.rng.standard_normal(shape_out)
    dy_o, dy_t = ctx.ours(dy), ctx.theirs(dy)
    forward, backward = getattr(F, op), getattr(F, op + "_backward")
    torch_op = getattr(ctx.torch.nn.functional, op)

    def ours() -> Any:
        _, cache = forward(x_o, k, s)
        return backward(dy_o, cache)

    def theirs() -> Any:
        ctx.zero_grad(x_t)
        torch_op(x_t, k, s).backward(dy_t)

    shape = "x".join(map(str, x.shape)) + f" {k}x{k}/{s}"
    return Case(op, FAMILY, shape, ours, theirs, target_cpu=target_cpu, target_gpu=target_gpu)


def _global_avg_pool(ctx: Context, x: Any) -> Case:
    x_o, x_t = ctx.ours(x), ctx.theirs(x, requires_grad=True)
    dy = ctx.rng.standard_normal(x.shape[:2])
    dy_o, dy_t = ctx.ours(dy), ctx.theirs(dy)
    tnf = ctx.torch.nn.functional

    def ours() -> Any:
        _, cache = F.global_avg_pool(x_o)
        return F.global_avg_pool_backward(dy_o, cache)

    def theirs() -> Any:
        ctx.zero_grad(x_t)
        tnf.adaptive_avg_pool2d(x_t, 1).flatten(1).backward(dy_t)

    return Case("global_avg_pool", FAMILY, "x".join(map(str, x.shape)), ours, theirs)
