"""The digits models, shared by ``train_digits.py`` and ``benchmarks/cases_model.py``.

Each builder returns a :class:`backprop_xp.nn.Module` whose forward takes a batch of 8×8
images ``(N, 8, 8)`` and returns logits ``(N, 10)`` and a backprop; :func:`build_torch`
builds the same architecture in torch (same parameter and buffer names, so state dicts swap
both ways).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from backprop_xp import nn
from backprop_xp.backend import get_namespace
from backprop_xp.nn.module import once

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


class BasicBlock(nn.Module):
    """ResNet's basic block (torchvision's names): ``relu(bn2(conv2(relu(bn1(conv1(x))))) +
    shortcut(x))``, where the shortcut is ``x`` itself, or ``downsample`` (1×1 conv with the
    block's stride → BN) when the block changes the channels or the resolution.

    The input feeds both branches, so its gradient is the sum of the two branches' input
    gradients.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, rng: np.random.Generator):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False, rng=rng)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, rng=rng)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False, rng=rng),
                nn.BatchNorm2d(channels),
            )

    def forward(self, x: Array) -> tuple[Array, Any]:
        h, backprops = x, []
        for layer in (self.conv1, self.bn1, self.relu, self.conv2, self.bn2):
            h, bp = layer(h)
            backprops.append(bp)
        shortcut, bp_short = (x, None) if self.downsample is None else self.downsample(x)
        y, bp_out = self.relu(h + shortcut)

        def backprop(dy: Array) -> Array:
            ds = bp_out(dy)  # the gradient of the sum, given to both branches
            dx = ds
            for bp in reversed(backprops):
                dx = bp(dx)
            return dx + (ds if bp_short is None else bp_short(ds))

        return y, once("BasicBlock", backprop)


class DigitsResNet(nn.Module):
    """stem conv3×3(16) → BN → ReLU, basic blocks 16 → 16 (8×8) and 16 → 32 (stride 2, 4×4,
    projection shortcut), global average pooling, linear(32 → 10).

    Batch statistics in training, running statistics after ``.eval()``; every convolution
    before a BN has no bias (the BN's shift takes its place), as in torchvision's ResNets.
    """

    def __init__(self, rng: np.random.Generator):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1, bias=False, rng=rng), nn.BatchNorm2d(16), nn.ReLU()
        )
        self.blocks = nn.Sequential(BasicBlock(16, 16, 1, rng), BasicBlock(16, 32, 2, rng))
        self.pool = nn.GlobalAvgPool()
        self.fc = nn.Linear(32, 10, rng=rng)

    def forward(self, x: Array) -> tuple[Array, Any]:
        xp = get_namespace(x)
        shape = tuple(x.shape)
        h, bp_stem = self.stem(xp.reshape(x, (shape[0], 1, 8, 8)))
        h, bp_blocks = self.blocks(h)
        h, bp_pool = self.pool(h)
        logits, bp_fc = self.fc(h)

        def backprop(dy: Array) -> Array:
            return xp.reshape(bp_stem(bp_blocks(bp_pool(bp_fc(dy)))), shape)

        return logits, backprop


BUILDERS = {"mlp": DigitsMLP, "cnn": DigitsCNN, "rnn": DigitsRNN, "resnet": DigitsResNet}


def build(name: str, seed: int | np.random.Generator = 0) -> nn.Module:
    """The model ``name`` ("mlp", "cnn", "rnn", "resnet"), float32, on NumPy, weights from
    ``seed``."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return BUILDERS[name](rng)


def build_torch(name: str) -> Any:
    """The same architecture in torch (parameter and buffer names match ours)."""
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

    class BasicBlock(tnn.Module):
        def __init__(self, in_channels: int, channels: int, stride: int) -> None:
            super().__init__()
            self.conv1 = tnn.Conv2d(in_channels, channels, 3, stride, padding=1, bias=False)
            self.bn1 = tnn.BatchNorm2d(channels)
            self.relu = tnn.ReLU()
            self.conv2 = tnn.Conv2d(channels, channels, 3, padding=1, bias=False)
            self.bn2 = tnn.BatchNorm2d(channels)
            self.downsample = None
            if stride != 1 or in_channels != channels:
                self.downsample = tnn.Sequential(
                    tnn.Conv2d(in_channels, channels, 1, stride, bias=False),
                    tnn.BatchNorm2d(channels),
                )

        def forward(self, x: Any) -> Any:
            h = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
            return self.relu(h + (x if self.downsample is None else self.downsample(x)))

    class ResNet(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = tnn.Sequential(
                tnn.Conv2d(1, 16, 3, padding=1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU()
            )
            self.blocks = tnn.Sequential(BasicBlock(16, 16, 1), BasicBlock(16, 32, 2))
            self.pool = tnn.Sequential(tnn.AdaptiveAvgPool2d(1), tnn.Flatten())
            self.fc = tnn.Linear(32, 10)

        def forward(self, x: Any) -> Any:
            h = self.blocks(self.stem(x.reshape(x.shape[0], 1, 8, 8)))
            return self.fc(self.pool(h))

    return {"mlp": MLP, "cnn": CNN, "rnn": RNN, "resnet": ResNet}[name]()
