"""Every public op of ``backprop_xp.functional``, with small inputs and its options: the table
the class-wide tests walk (scalar options, cache types, array arguments, hostile inputs).

``test_every_public_op_is_in_the_table`` keeps it complete: a new op fails that test until
it has a row here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backprop_xp import functional as F


@dataclass(frozen=True)
class Opt:
    """A scalar option: its kind (``real``, ``int``, ``bool``, ``choice``) and a valid value
    other than the default where that matters."""

    kind: str
    value: Any
    valid: tuple[Any, ...] = ()  # values of another kind that the option also takes


@dataclass(frozen=True)
class OpCase:
    """``build(rng)`` gives the inputs in order, NumPy arrays (floating ones are cast to the
    test's float dtype), positional; ``arrays`` names them, ``optional`` are the ones that
    may be None; ``options`` the scalar options taken by keyword."""

    build: Callable[[np.random.Generator], list[np.ndarray]]
    arrays: tuple[str, ...]
    options: dict[str, Opt] = field(default_factory=dict)
    optional: tuple[str, ...] = ()
    keyword: tuple[str, ...] = ()  # arrays passed by keyword (after the options in order)
    tuple_out: bool = False  # the forward returns a tuple; the backward takes one
    fixed: dict[str, Any] = field(default_factory=dict)  # required options every call passes
    # non-array positional arguments between the arrays, (position, value): layer_norm's
    # normalized_shape, group_norm's num_groups; ``build`` gives the arrays only
    positional: tuple[tuple[int, Any], ...] = ()


def _f(*shape: int) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda r: r.standard_normal(shape)


def _build(*parts: Callable[[np.random.Generator], np.ndarray]) -> Callable[..., list]:
    return lambda r: [p(r) for p in parts]


_x34 = _build(_f(3, 4))
_pool = {"ceil_mode": Opt("bool", True)}
_stride = Opt("int", 2, valid=(None,))  # None: the kernel size
_conv_padding = Opt("int", 1, valid=("1",))  # strings: "same" and "valid" (a ValueError)
_avg = {"ceil_mode": Opt("bool", True), "count_include_pad": Opt("bool", False)}

OPS: dict[str, OpCase] = {
    "sigmoid": OpCase(_x34, ("x",)),
    "tanh": OpCase(_x34, ("x",)),
    "relu": OpCase(_x34, ("x",)),
    "leaky_relu": OpCase(_x34, ("x",), {"negative_slope": Opt("real", 0.2)}),
    "elu": OpCase(_x34, ("x",), {"alpha": Opt("real", 0.7)}),
    "softplus": OpCase(_x34, ("x",), {"beta": Opt("real", 2.0), "threshold": Opt("real", 1.5)}),
    "softmax": OpCase(_x34, ("x",), {"axis": Opt("int", 0)}),
    "log_softmax": OpCase(_x34, ("x",), {"axis": Opt("int", 0)}),
    "sigmoid_as_softmax_logits": OpCase(_build(_f(3)), ("z",)),
    "linear": OpCase(
        _build(_f(2, 4), _f(3, 4), _f(3)), ("x", "weight", "bias"), optional=("bias",)
    ),
    "cross_entropy": OpCase(
        _build(_f(3, 4), lambda r: np.array([0, 3, 1]), lambda r: r.random(4) + 0.5),
        ("input", "target", "weight"),
        {
            "label_smoothing": Opt("real", 0.1),
            "ignore_index": Opt("int", 1),
            "reduction": Opt("choice", "sum"),
        },
        optional=("weight",),
    ),
    "binary_cross_entropy_with_logits": OpCase(
        _build(_f(3, 4), lambda r: r.random((3, 4)), lambda r: r.random(4), lambda r: r.random(4)),
        ("input", "target", "weight", "pos_weight"),
        {"reduction": Opt("choice", "sum")},
        optional=("weight", "pos_weight"),
        keyword=("pos_weight",),
    ),
    "mse_loss": OpCase(
        _build(_f(3, 4), _f(3, 4)), ("input", "target"), {"reduction": Opt("choice", "none")}
    ),
    "conv1d": OpCase(
        _build(_f(2, 2, 6), _f(4, 2, 3), _f(4)),
        ("x", "weight", "bias"),
        {
            "stride": Opt("int", 2),
            "padding": _conv_padding,
            "dilation": Opt("int", 2),
            "groups": Opt("int", 1),
        },
        optional=("bias",),
    ),
    "conv2d": OpCase(
        _build(_f(2, 2, 5, 5), _f(2, 2, 3, 3), _f(2)),
        ("x", "weight", "bias"),
        {"stride": Opt("int", 2), "padding": _conv_padding, "groups": Opt("int", 1)},
        optional=("bias",),
    ),
    "conv3d": OpCase(
        _build(_f(1, 2, 4, 4, 4), _f(2, 2, 2, 2, 2), _f(2)),
        ("x", "weight", "bias"),
        {"padding": _conv_padding},
        optional=("bias",),
    ),
    "max_pool1d": OpCase(
        lambda r: [r.standard_normal((2, 3, 7)), 3],
        ("x",),
        {**_pool, "stride": _stride, "padding": Opt("int", 1), "dilation": Opt("int", 2)},
    ),
    "max_pool2d": OpCase(
        lambda r: [r.standard_normal((2, 3, 5, 5)), 2], ("x",), {**_pool, "stride": _stride}
    ),
    "max_pool3d": OpCase(lambda r: [r.standard_normal((1, 2, 4, 4, 4)), 2], ("x",), _pool),
    "avg_pool1d": OpCase(
        lambda r: [r.standard_normal((2, 3, 7)), 3],
        ("x",),
        {**_avg, "stride": _stride, "padding": Opt("int", 1)},
    ),
    "avg_pool2d": OpCase(lambda r: [r.standard_normal((2, 3, 5, 5)), 2], ("x",), _avg),
    "avg_pool3d": OpCase(lambda r: [r.standard_normal((1, 2, 4, 4, 4)), 2], ("x",), _avg),
    "global_avg_pool": OpCase(_build(_f(2, 3, 4, 4)), ("x",)),
    "flatten": OpCase(
        _build(_f(2, 3, 4)), ("x",), {"start_axis": Opt("int", 0), "end_axis": Opt("int", 1)}
    ),
    "rnn": OpCase(
        _build(_f(4, 2, 3), _f(2, 5), _f(5, 3), _f(5, 5), _f(5), _f(5)),
        ("input", "h0", "w_ih", "w_hh", "b_ih", "b_hh"),
        {"nonlinearity": Opt("choice", "relu")},
        optional=("b_ih", "b_hh"),
        tuple_out=True,
    ),
    "lstm": OpCase(
        _build(_f(4, 2, 3), _f(2, 5), _f(2, 5), _f(20, 3), _f(20, 5), _f(20), _f(20)),
        ("input", "h0", "c0", "w_ih", "w_hh", "b_ih", "b_hh"),
        optional=("b_ih", "b_hh"),
        tuple_out=True,
    ),
    "gru": OpCase(
        _build(_f(4, 2, 3), _f(2, 5), _f(15, 3), _f(15, 5), _f(15), _f(15)),
        ("input", "h0", "w_ih", "w_hh", "b_ih", "b_hh"),
        optional=("b_ih", "b_hh"),
        tuple_out=True,
    ),
    "gelu": OpCase(_x34, ("x",), {"approximate": Opt("choice", "tanh")}),
    "silu": OpCase(_x34, ("x",)),
    "mish": OpCase(_x34, ("x",)),
    "hardtanh": OpCase(_x34, ("x",), {"min_val": Opt("real", -0.5), "max_val": Opt("real", 2.0)}),
    "logsigmoid": OpCase(_x34, ("x",)),
    "softsign": OpCase(_x34, ("x",)),
    "embedding": OpCase(
        _build(lambda r: np.array([[0, 3, 3], [1, 0, 4]]), _f(5, 3)),
        ("input", "weight"),
        {"padding_idx": Opt("int", 3, valid=(None,)), "scale_grad_by_freq": Opt("bool", True)},
    ),
    "dropout": OpCase(
        _x34,
        ("x",),
        {"p": Opt("real", 0.3), "training": Opt("bool", False), "seed": Opt("int", 11)},
        fixed={"seed": 5},
    ),
    "scaled_dot_product_attention": OpCase(
        _build(_f(2, 3, 4), _f(2, 5, 4), _f(2, 5, 6), _f(3, 5)),
        ("query", "key", "value", "attn_mask"),
        {
            "dropout_p": Opt("real", 0.3),
            "is_causal": Opt("bool", False),
            "scale": Opt("real", 0.5, valid=(None,)),
            "enable_gqa": Opt("bool", True),
            "seed": Opt("int", 3, valid=(None,)),
        },
        optional=("attn_mask",),
        fixed={"seed": 7},
    ),
    # evaluation mode (the default): one output; the training tuple is tests/test_normalization.py's
    "batch_norm": OpCase(
        _build(_f(3, 4, 2), _f(4), lambda r: r.random(4) + 0.5, _f(4), _f(4)),
        ("x", "running_mean", "running_var", "weight", "bias"),
        {"training": Opt("bool", True), "momentum": Opt("real", 0.2), "eps": Opt("real", 1e-3)},
        optional=("running_mean", "running_var", "weight", "bias"),
    ),
    "layer_norm": OpCase(
        _build(_f(3, 4), _f(4), _f(4)),
        ("x", "weight", "bias"),
        {"eps": Opt("real", 1e-3)},
        optional=("weight", "bias"),
        positional=((1, (4,)),),
    ),
    "group_norm": OpCase(
        _build(_f(2, 4, 3), _f(4), _f(4)),
        ("x", "weight", "bias"),
        {"eps": Opt("real", 1e-3)},
        optional=("weight", "bias"),
        positional=((1, 2),),
    ),
    "rms_norm": OpCase(
        _build(_f(3, 4), _f(4)),
        ("x", "weight"),
        {"eps": Opt("real", 1e-3, valid=(None,))},  # None: finfo(x.dtype).eps
        optional=("weight",),
        positional=((1, (4,)),),
    ),
}

# Public names of F that are not ops of the table (settings, not forward/backward pairs).
NOT_OPS = {"conv_workspace_bytes", "get_conv_workspace_bytes", "set_conv_workspace_bytes"}


def public_ops() -> set[str]:
    """Every forward of ``F`` that has a ``_backward``."""
    names = set(F.__all__) - NOT_OPS
    return {n for n in names if not n.endswith("_backward") and n + "_backward" in names}


def inputs(xp: Any, name: str, rng: np.random.Generator, dtype: str = "float64") -> list[Any]:
    """The op's positional inputs on ``xp``: floating arrays in ``dtype``, integer arrays as
    they are, Python values (a kernel size) unchanged."""
    out = []
    for a in OPS[name].build(rng):
        if isinstance(a, np.ndarray):
            kind = getattr(xp, dtype) if a.dtype.kind == "f" else None
            out.append(xp.asarray(a, dtype=kind) if kind is not None else xp.asarray(a))
        else:
            out.append(a)
    return out


def call(name: str, args: list[Any], **options: Any) -> tuple[Any, Any]:
    """``F.<name>`` on ``args`` (as :func:`inputs` gives them: the keyword arrays last)."""
    keyword = OPS[name].keyword
    options = {**OPS[name].fixed, **options}
    args = list(args)
    for position, value in OPS[name].positional:
        args.insert(position, value)
    if keyword:
        options = {**dict(zip(keyword, args[-len(keyword) :], strict=True)), **options}
        args = args[: -len(keyword)]
    return getattr(F, name)(*args, **options)  # type: ignore[no-any-return]


def run(xp: Any, name: str, rng: np.random.Generator, **options: Any) -> tuple[Any, Any]:
    """Forward of op ``name`` on the table's inputs: ``(out, cache)``."""
    return call(name, inputs(xp, name, rng), **options)


def ones_cotangent(xp: Any, name: str, out: Any) -> Any:
    """A cotangent of ones for ``out`` (a tuple of them for tuple outputs; for an op whose
    extra outputs carry no gradient, batch norm's updated statistics, None for those)."""
    if OPS[name].tuple_out:
        return tuple(xp.ones_like(o) for o in out)
    if isinstance(out, tuple):
        return (xp.ones_like(out[0]), *(None,) * (len(out) - 1))
    return xp.ones_like(out)
