"""Core ops of issue 2: softmax, log-softmax, softmax cross-entropy and linear.

Targets (``ms ours / ms torch``): cross-entropy <= 1.0 on CPU, <= 1.5 on GPU; linear <= 1.05
on CPU, <= 1.1 on GPU. Softmax and log-softmax are shown for reference (no target).
"""

from __future__ import annotations

from typing import Any

from _harness import Case, Context

from backprop_xp import functional as F

FAMILY = "core"


def cases(ctx: Context) -> list[Case]:
    if ctx.quick:
        rows = [(256, 100, False)]
        n_lin = 64
    else:
        rows = [(4096, 1000, False), (32768, 1000, True)]
        n_lin = 1024
    out: list[Case] = []
    for n, c, gpu_only in rows:
        if gpu_only and not ctx.gpu:
            continue  # do not build 128 MiB of inputs that the CPU run skips anyway
        out += [_softmax(ctx, op, n, c, gpu_only) for op in ("softmax", "log_softmax")]
        out.append(_cross_entropy(ctx, n, c, gpu_only))
    out.append(_linear(ctx, n_lin, n_lin, n_lin))
    return out


def _softmax(ctx: Context, op: str, n: int, c: int, gpu_only: bool) -> Case:
    """``F.softmax`` or ``F.log_softmax`` (same name in torch) over the last axis."""
    x = ctx.rng.standard_normal((n, c))
    dy = ctx.rng.standard_normal((n, c))
    x_o, dy_o = ctx.ours(x), ctx.ours(dy)
    x_t, dy_t = ctx.theirs(x, requires_grad=True), ctx.theirs(dy)
    forward, backward = getattr(F, op), getattr(F, op + "_backward")
    torch_op = getattr(ctx.torch, op)

    def ours() -> Any:
        _, cache = forward(x_o, axis=-1)
        return backward(dy_o, cache)

    def theirs() -> Any:
        ctx.zero_grad(x_t)
        torch_op(x_t, dim=-1).backward(dy_t)

    return Case(op, FAMILY, f"{n}x{c}", ours, theirs, gpu_only=gpu_only)


def _cross_entropy(ctx: Context, n: int, c: int, gpu_only: bool) -> Case:
    logits = ctx.rng.standard_normal((n, c))
    target = ctx.rng.integers(0, c, size=n, dtype="int64")
    z_o, t_o = ctx.ours(logits), ctx.ours(target)
    z_t, t_t = ctx.theirs(logits, requires_grad=True), ctx.theirs(target)
    g_o = ctx.ours(1.0)  # dL/dloss of the scalar mean loss, as .backward() seeds it
    torch = ctx.torch

    def ours() -> Any:
        _, cache = F.cross_entropy(z_o, t_o)
        return F.cross_entropy_backward(g_o, cache)

    def theirs() -> Any:
        ctx.zero_grad(z_t)
        torch.nn.functional.cross_entropy(z_t, t_t).backward()

    return Case(
        "cross_entropy",
        FAMILY,
        f"{n}x{c}",
        ours,
        theirs,
        target_cpu=1.0,
        target_gpu=1.5,
        gpu_only=gpu_only,
    )


def _linear(ctx: Context, n: int, d_in: int, d_out: int) -> Case:
    x = ctx.rng.standard_normal((n, d_in))
    w = ctx.rng.standard_normal((d_out, d_in)) / d_in**0.5
    b = ctx.rng.standard_normal(d_out)
    dy = ctx.rng.standard_normal((n, d_out))
    x_o, w_o, b_o, dy_o = ctx.ours(x), ctx.ours(w), ctx.ours(b), ctx.ours(dy)
    x_t, w_t, b_t = (ctx.theirs(a, requires_grad=True) for a in (x, w, b))
    dy_t = ctx.theirs(dy)
    torch = ctx.torch

    def ours() -> Any:
        _, cache = F.linear(x_o, w_o, b_o)
        return F.linear_backward(dy_o, cache)

    def theirs() -> Any:
        ctx.zero_grad(x_t, w_t, b_t)
        torch.nn.functional.linear(x_t, w_t, b_t).backward(dy_t)

    return Case(
        "linear",
        FAMILY,
        f"{n}x{d_in}->{d_out}",
        ours,
        theirs,
        flops=3 * 2.0 * n * d_in * d_out,  # Y = XW^T, dX = dY W, dW = dY^T X
        target_cpu=1.05,
        target_gpu=1.1,
    )
