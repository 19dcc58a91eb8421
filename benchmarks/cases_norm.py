"""Normalization: layer norm and batch norm (training mode), forward+backward.

Targets (``ms ours / ms torch``): layer_norm 4096x1024 (normalized over the 1024, with weight
and bias) and batch_norm2d 32x64x32x32 in training mode (batch statistics, running
statistics updated, weight and bias) <= 1.5 on CPU. No GPU target.
"""

from __future__ import annotations

from typing import Any

from _harness import Case, Context

from backprop_xp import functional as F

FAMILY = "norm"


def cases(ctx: Context) -> list[Case]:
    if ctx.quick:
        return [_layer_norm(ctx, 64, 32), _batch_norm2d(ctx, 2, 4, 8)]
    return [_layer_norm(ctx, 4096, 1024), _batch_norm2d(ctx, 32, 64, 32)]


def _layer_norm(ctx: Context, n: int, d: int) -> Case:
    x = ctx.rng.standard_normal((n, d))
    w = 1 + 0.1 * ctx.rng.standard_normal(d)
    b = 0.1 * ctx.rng.standard_normal(d)
    dy = ctx.rng.standard_normal((n, d))
    x_o, w_o, b_o, dy_o = (ctx.ours(a) for a in (x, w, b, dy))
    x_t, w_t, b_t = (ctx.theirs(a, requires_grad=True) for a in (x, w, b))
    dy_t = ctx.theirs(dy)
    tnf = ctx.torch.nn.functional

    def ours() -> Any:
        _, cache = F.layer_norm(x_o, (d,), w_o, b_o)
        return F.layer_norm_backward(dy_o, cache)

    def theirs() -> Any:
        ctx.zero_grad(x_t, w_t, b_t)
        tnf.layer_norm(x_t, (d,), w_t, b_t).backward(dy_t)

    return Case("layer_norm", FAMILY, f"{n}x{d}", ours, theirs, target_cpu=1.5)


def _batch_norm2d(ctx: Context, n: int, c: int, hw: int) -> Case:
    x = ctx.rng.standard_normal((n, c, hw, hw))
    w = 1 + 0.1 * ctx.rng.standard_normal(c)
    b = 0.1 * ctx.rng.standard_normal(c)
    rm, rv = ctx.rng.standard_normal(c), 0.5 + ctx.rng.random(c)
    dy = ctx.rng.standard_normal((n, c, hw, hw))
    x_o, w_o, b_o, rm_o, rv_o, dy_o = (ctx.ours(a) for a in (x, w, b, rm, rv, dy))
    x_t, w_t, b_t = (ctx.theirs(a, requires_grad=True) for a in (x, w, b))
    rm_t, rv_t, dy_t = ctx.theirs(rm), ctx.theirs(rv), ctx.theirs(dy)
    tnf = ctx.torch.nn.functional

    def ours() -> Any:
        # the new running statistics come back as arrays (ours never writes into inputs)
        _, cache = F.batch_norm(x_o, rm_o, rv_o, w_o, b_o, training=True)
        return F.batch_norm_backward((dy_o, None, None), cache)

    def theirs() -> Any:
        ctx.zero_grad(x_t, w_t, b_t)
        # torch updates rm_t and rv_t in place: a few repeated updates change no timing
        tnf.batch_norm(x_t, rm_t, rv_t, w_t, b_t, training=True).backward(dy_t)

    shape = f"{n}x{c}x{hw}x{hw} train"
    return Case("batch_norm2d", FAMILY, shape, ours, theirs, target_cpu=1.5)
