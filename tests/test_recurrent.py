"""rnn, lstm, gru: forward, BPTT, variable lengths, truncated BPTT, and torch parity."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from helpers import compare_with_numpy, to_np

from backprop_xp import _config
from backprop_xp import functional as F
from backprop_xp.testing import assert_close, gradcheck

T, N, D, H = 4, 3, 3, 2  # gradcheck perturbs every element of inputs this small
GATES = {"rnn": 1, "lstm": 4, "gru": 3}
OPS = {
    "rnn": (F.rnn, F.rnn_backward),
    "lstm": (F.lstm, F.lstm_backward),
    "gru": (F.gru, F.gru_backward),
}
# (cell, options): every cell and nonlinearity
CONFIGS = [
    ("rnn", {"nonlinearity": "tanh"}),
    ("rnn", {"nonlinearity": "relu"}),
    ("lstm", {}),
    ("gru", {}),
]
CONFIG_IDS = ["rnn_tanh", "rnn_relu", "lstm", "gru"]


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def make_inputs(
    rng: np.random.Generator,
    cell: str,
    *,
    bias: bool = True,
    lengths: bool = False,
    shape: tuple[int, int, int, int] = (T, N, D, H),
    w_scale: float = 0.6,
) -> list[np.ndarray | None]:
    """Positional inputs of the op: input, h0[, c0], w_ih, w_hh, b_ih, b_hh, lengths."""
    t, n, d, h = shape
    g = GATES[cell]
    args: list[np.ndarray | None] = [rng.standard_normal((t, n, d)), rng.standard_normal((n, h))]
    if cell == "lstm":
        args.append(rng.standard_normal((n, h)))
    args += [
        rng.standard_normal((g * h, d)) * w_scale,
        rng.standard_normal((g * h, h)) * w_scale,
        rng.standard_normal(g * h) if bias else None,
        rng.standard_normal(g * h) if bias else None,
        # one full-length sequence, one empty one, the rest random: any order
        np.concatenate([[t, 0], rng.integers(1, t + 1, n - 2)])[rng.permutation(n)]
        if lengths
        else None,
    ]
    return args


def to_xp(xp, args, dtype=None):
    out = []
    for a in args:
        if a is None:
            out.append(None)
        elif np.issubdtype(a.dtype, np.floating):
            out.append(xp.asarray(a, dtype=dtype) if dtype is not None else xp.asarray(a))
        else:
            out.append(xp.asarray(a))
    return out


def ref_forward(cell: str, args: list, nonlinearity: str = "tanh") -> tuple[np.ndarray, ...]:
    """Plain NumPy loop over time, straight from torch's documented equations."""
    if cell == "lstm":
        x, h, c, w_ih, w_hh, b_ih, b_hh, lengths = args
    else:
        x, h, w_ih, w_hh, b_ih, b_hh, lengths = args
        c = None
    t_steps, n = x.shape[:2]
    hid = h.shape[1]
    b_ih = np.zeros(w_ih.shape[0]) if b_ih is None else b_ih
    b_hh = np.zeros(w_ih.shape[0]) if b_hh is None else b_hh
    lengths = np.full(n, t_steps) if lengths is None else lengths
    outs = []
    for t in range(t_steps):
        gi = x[t] @ w_ih.T + b_ih
        gh = h @ w_hh.T + b_hh
        if cell == "rnn":
            a = gi + gh
            h_new, c_new = (np.tanh(a) if nonlinearity == "tanh" else np.maximum(a, 0)), None
        elif cell == "lstm":
            i, f, g, o = np.split(gi + gh, 4, axis=1)
            c_new = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
            h_new = sigmoid(o) * np.tanh(c_new)
        else:
            r = sigmoid(gi[:, :hid] + gh[:, :hid])
            z = sigmoid(gi[:, hid : 2 * hid] + gh[:, hid : 2 * hid])
            nn = np.tanh(gi[:, 2 * hid :] + r * gh[:, 2 * hid :])
            h_new, c_new = (1 - z) * nn + z * h, None
        valid = (t < lengths)[:, None]
        h = np.where(valid, h_new, h)
        if c is not None:
            c = np.where(valid, c_new, c)
        outs.append(np.where(valid, h, 0.0))
    y = np.stack(outs) if outs else np.zeros((0, n, hid))
    return (y, h) if c is None else (y, h, c)


# --- forward -------------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize(("cell", "options"), CONFIGS, ids=CONFIG_IDS)
def test_forward_matches_loop_reference(xp, dtype, rng, cell, options, bias, lengths):
    args = make_inputs(rng, cell, bias=bias, lengths=lengths, shape=(5, 4, 3, 6))
    outs, _ = OPS[cell][0](*to_xp(xp, args, dtype), **options)
    ref = ref_forward(cell, args, **options)
    assert len(outs) == len(ref)
    tol = {"rtol": 1e-5, "atol": 1e-5} if "32" in str(dtype) else {"rtol": 1e-12, "atol": 1e-12}
    for got, want in zip(outs, ref, strict=True):
        assert got.dtype == dtype
        np.testing.assert_allclose(to_np(got), want, **tol)


def test_empty_sequence(xp, rng):
    args = make_inputs(rng, "lstm", shape=(0, 2, 3, 4))
    (y, h_n, _), cache = F.lstm(*to_xp(xp, args))
    assert tuple(y.shape) == (0, 2, 4)
    assert_close(h_n, xp.asarray(args[1]))
    grads = F.lstm_backward((None, xp.asarray(np.ones((2, 4))), None), cache)
    assert tuple(grads[0].shape) == (0, 2, 3)
    assert_close(grads[1], xp.asarray(np.ones((2, 4))))
    assert np.all(to_np(grads[3]) == 0)


# --- gradients -----------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize(("cell", "options"), CONFIGS, ids=CONFIG_IDS)
def test_gradcheck(xp, rng, cell, options, bias, lengths):
    args = make_inputs(rng, cell, bias=bias, lengths=lengths)
    result = gradcheck(OPS[cell][0], to_xp(xp, args), options)
    assert all(c.mode == "full" for c in result.inputs)


ONE_OUTPUT = [
    pytest.param(cell, options, which, id=f"{name}-{['d_output', 'd_h_n', 'd_c_n'][which]}")
    for name, (cell, options) in zip(CONFIG_IDS, CONFIGS, strict=True)
    for which in range(3 if cell == "lstm" else 2)
]


@pytest.mark.parametrize(("cell", "options", "which"), ONE_OUTPUT)
def test_gradcheck_one_output(xp, rng, cell, options, which):
    """Only one output has a cotangent: grad_outputs = (g, None) / (None, g)."""
    n_out = 3 if cell == "lstm" else 2
    args = make_inputs(rng, cell, lengths=True)
    shapes = [(T, N, H), (N, H), (N, H)]
    g = [None] * n_out
    g[which] = xp.asarray(rng.standard_normal(shapes[which]))
    gradcheck(OPS[cell][0], to_xp(xp, args), options, grad_outputs=tuple(g))


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize(("cell", "options"), CONFIGS, ids=CONFIG_IDS)
def test_matches_numpy(xp, dtype, rng, cell, options, lengths):
    name = "float64" if "64" in str(dtype) else "float32"
    args = make_inputs(rng, cell, lengths=lengths, shape=(5, 4, 3, 6))
    n_out = 3 if cell == "lstm" else 2
    g = tuple(rng.standard_normal(s) for s in [(5, 4, 6), (4, 6), (4, 6)][:n_out])
    op, backward = OPS[cell]
    # float32 through a few steps of recurrence: a little above the 1e-5 matrix default
    extra = {"rtol": 1e-4, "atol": 1e-5} if name == "float32" else {}
    compare_with_numpy(xp, op, backward, args, options, g, name, **extra)


@pytest.mark.parametrize(("cell", "options"), CONFIGS, ids=CONFIG_IDS)
def test_grads_tuple_layout(xp, rng, cell, options):
    """One entry per positional array parameter: None for absent biases and for lengths."""
    args = make_inputs(rng, cell, bias=False, lengths=True)
    op, backward = OPS[cell]
    outs, cache = op(*to_xp(xp, args), **options)
    grads = backward((xp.ones_like(outs[0]), None, None)[: len(outs)], cache)
    assert len(grads) == len(args)
    assert grads[-1] is None and grads[-2] is None and grads[-3] is None
    for g, a in zip(grads[:-3], args[:-3], strict=True):
        assert tuple(g.shape) == a.shape


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_w_hh_gradient_is_sum_of_per_step_contributions(xp, rng, cell):
    """Tied weights: dW_hh of the sequence = Σ_t dW_hh of step t, each step run on its own.

    The loop below runs the sequence one step at a time and chains the steps' backwards by
    hand through d_h0 (and d_c0), so it also checks the gradient of the initial state.
    """
    args = make_inputs(rng, cell, lengths=True, shape=(6, 3, 3, 4))
    xa = to_xp(xp, args)
    op, backward = OPS[cell]
    n_state = 2 if cell == "lstm" else 1
    _, cache = op(*xa)
    dy = rng.standard_normal((6, 3, 4))
    full = backward((xp.asarray(dy), *[None] * n_state), cache)

    x, states, weights, lengths = xa[0], xa[1 : 1 + n_state], xa[1 + n_state : -1], xa[-1]
    caches = []
    for t in range(6):
        # a one-step chunk; sequence n is still running at step t iff t < lengths[n]
        step_len = xp.astype(lengths > t, lengths.dtype)
        step_outs, c = op(x[t : t + 1, ...], *states, *weights, step_len)
        states = step_outs[1:]
        caches.append(c)
    d_states = [None] * n_state
    dW_hh_sum = 0
    for t in reversed(range(6)):
        grads = backward((xp.asarray(dy[t : t + 1]), *d_states), caches[t])
        d_states = list(grads[1 : 1 + n_state])
        dW_hh_sum = dW_hh_sum + to_np(grads[2 + n_state])
    np.testing.assert_allclose(dW_hh_sum, to_np(full[2 + n_state]), rtol=1e-10, atol=1e-12)
    for got, want in zip(d_states, full[1 : 1 + n_state], strict=True):
        np.testing.assert_allclose(to_np(got), to_np(want), rtol=1e-10, atol=1e-12)


# --- truncated BPTT and chunks -------------------------------------------------------------


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_truncate_at_T_equals_full_bptt(xp, rng, cell, lengths):
    args = make_inputs(rng, cell, lengths=lengths)
    op, backward = OPS[cell]
    outs, cache = op(*to_xp(xp, args))
    g = tuple(xp.asarray(rng.standard_normal(tuple(o.shape))) for o in outs)
    full = backward(g, cache)
    for k in (T, T + 5):
        for got, want in zip(backward(g, cache, truncate=k), full, strict=True):
            assert (got is None) == (want is None)
            if got is not None:
                assert_close(got, want, rtol=0, atol=0)
    # gradcheck's backward= hook takes the truncated backward as well
    gradcheck(op, to_xp(xp, args), backward=functools.partial(backward, truncate=T))


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_truncate_k_equals_backward_of_last_k_steps(xp, rng, cell, lengths):
    """truncate=k ≡ full BPTT of a chunk holding the last k steps, started from the state the
    forward reached there; d_input is zero before the window, d_h0 is zero."""
    t_steps, k = 6, 2
    args = make_inputs(rng, cell, lengths=lengths, shape=(t_steps, N, D, H))
    xa = to_xp(xp, args)
    op, backward = OPS[cell]
    n_state = 2 if cell == "lstm" else 1
    outs, cache = op(*xa)
    g = [rng.standard_normal(tuple(o.shape)) for o in outs]
    trunc = backward(tuple(xp.asarray(a) for a in g), cache, truncate=k)

    # The state after step T-k-1: run the first T-k steps as their own chunk.
    lengths_xp = xa[-1]
    weights = xa[1 + n_state : -1]
    head_len = None if lengths_xp is None else xp.clip(lengths_xp, max=t_steps - k)
    head, _ = op(xa[0][: t_steps - k, ...], *xa[1 : 1 + n_state], *weights, head_len)
    tail_len = None if lengths_xp is None else xp.clip(lengths_xp - (t_steps - k), min=0)
    tail_outs, tail_cache = op(xa[0][t_steps - k :, ...], *head[1:], *weights, tail_len)
    for got, want in zip(tail_outs, outs, strict=True):
        if got.ndim == 3:
            want = want[t_steps - k :, ...]
        assert_close(got, want, rtol=1e-12, atol=1e-12)
    tail = backward((xp.asarray(g[0][t_steps - k :]), *map(xp.asarray, g[1:])), tail_cache)

    assert np.all(to_np(trunc[0])[: t_steps - k] == 0)
    assert_close(trunc[0][t_steps - k :, ...], tail[0], rtol=1e-12, atol=1e-12)
    for d_state in trunc[1 : 1 + n_state]:
        assert np.all(to_np(d_state) == 0)
    for got, want in zip(trunc[1 + n_state : -1], tail[1 + n_state : -1], strict=True):
        assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_chunked_forward_carries_state(xp, rng, cell):
    """A long sequence run chunk by chunk (h_n of one chunk is h0 of the next) gives the
    forward of one run; each chunk's backward stops at its own h0."""
    args = make_inputs(rng, cell, shape=(9, N, D, H))
    xa = to_xp(xp, args)
    op, backward = OPS[cell]
    n_state = 2 if cell == "lstm" else 1
    outs, _ = op(*xa)
    states, ys, dW = xa[1 : 1 + n_state], [], 0
    for start in range(0, 9, 4):  # chunks of 4, 4, 1
        chunk_outs, cache = op(xa[0][start : min(start + 4, 9), ...], *states, *xa[1 + n_state :])
        ys.append(to_np(chunk_outs[0]))
        states = chunk_outs[1:]
        grads = backward((xp.ones_like(chunk_outs[0]), *[None] * n_state), cache)
        dW = dW + to_np(grads[2 + n_state])  # d_h0 (grads[1]) is dropped: truncation
    np.testing.assert_allclose(np.concatenate(ys), to_np(outs[0]), rtol=1e-12, atol=1e-12)
    for got, want in zip(states, outs[1:], strict=True):
        assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert np.isfinite(dW).all()


# --- torch parity --------------------------------------------------------------------------


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "packed"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize(("cell", "options"), CONFIGS, ids=CONFIG_IDS)
def test_matches_torch_module(rng, cell, options, bias, lengths):
    torch = pytest.importorskip("torch")
    t_steps, n, d, h = 5, 4, 3, 6
    args = make_inputs(rng, cell, bias=bias, lengths=lengths, shape=(t_steps, n, d, h))
    if lengths:
        args[-1] = np.maximum(args[-1], 1)  # packed sequences cannot be empty
    op, backward = OPS[cell]
    outs, cache = op(*args, **options)
    g = [rng.standard_normal(o.shape) for o in outs]
    grads = backward(tuple(g), cache)

    kwargs = {"nonlinearity": options["nonlinearity"]} if cell == "rnn" else {}
    module_cls = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[cell]
    module = module_cls(d, h, bias=bias, **kwargs).double()
    n_state = 2 if cell == "lstm" else 1
    w_ih, w_hh, b_ih, b_hh = args[1 + n_state : -1]
    with torch.no_grad():
        module.weight_ih_l0.copy_(torch.from_numpy(w_ih))
        module.weight_hh_l0.copy_(torch.from_numpy(w_hh))
        if bias:
            module.bias_ih_l0.copy_(torch.from_numpy(b_ih))
            module.bias_hh_l0.copy_(torch.from_numpy(b_hh))
    x = torch.from_numpy(args[0]).requires_grad_()
    states = [torch.from_numpy(s)[None].clone().requires_grad_() for s in args[1 : 1 + n_state]]
    hx = tuple(states) if cell == "lstm" else states[0]
    if lengths:
        packed = torch.nn.utils.rnn.pack_padded_sequence(
            x, torch.from_numpy(args[-1]), enforce_sorted=False
        )
        y_packed, hn = module(packed, hx)
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y_packed, total_length=t_steps)
    else:
        y, hn = module(x, hx)
    t_outs = [y, *(s[0] for s in (hn if cell == "lstm" else (hn,)))]
    for ours, theirs in zip(outs, t_outs, strict=True):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=1e-10, atol=1e-12)
    torch.autograd.backward(t_outs, [torch.from_numpy(a) for a in g])
    t_grads = [x.grad, *(s.grad[0] for s in states), module.weight_ih_l0.grad]
    t_grads.append(module.weight_hh_l0.grad)
    t_grads += [module.bias_ih_l0.grad, module.bias_hh_l0.grad] if bias else [None, None]
    for i, (ours, theirs) in enumerate(zip(grads[:-1], t_grads, strict=True)):
        assert (ours is None) == (theirs is None), i
        if ours is not None:
            np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-9, atol=1e-12, err_msg=str(i))


# --- vanishing gradients -------------------------------------------------------------------


def _state_gradient_norms(cell: str, args: list, t_steps: int, g: np.ndarray) -> np.ndarray:
    """‖∂(g·h_T)/∂h_t‖ for t = T, T-1, ..., 1 (distance T - t = 0, 1, ..., T-1)."""
    op, backward = OPS[cell]
    n_state = 2 if cell == "lstm" else 1
    _, cache = op(*args)
    states = [cache.Hs] + ([cache.Cs] if cell == "lstm" else [])
    norms = []
    for t in reversed(range(t_steps)):
        # h_t is h0 of the remaining steps t+1..T (c_t held fixed for the LSTM)
        _, c = op(args[0][t + 1 :], *(s[t + 1] for s in states), *args[1 + n_state :])
        d_h = backward((None, g, *[None] * (n_state - 1)), c)[1]
        norms.append(np.linalg.norm(d_h))
    return np.array(norms)


def test_vanishing_gradients_tanh_rnn_vs_lstm(rng):
    """A tanh RNN with small recurrent weights forgets geometrically: ‖∂h_T/∂h_t‖ decays with
    T − t. An LSTM whose forget gate is biased open (σ(3) ≈ 0.95) carries the gradient along
    its cell state and keeps it orders of magnitude larger."""
    t_steps, n, d, h = 30, 4, 3, 8
    g = rng.standard_normal((n, h))
    x = rng.standard_normal((t_steps, n, d)) * 0.1
    h0 = np.zeros((n, h))
    w_ih = rng.standard_normal((h, d)) * 0.1
    w_hh = rng.standard_normal((h, h)) * 0.25 / np.sqrt(h)  # spectral radius well below 1
    rnn_norms = _state_gradient_norms("rnn", [x, h0, w_ih, w_hh, None, None, None], t_steps, g)

    w_ih4 = rng.standard_normal((4 * h, d)) * 0.1
    w_hh4 = rng.standard_normal((4 * h, h)) * 0.25 / np.sqrt(h)
    b = np.zeros(4 * h)
    b[h : 2 * h] = 3.0  # forget gate open
    b[3 * h :] = 3.0  # output gate open: the state reaches h
    lstm_args = [x, h0, h0, w_ih4, w_hh4, b, None, None]
    lstm_norms = _state_gradient_norms("lstm", lstm_args, t_steps, g)

    assert np.all(np.diff(np.log(rnn_norms)) < 0)  # strictly decaying for the RNN
    # ...at least as fast as the bound: dh_t = (dh_{t+1} ⊙ tanh') W_hh, |tanh'| ≤ 1
    rate = np.linalg.norm(w_hh, 2)
    assert np.all(rnn_norms[1:] <= rnn_norms[:-1] * rate * (1 + 1e-12))
    assert rnn_norms[-1] / rnn_norms[0] < 1e-6  # vanished over 29 steps
    assert lstm_norms[-1] / lstm_norms[0] > 1e-3
    assert lstm_norms[-1] > 1e6 * rnn_norms[-1]


# --- special values and bad input ----------------------------------------------------------


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_nan_propagates_but_not_from_padding(xp, rng, cell):
    args = make_inputs(rng, cell, shape=(4, 2, 3, 2))
    args[-1] = np.array([4, 2])
    args[0][1, 0, 0] = np.nan  # a valid step of sequence 0
    args[0][3, 1, 0] = np.nan  # padding of sequence 1
    outs, _ = OPS[cell][0](*to_xp(xp, args))
    y = to_np(outs[0])
    assert np.isnan(y[1:, 0]).all() and not np.isnan(y[0, 0]).any()
    assert not np.isnan(y[:, 1]).any() and not np.isnan(to_np(outs[1])[1]).any()


def _bad_cases(cell: str):
    g = GATES[cell]
    n_state = 2 if cell == "lstm" else 1
    good = make_inputs(np.random.default_rng(0), cell, lengths=True)

    def replace(i, value):
        args = list(good)
        args[i] = value
        return args

    w = 1 + n_state
    return [
        (replace(0, np.zeros((T, N))), ValueError, r"argument 'input' expected a 3-d array"),
        (replace(1, np.zeros((N + 1, H))), ValueError, r"argument 'h0' expected shape \(3, 2\)"),
        (replace(w, np.zeros((g * H, D + 1))), ValueError, r"argument 'w_ih' expected shape"),
        (replace(w + 1, np.zeros((g * H, H + 1))), ValueError, r"argument 'w_hh' expected shape"),
        (replace(w + 2, np.zeros(g * H + 1)), ValueError, r"argument 'b_ih' expected shape"),
        (replace(w + 3, np.zeros(g * H - 1)), ValueError, r"argument 'b_hh' expected shape"),
        (
            replace(w, np.zeros((g * H, D), np.float32)),
            TypeError,
            r"argument 'w_ih' expected dtype",
        ),
        (
            replace(0, np.zeros((T, N, D), np.int64)),
            TypeError,
            r"argument 'input' expected a real float",
        ),
        (
            replace(-1, np.array([1.0, 2.0, 3.0])),
            TypeError,
            r"argument 'lengths' expected an integer",
        ),
        (replace(-1, np.array([1, 2])), ValueError, r"argument 'lengths' expected shape \(3,\)"),
        (
            replace(-1, np.array([1, T + 1, 2])),
            ValueError,
            r"argument 'lengths' expected values in \[0, 4\]",
        ),
        (
            replace(-1, np.array([1, -1, 2])),
            ValueError,
            r"argument 'lengths' expected values in \[0, 4\]",
        ),
        (replace(n_state, None), TypeError, r"argument '[hc]0' expected an array, got None"),
    ]


@pytest.mark.parametrize("case", range(13))
@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bad_input(xp, cell, case):
    args, error, match = _bad_cases(cell)[case]
    with pytest.raises(error, match=rf"^{cell}: {match}"):
        OPS[cell][0](*to_xp(xp, args))


def test_lengths_range_check_can_be_switched_off(xp, rng):
    args = make_inputs(rng, "rnn")
    args[-1] = np.array([1, T + 3, 2])
    with _config.index_checks(False):
        (y, _), _ = F.rnn(*to_xp(xp, args))  # no host sync, no error: padded as if T
    assert tuple(y.shape) == (T, N, H)


def test_bad_options(xp, rng):
    args = to_xp(xp, make_inputs(rng, "rnn"))
    with pytest.raises(ValueError, match=r"^rnn: argument 'nonlinearity' expected one of"):
        F.rnn(*args, nonlinearity="sigmoid")
    (y, h_n), cache = F.rnn(*args)
    with pytest.raises(
        ValueError, match=r"^rnn_backward: argument 'truncate' expected a positive int"
    ):
        F.rnn_backward((y, None), cache, truncate=0)
    with pytest.raises(ValueError, match=r"^lstm_backward: argument 'grad' expected a tuple of 3"):
        F.lstm_backward((y, h_n), F.lstm(*to_xp(xp, make_inputs(rng, "lstm")))[1])
    with pytest.raises(
        ValueError, match=r"^rnn_backward: argument 'd_h_n' expected shape \(3, 2\)"
    ):
        F.rnn_backward((None, y), cache)


def test_array_inputs_by_keyword(xp, rng):
    x, h0, c0, w_ih, w_hh, _, b_hh, lengths = to_xp(xp, make_inputs(rng, "lstm", lengths=True))
    by_name, _ = F.lstm(x, h0, c0, w_ih, w_hh, b_hh=b_hh, lengths=lengths)
    by_position, _ = F.lstm(x, h0, c0, w_ih, w_hh, None, b_hh, lengths)
    for a, b in zip(by_name, by_position, strict=True):
        assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_bias_gradients_are_distinct_arrays(xp, rng, cell):
    """b_ih and b_hh enter as one sum; their equal gradients must still be two arrays, so
    accumulating into one parameter's .grad in place cannot change the other's."""
    T, N, D, H = 3, 2, 3, 4
    G = 4 if cell == "lstm" else 1
    states = [xp.asarray(rng.standard_normal((N, H))) for _ in range(2 if cell == "lstm" else 1)]
    args = [
        xp.asarray(rng.standard_normal(s)) for s in ((G * H, D), (G * H, H), (G * H,), (G * H,))
    ]
    out, cache = getattr(F, cell)(xp.asarray(rng.standard_normal((T, N, D))), *states, *args)
    cotangents = (xp.ones_like(out[0]),) + (None,) * (len(out) - 1)
    grads = getattr(F, cell + "_backward")(cotangents, cache)
    db_ih, db_hh = grads[-3], grads[-2]
    assert db_ih is not db_hh
    np.testing.assert_array_equal(to_np(db_ih), to_np(db_hh))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("ldtype", ["int8", "uint8", "int16", "int32"])
def test_narrow_integer_lengths(xp, rng, cell, ldtype):
    """T beyond the lengths' dtype range must not wrap (arange(T, dtype=int8) would)."""
    t = 300 if ldtype == "uint8" else 200
    args = make_inputs(rng, cell, lengths=True, shape=(t, 3, 2, 2), w_scale=0.3)
    args[-1] = np.array([t // 2, 50, 7])
    wide, _ = getattr(F, cell)(*to_xp(xp, args))
    args[-1] = args[-1].astype(ldtype)
    narrow, _ = getattr(F, cell)(*to_xp(xp, args))
    for a, b in zip(wide, narrow, strict=True):
        assert_close(b, a, rtol=0, atol=0)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_final_state_is_not_a_view_into_the_cache(rng, cell):
    """Resetting h_n in place between chunks must not change the backward."""
    args = make_inputs(rng, cell)
    fwd, bwd = OPS[cell]
    out, cache = fwd(*args)
    cot = (np.ones_like(out[0]),) + (None,) * (len(out) - 1)
    before = bwd(cot, cache)
    for state in out[1:]:
        state[...] = 0.0
    after = bwd(cot, cache)
    for a, b in zip(before, after, strict=True):
        if a is not None:
            np.testing.assert_array_equal(a, b)
