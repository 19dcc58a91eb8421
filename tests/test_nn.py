"""backprop_xp.nn: layers against their functional ops and torch, parameters, state dicts."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from helpers import expected_library, to_np

from backprop_xp import functional as F
from backprop_xp import nn
from backprop_xp.backend import library_name

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch not installed")


def on(model: nn.Module, xp: Any, dtype: str | None = None) -> nn.Module:
    """``model`` moved to the test backend of the ``xp`` fixture."""
    return model.to(xp._xp, xp.device, dtype=dtype)


def expected_lib(xp: Any) -> str:
    return expected_library(xp)


def numeric_param_grad(loss_fn: Any, p: nn.Parameter, n: int = 6, eps: float = 1e-6) -> tuple:
    """Central differences of ``loss_fn()`` along ``n`` random directions of ``p``."""
    xp_data = p.data
    host = np.array(to_np(xp_data), dtype=np.float64)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        v = rng.standard_normal(host.shape)
        p.data = host + eps * v
        lp = loss_fn()
        p.data = host - eps * v
        lm = loss_fn()
        out.append((v, (lp - lm) / (2 * eps)))
    p.data = xp_data
    return tuple(out)


# -- parameters, names, init ----------------------------------------------------------------


def test_sequential_names_and_parameters():
    model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.ReLU(), nn.Linear(3, 2, bias=False, rng=1))
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight"]
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight"]
    assert len(list(model.parameters())) == 3
    assert model[2].bias is None
    assert "Linear(in_features=4" in repr(model)


@needs_torch
@pytest.mark.parametrize(
    "build",
    [
        lambda m: m.Sequential(m.Linear(4, 3), m.Tanh(), m.Linear(3, 2)),
        lambda m: m.Sequential(m.Conv2d(2, 4, 3, groups=2), m.MaxPool2d(2), m.Conv1d(3, 2, 2)),
        lambda m: m.Conv3d(2, 4, (1, 2, 3), bias=False),
        lambda m: m.RNN(3, 5, num_layers=2, bidirectional=True),
        lambda m: m.LSTM(3, 5, num_layers=3, bias=False),
        lambda m: m.GRU(3, 5, bidirectional=True, batch_first=True),
    ],
)
def test_state_dict_keys_and_shapes_match_torch(build):
    ours = {k: tuple(v.shape) for k, v in build(nn).state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in build(torch.nn).state_dict().items()}
    assert list(ours) == list(theirs)
    assert ours == theirs


@pytest.mark.parametrize(
    ("layer", "fan_in"),
    [
        (lambda rng: nn.Linear(300, 200, rng=rng), 300),
        (lambda rng: nn.Conv2d(6, 201, (5, 4), groups=3, rng=rng), 2 * 5 * 4),
        (lambda rng: nn.LSTM(10, 150, rng=rng), None),
    ],
)
def test_init_follows_torch_defaults(layer, fan_in):
    m = layer(0)
    for name, p in m.named_parameters():
        a = to_np(p.data).astype(np.float64)
        assert a.dtype == np.float64 and p.data.dtype == np.float32
        bound = 1 / math.sqrt(fan_in) if fan_in else 1 / math.sqrt(150)
        assert np.abs(a).max() <= bound, name
        if a.size > 1000:  # U(-b, b): variance b^2/3
            assert abs(a.var() / (bound**2 / 3) - 1) < 0.1, name


def test_seed_forms():
    a = nn.Linear(5, 4, rng=3).weight.data
    assert np.array_equal(a, nn.Linear(5, 4, rng=3).weight.data)
    assert not np.array_equal(a, nn.Linear(5, 4, rng=4).weight.data)
    gen = np.random.default_rng(3)
    assert np.array_equal(a, nn.Linear(5, 4, rng=gen).weight.data)
    assert not np.array_equal(a, nn.Linear(5, 4, rng=gen).weight.data)  # drawn in turn
    nn.manual_seed(7)
    b = nn.Linear(5, 4).weight.data
    nn.manual_seed(7)
    assert np.array_equal(b, nn.Linear(5, 4).weight.data)
    with pytest.raises(TypeError, match="rng"):
        nn.Linear(5, 4, rng="0")


def test_same_seed_same_weights_on_every_backend(xp):
    for build in (
        lambda: nn.Linear(6, 4, rng=0),
        lambda: nn.Conv2d(2, 3, 3, rng=0),
        lambda: nn.GRU(3, 4, bidirectional=True, rng=0),
    ):
        ref = build().state_dict()
        moved = on(build(), xp).state_dict()
        for k, v in moved.items():
            assert library_name(v) == expected_lib(xp)
            np.testing.assert_array_equal(to_np(v), ref[k])  # bit-identical


def test_to_moves_parameters_and_gradients_and_casts(xp):
    m = nn.Linear(3, 2, rng=0)
    m.weight.grad = np.ones((2, 3), dtype=np.float32)
    on(m, xp, dtype="float64")
    assert library_name(m.weight.data) == expected_lib(xp)
    assert library_name(m.weight.grad) == expected_lib(xp)
    assert m.weight.data.dtype == xp.float64 and m.weight.grad.dtype == xp.float64
    m.to("numpy", dtype="float32")
    assert isinstance(m.weight.data, np.ndarray) and m.weight.data.dtype == np.float32


# -- forward/backward protocol --------------------------------------------------------------


def test_linear_layer_matches_functional(xp, rng):
    layer = on(nn.Linear(5, 3, rng=1), xp, "float64")
    x = xp.asarray(rng.standard_normal((4, 5)))
    dy = xp.asarray(rng.standard_normal((4, 3)))
    y, backprop = layer(x)
    y_ref, cache = F.linear(x, layer.weight.data, layer.bias.data)
    dx_ref, dw_ref, db_ref = F.linear_backward(dy, cache)
    np.testing.assert_allclose(to_np(y), to_np(y_ref), rtol=1e-12)
    dx = backprop(dy)
    assert library_name(dx) == expected_lib(xp)
    np.testing.assert_allclose(to_np(dx), to_np(dx_ref), rtol=1e-12)
    np.testing.assert_allclose(to_np(layer.weight.grad), to_np(dw_ref), rtol=1e-12)
    np.testing.assert_allclose(to_np(layer.bias.grad), to_np(db_ref), rtol=1e-12)


@pytest.mark.parametrize(
    ("layer", "op", "options"),
    [
        (nn.ReLU(), "relu", {}),
        (nn.Tanh(), "tanh", {}),
        (nn.Sigmoid(), "sigmoid", {}),
        (nn.LeakyReLU(0.2), "leaky_relu", {"negative_slope": 0.2}),
        (nn.ELU(0.5), "elu", {"alpha": 0.5}),
        (nn.Softplus(2.0, 3.0), "softplus", {"beta": 2.0, "threshold": 3.0}),
    ],
)
def test_activation_layers_match_functional(xp, rng, layer, op, options):
    x = xp.asarray(rng.standard_normal((3, 4)))
    dy = xp.asarray(rng.standard_normal((3, 4)))
    y, backprop = layer(x)
    y_ref, cache = getattr(F, op)(x, **options)
    np.testing.assert_array_equal(to_np(y), to_np(y_ref))
    (dx_ref,) = getattr(F, op + "_backward")(dy, cache)
    np.testing.assert_array_equal(to_np(backprop(dy)), to_np(dx_ref))


def test_two_calls_before_backward_accumulate_both(xp, rng):
    """Shared weights: two forwards, then both backprops: .grad is the sum (not the last)."""
    layer = on(nn.Linear(4, 3, rng=0), xp, "float64")
    x1, x2 = (xp.asarray(rng.standard_normal((2, 4))) for _ in range(2))
    d1, d2 = (xp.asarray(rng.standard_normal((2, 3))) for _ in range(2))
    _, bp1 = layer(x1)
    _, bp2 = layer(x2)
    bp2(d2)
    bp1(d1)
    expected = to_np(d1).T @ to_np(x1) + to_np(d2).T @ to_np(x2)
    np.testing.assert_allclose(to_np(layer.weight.grad), expected, rtol=1e-12)
    np.testing.assert_allclose(to_np(layer.bias.grad), to_np(d1).sum(0) + to_np(d2).sum(0))


def test_backprop_runs_once_and_zero_grad():
    model = nn.Sequential(nn.Linear(2, 2, rng=0), nn.Tanh())
    y, backprop = model(np.ones((1, 2), dtype=np.float32))
    backprop(np.ones_like(y))
    with pytest.raises(RuntimeError, match="already run"):
        backprop(np.ones_like(y))
    assert model[0].weight.grad is not None
    model.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_backprop_after_moving_model_is_a_clear_error():
    layer = nn.Linear(2, 2, rng=0)
    y, backprop = layer(np.ones((1, 2), dtype=np.float32))
    layer.to("array_api_strict")
    with pytest.raises(RuntimeError, match="moved"):
        backprop(np.ones_like(y))


def test_model_gradients_match_finite_differences(rng):
    """A whole Sequential in float64: every parameter's .grad vs central differences."""
    model = nn.Sequential(
        nn.Linear(5, 6, rng=0), nn.ELU(), nn.Linear(6, 6, rng=1), nn.Softplus(), nn.Linear(6, 3)
    ).to(dtype="float64")
    criterion = nn.CrossEntropyLoss()
    x = rng.standard_normal((4, 5))
    y = rng.integers(0, 3, size=4)

    def loss_fn() -> float:
        return float(criterion(model(x)[0], y)[0])

    logits, backprop = model(x)
    _, dloss = criterion(logits, y)
    backprop(dloss())
    for name, p in model.named_parameters():
        g = to_np(p.grad)
        for v, numeric in numeric_param_grad(loss_fn, p):
            assert abs(np.sum(g * v) - numeric) < 1e-7 + 1e-5 * abs(numeric), name


# -- dropout --------------------------------------------------------------------------------


def test_dropout(xp):
    drop = nn.Dropout(0.25, rng=0)
    x = xp.asarray(np.ones((200, 50)), dtype=xp.float32)
    y, backprop = drop(x)
    assert library_name(y) == expected_lib(xp)
    y = to_np(y)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.02
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    dx = to_np(backprop(xp.asarray(np.full((200, 50), 2.0), dtype=xp.float32)))
    np.testing.assert_allclose(dx, np.where(kept, 2 / 0.75, 0.0), rtol=1e-6)
    # reproducible with a seed, a fresh mask per call
    y2 = to_np(drop(x)[0])
    assert not np.array_equal(y2 != 0, kept)
    again = nn.Dropout(0.25, rng=0)
    np.testing.assert_array_equal(to_np(again(x)[0]), y)
    drop.eval()
    np.testing.assert_array_equal(to_np(drop(x)[0]), to_np(x))
    with pytest.raises(ValueError, match=r"argument .p. expected a value in \[0, 1\]"):
        nn.Dropout(1.5)


# -- losses -----------------------------------------------------------------------------------


def test_loss_layers_match_functional(xp, rng):
    z = xp.asarray(rng.standard_normal((6, 4)))
    y = xp.asarray(rng.integers(0, 4, size=6))
    t = xp.asarray(rng.random((6, 4)))
    w = xp.asarray(rng.random(4))
    cases = [
        (nn.CrossEntropyLoss(weight=w, label_smoothing=0.1), "cross_entropy", y,
         {"weight": w, "label_smoothing": 0.1}),
        (nn.BCEWithLogitsLoss(pos_weight=w), "binary_cross_entropy_with_logits", t,
         {"pos_weight": w}),
        (nn.MSELoss(reduction="sum"), "mse_loss", t, {"reduction": "sum"}),
    ]  # fmt: skip
    for layer, op, target, options in cases:
        loss, backprop = layer(z, target)
        ref, cache = getattr(F, op)(z, target, **options)
        np.testing.assert_allclose(to_np(loss), to_np(ref), rtol=1e-12)
        ref_dx = getattr(F, op + "_backward")(xp.ones_like(ref) * 3, cache)[0]
        np.testing.assert_allclose(to_np(backprop(xp.ones_like(ref) * 3)), to_np(ref_dx))
    none = nn.MSELoss(reduction="none")
    loss, backprop = none(z, t)
    assert to_np(backprop()).shape == (6, 4)  # dloss=None means ones of the loss's shape


# -- conv and pooling ---------------------------------------------------------------------------


@needs_torch
@pytest.mark.parametrize(
    ("ours", "theirs", "shape"),
    [
        (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2, rng=0), "Conv1d(4, 6, 3, stride=2, padding=1, groups=2)", (2, 4, 9)),
        (lambda: nn.Conv2d(3, 4, (3, 2), dilation=(1, 2), padding=1, rng=0), "Conv2d(3, 4, (3, 2), dilation=(1, 2), padding=1)", (2, 3, 7, 8)),
        (lambda: nn.Conv3d(2, 3, 2, bias=False, rng=0), "Conv3d(2, 3, 2, bias=False)", (2, 2, 4, 3, 5)),
        (lambda: nn.MaxPool1d(3, stride=2, padding=1), "MaxPool1d(3, stride=2, padding=1)", (2, 3, 9)),
        (lambda: nn.MaxPool2d(2, ceil_mode=True), "MaxPool2d(2, ceil_mode=True)", (2, 3, 7, 6)),
        (lambda: nn.MaxPool3d(2), "MaxPool3d(2)", (1, 2, 4, 4, 6)),
        (lambda: nn.AvgPool1d(3, padding=1, count_include_pad=False), "AvgPool1d(3, padding=1, count_include_pad=False)", (2, 3, 9)),
        (lambda: nn.AvgPool2d(2, stride=1), "AvgPool2d(2, stride=1)", (2, 3, 5, 4)),
        (lambda: nn.AvgPool3d((1, 2, 2)), "AvgPool3d((1, 2, 2))", (1, 2, 3, 4, 4)),
        (lambda: nn.Flatten(), "Flatten()", (2, 3, 4, 5)),
        (lambda: nn.Flatten(0, 2), "Flatten(0, 2)", (2, 3, 4, 5)),
        (lambda: nn.GlobalAvgPool(), "Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())", (2, 3, 4, 5)),
    ],
)  # fmt: skip
def test_conv_and_pool_layers_match_torch(xp, rng, ours, theirs, shape):
    layer = on(ours(), xp, "float64")
    t_layer = eval(f"torch.nn.{theirs}").double()
    t_layer.load_state_dict({k: torch.from_numpy(to_np(v)) for k, v in layer.state_dict().items()})
    x = rng.permutation(math.prod(shape)).reshape(shape) / 7.0  # distinct values: no max ties
    xt = torch.tensor(x, requires_grad=True)
    yt = t_layer(xt)
    dy = rng.standard_normal(tuple(yt.shape))
    yt.backward(torch.from_numpy(dy))
    y, backprop = layer(xp.asarray(x))
    np.testing.assert_allclose(to_np(y), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    dx = backprop(xp.asarray(dy))
    np.testing.assert_allclose(to_np(dx), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for (k, p), tp in zip(layer.named_parameters(), t_layer.parameters(), strict=True):
        np.testing.assert_allclose(
            to_np(p.grad), tp.grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=k
        )


# -- recurrent ----------------------------------------------------------------------------------


def _torch_run(t_layer: Any, x: np.ndarray, lengths: Any, batch_first: bool) -> Any:
    xt = torch.tensor(x, requires_grad=True)
    if lengths is None:
        out, state = t_layer(xt)
    else:
        T = x.shape[1] if batch_first else x.shape[0]
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            xt, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
        )
        out, state = t_layer(packed)
        out = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=batch_first, total_length=T)[
            0
        ]
    return xt, out, state


@needs_torch
@pytest.mark.parametrize("kind", ["RNN", "LSTM", "GRU"])
@pytest.mark.parametrize(
    ("num_layers", "bidirectional", "batch_first", "lengths"),
    [(1, False, False, None), (2, True, True, [6, 2, 5, 1]), (2, False, False, [3, 6, 6, 4])],
)
def test_recurrent_layers_match_torch(
    xp, rng, kind, num_layers, bidirectional, batch_first, lengths
):
    kw = {"num_layers": num_layers, "bidirectional": bidirectional, "batch_first": batch_first}
    t_layer = getattr(torch.nn, kind)(3, 5, **kw).double()
    layer = on(getattr(nn, kind)(3, 5, **kw, dtype="float64"), xp)
    layer.load_state_dict({k: v.detach().numpy() for k, v in t_layer.state_dict().items()})
    x = rng.standard_normal((4, 6, 3) if batch_first else (6, 4, 3))
    xt, out_t, state_t = _torch_run(t_layer, x, lengths, batch_first)
    lens = None if lengths is None else np.array(lengths)  # host lengths are moved as needed
    (out, state), backprop = layer(xp.asarray(x), lengths=lens)
    states = state if kind == "LSTM" else (state,)
    states_t = state_t if kind == "LSTM" else (state_t,)
    np.testing.assert_allclose(to_np(out), out_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    for s, st in zip(states, states_t, strict=True):
        np.testing.assert_allclose(to_np(s), st.detach().numpy(), rtol=1e-10, atol=1e-12)
    g = rng.standard_normal(tuple(out.shape))
    gs = [rng.standard_normal(tuple(s.shape)) for s in states]
    total = (out_t * torch.from_numpy(g)).sum()
    for st, gh in zip(states_t, gs, strict=True):
        total = total + (st * torch.from_numpy(gh)).sum()
    total.backward()
    d_state = tuple(xp.asarray(a) for a in gs) if kind == "LSTM" else xp.asarray(gs[0])
    dx, dhx = backprop(xp.asarray(g), d_state)
    assert dhx is None  # no hx was given
    np.testing.assert_allclose(to_np(dx), xt.grad.numpy(), rtol=1e-9, atol=1e-11)
    for (k, p), tp in zip(layer.named_parameters(), t_layer.parameters(), strict=True):
        np.testing.assert_allclose(to_np(p.grad), tp.grad.numpy(), rtol=1e-9, atol=1e-11, err_msg=k)


@needs_torch
def test_lstm_initial_state_gradient_matches_torch(rng):
    t_layer = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True).double()
    layer = nn.LSTM(3, 4, num_layers=2, bidirectional=True, dtype="float64")
    layer.load_state_dict({k: v.detach().numpy() for k, v in t_layer.state_dict().items()})
    x = rng.standard_normal((5, 2, 3))
    h0, c0 = rng.standard_normal((4, 2, 4)), rng.standard_normal((4, 2, 4))
    ts = [torch.tensor(a, requires_grad=True) for a in (x, h0, c0)]
    out_t, _ = t_layer(ts[0], (ts[1], ts[2]))
    g = rng.standard_normal(tuple(out_t.shape))
    out_t.backward(torch.from_numpy(g))
    _, backprop = layer(x, (h0, c0))
    dx, (dh0, dc0) = backprop(g)
    for ours, t in zip((dx, dh0, dc0), ts, strict=True):
        np.testing.assert_allclose(ours, t.grad.numpy(), rtol=1e-9, atol=1e-11)


def test_truncated_bptt_chunks(rng):
    """Chunked runs carrying the state give the full forward; with one chunk of length T the
    chunked backward is the full backward (k = T ≡ full BPTT)."""
    layer = nn.LSTM(3, 4, num_layers=2, dtype="float64", rng=0)
    x = rng.standard_normal((8, 2, 3))
    g = rng.standard_normal((8, 2, 4))
    (out_full, _), backprop = layer(x)
    backprop(g)
    full_grads = {k: to_np(p.grad) for k, p in layer.named_parameters()}
    layer.zero_grad()
    state, outs = None, []
    for start in range(0, 8, 3):
        (out, state), backprop = layer(x[start : start + 3], state)
        outs.append(out)
        backprop(g[start : start + 3])  # the gradient stops at the chunk boundary
    np.testing.assert_allclose(np.concatenate(outs), out_full, rtol=1e-12, atol=1e-14)
    chunk_grads = {k: to_np(p.grad) for k, p in layer.named_parameters()}
    assert not np.allclose(chunk_grads["weight_hh_l0"], full_grads["weight_hh_l0"])
    layer.zero_grad()
    (_, _), backprop = layer(x, None)
    backprop(g)
    for k, p in layer.named_parameters():
        np.testing.assert_allclose(to_np(p.grad), full_grads[k], rtol=1e-12)


# -- state dicts ------------------------------------------------------------------------------


def test_load_state_dict_reports_everything_at_once():
    model = nn.Sequential(nn.Linear(4, 3, rng=0), nn.ReLU(), nn.Linear(3, 2, rng=0))
    state = {k: np.array(v) for k, v in model.state_dict().items()}
    bad = dict(state)
    del bad["0.bias"]
    bad["extra.weight"] = np.zeros(2, dtype=np.float32)
    bad["2.weight"] = np.zeros((2, 4), dtype=np.float32)
    bad["2.bias"] = state["2.bias"].astype(np.float64)
    before = {k: np.array(v) for k, v in model.state_dict().items()}
    with pytest.raises(nn.StateDictError) as info:
        model.load_state_dict(bad)
    e = info.value
    assert isinstance(e, ValueError)
    assert e.missing == ["0.bias"] and e.unexpected == ["extra.weight"]
    assert len(e.mismatched) == 2
    msg = str(e)
    for needle in ("0.bias", "extra.weight", "2.weight", "(2, 4)", "float64"):
        assert needle in msg
    for k, v in model.state_dict().items():  # nothing was loaded
        np.testing.assert_array_equal(v, before[k])
    partial = {k: v for k, v in state.items() if k != "0.bias"}
    missing, unexpected = model.load_state_dict(partial | {"junk": np.zeros(1)}, strict=False)
    assert (missing, unexpected) == (["0.bias"], ["junk"])  # torch's (missing, unexpected)
    assert model.load_state_dict(state) == nn.IncompatibleKeys([], [])


def test_load_state_dict_copies(xp):
    model = on(nn.Linear(2, 2, rng=0), xp)
    src = np.ones((2, 2), dtype=np.float32)
    model.load_state_dict({"weight": src, "bias": np.zeros(2, dtype=np.float32)})
    src[:] = 5
    assert library_name(model.weight.data) == expected_lib(xp)
    np.testing.assert_array_equal(to_np(model.weight.data), np.ones((2, 2)))


@needs_torch
def test_load_state_dict_from_torch_parameters_detaches():
    theirs = torch.nn.Linear(4, 3)
    ours = nn.Linear(4, 3).to("torch")
    ours.load_state_dict(dict(theirs.named_parameters()))
    assert not ours.weight.data.requires_grad and not ours.bias.data.requires_grad
    y, _ = ours(torch.randn(2, 4))
    assert not y.requires_grad
    y.numpy()  # no autograd graph in the way
    torch.testing.assert_close(ours.weight.data, theirs.weight.detach())


def test_shared_layer_has_every_state_dict_key_as_torch():
    shared = nn.Linear(3, 3, rng=0)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert list(model.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias"]
    assert len(list(model.parameters())) == 2
    state = {k: np.full(v.shape, 0.5, dtype=np.float32) for k, v in model.state_dict().items()}
    model.load_state_dict(state)  # strict: both names accepted
    np.testing.assert_array_equal(shared.weight.data, np.full((3, 3), 0.5, dtype=np.float32))
    if torch is not None:
        theirs = torch.nn.Linear(3, 3)
        assert list(torch.nn.Sequential(theirs, torch.nn.ReLU(), theirs).state_dict()) == list(
            model.state_dict()
        )


@pytest.mark.parametrize(
    "build, x_shape",
    [
        (lambda: nn.Linear(3, 2, rng=0), (4, 3)),
        (lambda: nn.Conv1d(2, 3, 3, rng=0), (4, 2, 6)),
        (lambda: nn.Sequential(nn.Linear(3, 2, rng=0), nn.Tanh()), (4, 3)),
        (lambda: nn.Dropout(0.5, rng=0), (4, 3)),
    ],
)
def test_float64_gradient_into_float32_layer_is_cast_as_torch(build, x_shape):
    """torch's autograd casts the gradient given to backward to the output's dtype."""
    model = build()
    x = np.random.default_rng(0).standard_normal(x_shape).astype(np.float32)
    y, backprop = model(x)
    dx = backprop(np.ones(y.shape))  # float64
    assert dx.dtype == np.float32
    for p in model.parameters():
        assert p.grad.dtype == np.float32


def test_loss_and_recurrent_backprops_cast_their_gradients():
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    (out, h_n), backprop = nn.GRU(3, 4, rng=0)(x)
    dx, _ = backprop(np.ones(out.shape), d_h_n=np.ones(h_n.shape))
    assert dx.dtype == np.float32
    _, backprop = nn.MSELoss()(x, np.zeros_like(x))
    assert backprop(np.asarray(2.0)).dtype == np.float32


def test_parameter_refuses_a_gradient_of_another_dtype():
    p = nn.Parameter(np.zeros(3, dtype=np.float32))
    with pytest.raises(RuntimeError, match="dtype float64 for a parameter of dtype float32"):
        p.accumulate(np.zeros(3))


# -- training ---------------------------------------------------------------------------------


def _train_losses(model: nn.Module, xp: Any, steps: int = 5) -> list[float]:
    from backprop_xp import optim

    data = np.random.default_rng(0)
    x = xp.asarray(data.standard_normal((16, 1, 6, 6)), dtype=xp.float32)
    y = xp.asarray(data.integers(0, 3, size=16))
    criterion = nn.CrossEntropyLoss()
    opt = optim.Adam(model, lr=1e-2)
    losses = []
    for _ in range(steps):
        logits, backprop = model(x)
        loss, dloss = criterion(logits, y)
        backprop(dloss())
        optim.clip_grad_norm(model, 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    return losses


def _small_model() -> nn.Module:
    layers = [nn.Flatten(), nn.Linear(36, 8, rng=1), nn.Tanh(), nn.Linear(8, 3, rng=2)]
    if hasattr(F, "conv2d") and hasattr(F, "max_pool2d"):
        layers = [
            nn.Conv2d(1, 4, 3, padding=1, rng=0), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(36, 8, rng=1), nn.Tanh(), nn.Linear(8, 3, rng=2),
        ]  # fmt: skip
    return nn.Sequential(*layers)


def test_training_steps_agree_across_backends(xp):
    """Same seed, same data: the losses of a few Adam steps match NumPy's on every backend."""
    ref = _train_losses(_small_model(), B_numpy())
    got = _train_losses(on(_small_model(), xp), xp)
    np.testing.assert_allclose(got, ref, rtol=2e-5, atol=1e-6)
    assert ref[-1] < ref[0]


def B_numpy() -> Any:
    from backprop_xp.backend import namespace

    return namespace("numpy")


def test_recurrent_layer_lengths_as_a_list(rng):
    x = rng.standard_normal((5, 2, 3)).astype(np.float32)
    layer = nn.GRU(3, 4, rng=0)
    (out_list, h_list), _ = layer(x, lengths=[5, 3])
    (out_arr, h_arr), _ = layer(x, lengths=np.array([5, 3]))
    np.testing.assert_array_equal(out_list, out_arr)
    np.testing.assert_array_equal(h_list, h_arr)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_gated_layers_have_no_nonlinearity(cls):
    with pytest.raises(TypeError, match=f"{cls.__name__}: unexpected argument 'nonlinearity'"):
        cls(3, 4, nonlinearity="relu")
    assert nn.RNN(3, 4, 1, "relu").nonlinearity == "relu"


def test_max_pool_layer_positional_arguments_are_torchs():
    """torch.nn.MaxPool2d(kernel_size, stride, padding, dilation, return_indices, ceil_mode)."""
    x = np.arange(25.0, dtype=np.float32).reshape(1, 1, 5, 5)
    y, _ = nn.MaxPool2d(2, 2, 0, 1, False, True)(x)  # ceil_mode is the sixth
    assert y.shape == (1, 1, 3, 3)
    with pytest.raises(ValueError, match="MaxPool2d: return_indices=True is not supported"):
        nn.MaxPool2d(2, 2, 0, 1, True)


def test_to_dtype_casts_loss_class_weights_and_refuses_integers():
    criterion = nn.CrossEntropyLoss(weight=np.array([1.0, 2.0, 3.0], dtype=np.float32))
    criterion.to(dtype="float64")
    loss, _ = criterion(np.zeros((2, 3)), np.array([0, 2]))
    assert criterion.weight.dtype == np.float64 and loss.dtype == np.float64
    with pytest.raises(TypeError, match=r"Linear\.to: argument 'dtype' expected a real floating"):
        nn.Linear(2, 2, rng=0).to(dtype="int32")


def test_loss_backprop_takes_a_python_number():
    x = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    _, backprop = nn.CrossEntropyLoss()(x, np.array([0, 1, 2, 0]))
    _, backprop_default = nn.CrossEntropyLoss()(x, np.array([0, 1, 2, 0]))
    dx = backprop(1)
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx, backprop_default())
    _, backprop = nn.MSELoss()(x, np.zeros_like(x))
    assert backprop(2.0).dtype == np.float32


def test_sequential_ending_in_a_recurrent_layer():
    x = np.random.default_rng(0).standard_normal((5, 2, 3)).astype(np.float32)
    (out, _), backprop = nn.Sequential(nn.GRU(3, 4, rng=0))(x)
    dx, dh0 = backprop(np.ones(out.shape))  # float64: the GRU casts it
    assert dx.dtype == np.float32 and dh0 is None


def test_to_an_integer_dtype_moves_nothing():
    model = nn.Sequential(nn.Linear(2, 2, rng=0), nn.Linear(2, 2, rng=0))
    with pytest.raises(TypeError, match=r"Sequential\.to: argument 'dtype'"):
        model.to("numpy", dtype="int64")
    assert all(p.dtype == np.float32 for p in model.parameters())


@pytest.mark.parametrize(
    "build", [lambda: nn.Linear(3, 2, rng=0), lambda: nn.ReLU(), lambda: nn.Conv1d(3, 2, 1, rng=0)]
)
def test_backprop_does_not_keep_the_output_alive(build):
    """Once the next layer has consumed an output, only what the backward needs stays."""
    import gc
    import weakref

    layer = build()
    x = np.ones((4, 3, 5) if isinstance(layer, nn.Conv1d) else (4, 3), dtype=np.float32)
    y, _backprop = layer(x)  # the closure stays alive; the output must not
    ref = weakref.ref(y)
    del y
    gc.collect()
    assert ref() is None


def test_recurrent_inter_layer_dropout_is_seeded():
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    outs = []
    for _ in range(2):
        layer = nn.LSTM(3, 4, num_layers=2, dropout=0.5, rng=0)
        (out, _), _ = layer(x)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    nn.manual_seed(1)
    (a, _), _ = nn.GRU(3, 4, num_layers=2, dropout=0.5)(x)
    nn.manual_seed(1)
    (b, _), _ = nn.GRU(3, 4, num_layers=2, dropout=0.5)(x)
    np.testing.assert_array_equal(a, b)


def test_flatten_layer_takes_torchs_keywords():
    x = np.zeros((2, 3, 4, 5), dtype=np.float32)
    assert nn.Flatten(start_dim=2)(x)[0].shape == (2, 3, 20)
    if torch is not None:
        assert tuple(torch.nn.Flatten(start_dim=2)(torch.zeros(2, 3, 4, 5)).shape) == (2, 3, 20)


def test_conv_layer_checks_its_geometry_when_built_as_torch():
    layer = nn.Conv2d(3, 4, 3, stride=2, padding=1, rng=0)
    assert (layer.stride, layer.padding, layer.dilation) == ((2, 2), (1, 1), (1, 1))
    with pytest.raises(ValueError, match=r"Conv2d: argument 'padding' expected an int, a tuple"):
        nn.Conv2d(3, 4, 3, padding="foo")
    with pytest.raises(ValueError, match=r"Conv1d: argument 'stride' expected positive sizes"):
        nn.Conv1d(3, 4, 3, stride=0)
    with pytest.raises(ValueError, match=r"Conv3d: argument 'padding' expected 'same' only"):
        nn.Conv3d(3, 4, 3, stride=2, padding="same")
    if torch is not None:
        theirs = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        assert (theirs.stride, theirs.padding, theirs.dilation) == (
            layer.stride,
            layer.padding,
            layer.dilation,
        )


def test_sequential_slice_is_a_sequential_with_torchs_names():
    model = nn.Sequential(nn.Linear(3, 4, rng=0), nn.ReLU(), nn.Linear(4, 2, rng=0))
    head = model[1:]
    assert isinstance(head, nn.Sequential) and list(head.state_dict()) == ["2.weight", "2.bias"]
    x = np.ones((2, 3), dtype=np.float32)
    h, _ = model[0](x)
    np.testing.assert_array_equal(head(h)[0], model(x)[0])
    if torch is not None:
        theirs = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        assert list(theirs[1:].state_dict()) == list(head.state_dict())
