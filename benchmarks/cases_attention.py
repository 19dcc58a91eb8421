"""Scaled dot-product attention, forward + backward, against torch's
``F.scaled_dot_product_attention`` (its CPU flash kernel for these 4-d float32 inputs).

One call is the forward and the gradients of query, key and value. Target (``ms ours / ms
torch``): <= 2.0 on CPU for the causal N=32, H=4, L=S=256, E=64 case; the non-causal one is
shown for reference.
"""

from __future__ import annotations

from typing import Any

from _harness import Case, Context

from backprop_xp import functional as F

FAMILY = "attention"
SHAPES = [(32, 4, 256, 64)]  # (N, H, L = S, E)
QUICK_SHAPES = [(2, 2, 16, 8)]


def cases(ctx: Context) -> list[Case]:
    out: list[Case] = []
    for shape in QUICK_SHAPES if ctx.quick else SHAPES:
        out.append(_case(ctx, *shape, causal=True))
        out.append(_case(ctx, *shape, causal=False))
    return out


def _case(ctx: Context, N: int, H: int, L: int, E: int, causal: bool) -> Case:
    q, k, v, dy = (ctx.rng.standard_normal((N, H, L, E)) for _ in range(4))
    q_o, k_o, v_o, dy_o = (ctx.ours(a) for a in (q, k, v, dy))
    q_t, k_t, v_t = (ctx.theirs(a, requires_grad=True) for a in (q, k, v))
    dy_t = ctx.theirs(dy)
    sdpa = ctx.torch.nn.functional.scaled_dot_product_attention

    def ours() -> Any:
        _, cache = F.scaled_dot_product_attention(q_o, k_o, v_o, is_causal=causal)
        return F.scaled_dot_product_attention_backward(dy_o, cache)

    def theirs() -> Any:
        ctx.zero_grad(q_t, k_t, v_t)
        sdpa(q_t, k_t, v_t, is_causal=causal).backward(dy_t)

    return Case(
        "sdpa_causal" if causal else "sdpa",
        FAMILY,
        f"N{N} H{H} L=S={L} E{E}" + (" causal" if causal else ""),
        ours,
        theirs,
        # the six GEMMs of (L x S x E) each (QK^T, PV; dO V^T, dV, dQ, dK), 2 flops per
        # multiply-add, counted in full (torch's flash kernel skips the masked half)
        flops=6 * 2.0 * N * H * L * L * E,
        target_cpu=2.0 if causal else None,
    )
