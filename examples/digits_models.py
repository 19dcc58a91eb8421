"""The three digits models, shared by ``train_digits.py`` and ``benchmarks/cases_model.py``.

Each builder returns a :class:`backprop_xp.nn.Module` whose forward takes a batch of 8×8
images ``(N, 8, 8)`` and returns logits ``(N, 10)`` and a backprop; :data:`TORCH_BUILDERS`
builds the same architecture in torch (same parameter names, so state dicts swap).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backprop_xp import nn
from backprop_xp.backend import get_namespace

Array = Any


class DigitsMLP(nn.Module):
    """64 → 128 → ReLU → 10."""

    def __init__(self, rng: np.random.Generator):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(64, 128, rng=rng), nn.ReLU(), nn.Linear(128, 10, rng=rng)
        )

    def forward(self, x: Array) -> tuple[Array, Any]:
        xp = get_namespace(x)
        shape = tuple(x.shape)
        logits, backprop = self.net(xp.reshape(x, (shape[0], 64)))
        return logits, lambda dy: xp.reshape(backprop(dy), shape)


class DigitsCNN(nn.Module):
    """conv3×3(16) → maxpool2 → ReLU → conv3×3(32) → maxpool2 → ReLU → linear(128 → 64) → ReLU
    → linear(64 → 10).

    Pooling before the ReLU gives exactly the same values and gradients as the usual
    conv → ReLU → pool (max-pooling commutes with a monotone function) at a quarter of the
    ReLU's work.
    """

    def __init__(self, rng: np.random.Generator):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, rng=rng),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1, rng=rng),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * 2 * 2, 64, rng=rng),
            nn.ReLU(),
            nn.Linear(64, 10, rng=rng),
        )

    def forward(self, x: Array) -> tuple[Array, Any]:
        xp = get_namespace(x)
        shape = tuple(x.shape)
        logits, backprop = self.net(xp.reshape(x, (shape[0], 1, 8, 8)))
        return logits, lambda dy: xp.reshape(backprop(dy), shape)


class DigitsRNN(nn.Module):
    """The 8 rows of an image as 8 time steps of 8 pixels: tanh RNN(8 → 64), last state → linear."""

    def __init__(self, rng: np.random.Generator, hidden: int = 64):
        super().__init__()
        self.rnn = nn.RNN(8, hidden, batch_first=True, rng=rng)
        self.head = nn.Linear(hidden, 10, rng=rng)

    def forward(self, x: Array) -> tuple[Array, Any]:
        (_, h_n), rnn_backprop = self.rnn(x)  # x (N, 8 rows, 8 pixels); h_n (1, N, H)
        logits, head_backprop = self.head(h_n[-1, ...])

        def backprop(dy: Array) -> Array:
            dh = head_backprop(dy)
            dx, _ = rnn_backprop(None, dh[None, ...])
            return dx

        return logits, backprop


BUILDERS = {"mlp": DigitsMLP, "cnn": DigitsCNN, "rnn": DigitsRNN}


def build(name: str, seed: int | np.random.Generator = 0) -> nn.Module:
    """The model ``name`` ("mlp", "cnn", "rnn"), float32, on NumPy, weights from ``seed``."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return BUILDERS[name](rng)


def build_torch(name: str) -> Any:
    """The same architecture in torch (parameter names match ours)."""
    import torch

    tnn = torch.nn

    class MLP(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tnn.Sequential(tnn.Linear(64, 128), tnn.ReLU(), tnn.Linear(128, 10))

        def forward(self, x: Any) -> Any:
            return self.net(x.reshape(x.shape[0], 64))

    class CNN(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = tnn.Sequential(
                tnn.Conv2d(1, 16, 3, padding=1),
                tnn.MaxPool2d(2),
                tnn.ReLU(),
                tnn.Conv2d(16, 32, 3, padding=1),
                tnn.MaxPool2d(2),
                tnn.ReLU(),
                tnn.Flatten(),
                tnn.Linear(32 * 2 * 2, 64),
                tnn.ReLU(),
                tnn.Linear(64, 10),
            )

        def forward(self, x: Any) -> Any:
            return self.net(x.reshape(x.shape[0], 1, 8, 8))

    class RNN(tnn.Module):
        def __init__(self, hidden: int = 64) -> None:
            super().__init__()
            self.rnn = tnn.RNN(8, hidden, batch_first=True)
            self.head = tnn.Linear(hidden, 10)

        def forward(self, x: Any) -> Any:
            _, h_n = self.rnn(x)
            return self.head(h_n[-1, ...])

    return {"mlp": MLP, "cnn": CNN, "rnn": RNN}[name]()
