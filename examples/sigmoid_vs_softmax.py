"""A sigmoid unit is a 2-class softmax with one logit pinned to zero, checked numerically.

    python examples/sigmoid_vs_softmax.py [--backend torch]

Since :math:`e^z / (e^z + e^0) = 1 / (1 + e^{-z}) = \\sigma(z)`, the logits ``[z, 0]``
(``F.sigmoid_as_softmax_logits``) give the softmax probabilities ``[σ(z), 1 − σ(z)]``. So:

1. the probabilities agree;
2. binary cross-entropy of ``z`` against ``t`` equals softmax cross-entropy of ``[z, 0]``
   against class ``0`` for ``t = 1`` and class ``1`` for ``t = 0``;
3. so do their gradients with respect to ``z`` (the 2-class gradient, pulled back through
   ``[z, 0]``, is ``σ(z) − t``), including at extreme logits where both stay finite.
"""

from __future__ import annotations

import argparse

import numpy as np

from backprop_xp import functional as F
from backprop_xp.backend import namespace, to_namespace, to_numpy


def compare(backend: str = "numpy", n: int = 1000, seed: int = 0) -> dict[str, float]:
    xp = namespace(backend)
    rng = np.random.default_rng(seed)
    z_host = np.concatenate([rng.standard_normal(n) * 5, [-1000.0, -50.0, 0.0, 50.0, 1000.0]])
    t_host = (rng.random(z_host.shape) < 0.5).astype(np.float64)
    z, t = to_namespace(z_host, xp), to_namespace(t_host, xp)

    # 1. probabilities
    p_sigmoid, _ = F.sigmoid(z)
    logits, lcache = F.sigmoid_as_softmax_logits(z)  # (n, 2): [z, 0]
    p_softmax, _ = F.softmax(logits, axis=-1)
    prob_diff = float(xp.max(xp.abs(p_sigmoid - p_softmax[:, 0])))

    # 2. losses: class 0 is the "positive" class of the pinned logits
    bce, bcache = F.binary_cross_entropy_with_logits(z, t, reduction="sum")
    y = xp.astype(1 - t, xp.int64)
    ce, ccache = F.cross_entropy(logits, y, reduction="sum")
    loss_diff = abs(float(bce) - float(ce)) / abs(float(bce))

    # 3. gradients with respect to z
    one = xp.asarray(1.0, dtype=z.dtype)
    dz_bce = F.binary_cross_entropy_with_logits_backward(one, bcache)[0]
    dlogits = F.cross_entropy_backward(one, ccache)[0]
    (dz_ce,) = F.sigmoid_as_softmax_logits_backward(dlogits, lcache)
    grad_diff = float(xp.max(xp.abs(dz_bce - dz_ce)))
    finite = bool(np.isfinite(to_numpy(dz_ce)).all() and np.isfinite(to_numpy(dz_bce)).all())
    return {
        "max |sigmoid(z) - softmax([z, 0])[0]|": prob_diff,
        "relative |BCE - CE| (summed)": loss_diff,
        "max |dBCE/dz - dCE/dz|": grad_diff,
        "gradients finite at z = ±1000": float(finite),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="numpy")
    p.add_argument("-n", type=int, default=1000)
    args = p.parse_args(argv)
    results = compare(args.backend, args.n)
    width = max(map(len, results))
    for k, v in results.items():
        print(f"{k:<{width}}  {v:.3g}")
    ok = all(v < 1e-12 for k, v in results.items() if k.startswith(("max", "rel")))
    ok = ok and results["gradients finite at z = ±1000"] == 1.0
    print("sigmoid ≡ 2-class softmax:", "equal to float64 rounding" if ok else "MISMATCH")
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
