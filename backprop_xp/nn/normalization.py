"""Normalization layers over ``F.batch_norm``, ``F.layer_norm``, ``F.group_norm`` and
``F.rms_norm``, with torch's parameter and buffer names (so state dicts move both ways)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import functional as F
from ..backend import get_namespace, namespace
from ..functional._validation import bool_option, int_option, real_option
from .init import RNG
from .module import Backprop, Module, Parameter, check_float_dtype, once

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "GroupNorm",
    "LayerNorm",
    "RMSNorm",
]

Array = Any


def _host(who: str, dtype: Any) -> Any:
    """The NumPy dtype of a layer's ``dtype=`` (a name such as ``"float32"``)."""
    return check_float_dtype(who, namespace("numpy"), dtype)


def _shape(who: str, normalized_shape: Any) -> tuple[int, ...]:
    if isinstance(normalized_shape, (tuple, list)):
        return tuple(int_option(who, "normalized_shape", v, low=0) for v in normalized_shape)
    return (int_option(who, "normalized_shape", normalized_shape, low=0),)


def _affine(layer: Module, shape: tuple[int, ...], weight: bool, bias: bool, dtype: Any) -> None:
    """torch's ``reset_parameters``: weight ones, bias zeros; ``None`` where absent."""
    layer.register_parameter("weight", Parameter(np.ones(shape, dtype)) if weight else None)
    layer.register_parameter("bias", Parameter(np.zeros(shape, dtype)) if bias else None)


def _data(p: Parameter | None) -> Array | None:
    return None if p is None else p.data


def _accumulate(weight: Parameter | None, bias: Parameter | None, dw: Any, db: Any) -> None:
    if weight is not None:
        weight.accumulate(dw)
    if bias is not None:
        bias.accumulate(db)


class _BatchNorm(Module):
    """torch's ``_BatchNorm``: batch statistics in training (updating the running ones),
    running statistics in evaluation."""

    _ndims: tuple[int, ...] = ()
    _expected = ""

    weight: Parameter | None
    bias: Parameter | None
    running_mean: Array | None
    running_var: Array | None
    num_batches_tracked: Array | None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        *,
        bias: bool = True,
        rng: RNG = None,
        dtype: str = "float32",
    ):
        super().__init__()
        name = type(self).__name__
        self.num_features = int_option(name, "num_features", num_features, low=0)
        self.eps = real_option(name, "eps", eps)
        self.momentum = None if momentum is None else real_option(name, "momentum", momentum)
        self.affine = bool_option(name, "affine", affine)
        self.track_running_stats = bool_option(name, "track_running_stats", track_running_stats)
        has_bias = bool_option(name, "bias", bias)
        dt = _host(name, dtype)
        del rng  # weights start at ones and zeros; taken for the common signature
        c = self.num_features
        _affine(self, (c,), self.affine, self.affine and has_bias, dt)
        if self.track_running_stats:
            self.register_buffer("running_mean", np.zeros(c, dt))
            self.register_buffer("running_var", np.ones(c, dt))
            self.register_buffer("num_batches_tracked", np.array(0, dtype=np.int64))
        else:
            for buffer in ("running_mean", "running_var", "num_batches_tracked"):
                self.register_buffer(buffer, None)

    def _check_input_dim(self, x: Array) -> None:
        ndim = getattr(x, "ndim", None)
        if ndim is not None and ndim not in self._ndims:
            raise ValueError(
                f"{type(self).__name__}: expected {self._expected} input (got {ndim}D input)"
            )

    def forward(self, x: Array) -> tuple[Array, Backprop]:
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        count = None
        tracked = self.num_batches_tracked
        if self.training and self.track_running_stats and tracked is not None:
            count = get_namespace(tracked).asarray(tracked + 1)
            if self.momentum is None:  # cumulative moving average, as torch (one host read)
                factor = 1.0 / float(count)
        batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep = not self.training or self.track_running_stats
        weight, bias = self.weight, self.bias
        out, cache = F.batch_norm(
            x,
            self.running_mean if keep else None,
            self.running_var if keep else None,
            _data(weight),
            _data(bias),
            training=batch_stats,
            momentum=factor,
            eps=self.eps,
        )
        updates = isinstance(out, tuple)
        if updates:  # new arrays: the buffers are replaced, never written into
            out, self.running_mean, self.running_var = out
        if count is not None:
            self.num_batches_tracked = count

        def backprop(dy: Array) -> Array:
            dx, _, _, dw, db = F.batch_norm_backward((dy, None, None) if updates else dy, cache)
            _accumulate(weight, bias, dw, db)
            return dx

        return out, once(type(self).__name__, backprop)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, track_running_stats={self.track_running_stats}"
        )


class BatchNorm1d(_BatchNorm):
    r"""Batch normalization of ``(N, C)`` or ``(N, C, L)`` input (``F.batch_norm``), torch's
    ``nn.BatchNorm1d``.

    Parameters
    ----------
    num_features : int
        ``C``.
    eps : float
    momentum : float or None
        Weight of the batch in the running statistics; ``None`` is the cumulative average
        (``1 / num_batches_tracked``), as torch.
    affine : bool
        Learnable ``weight`` (ones) and ``bias`` (zeros), shape (C,).
    track_running_stats : bool
        Keep the buffers ``running_mean`` (zeros), ``running_var`` (ones) and
        ``num_batches_tracked`` (int64, 0-d). Without them batch statistics are used in
        evaluation too.
    bias : bool
        With ``affine``: whether there is a ``bias`` (torch's keyword-only ``bias=``).
    rng : ignored
        The initial parameters are constants; accepted as every layer accepts it.
    dtype : str
        Parameter and running-statistics dtype (``"float32"``).

    Notes
    -----
    In training the forward replaces the buffers with the updated statistics (new arrays;
    the backprop never touches them). ``.eval()`` normalizes with the running statistics.
    """

    _ndims = (2, 3)
    _expected = "2D or 3D"


class BatchNorm2d(_BatchNorm):
    """Batch normalization of ``(N, C, H, W)`` input; torch's ``nn.BatchNorm2d`` (see
    :class:`BatchNorm1d` for the arguments)."""

    _ndims = (4,)
    _expected = "4D"


class BatchNorm3d(_BatchNorm):
    """Batch normalization of ``(N, C, D, H, W)`` input; torch's ``nn.BatchNorm3d`` (see
    :class:`BatchNorm1d` for the arguments)."""

    _ndims = (5,)
    _expected = "5D"


class LayerNorm(Module):
    """Layer normalization over the trailing ``normalized_shape`` axes (``F.layer_norm``),
    torch's ``nn.LayerNorm``: ``weight`` ones and ``bias`` zeros of that shape with
    ``elementwise_affine`` (``bias=False`` drops the bias)."""

    weight: Parameter | None
    bias: Parameter | None

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float = 1e-5,
        elementwise_affine: bool = True,
        bias: bool = True,
        *,
        rng: RNG = None,
        dtype: str = "float32",
    ):
        super().__init__()
        name = type(self).__name__
        self.normalized_shape = _shape(name, normalized_shape)
        self.eps = real_option(name, "eps", eps)
        self.elementwise_affine = bool_option(name, "elementwise_affine", elementwise_affine)
        has_bias = bool_option(name, "bias", bias)
        del rng
        affine = self.elementwise_affine
        _affine(self, self.normalized_shape, affine, affine and has_bias, _host(name, dtype))

    def forward(self, x: Array) -> tuple[Array, Backprop]:
        weight, bias = self.weight, self.bias
        y, cache = F.layer_norm(x, self.normalized_shape, _data(weight), _data(bias), self.eps)

        def backprop(dy: Array) -> Array:
            dx, dw, db = F.layer_norm_backward(dy, cache)
            _accumulate(weight, bias, dw, db)
            return dx

        return y, once("LayerNorm", backprop)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )


class GroupNorm(Module):
    """Group normalization (``F.group_norm``), torch's ``nn.GroupNorm``: ``num_channels``
    split into ``num_groups`` groups; per-channel ``weight`` (ones) and ``bias`` (zeros)
    with ``affine``."""

    weight: Parameter | None
    bias: Parameter | None

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        *,
        bias: bool = True,
        rng: RNG = None,
        dtype: str = "float32",
    ):
        super().__init__()
        name = type(self).__name__
        self.num_groups = int_option(name, "num_groups", num_groups, low=1)
        self.num_channels = int_option(name, "num_channels", num_channels, low=0)
        if self.num_channels % self.num_groups:
            raise ValueError(
                f"{name}: num_channels ({self.num_channels}) must be divisible by num_groups "
                f"({self.num_groups})"
            )
        self.eps = real_option(name, "eps", eps)
        self.affine = bool_option(name, "affine", affine)
        has_bias = bool_option(name, "bias", bias)
        del rng
        _affine(
            self, (self.num_channels,), self.affine, self.affine and has_bias, _host(name, dtype)
        )

    def forward(self, x: Array) -> tuple[Array, Backprop]:
        weight, bias = self.weight, self.bias
        y, cache = F.group_norm(x, self.num_groups, _data(weight), _data(bias), self.eps)

        def backprop(dy: Array) -> Array:
            dx, dw, db = F.group_norm_backward(dy, cache)
            _accumulate(weight, bias, dw, db)
            return dx

        return y, once("GroupNorm", backprop)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class RMSNorm(Module):
    """Root-mean-square normalization over the trailing ``normalized_shape`` axes
    (``F.rms_norm``), torch's ``nn.RMSNorm``: ``weight`` ones with ``elementwise_affine``;
    ``eps=None`` is the machine epsilon of the input's dtype."""

    weight: Parameter | None

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float | None = None,
        elementwise_affine: bool = True,
        *,
        rng: RNG = None,
        dtype: str = "float32",
    ):
        super().__init__()
        name = type(self).__name__
        self.normalized_shape = _shape(name, normalized_shape)
        self.eps = None if eps is None else real_option(name, "eps", eps)
        self.elementwise_affine = bool_option(name, "elementwise_affine", elementwise_affine)
        del rng
        dt = _host(name, dtype)
        weight = Parameter(np.ones(self.normalized_shape, dt)) if self.elementwise_affine else None
        self.register_parameter("weight", weight)

    def forward(self, x: Array) -> tuple[Array, Backprop]:
        weight = self.weight
        y, cache = F.rms_norm(x, self.normalized_shape, _data(weight), self.eps)

        def backprop(dy: Array) -> Array:
            dx, dw = F.rms_norm_backward(dy, cache)
            if weight is not None:
                weight.accumulate(dw)
            return dx

        return y, once("RMSNorm", backprop)

    def extra_repr(self) -> str:
        return (
            f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"
        )
