"""This family's ops: embedding lookup + its scatter-add backward; GELU and dropout for
reference.

``embedding``: a 50,000 x 256 table, 16,384 random indices (the repeats of random indices
included); one call is the lookup and the weight gradient, against
``torch.nn.functional.embedding`` with autograd. Target (``ms ours / ms torch``): <= 1.5 on
CPU. Ours runs with its index range check on (one host synchronization per call), as users
get it by default.

``gelu``: exact GELU forward + backward on 4M elements, no target (on NumPy our erfc is
~40 elementwise passes; torch evaluates erf in one vectorized kernel).

``dropout``: p = 0.1 on 4M elements, forward + backward, no target (our mask is a hash of
about 25 int32 passes, the same on every backend; torch draws from its own generator).
"""

from __future__ import annotations

from typing import Any

from _harness import Case, Context

from backprop_xp import functional as F

FAMILY = "embedding"


def cases(ctx: Context) -> list[Case]:
    if ctx.quick:
        return [_embedding(ctx, 500, 16, 64), _gelu(ctx, (64, 64)), _dropout(ctx, (64, 64))]
    shape = (4096, 1024)
    return [_embedding(ctx, 50_000, 256, 16_384), _gelu(ctx, shape), _dropout(ctx, shape)]


def _embedding(ctx: Context, n: int, dim: int, n_index: int) -> Case:
    weight = ctx.rng.standard_normal((n, dim))
    index = ctx.rng.integers(0, n, size=n_index, dtype="int64")
    dy = ctx.rng.standard_normal((n_index, dim))
    w_o, i_o, dy_o = ctx.ours(weight), ctx.ours(index), ctx.ours(dy)
    w_t, i_t, dy_t = ctx.theirs(weight, requires_grad=True), ctx.theirs(index), ctx.theirs(dy)
    torch = ctx.torch

    def ours() -> Any:
        _, cache = F.embedding(i_o, w_o)
        return F.embedding_backward(dy_o, cache)

    def theirs() -> Any:
        ctx.zero_grad(w_t)
        torch.nn.functional.embedding(i_t, w_t).backward(dy_t)

    return Case("embedding", FAMILY, f"{n}x{dim}, {n_index} indices", ours, theirs, target_cpu=1.5)


def _gelu(ctx: Context, shape: tuple[int, int]) -> Case:
    x = ctx.rng.standard_normal(shape)
    dy = ctx.rng.standard_normal(shape)
    x_o, dy_o = ctx.ours(x), ctx.ours(dy)
    x_t, dy_t = ctx.theirs(x, requires_grad=True), ctx.theirs(dy)
    torch = ctx.torch

    def ours() -> Any:
        _, cache = F.gelu(x_o)
        return F.gelu_backward(dy_o, cache)

    def theirs() -> Any:
        ctx.zero_grad(x_t)
        torch.nn.functional.gelu(x_t).backward(dy_t)

    return Case("gelu", FAMILY, "x".join(map(str, shape)), ours, theirs)


def _dropout(ctx: Context, shape: tuple[int, int]) -> Case:
    x = ctx.rng.standard_normal(shape)
    dy = ctx.rng.standard_normal(shape)
    x_o, dy_o = ctx.ours(x), ctx.ours(dy)
    x_t, dy_t = ctx.theirs(x, requires_grad=True), ctx.theirs(dy)
    torch = ctx.torch
    seed = [0]

    def ours() -> Any:
        seed[0] += 1  # a new mask per call, as a training loop draws
        _, cache = F.dropout(x_o, 0.1, seed=seed[0])
        return F.dropout_backward(dy_o, cache)

    def theirs() -> Any:
        ctx.zero_grad(x_t)
        torch.nn.functional.dropout(x_t, 0.1).backward(dy_t)

    return Case("dropout", FAMILY, "x".join(map(str, shape)) + " p=0.1", ours, theirs)
