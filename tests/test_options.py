"""Scalar options of layers, losses, optimizers and schedules: a NumPy scalar (or 0-d array)
never changes a dtype, and None, strings, complex numbers and bools are refused by name."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from helpers import to_np

from backprop_xp import nn, optim


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 5, rng=0), nn.Tanh(), nn.Linear(5, 3, rng=1))


def _step(opt_cls: type, model: nn.Module, xp: Any, steps: int = 3, **kw: Any) -> None:
    opt = opt_cls(model.parameters(), **kw)
    sched = optim.StepLR(opt, step_size=1, gamma=np.float64(0.5))
    x = xp.asarray(np.random.default_rng(0).standard_normal((6, 4)), dtype=xp.float32)
    y = xp.asarray(np.array([0, 1, 2, 0, 1, 2]))
    for _ in range(steps):
        logits, backprop = model(x)
        _, dloss = nn.CrossEntropyLoss(label_smoothing=np.float64(0.1))(logits, y)
        backprop(dloss())
        optim.clip_grad_norm(model, max_norm=np.float64(1.0), norm_type=np.float64(2.0))
        opt.step()
        opt.zero_grad()
        sched.step()


OPTIMIZERS = [
    (optim.SGD, {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "weight_decay": 0.01}),
    (optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": np.bool_(True)}),
    (optim.Adam, {"lr": 0.01, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.01}),
    (optim.AdamW, {"lr": 0.01, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.1}),
]


def _numpy_scalars(kw: dict[str, Any], xp: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in kw.items():
        if isinstance(v, float):
            out[k] = np.float64(v)
        elif isinstance(v, tuple):
            out[k] = (np.float64(v[0]), xp.asarray(v[1], dtype=xp.float64))  # 0-d, as torch
        else:
            out[k] = v
    return out


@pytest.mark.parametrize(("cls", "kw"), OPTIMIZERS)
def test_numpy_scalar_hyperparameters_keep_float32_parameters(xp, cls, kw):
    ref, got = _model().to(xp._xp, xp.device), _model().to(xp._xp, xp.device)
    _step(cls, ref, xp, **{k: v.item() if isinstance(v, np.generic) else v for k, v in kw.items()})
    _step(cls, got, xp, **_numpy_scalars(kw, xp))
    for (name, a), (_, b) in zip(ref.named_parameters(), got.named_parameters(), strict=True):
        assert b.dtype == xp.float32, f"{name} became {b.dtype}"
        np.testing.assert_allclose(to_np(a.data), to_np(b.data), rtol=1e-6)


def test_a_learning_rate_set_later_is_normalized_too(xp):
    model = _model().to(xp._xp, xp.device)
    opt = optim.SGD(model.parameters(), lr=0.1)
    opt.lr = np.float64(0.05)
    assert type(opt.lr) is float
    _step(optim.Adam, model, xp, lr=xp.asarray(0.01, dtype=xp.float64))
    assert all(p.dtype == xp.float32 for p in model.parameters())


@pytest.mark.parametrize(
    ("make", "arg"),
    [
        (lambda v: optim.SGD(_model(), lr=v), "lr"),
        (lambda v: optim.SGD(_model(), momentum=v), "momentum"),
        (lambda v: optim.SGD(_model(), weight_decay=v), "weight_decay"),
        (lambda v: optim.SGD(_model(), dampening=v), "dampening"),
        (lambda v: optim.Adam(_model(), lr=v), "lr"),
        (lambda v: optim.Adam(_model(), eps=v), "eps"),
        (lambda v: optim.Adam(_model(), betas=(v, 0.9)), "betas[0]"),
        (lambda v: optim.AdamW(_model(), weight_decay=v), "weight_decay"),
        (lambda v: optim.StepLR(optim.SGD(_model()), 1, gamma=v), "gamma"),
        (lambda v: optim.CosineAnnealingLR(optim.SGD(_model()), 5, eta_min=v), "eta_min"),
        (lambda v: optim.clip_grad_norm(_with_grads(), max_norm=v), "max_norm"),
        (lambda v: nn.LeakyReLU(v), "negative_slope"),
        (lambda v: nn.ELU(v), "alpha"),
        (lambda v: nn.Softplus(beta=v), "beta"),
        (lambda v: nn.Softplus(threshold=v), "threshold"),
        (lambda v: nn.Dropout(v), "p"),
        (lambda v: nn.CrossEntropyLoss(label_smoothing=v), "label_smoothing"),
        (lambda v: nn.LSTM(3, 4, dropout=v), "dropout"),
    ],
)
def test_real_options_refuse_none_strings_complex_and_bools(make, arg):
    for bad in (None, "0.1", 0.1j, True):
        with pytest.raises(
            TypeError, match=rf"argument {re.escape(repr(arg))} expected a real number"
        ):
            make(bad)


def _with_grads() -> nn.Module:
    model = _model()
    for p in model.parameters():
        p.grad = np.ones(p.shape, dtype=np.float32)
    return model


@pytest.mark.parametrize(
    ("make", "arg"),
    [
        (lambda v: optim.SGD(_model(), momentum=0.9, nesterov=v), "nesterov"),
        (lambda v: optim.Adam(_model(), amsgrad=v), "amsgrad"),
        (lambda v: optim.Adam(_model(), maximize=v), "maximize"),
        (lambda v: nn.Linear(2, 3, bias=v), "bias"),
        (lambda v: nn.Conv2d(2, 3, 3, bias=v), "bias"),
        (lambda v: nn.MaxPool2d(2, ceil_mode=v), "ceil_mode"),
        (lambda v: nn.AvgPool1d(2, count_include_pad=v), "count_include_pad"),
        (lambda v: nn.GRU(3, 4, bidirectional=v), "bidirectional"),
        (lambda v: nn.RNN(3, 4, batch_first=v), "batch_first"),
    ],
)
def test_flags_refuse_strings_and_numbers(make, arg):
    for bad in ("False", 0, 1.0, None):
        with pytest.raises(TypeError, match=rf"argument '{arg}' expected a bool"):
            make(bad)


@pytest.mark.parametrize(
    ("make", "arg"),
    [
        (lambda v: nn.Linear(v, 3), "in_features"),
        (lambda v: nn.Conv1d(2, v, 3), "out_channels"),
        (lambda v: nn.Conv1d(2, 4, 3, groups=v), "groups"),
        (lambda v: nn.LSTM(v, 4), "input_size"),
        (lambda v: nn.GRU(3, 4, num_layers=v), "num_layers"),
        (lambda v: nn.CrossEntropyLoss(ignore_index=v), "ignore_index"),
        (lambda v: optim.StepLR(optim.SGD(_model()), v), "step_size"),
        (lambda v: optim.CosineAnnealingLR(optim.SGD(_model()), v), "T_max"),
    ],
)
def test_integer_options_refuse_floats_strings_and_bools(make, arg):
    for bad in (2.0, "2", True, None):
        with pytest.raises(TypeError, match=rf"argument '{arg}' expected an int"):
            make(bad)


def test_layer_options_take_numpy_scalars_as_python_numbers(xp):
    x = xp.asarray(np.linspace(-2, 2, 12).reshape(3, 4), dtype=xp.float32)
    for layer in (
        nn.LeakyReLU(np.float64(0.2)),
        nn.ELU(np.float64(0.5)),
        nn.Softplus(np.float64(2.0), np.float64(1.0)),
        nn.Dropout(np.float64(0.5), rng=0),
    ):
        y, backprop = layer(x)
        assert y.dtype == xp.float32, type(layer).__name__
        assert backprop(xp.ones_like(y)).dtype == xp.float32
    assert type(nn.LeakyReLU(np.float64(0.2)).negative_slope) is float
