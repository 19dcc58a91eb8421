"""Initial weights: torch's defaults, drawn on the host so every backend gets the same numbers.

How the seed is given
---------------------
Every layer with parameters takes ``rng=``:

* an ``int``: a fresh ``numpy.random.default_rng(rng)`` for that layer alone, so
  ``Linear(4, 3, rng=0)`` is the same on every run and every backend;
* a ``numpy.random.Generator``: drawn from in turn, so one generator passed to every layer
  of a model seeds the whole model;
* ``None`` (default): the module-level generator, which :func:`manual_seed` reseeds (torch's
  global-seed habit): ``nn.manual_seed(0)`` then building a model gives the same weights.

Weights are drawn in float64 with NumPy, cast to the layer's dtype and only then moved to the
backend (``layer.to("torch")``), so the same seed gives bit-identical initial weights on
NumPy, torch, CuPy and array-api-strict.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "RNG",
    "default_generator",
    "kaiming_uniform",
    "manual_seed",
    "normal",
    "resolve_rng",
    "uniform",
]

RNG = int | np.random.Generator | None

_default = {"generator": np.random.default_rng()}


def manual_seed(seed: int) -> np.random.Generator:
    """Reseed the generator that layers built with ``rng=None`` draw from; returns it."""
    _default["generator"] = np.random.default_rng(seed)
    return _default["generator"]


def default_generator() -> np.random.Generator:
    return _default["generator"]


def resolve_rng(rng: RNG) -> np.random.Generator:
    """``int`` → a fresh seeded generator; ``Generator`` → itself; ``None`` → the default."""
    if rng is None:
        return _default["generator"]
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(f"rng: expected an int seed, a numpy.random.Generator or None, got {rng!r}")


def uniform(
    gen: np.random.Generator, shape: tuple[int, ...], bound: float, dtype: Any = "float32"
) -> np.ndarray:
    """Host array ``U(-bound, bound)`` of ``shape``, drawn in float64 then cast to ``dtype``."""
    return gen.uniform(-bound, bound, size=shape).astype(dtype)


def normal(
    gen: np.random.Generator, shape: tuple[int, ...], std: float = 1.0, dtype: Any = "float32"
) -> np.ndarray:
    """Host array ``N(0, std^2)`` of ``shape``, drawn in float64 then cast to ``dtype``
    (torch's ``normal_``, the initialization of ``nn.Embedding``)."""
    return (std * gen.standard_normal(size=shape)).astype(dtype)


def kaiming_uniform(
    gen: np.random.Generator,
    shape: tuple[int, ...],
    fan_in: int,
    a: float = math.sqrt(5),
    dtype: Any = "float32",
) -> np.ndarray:
    r"""torch's ``kaiming_uniform_(w, a)`` (leaky-ReLU gain): :math:`U(-b, b)`,
    :math:`b = \sqrt{2 / (1 + a^2)} \sqrt{3 / \text{fan\_in}}`.

    With torch's default ``a = √5`` for Linear and Conv, :math:`b = 1/\sqrt{\text{fan\_in}}`.
    """
    gain = math.sqrt(2.0 / (1.0 + a * a))
    bound = gain * math.sqrt(3.0 / fan_in) if fan_in > 0 else 0.0
    return uniform(gen, shape, bound, dtype)
