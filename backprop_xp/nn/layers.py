"""Linear, Embedding, Flatten, Dropout and the elementwise activation layers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import functional as F
from ..backend import get_namespace, to_namespace
from ..functional._validation import (
    bool_option,
    check_choice,
    int_option,
    real_option,
    torch_alias,
)
from .init import RNG, default_generator, kaiming_uniform, normal, resolve_rng, uniform
from .module import Backprop, Module, OpLayer, Parameter, once

__all__ = [
    "ELU",
    "GELU",
    "Dropout",
    "Embedding",
    "Flatten",
    "GlobalAvgPool",
    "Hardtanh",
    "Identity",
    "LeakyReLU",
    "Linear",
    "LogSigmoid",
    "Mish",
    "ReLU",
    "SiLU",
    "Sigmoid",
    "Softplus",
    "Softsign",
    "Tanh",
]

Array = Any


class Linear(Module):
    r""":math:`y = x W^\top + b` (``F.linear``), torch's ``nn.Linear``.

    Parameters
    ----------
    in_features, out_features : int
    bias : bool
    rng : int, numpy.random.Generator or None
        Seed of the initial weights (see :mod:`backprop_xp.nn.init`).
    dtype : str
        Parameter dtype, ``"float32"`` (default) or ``"float64"``.

    Attributes
    ----------
    weight : Parameter, shape (out_features, in_features)
        Initialized :math:`U(-1/\sqrt{\text{in}}, 1/\sqrt{\text{in}})` (torch's
        ``kaiming_uniform_(a=√5)``).
    bias : Parameter, shape (out_features,), or None
        Initialized :math:`U(-1/\sqrt{\text{in}}, 1/\sqrt{\text{in}})`.

    Examples
    --------
    >>> import numpy as np
    >>> layer = Linear(4, 3, rng=0)
    >>> y, backprop = layer(np.ones((2, 4), dtype=np.float32))
    >>> dx = backprop(np.ones_like(y))      # layer.weight.grad, layer.bias.grad now set
    """

    weight: Parameter
    bias: Parameter | None

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        rng: RNG = None,
        dtype: str = "float32",
    ):
        super().__init__()
        in_features = int_option("Linear", "in_features", in_features, low=0)
        out_features = int_option("Linear", "out_features", out_features, low=0)
        bias = bool_option("Linear", "bias", bias)
        self.in_features, self.out_features = in_features, out_features
        gen = resolve_rng(rng)
        self.weight = Parameter(
            kaiming_uniform(gen, (out_features, in_features), in_features, dtype=dtype)
        )
        bound = 1 / math.sqrt(in_features) if in_features > 0 else 0.0
        self.register_parameter(
            "bias", Parameter(uniform(gen, (out_features,), bound, dtype)) if bias else None
        )

    def forward(self, x: Array) -> tuple[Array, Backprop]:
        weight, bias = self.weight, self.bias
        y, cache = F.linear(x, weight.data, None if bias is None else bias.data)

        def backprop(dy: Array) -> Array:
            dx, dW, db = F.linear_backward(dy, cache)
            weight.accumulate(dW)
            if bias is not None:
                bias.accumulate(db)
            return dx

        return y, once("Linear", backprop)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}"
        )


class ReLU(OpLayer):
    """``F.relu``."""

    _op = "relu"


class Tanh(OpLayer):
    """``F.tanh``."""

    _op = "tanh"


class Sigmoid(OpLayer):
    """``F.sigmoid``."""

    _op = "sigmoid"


class LeakyReLU(OpLayer):
    """``F.leaky_relu(x, negative_slope)``."""

    _op = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        self.negative_slope = real_option("LeakyReLU", "negative_slope", negative_slope)

    def _options(self) -> dict[str, Any]:
        return {"negative_slope": self.negative_slope}

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class ELU(OpLayer):
    """``F.elu(x, alpha)``."""

    _op = "elu"

    def __init__(self, alpha: float = 1.0):
        super().__init__()
        self.alpha = real_option("ELU", "alpha", alpha)

    def _options(self) -> dict[str, Any]:
        return {"alpha": self.alpha}

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class Softplus(OpLayer):
    """``F.softplus(x, beta, threshold)``."""

    _op = "softplus"

    def __init__(self, beta: float = 1.0, threshold: float = 20.0):
        super().__init__()
        self.beta = real_option("Softplus", "beta", beta)
        self.threshold = real_option("Softplus", "threshold", threshold)

    def _options(self) -> dict[str, Any]:
        return {"beta": self.beta, "threshold": self.threshold}

    def extra_repr(self) -> str:
        return f"beta={self.beta}, threshold={self.threshold}"


class GELU(OpLayer):
    """``F.gelu(x, approximate)``: ``"none"`` (the exact normal CDF) or ``"tanh"``."""

    _op = "gelu"

    def __init__(self, approximate: str = "none"):
        super().__init__()
        check_choice("GELU", "approximate", approximate, ("none", "tanh"))
        self.approximate = approximate

    def _options(self) -> dict[str, Any]:
        return {"approximate": self.approximate}

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(OpLayer):
    r"""``F.silu``: :math:`x\,\sigma(x)`."""

    _op = "silu"


class Mish(OpLayer):
    r"""``F.mish``: :math:`x \tanh(\mathrm{softplus}(x))`."""

    _op = "mish"


class Hardtanh(OpLayer):
    """``F.hardtanh(x, min_val, max_val)``; as torch's layer, ``max_val`` must exceed
    ``min_val`` (the functional op also takes them equal)."""

    _op = "hardtanh"

    def __init__(self, min_val: float = -1.0, max_val: float = 1.0):
        super().__init__()
        self.min_val = real_option("Hardtanh", "min_val", min_val)
        self.max_val = real_option("Hardtanh", "max_val", max_val)
        if not self.max_val > self.min_val:
            raise ValueError(
                f"Hardtanh: argument 'max_val' expected a value > min_val={self.min_val:g}, "
                f"got {max_val!r}"
            )

    def _options(self) -> dict[str, Any]:
        return {"min_val": self.min_val, "max_val": self.max_val}

    def extra_repr(self) -> str:
        return f"min_val={self.min_val}, max_val={self.max_val}"


class LogSigmoid(OpLayer):
    r"""``F.logsigmoid``: :math:`\log \sigma(x)`."""

    _op = "logsigmoid"


class Softsign(OpLayer):
    """``F.softsign``: :math:`x / (1 + |x|)`."""

    _op = "softsign"


class Identity(Module):
    """Returns its input; the backprop returns its gradient."""

    def forward(self, x: Array) -> tuple[Array, Backprop]:
        return x, once("Identity", lambda dy: dy, like=x)


class Flatten(OpLayer):
    """Merge axes ``start_axis..end_axis`` into one (torch's ``nn.Flatten``, whose names
    ``start_dim=`` and ``end_dim=`` are accepted too)."""

    _op = "flatten"

    def __init__(
        self,
        start_axis: int = 1,
        end_axis: int = -1,
        *,
        start_dim: int | None = None,
        end_dim: int | None = None,
    ):
        super().__init__()
        op = "Flatten"
        self.start_axis = torch_alias(op, "start_axis", start_axis, 1, "start_dim", start_dim)
        self.end_axis = torch_alias(op, "end_axis", end_axis, -1, "end_dim", end_dim)

    def _options(self) -> dict[str, Any]:
        return {"start_axis": self.start_axis, "end_axis": self.end_axis}

    def extra_repr(self) -> str:
        return f"start_axis={self.start_axis}, end_axis={self.end_axis}"


class GlobalAvgPool(OpLayer):
    """Mean over all spatial axes, ``(N, C, *S) → (N, C)`` (``F.global_avg_pool``; torch's
    ``AdaptiveAvgPool{1,2,3}d(1)`` followed by ``Flatten``)."""

    _op = "global_avg_pool"


class Dropout(Module):
    r"""Zero each element with probability ``p`` in training, scale the rest by :math:`1/(1-p)`
    (``F.dropout``).

    In eval mode (``.eval()``) or with ``p = 0`` it returns its input itself, as torch's
    layer (and :class:`Identity`) do. The masks come from ``F.dropout``'s counter-based
    generator, so a seed gives the same masks on every backend, built on the device. With
    ``rng=<int>`` call ``k`` uses the seed derived from ``(rng, k)``: reproducible runs, a
    fresh mask per call; with ``rng=None`` each call draws its seed from the generator of
    :mod:`backprop_xp.nn.init` (reseeded by ``nn.manual_seed``).
    """

    def __init__(self, p: float = 0.5, *, rng: int | None = None):
        super().__init__()
        p = real_option("Dropout", "p", p, low=0.0, high=1.0)
        if rng is not None and (not isinstance(rng, (int, np.integer)) or isinstance(rng, bool)):
            raise TypeError(f"Dropout: argument 'rng' expected an int seed or None, got {rng!r}")
        self.p = p
        self._seed = None if rng is None else int(rng)
        self._calls = 0

    def _next_seed(self) -> int:
        if self._seed is None:
            return int(default_generator().integers(2**64, dtype=np.uint64))
        state = np.random.SeedSequence([self._seed, self._calls]).generate_state(1, np.uint64)
        return int(state[0])

    def forward(self, x: Array) -> tuple[Array, Backprop]:
        if not self.training or self.p == 0.0:
            return x, once("Dropout", lambda dy: dy, like=x)
        seed = self._next_seed()
        self._calls += 1
        y, cache = F.dropout(x, self.p, seed=seed)
        return y, once("Dropout", lambda dy: F.dropout_backward(dy, cache)[0])

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Embedding(Module):
    r"""A lookup table of ``num_embeddings`` vectors of size ``embedding_dim`` (``F.embedding``),
    torch's ``nn.Embedding``.

    Parameters
    ----------
    num_embeddings, embedding_dim : int
    padding_idx : int, optional
        Its row starts at zero and gets no gradient; negative values count from the end
        (stored normalized, as torch's).
    scale_grad_by_freq : bool
        Divide each row's gradient by its index's count in the batch.
    rng : int, numpy.random.Generator or None
        Seed of the initial weights (see :mod:`backprop_xp.nn.init`).
    dtype : str
        Parameter dtype, ``"float32"`` (default) or ``"float64"``.
    _weight : array, optional
        The table itself, shape ``(num_embeddings, embedding_dim)`` (as torch's, kept as
        given and not zeroed at ``padding_idx``); no weights are drawn then.

    Attributes
    ----------
    weight : Parameter, shape (num_embeddings, embedding_dim)
        Initialized :math:`N(0, 1)` (torch's ``normal_``), the ``padding_idx`` row zero.

    The forward takes an integer array of any shape and returns ``(*input.shape,
    embedding_dim)``; its backprop accumulates the weight gradient and returns None (no
    gradient for integer indices). torch's ``max_norm`` and ``sparse`` are not provided.
    """

    weight: Parameter

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        *,
        scale_grad_by_freq: bool = False,
        rng: RNG = None,
        dtype: str = "float32",
        _weight: Array | None = None,
    ):
        super().__init__()
        op = "Embedding"
        n = int_option(op, "num_embeddings", num_embeddings, low=0)
        dim = int_option(op, "embedding_dim", embedding_dim, low=0)
        if padding_idx is not None:
            padding_idx = int_option(op, "padding_idx", padding_idx)
            if not -n <= padding_idx < n:
                raise ValueError(
                    f"{op}: argument 'padding_idx' expected None or an int in [{-n}, {n}), "
                    f"got {padding_idx}"
                )
            padding_idx = padding_idx + n if padding_idx < 0 else padding_idx
        self.num_embeddings, self.embedding_dim, self.padding_idx = n, dim, padding_idx
        self.scale_grad_by_freq = bool_option(op, "scale_grad_by_freq", scale_grad_by_freq)
        if _weight is None:
            w = normal(resolve_rng(rng), (n, dim), 1.0, dtype)
            if padding_idx is not None:
                w[padding_idx] = 0
        else:
            w = _table(op, "_weight", _weight)
            if tuple(w.shape) != (n, dim):
                raise ValueError(
                    f"{op}: argument '_weight' expected shape ({n}, {dim}), got shape "
                    f"{tuple(w.shape)}"
                )
        self.weight = Parameter(w)

    @classmethod
    def from_pretrained(
        cls,
        embeddings: Array,
        freeze: bool = True,
        padding_idx: int | None = None,
        *,
        scale_grad_by_freq: bool = False,
    ) -> Embedding:
        """An Embedding whose table is ``embeddings`` (2-d, any library; kept as given, the
        ``padding_idx`` row included, as torch's).

        ``freeze=True`` (the default) makes the weight a frozen parameter
        (``requires_grad=False``): the backprop adds nothing into it (its gradient is not
        even computed) and optimizers skip it, while it stays in ``parameters()`` and
        ``state_dict()``, as in torch. ``layer.weight.requires_grad = True`` unfreezes it.
        """
        op = "Embedding.from_pretrained"
        w = _table(op, "embeddings", embeddings)
        freeze = bool_option(op, "freeze", freeze)
        n, dim = w.shape
        layer = cls(n, dim, padding_idx, scale_grad_by_freq=scale_grad_by_freq, _weight=w)
        layer.weight.requires_grad = not freeze
        return layer

    def forward(self, input: Array) -> tuple[Array, Backprop]:
        weight = self.weight
        y, cache = F.embedding(
            input, weight.data, self.padding_idx, scale_grad_by_freq=self.scale_grad_by_freq
        )

        def backprop(dy: Array) -> None:
            if weight.requires_grad:  # a frozen table: not even the (V, D) zeros
                weight.accumulate(F.embedding_backward(dy, cache)[1])

        return y, once("Embedding", backprop)

    def extra_repr(self) -> str:
        out = f"{self.num_embeddings}, {self.embedding_dim}"
        if self.padding_idx is not None:
            out += f", padding_idx={self.padding_idx}"
        if self.scale_grad_by_freq:
            out += ", scale_grad_by_freq=True"
        return out


def _table(op: str, name: str, w: Any) -> Array:
    """A 2-d floating array of any library (a torch tensor recording autograd history comes
    out detached)."""
    if not (hasattr(w, "shape") and hasattr(w, "dtype")) or len(w.shape) != 2:
        got = f"shape {tuple(w.shape)}" if hasattr(w, "shape") else type(w).__name__
        raise ValueError(f"{op}: argument '{name}' expected a 2-d array, got {got}")
    xp = get_namespace(w)
    if not xp.isdtype(w.dtype, "real floating"):
        raise TypeError(f"{op}: argument '{name}' expected a floating array, got dtype {w.dtype}")
    return to_namespace(w, xp)
