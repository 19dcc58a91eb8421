"""How far back does the gradient reach? A tanh RNN against an LSTM.

    python examples/vanishing_gradients.py [--backend torch] [--out runs/vanishing]

Both layers (torch's default initialization, same seed) read the same random sequence of
``T`` steps. The loss depends only on the last output, :math:`L = \\langle g, h_T\\rangle`,
and the backward gives :math:`\\partial L / \\partial x_t` for every step. Plotted against
the distance :math:`T - t`, the RNN's gradient norm decays geometrically (each step
multiplies by :math:`W_{hh}^\\top \\operatorname{diag}(1 - h^2)`, of norm below one), while
the LSTM's additive cell path :math:`c_t = f \\odot c_{t-1} + \\ldots` carries it further,
and much further once the forget gate starts open (bias 1, the usual trick: with torch's
default initialization :math:`f \\approx 0.5` at first).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from backprop_xp import nn
from backprop_xp.backend import default_device, namespace, to_namespace, to_numpy


def gradient_norms(backend: str = "numpy", T: int = 60, hidden: int = 32, seed: int = 0) -> dict:
    """``{name: norms}``, ``norms[k]`` = ‖∂L/∂x_{T-1-k}‖ (``k`` steps back from the loss)."""
    xp = namespace(backend)
    dev = default_device(xp)
    rng = np.random.default_rng(seed)
    x = to_namespace(rng.standard_normal((T, 16, 8)), xp, dev)
    g = to_namespace(rng.standard_normal((16, hidden)), xp, dev)
    lstm_f1 = nn.LSTM(8, hidden, rng=seed, dtype="float64")
    # gates are stacked i, f, g, o: rows H..2H of the bias are the forget gate's
    lstm_f1.bias_ih_l0.data[hidden : 2 * hidden] = 1.0  # host NumPy array, before .to()
    lstm_f1.bias_hh_l0.data[hidden : 2 * hidden] = 0.0
    out = {}
    for name, layer in (
        ("RNN (tanh)", nn.RNN(8, hidden, rng=seed, dtype="float64")),
        ("LSTM", nn.LSTM(8, hidden, rng=seed, dtype="float64")),
        ("LSTM, forget bias 1", lstm_f1),
    ):
        layer.to(xp, dev)
        (y, _), backprop = layer(x)
        d_y = xp.concat([xp.zeros_like(y[:-1, ...]), g[None, ...]], axis=0)  # only h_T
        dx, _ = backprop(d_y)
        norms = xp.sqrt(xp.sum(dx * dx, axis=(1, 2)))
        out[name] = to_numpy(xp.flip(norms, axis=0))  # by distance T - 1 - t
    return out


def plot(norms: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, v in norms.items():
        ax.semilogy(np.arange(len(v)), np.maximum(v, 1e-300), label=name)
    ax.set(
        xlabel="distance T − t (steps back from the loss)",
        ylabel="‖∂L/∂x_t‖",
        title="Gradient reaching earlier inputs",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backend", default="numpy")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs") / "vanishing")
    args = p.parse_args(argv)
    norms = gradient_norms(args.backend, args.steps, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "gradient_norms.png"
    plot(norms, path)
    for name, v in norms.items():
        reach = int(np.argmax(v < v[0] * 1e-6)) if (v < v[0] * 1e-6).any() else len(v)
        print(
            f"{name:<20} |dL/dx| at distance 0: {v[0]:.3g}, at 10: {v[min(10, len(v) - 1)]:.3g}, "
            f"at {len(v) - 1}: {v[-1]:.3g}; falls below 1e-6 of the start after {reach} steps"
        )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
