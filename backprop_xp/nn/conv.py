"""Convolution and pooling layers over ``F.conv{1,2,3}d``, ``F.max_pool*`` and ``F.avg_pool*``."""

from __future__ import annotations

import math
from typing import Any

from .. import functional as F
from ..functional._validation import bool_option, int_option
from ..functional._windows import as_tuple
from .init import RNG, kaiming_uniform, resolve_rng, uniform
from .module import Backprop, Module, OpLayer, Parameter, once

__all__ = [
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
]

Array = Any
Size = int | tuple[int, ...]


class _ConvNd(Module):
    _nd = 0

    weight: Parameter
    bias: Parameter | None

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: Size,
        stride: Size = 1,
        padding: Size | str = 0,
        dilation: Size = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        rng: RNG = None,
        dtype: str = "float32",
    ):
        super().__init__()
        name = type(self).__name__
        in_channels = int_option(name, "in_channels", in_channels, low=1)
        out_channels = int_option(name, "out_channels", out_channels, low=1)
        groups = int_option(name, "groups", groups, low=1)
        bias = bool_option(name, "bias", bias)
        if in_channels % groups or out_channels % groups:
            raise ValueError(
                f"{name}: in_channels ({in_channels}) and out_channels ({out_channels}) must "
                f"be divisible by groups ({groups})"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = as_tuple(
            type(self).__name__, "kernel_size", kernel_size, self._nd, minimum=1
        )
        # checked and stored as tuples when the layer is built, as torch does
        nd = self._nd
        self.stride = as_tuple(name, "stride", stride, nd, minimum=1)
        self.dilation = as_tuple(name, "dilation", dilation, nd, minimum=1)
        self.padding: tuple[int, ...] | str
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(
                    f"{name}: argument 'padding' expected an int, a tuple, 'valid' or 'same', "
                    f"got {padding!r}"
                )
            if padding == "same" and any(v != 1 for v in self.stride):
                raise ValueError(
                    f"{name}: argument 'padding' expected 'same' only with stride 1, got "
                    f"stride {self.stride}"
                )
            self.padding = padding
        else:
            self.padding = as_tuple(name, "padding", padding, nd, minimum=0)
        self.groups = groups
        fan_in = (in_channels // groups) * math.prod(self.kernel_size)
        gen = resolve_rng(rng)
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = Parameter(kaiming_uniform(gen, shape, fan_in, dtype=dtype))
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
        self.register_parameter(
            "bias", Parameter(uniform(gen, (out_channels,), bound, dtype)) if bias else None
        )

    def forward(self, x: Array) -> tuple[Array, Backprop]:
        op = f"conv{self._nd}d"
        weight, bias = self.weight, self.bias
        y, cache = getattr(F, op)(
            x,
            weight.data,
            None if bias is None else bias.data,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
        )
        backward = getattr(F, op + "_backward")

        def backprop(dy: Array) -> Array:
            dx, dW, db = backward(dy, cache)
            weight.accumulate(dW)
            if bias is not None:
                bias.accumulate(db)
            return dx

        return y, once(type(self).__name__, backprop)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}"
        )


class Conv1d(_ConvNd):
    r"""``F.conv1d``; weight ``(C_out, C_in/groups, k)``, torch's init
    (:math:`U(\pm 1/\sqrt{\text{fan\_in}})`, ``fan_in = C_in/groups · k``)."""

    _nd = 1


class Conv2d(_ConvNd):
    r"""``F.conv2d``; weight ``(C_out, C_in/groups, kH, kW)``, torch's init
    (:math:`U(\pm 1/\sqrt{\text{fan\_in}})`, ``fan_in = C_in/groups · kH · kW``)."""

    _nd = 2


class Conv3d(_ConvNd):
    r"""``F.conv3d``; weight ``(C_out, C_in/groups, kD, kH, kW)``, torch's init."""

    _nd = 3


class _Pool(OpLayer):
    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self._options().items())


class _MaxPool(_Pool):
    def __init__(
        self,
        kernel_size: Size,
        stride: Size | None = None,
        padding: Size = 0,
        dilation: Size = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ):
        super().__init__()
        name = type(self).__name__
        if bool_option(name, "return_indices", return_indices):  # torch's position for it
            raise ValueError(
                f"{type(self).__name__}: return_indices=True is not supported (the backprop "
                f"routes each gradient to its window's maximum itself; there is no MaxUnpool)"
            )
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, bool_option(name, "ceil_mode", ceil_mode)

    def _options(self) -> dict[str, Any]:
        return {
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "dilation": self.dilation,
            "ceil_mode": self.ceil_mode,
        }


class _AvgPool(_Pool):
    def __init__(
        self,
        kernel_size: Size,
        stride: Size | None = None,
        padding: Size = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
    ):
        super().__init__()
        name = type(self).__name__
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = bool_option(name, "ceil_mode", ceil_mode)
        self.count_include_pad = bool_option(name, "count_include_pad", count_include_pad)

    def _options(self) -> dict[str, Any]:
        return {
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
            "ceil_mode": self.ceil_mode,
            "count_include_pad": self.count_include_pad,
        }


class MaxPool1d(_MaxPool):
    """``F.max_pool1d``."""

    _op = "max_pool1d"


class MaxPool2d(_MaxPool):
    """``F.max_pool2d``."""

    _op = "max_pool2d"


class MaxPool3d(_MaxPool):
    """``F.max_pool3d``."""

    _op = "max_pool3d"


class AvgPool1d(_AvgPool):
    """``F.avg_pool1d``."""

    _op = "avg_pool1d"


class AvgPool2d(_AvgPool):
    """``F.avg_pool2d``."""

    _op = "avg_pool2d"


class AvgPool3d(_AvgPool):
    """``F.avg_pool3d``."""

    _op = "avg_pool3d"
