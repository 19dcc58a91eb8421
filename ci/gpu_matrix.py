"""Per op, the largest relative difference between NumPy and another backend, for the forward
and for each gradient. Run by ci/test-gpu.sh with ``--backend cupy`` on a CUDA machine; on a
CPU machine ``--backend torch`` (or array_api_strict) exercises the same script.

Relative difference of arrays ``a`` (backend) and ``b`` (NumPy): ``max|a - b| / max|b|``.
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np

from backprop_xp import backend as B
from backprop_xp import functional as F


def _cases(rng: np.random.Generator) -> list[tuple[str, Callable[..., Any], list[Any], dict]]:
    """(label, forward, inputs as NumPy arrays, options). Sizes are moderate: big enough to
    exercise the GPU kernels' reductions, small enough to run in seconds."""
    n = rng.standard_normal
    t = rng.integers
    x4 = n((8, 16, 12, 12))
    cases = [
        ("softmax", F.softmax, [n((64, 1000))], {}),
        ("log_softmax", F.log_softmax, [n((64, 1000))], {}),
        ("sigmoid", F.sigmoid, [n((256, 256))], {}),
        ("tanh", F.tanh, [n((256, 256))], {}),
        ("relu", F.relu, [n((256, 256))], {}),
        ("leaky_relu", F.leaky_relu, [n((256, 256))], {}),
        ("elu", F.elu, [n((256, 256))], {}),
        ("softplus", F.softplus, [n((256, 256))], {}),
        ("gelu", F.gelu, [n((256, 256)) * 3], {}),
        ("gelu (tanh)", F.gelu, [n((256, 256)) * 3], {"approximate": "tanh"}),
        ("silu", F.silu, [n((256, 256))], {}),
        ("mish", F.mish, [n((256, 256))], {}),
        ("hardtanh", F.hardtanh, [n((256, 256))], {}),
        ("logsigmoid", F.logsigmoid, [n((256, 256))], {}),
        ("softsign", F.softsign, [n((256, 256))], {}),
        ("embedding", F.embedding, [t(0, 1000, (64, 32)), n((1000, 64))], {}),
        (
            "embedding (every index the same, padding)",
            F.embedding,
            [np.full((64, 32), 3), n((1000, 64))],
            {"padding_idx": 5},
        ),
        ("dropout (same mask)", F.dropout, [n((256, 256))], {"p": 0.3, "seed": 7}),
        ("linear", F.linear, [n((128, 256)), n((64, 256)), n(64)], {}),
        ("cross_entropy (indices)", F.cross_entropy, [n((256, 100)), t(0, 100, 256)], {}),
        (
            "cross_entropy (probs, smoothing)",
            F.cross_entropy,
            [n((256, 100)), rng.dirichlet(np.ones(100), 256)],
            {"label_smoothing": 0.1},
        ),
        (
            "binary_cross_entropy_with_logits",
            F.binary_cross_entropy_with_logits,
            [n((256, 10)), rng.random((256, 10))],
            {},
        ),
        ("mse_loss", F.mse_loss, [n((256, 10)), n((256, 10))], {}),
        ("conv1d", "conv1d", [n((8, 16, 50)), n((32, 16, 5)), n(32)], {"padding": 2}),
        ("conv2d", "conv2d", [x4, n((32, 16, 3, 3)), n(32)], {"padding": 1}),
        (
            "conv2d (stride 2, dilation 2, groups 4)",
            "conv2d",
            [x4, n((32, 4, 3, 3)), n(32)],
            {"stride": 2, "dilation": 2, "groups": 4},
        ),
        ("conv3d", "conv3d", [n((2, 4, 6, 6, 6)), n((8, 4, 3, 3, 3)), n(8)], {"padding": 1}),
        ("max_pool2d 2x2/2", "max_pool2d", [x4], {"kernel_size": 2}),
        ("max_pool2d 3x3/2", "max_pool2d", [x4], {"kernel_size": 3, "stride": 2}),
        (
            "avg_pool2d 3x3/2 pad 1",
            "avg_pool2d",
            [x4],
            {"kernel_size": 3, "stride": 2, "padding": 1},
        ),
    ]
    T, N, D, H = 12, 8, 16, 32
    lengths = t(1, T + 1, N)
    for cell, gates in (("rnn", 1), ("lstm", 4), ("gru", 3)):
        states = [n((N, H))] * (2 if cell == "lstm" else 1)
        weights = [n((gates * H, D)) * 0.3, n((gates * H, H)) * 0.3, n(gates * H), n(gates * H)]
        cases.append((cell, cell, [n((T, N, D)), *states, *weights], {}))
        cases.append(
            (f"{cell} (lengths)", cell, [n((T, N, D)), *states, *weights], {"lengths": lengths})
        )
    return cases


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    return (
        float(np.max(np.abs(a - b))) / scale
        if scale > 0
        else float(np.max(np.abs(a - b), initial=0))
    )


def _as_tuple(x: Any) -> tuple[Any, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def run(backend: str, dtype: str, device: Any = None) -> list[tuple[str, str, list[str]]]:
    xp = B.namespace(backend)
    rng = np.random.default_rng(0)
    rows = []
    for label, forward, inputs, options in _cases(rng):
        if isinstance(forward, str):
            forward = getattr(F, forward, None)
            if forward is None:
                rows.append((label, "missing", []))
                continue
        backward = getattr(F, forward.__name__ + "_backward")
        ref_in = [a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a for a in inputs]
        ours_in = [B.to_namespace(a, xp, device) for a in ref_in]
        opts_ref = {k: v for k, v in options.items()}
        opts_ours = {
            k: (B.to_namespace(v, xp, device) if isinstance(v, np.ndarray) else v)
            for k, v in options.items()
        }
        out_ref, cache_ref = forward(*ref_in, **opts_ref)
        out, cache = forward(*ours_in, **opts_ours)
        outs_ref = _as_tuple(out_ref)
        g_np = tuple(rng.standard_normal(tuple(o.shape)).astype(dtype) for o in outs_ref)
        g_ours = tuple(B.to_namespace(g, xp, device) for g in g_np)
        multi = isinstance(out_ref, (tuple, list))
        grads_ref = backward(g_np if multi else g_np[0], cache_ref)
        grads = backward(g_ours if multi else g_ours[0], cache)
        fwd = max(_rel(B.to_numpy(o), r) for o, r in zip(_as_tuple(out), outs_ref, strict=True))
        cells = [f"{fwd:.1e}"]
        for g, r in zip(grads, grads_ref, strict=True):
            cells.append("—" if r is None else f"{_rel(B.to_numpy(g), np.asarray(r)):.1e}")
        rows.append((label, f"{fwd:.1e}", cells[1:]))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", default="cupy")
    parser.add_argument("--device", default=None, help="e.g. cuda for --backend torch")
    args = parser.parse_args()
    device_name = platform.processor() or platform.machine()
    if args.backend == "cupy":
        import cupy

        device_name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
    elif args.device and args.device.startswith("cuda"):
        import torch

        device_name = torch.cuda.get_device_name(0)
    print(
        f"# NumPy vs {args.backend} ({device_name}), {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
    )
    print("Largest relative difference max|ours - numpy| / max|numpy|, forward and each gradient")
    print("(in the order of the op's array inputs; — where there is no gradient).\n")
    print("| op | dtype | forward | gradients |")
    print("|---|---|---|---|")
    worst = {"float32": 0.0, "float64": 0.0}
    for dtype in ("float32", "float64"):
        for label, fwd, grads in run(args.backend, dtype, args.device):
            if fwd == "missing":
                print(f"| {label} | {dtype} | not implemented | |")
                continue
            print(f"| {label} | {dtype} | {fwd} | {', '.join(grads)} |")
            vals = [float(fwd)] + [float(g) for g in grads if g != "—"]
            worst[dtype] = max(worst[dtype], *vals)
    print(f"\nworst: float32 {worst['float32']:.1e}, float64 {worst['float64']:.1e}")
    ok = worst["float32"] <= 1e-4 and worst["float64"] <= 1e-10
    print("matrix:", "ok" if ok else "LARGER THAN EXPECTED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
