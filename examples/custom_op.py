"""Write your own op in the backprop_xp protocol, check it with gradcheck, use it in a layer.

    python examples/custom_op.py [--backend torch]

The protocol: a forward ``out, cache = op(*inputs, **options)`` that keeps only what its
backward needs, and a backward ``grads = op_backward(grad_out, cache)`` returning one entry
per array input (``None`` where an input has no gradient). Written against the Array API
(``xp = get_namespace(x)``), the same code runs on NumPy, torch, CuPy and array-api-strict.

The example op is Swish / SiLU, :math:`y = x\\,\\sigma(\\beta x)` with a learnable
:math:`\\beta`, whose derivatives are

.. math::
    \\frac{\\partial y}{\\partial x} = s + \\beta x s (1 - s), \\qquad
    \\frac{\\partial y}{\\partial \\beta} = x^2 s (1 - s), \\qquad s = \\sigma(\\beta x).
"""

from __future__ import annotations

import argparse
from typing import Any, NamedTuple

import numpy as np

from backprop_xp import functional as F
from backprop_xp import nn
from backprop_xp.backend import get_namespace, namespace, to_namespace
from backprop_xp.testing import GradcheckError, gradcheck

Array = Any


# -- 1. the op: forward and backward side by side ---------------------------------------------
class SwishCache(NamedTuple):
    x: Array
    beta: Array
    s: Array  # sigma(beta x): both derivatives need it


def swish(x: Array, beta: Array, /) -> tuple[Array, SwishCache]:
    r""":math:`y = x\,\sigma(\beta x)`; ``x`` any shape, ``beta`` a 0-d array (learnable)."""
    s, _ = F.sigmoid(beta * x)  # reuse a library op for the stable sigmoid
    return x * s, SwishCache(x, beta, s)


def swish_backward(dy: Array, cache: SwishCache, /) -> tuple[Array, Array]:
    x, beta, s = cache
    xp = get_namespace(dy, x)
    ds = s * (1 - s)
    dx = dy * (s + beta * x * ds)
    dbeta = xp.sum(dy * x * x * ds)  # beta is broadcast over x: sum its gradient
    return dx, dbeta


def swish_backward_buggy(dy: Array, cache: SwishCache, /) -> tuple[Array, Array]:
    """A plausible mistake (forgets the product rule's second term), for gradcheck to catch."""
    x, _, s = cache
    xp = get_namespace(dy, x)
    return dy * s, xp.sum(dy * x * x * s * (1 - s))


# -- 2. a layer owning beta -------------------------------------------------------------------
class Swish(nn.Module):
    """Swish with a learnable ``beta`` (initialized to 1), built on the op above."""

    def __init__(self, beta: float = 1.0, dtype: str = "float32"):
        super().__init__()
        self.beta = nn.Parameter(np.asarray(beta, dtype=dtype))

    def forward(self, x: Array) -> tuple[Array, Any]:
        beta = self.beta
        y, cache = swish(x, beta.data)

        def backprop(dy: Array) -> Array:
            dx, dbeta = swish_backward(dy, cache)
            beta.accumulate(dbeta)
            return dx

        return y, backprop


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="numpy")
    args = p.parse_args(argv)
    xp = namespace(args.backend)
    rng = np.random.default_rng(0)
    x = to_namespace(rng.standard_normal((4, 5)), xp)
    beta = to_namespace(np.asarray(0.7), xp)

    # 3. gradcheck: the hand-written backward against central differences, in float64
    result = gradcheck(swish, [x, beta])  # finds swish_backward next to swish
    print(result)
    try:
        gradcheck(swish, [x, beta], backward=swish_backward_buggy)
    except GradcheckError as e:
        print("the buggy backward is caught:\n" + str(e))
    else:  # pragma: no cover
        raise SystemExit("gradcheck missed the buggy backward")

    # 4. the layer in a model, trained a few steps
    from backprop_xp import optim

    model = nn.Sequential(nn.Linear(5, 16, rng=0), Swish(), nn.Linear(16, 1, rng=1))
    model.to(xp)
    x32 = xp.astype(x, xp.float32)
    target = xp.sum(x32 * x32, axis=1, keepdims=True)
    opt, criterion = optim.Adam(model, lr=1e-2), nn.MSELoss()
    for step in range(201):
        pred, backprop = model(x32)
        loss, dloss = criterion(pred, target)
        backprop(dloss())
        opt.step()
        opt.zero_grad()
        if step % 50 == 0:
            print(f"step {step:3d}  loss {float(loss):.4f}  beta {float(model[1].beta.data):.3f}")


if __name__ == "__main__":
    main()
