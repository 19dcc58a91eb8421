"""backprop_xp.optim: optimizer steps, clipping and schedules.

Each is checked over several steps against a small NumPy reference written from the
algorithm torch documents for it (``torch.optim.SGD``, ``Adam``, ``AdamW``,
``clip_grad_norm_``, ``StepLR``, ``CosineAnnealingLR``), so the suite tests them without
torch; where torch is installed, the ``*_matches_torch`` tests also compare with torch itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from helpers import expected_library, to_np

from backprop_xp import backend as B
from backprop_xp import nn, optim
from backprop_xp.backend import library_name
from backprop_xp.testing import assert_close

SHAPES = [(3, 4), (5,), ()]
STEPS = 6
SKIPPED_STEP = 2  # the 0-d parameter has no gradient at this step: it must not move


def _torch() -> Any:
    return pytest.importorskip("torch")


def _values(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.standard_normal(s) for s in SHAPES]


def _params(xp: Any, values: list[np.ndarray]) -> list[nn.Parameter]:
    return [nn.Parameter(xp.asarray(v)) for v in values]


def _gradients(rng: np.random.Generator, steps: int = STEPS) -> list[list[np.ndarray | None]]:
    """``grads[step][i]`` for parameter ``i`` (None: that parameter is skipped that step)."""
    return [
        [None if step == SKIPPED_STEP and not s else rng.standard_normal(s) for s in SHAPES]
        for step in range(steps)
    ]


# -- references: torch's documented algorithms, one parameter, float64 NumPy -----------------


def ref_sgd(theta, grads, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
            maximize=False):  # fmt: skip
    """torch.optim.SGD: ``theta`` after each step (a None gradient: no step)."""
    b, out = None, []
    for g in grads:
        if g is not None:
            g = -g if maximize else g
            if weight_decay != 0:
                g = g + weight_decay * theta
            if momentum != 0:
                b = g if b is None else momentum * b + (1 - dampening) * g
                g = g + momentum * b if nesterov else b
            theta = theta - lr * g
        out.append(theta)
    return out


def ref_adam(theta, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
             amsgrad=False, maximize=False, decoupled=False):  # fmt: skip
    """torch.optim.Adam (``decoupled``: torch.optim.AdamW): ``theta`` after each step."""
    b1, b2 = betas
    t, m, v, v_max, out = 0, 0.0, 0.0, 0.0, []
    for g in grads:
        if g is not None:
            t += 1
            g = -g if maximize else g
            if decoupled:
                theta = theta - lr * weight_decay * theta
            elif weight_decay != 0:
                g = g + weight_decay * theta
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g**2
            m_hat = m / (1 - b1**t)
            if amsgrad:
                v_max = np.maximum(v_max, v)
                v_hat = v_max / (1 - b2**t)
            else:
                v_hat = v / (1 - b2**t)
            theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
        out.append(theta)
    return out


def ref_adamw(theta, grads, **kw):
    return ref_adam(theta, grads, **({"weight_decay": 1e-2} | kw), decoupled=True)


REFERENCES = {"SGD": ref_sgd, "Adam": ref_adam, "AdamW": ref_adamw}

SGD_CASES = [
    {"lr": 0.1},
    {"lr": 0.1, "momentum": 0.9},
    {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01},
    {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1},
    {"lr": 0.05, "momentum": 0.5, "maximize": True},
    {"lr": 0.05, "momentum": 0.7, "dampening": 0.2, "weight_decay": 0.1, "maximize": True},
]
ADAM_CASES = [
    {"lr": 1e-2},
    {"lr": 1e-2, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.1},
    {"lr": 3e-2, "amsgrad": True, "weight_decay": 0.05},
    {"lr": 1e-2, "maximize": True},
    {"lr": 1e-2, "maximize": True, "weight_decay": 0.1, "amsgrad": True},
]
OPTIMIZER_CASES = [("SGD", kw) for kw in SGD_CASES] + [
    (cls, kw) for cls in ("Adam", "AdamW") for kw in ADAM_CASES
]


def _case_id(v: Any) -> str:
    if isinstance(v, dict):
        return ",".join(f"{k}={x}" for k, x in v.items())
    return v if isinstance(v, str) else {True: "refused", False: "accepted"}.get(v, str(v))


@pytest.mark.parametrize(("cls", "kw"), OPTIMIZER_CASES, ids=_case_id)
def test_optimizer_matches_reference(xp, rng, cls, kw):
    values, grads = _values(rng), _gradients(rng)
    ours = _params(xp, values)
    opt = getattr(optim, cls)(ours, **kw)
    expected = [REFERENCES[cls](v, [g[i] for g in grads], **kw) for i, v in enumerate(values)]
    for step, step_grads in enumerate(grads):
        for p, g in zip(ours, step_grads, strict=True):
            p.grad = None if g is None else xp.asarray(g)
        opt.step()
        for i, p in enumerate(ours):
            assert library_name(p.data) == library_name(xp.asarray(np.zeros(1)))
            np.testing.assert_allclose(
                to_np(p.data), expected[i][step], rtol=1e-10, atol=1e-13,
                err_msg=f"step {step}, parameter {i}",
            )  # fmt: skip
    # the skipped step left the 0-d parameter where the step before put it
    assert expected[2][SKIPPED_STEP] is expected[2][SKIPPED_STEP - 1]


@pytest.mark.parametrize(("cls", "kw"), OPTIMIZER_CASES, ids=_case_id)
def test_optimizer_matches_torch(xp, rng, cls, kw):
    torch = _torch()
    values, grads = _values(rng), _gradients(rng)
    ours = _params(xp, values)
    theirs = [torch.tensor(v, requires_grad=True) for v in values]
    extra = {} if cls == "SGD" else {"foreach": False}
    opt = getattr(optim, cls)(ours, **kw)
    t_opt = getattr(torch.optim, cls)(theirs, **kw, **extra)
    for step, step_grads in enumerate(grads):
        for p, tp, g in zip(ours, theirs, step_grads, strict=True):
            p.grad = None if g is None else xp.asarray(g)
            tp.grad = None if g is None else torch.tensor(g)
        opt.step()
        t_opt.step()
        for p, tp in zip(ours, theirs, strict=True):
            np.testing.assert_allclose(
                to_np(p.data), tp.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=f"step {step}"
            )


def test_optimizer_takes_a_module_and_zero_grads():
    model = nn.Linear(3, 2, rng=0)
    opt = optim.SGD(model, lr=0.1)
    assert len(opt.params) == 2
    model.weight.grad = np.ones((2, 3), dtype=np.float32)
    before = model.weight.data
    opt.step()
    np.testing.assert_allclose(model.weight.data, before - 0.1)
    opt.zero_grad()
    assert model.weight.grad is None
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])
    with pytest.raises(TypeError, match="not a Parameter"):
        optim.Adam([np.zeros(3)])
    with pytest.raises(ValueError, match="learning rate"):
        optim.SGD(model, lr=-1)
    with pytest.raises(ValueError, match="nesterov"):
        optim.SGD(model, lr=0.1, nesterov=True)


NAN = float("nan")

# (optimizer, arguments, refused): what torch's constructors refuse, comparison for
# comparison (test_optimizer_argument_table_is_torchs checks the table against torch)
ARGUMENT_CASES = [
    ("SGD", {"lr": -0.1}, True),
    ("SGD", {"lr": NAN}, False),  # torch lets NaN through its `< 0` checks
    ("SGD", {"momentum": -0.5}, True),
    ("SGD", {"momentum": NAN}, False),
    ("SGD", {"weight_decay": -1e-4}, True),
    ("SGD", {"dampening": -0.5}, False),  # not checked by torch
    ("SGD", {"dampening": 2.0}, False),
    ("SGD", {"momentum": 0.9, "dampening": 0.1, "nesterov": True}, True),
    ("SGD", {"momentum": 0.0, "nesterov": True}, True),
    *[
        (cls, kw, refused)
        for cls in ("Adam", "AdamW")
        for kw, refused in (
            ({"lr": -1e-3}, True),
            ({"lr": NAN}, True),
            ({"eps": -1e-8}, True),
            ({"eps": NAN}, True),
            ({"eps": 0.0}, False),
            ({"weight_decay": -0.01}, True),
            ({"weight_decay": NAN}, True),
            ({"betas": (1.0, 0.999)}, True),
            ({"betas": (0.9, -0.1)}, True),
            ({"betas": (0.0, 0.0)}, False),
        )
    ],
]


@pytest.mark.parametrize(("cls", "kw", "refused"), ARGUMENT_CASES, ids=_case_id)
def test_optimizer_arguments_are_checked_like_torch(cls, kw, refused):
    make = lambda: getattr(optim, cls)([nn.Parameter(np.zeros(1))], **kw)  # noqa: E731
    if not refused:
        make()
        return
    arg = next(iter(kw)) if "nesterov" not in kw else "nesterov"
    with pytest.raises(ValueError, match=rf"^{cls}: ") as info:
        make()
    message = str(info.value)
    assert arg.split("[")[0] in message, message
    if arg != "nesterov":  # the message says what was expected and what came
        assert "expected" in message and "got" in message, message


@pytest.mark.parametrize(("cls", "kw", "refused"), ARGUMENT_CASES, ids=_case_id)
def test_optimizer_argument_table_is_torchs(cls, kw, refused):
    torch = _torch()
    try:
        getattr(torch.optim, cls)([torch.zeros(1, requires_grad=True)], **kw)
    except ValueError:
        assert refused
    else:
        assert not refused


@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_step_refuses_a_gradient_that_does_not_match_its_parameter(xp, cls):
    ps = [nn.Parameter(xp.asarray(np.zeros((3, 4)))), nn.Parameter(xp.asarray(np.zeros(4)))]
    opt = getattr(optim, cls)(ps, lr=0.1)
    ps[0].grad = xp.asarray(np.ones((3, 4)))
    other = B.namespace(
        "numpy" if expected_library(xp) == "array_api_strict" else "array_api_strict"
    )
    bad = {
        "shape": (xp.asarray(np.ones((3, 4))), ValueError, r"parameter 1 has a gradient of shape \(3, 4\) but its data has shape \(4,\)"),
        "dtype": (xp.asarray(np.ones(4), dtype=xp.float32), TypeError, "parameter 1 has a gradient of dtype .*float32.* but its data has dtype .*float64"),
        "library": (other.asarray(np.ones(4)), TypeError, r"arrays from different libraries: 'parameter 1 \(data\)' is a .* array but 'parameter 1 \(grad\)' is a"),
        "scalar": (1.0, TypeError, "parameter 1 has a .grad of type float, not an array"),
    }  # fmt: skip
    for grad, error, message in bad.values():
        ps[1].grad = grad
        with pytest.raises(error, match=f"^{cls}.step: {message}"):
            opt.step()
        # checked before any update: parameter 0 did not move
        np.testing.assert_array_equal(to_np(ps[0].data), np.zeros((3, 4)))


def test_torch_refuses_such_gradients_too():
    torch = _torch()
    t = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError):
        t.grad = torch.ones(3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        t.grad = torch.ones(4, dtype=torch.float32)


# -- clip_grad_norm --------------------------------------------------------------------------


def ref_clip_grad_norm(grads, max_norm, norm_type):
    """torch.nn.utils.clip_grad_norm_: the total norm (the norm of the per-gradient
    ``vector_norm``s) and the clipped gradients; None gradients are skipped."""
    p = float(norm_type)
    present = [g for g in grads if g is not None]
    with np.errstate(divide="ignore", invalid="ignore"):  # |0|^p for p < 0 is inf, as torch's
        norms = np.array([np.linalg.norm(g.ravel(), ord=p) for g in present])
        total = np.linalg.norm(norms, ord=p)
    coef = min(max_norm / (total + 1e-6), 1.0)
    return total, [None if g is None else g * coef for g in grads]


NORM_TYPES = [2.0, 1.0, 3.0, 0.5, 0.25, -1.0, -0.5, 0, math.inf, -math.inf, "inf", "-inf", "2"]


def _clip_grads(rng: np.random.Generator) -> list[np.ndarray | None]:
    grads: list[np.ndarray | None] = [rng.standard_normal(s) for s in SHAPES]
    grads[0][0] = 0.0  # exact zeros: the count of order 0, the minimum of order -inf
    grads[1] = None  # parameters without a gradient are skipped
    return grads


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_reference(xp, rng, norm_type, max_norm):
    grads = _clip_grads(rng)
    ours = _params(xp, _values(rng))
    for p, g in zip(ours, grads, strict=True):
        p.grad = None if g is None else xp.asarray(g)
    total = optim.clip_grad_norm(ours, max_norm, norm_type)
    ref_total, ref_grads = ref_clip_grad_norm(grads, max_norm, norm_type)
    # the norm stays an array on the backend: no host synchronization
    assert library_name(total) == library_name(ours[0].grad)
    np.testing.assert_allclose(float(total), ref_total, rtol=1e-12)
    for p, g in zip(ours, ref_grads, strict=True):
        assert (p.grad is None) == (g is None)
        if g is not None:
            np.testing.assert_allclose(to_np(p.grad), g, rtol=1e-12)
    if max_norm == 0.5 and norm_type in (2.0, 1.0, math.inf):
        assert ref_total > max_norm  # these cases clip
        assert all(
            g is None or not np.array_equal(g, h) for g, h in zip(ref_grads, grads, strict=True)
        )


@pytest.mark.parametrize("norm_type", NORM_TYPES)
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(xp, rng, norm_type, max_norm):
    torch = _torch()
    grads = _clip_grads(rng)
    ours = _params(xp, _values(rng))
    theirs = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in SHAPES]
    for p, tp, g in zip(ours, theirs, grads, strict=True):
        p.grad = None if g is None else xp.asarray(g)
        tp.grad = None if g is None else torch.tensor(g)
    total = optim.clip_grad_norm(ours, max_norm, norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type, foreach=False)
    np.testing.assert_allclose(float(total), float(t_total), rtol=1e-12)
    for p, tp in zip(ours, theirs, strict=True):
        if p.grad is not None:
            np.testing.assert_allclose(to_np(p.grad), tp.grad.numpy(), rtol=1e-12)


ONE_GRAD = np.array([[0.0, 3.0], [-4.0, 0.5]])


@pytest.mark.parametrize("norm_type", [2.0, 0, -1.0, -math.inf, "inf"])
def test_clip_grad_norm_of_one_parameter(xp, norm_type):
    p = nn.Parameter(xp.asarray(np.zeros((2, 2))))
    p.grad = xp.asarray(ONE_GRAD)
    total = optim.clip_grad_norm(p, 1.0, norm_type)
    ref_total, (ref_grad,) = ref_clip_grad_norm([ONE_GRAD], 1.0, norm_type)
    np.testing.assert_allclose(float(total), ref_total, rtol=1e-12)
    np.testing.assert_allclose(to_np(p.grad), ref_grad, rtol=1e-12)
    # by hand; order 0 counts the gradients with a nonzero entry, and a zero entry makes
    # the norms of order -1 and -inf 0
    hand = {2.0: math.sqrt(9 + 16 + 0.25), 0: 1.0, -1.0: 0.0, -math.inf: 0.0, "inf": 4.0}
    assert float(total) == pytest.approx(hand[norm_type], rel=1e-12)


@pytest.mark.parametrize("norm_type", [2.0, 0, -1.0, -math.inf, "inf"])
def test_clip_grad_norm_of_one_parameter_matches_torch(xp, norm_type):
    torch = _torch()
    p = nn.Parameter(xp.asarray(np.zeros((2, 2))))
    tp = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    p.grad, tp.grad = xp.asarray(ONE_GRAD), torch.tensor(ONE_GRAD)
    total = optim.clip_grad_norm(p, 1.0, norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(tp, 1.0, norm_type, foreach=False)
    np.testing.assert_allclose(float(total), float(t_total), rtol=1e-12)
    np.testing.assert_allclose(to_np(p.grad), tp.grad.numpy(), rtol=1e-12)


def test_clip_grad_norm_bad_norm_type_and_empty_gradients():
    p = nn.Parameter(np.zeros(0))
    p.grad = np.zeros(0)
    with pytest.raises(ValueError, match="'norm_type' expected a number or 'inf', got 'max'"):
        optim.clip_grad_norm(p, 1.0, "max")
    for norm_type in (math.inf, -math.inf, -1.0):  # max, min, a negative order: no identity
        with pytest.raises(ValueError, match="empty"):
            optim.clip_grad_norm(p, 1.0, norm_type)
    for norm_type in (2.0, 0, 0.5):  # sums over nothing: 0, as torch
        assert float(optim.clip_grad_norm(p, 1.0, norm_type)) == 0.0


def test_torch_refuses_the_inf_norm_of_empty_gradients_too():
    torch = _torch()
    tp = torch.zeros(0, requires_grad=True)
    tp.grad = torch.zeros(0)
    with pytest.raises(RuntimeError, match="empty"):
        torch.nn.utils.clip_grad_norm_(tp, 1.0, math.inf, foreach=False)
    assert float(torch.nn.utils.clip_grad_norm_(tp, 1.0, 2.0, foreach=False)) == 0.0


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_clip_grad_norm_nonfinite(bad, norm_type):
    p = nn.Parameter(np.zeros(2))
    p.grad = np.array([bad, 1.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm([p], 1.0, norm_type, error_if_nonfinite=True)
    np.testing.assert_array_equal(p.grad, [bad, 1.0])  # refused before any scaling
    total = optim.clip_grad_norm([p], 1.0, norm_type)  # without the flag: the norm comes back
    assert not math.isfinite(float(total))
    q = nn.Parameter(np.zeros(2))
    q.grad = np.array([3.0, 4.0])
    assert float(optim.clip_grad_norm([q], 1.0, error_if_nonfinite=True)) == 5.0
    assert optim.clip_grad_norm([nn.Parameter(np.zeros(2))], 1.0) == 0.0


NAN_GRADS = [np.array([0.0, np.nan, 1.0]), np.array([2.0, 3.0])]


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("norm_type", [-1.0, -2.0, 2.0, math.inf, -math.inf])
def test_clip_grad_norm_nan_propagates(norm_type):
    """A zero entry makes a negative-order norm 0, but a NaN beside it still wins."""
    p = [nn.Parameter(np.zeros(g.shape)) for g in NAN_GRADS]
    for q, g in zip(p, NAN_GRADS, strict=True):
        q.grad = g.copy()
    total = optim.clip_grad_norm(p, 1.0, norm_type)
    ref_total, _ = ref_clip_grad_norm(NAN_GRADS, 1.0, norm_type)
    assert np.isnan(ref_total)
    np.testing.assert_array_equal(np.asarray(total), ref_total)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("norm_type", [-1.0, -2.0, 2.0, math.inf, -math.inf])
def test_clip_grad_norm_nan_propagates_as_torch(norm_type):
    torch = _torch()
    p = [nn.Parameter(np.zeros(g.shape)) for g in NAN_GRADS]
    t = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in NAN_GRADS]
    for q, tq, g in zip(p, t, NAN_GRADS, strict=True):
        q.grad, tq.grad = g.copy(), torch.tensor(g)
    total = optim.clip_grad_norm(p, 1.0, norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(t, 1.0, norm_type, foreach=False)
    np.testing.assert_array_equal(np.asarray(total), t_total.numpy())


def test_sgd_subclass_errors_name_the_subclass():
    class MySGD(optim.SGD):
        pass

    with pytest.raises(ValueError, match="MySGD: argument 'momentum'"):
        MySGD([nn.Parameter(np.zeros(2))], lr=0.1, momentum=-1.0)


# -- learning-rate schedules -------------------------------------------------------------------

SCHEDULES = {
    "step": ("StepLR", {"step_size": 3, "gamma": 0.5}),
    "cosine": ("CosineAnnealingLR", {"T_max": 7}),
    "cosine_eta_min": ("CosineAnnealingLR", {"T_max": 5, "eta_min": 0.01}),
    "cosine_T1": ("CosineAnnealingLR", {"T_max": 1, "eta_min": 0.02}),
}


def ref_step(cls: str, kw: dict[str, Any], lr: float, base_lr: float, epoch: int) -> float:
    """One step of torch's chainable form: the lr for ``epoch`` from the current ``lr``."""
    if cls == "StepLR":
        return lr * kw["gamma"] if epoch % kw["step_size"] == 0 else lr
    T, eta_min = kw["T_max"], kw.get("eta_min", 0.0)
    if (epoch - 1 - T) % (2 * T) == 0:  # torch's branch where the ratio below is 0/0
        return lr + (base_lr - eta_min) * (1 - math.cos(math.pi / T)) / 2
    ratio = (1 + math.cos(math.pi * epoch / T)) / (1 + math.cos(math.pi * (epoch - 1) / T))
    return eta_min + (lr - eta_min) * ratio


def ref_closed_form(cls: str, kw: dict[str, Any], base_lr: float, epoch: int) -> float:
    """A schedule alone on an optimizer, by torch's documented closed forms."""
    if cls == "StepLR":
        return base_lr * kw["gamma"] ** (epoch // kw["step_size"])
    T, eta_min = kw["T_max"], kw.get("eta_min", 0.0)
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * epoch / T)) / 2


def ref_schedules(names: list[str], lr: float, epochs: int) -> list[tuple[float, list[float]]]:
    """Per epoch: the optimizer's lr and each schedule's ``get_last_lr()[0]``, for the
    schedules ``names`` attached in that order (each steps after the ones before it)."""
    base, last, out = lr, [lr] * len(names), []
    for epoch in range(epochs):
        out.append((lr, list(last)))
        for i, name in enumerate(names):
            lr = last[i] = ref_step(*SCHEDULES[name], lr, base, epoch + 1)
    return out


def _schedule_run(names: list[str], lr: float, lr_before: float | None, epochs: int):
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=lr)
    if lr_before is not None:
        opt.lr = lr_before
    scheds = [getattr(optim, SCHEDULES[n][0])(opt, **SCHEDULES[n][1]) for n in names]
    assert opt.initial_lr == (lr if lr_before is None else lr_before)
    out = []
    for _ in range(epochs):
        lasts = [s.get_last_lr() for s in scheds]
        assert all(isinstance(last, list) and len(last) == 1 for last in lasts)
        out.append((opt.lr, [last[0] for last in lasts]))
        opt.step()
        for s in scheds:
            s.step()
    assert scheds[-1].get_last_lr() == [opt.lr]
    return out


def _compare_schedules(names: list[str], lr: float = 0.2, lr_before: float | None = None,
                       epochs: int = 25) -> None:  # fmt: skip
    """T_max < epochs, so the cosine's restart branch runs."""
    got = _schedule_run(names, lr, lr_before, epochs)
    start = lr if lr_before is None else lr_before
    expected = ref_schedules(names, start, epochs)
    for epoch, ((lr_got, lasts), (lr_ref, ref_lasts)) in enumerate(zip(got, expected, strict=True)):
        assert lr_got == pytest.approx(lr_ref, rel=1e-12, abs=1e-15), epoch
        assert lasts == pytest.approx(ref_lasts, rel=1e-12, abs=1e-15), epoch
        if len(names) == 1:
            closed = ref_closed_form(*SCHEDULES[names[0]], start, epoch)
            assert lr_got == pytest.approx(closed, rel=1e-10, abs=1e-15), epoch


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_lr_schedules_match_reference(name):
    _compare_schedules([name])


CHAINS = [["step", "cosine"], ["cosine", "step"], ["cosine_eta_min", "step", "cosine"]]


@pytest.mark.parametrize("names", CHAINS)
def test_lr_schedules_compose_as_chained_references(names):
    _compare_schedules(names)


@pytest.mark.parametrize("names", [["step"], ["cosine_eta_min"], ["step", "cosine"]])
def test_lr_changed_before_the_first_schedule_is_its_start(names):
    """``initial_lr`` comes from ``opt.lr`` when the first schedule attaches, not from the
    optimizer's constructor."""
    _compare_schedules(names, lr=0.2, lr_before=0.05)


def _torch_schedule_run(names: list[str], lr: float, lr_before: float | None, epochs: int):
    torch = _torch()
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    if lr_before is not None:
        t_opt.param_groups[0]["lr"] = lr_before
    t_scheds = [
        getattr(torch.optim.lr_scheduler, SCHEDULES[n][0])(t_opt, **SCHEDULES[n][1]) for n in names
    ]
    out = []
    for _ in range(epochs):
        out.append((t_opt.param_groups[0]["lr"], [s.get_last_lr()[0] for s in t_scheds]))
        t_opt.step()
        for s in t_scheds:
            s.step()
    return out


@pytest.mark.parametrize(
    ("names", "lr_before"),
    [([n], None) for n in sorted(SCHEDULES)]
    + [(names, None) for names in CHAINS]
    + [(["step", "cosine"], 0.05)],
)
def test_lr_schedules_match_torch(names, lr_before):
    theirs = _torch_schedule_run(names, 0.2, lr_before, 25)
    ours = _schedule_run(names, 0.2, lr_before, 25)
    for epoch, ((lr, lasts), (t_lr, t_lasts)) in enumerate(zip(ours, theirs, strict=True)):
        assert lr == pytest.approx(t_lr, rel=1e-12, abs=1e-15), epoch
        assert lasts == pytest.approx(t_lasts, rel=1e-12, abs=1e-15), epoch


def test_lr_changed_between_steps_carries_on():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.2)
    sched = optim.StepLR(opt, 4, gamma=0.5)
    assert sched.base_lr == 0.2 and opt.initial_lr == 0.2
    lr = 0.2
    for epoch in range(12):
        if epoch == 6:
            opt.lr = lr = 0.3
        opt.step()
        sched.step()
        lr = ref_step("StepLR", {"step_size": 4, "gamma": 0.5}, lr, 0.2, epoch + 1)
        assert opt.lr == pytest.approx(lr, rel=1e-12), epoch
    assert opt.lr == pytest.approx(0.3 * 0.5 * 0.5, rel=1e-12)  # 0.3 from epoch 6, halved at 8, 12
    with pytest.raises(TypeError, match="StepLR: expected an Optimizer"):
        optim.StepLR(object(), 3)


def test_lr_changed_between_steps_carries_on_like_torch():
    torch = _torch()
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.2)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    sched = optim.StepLR(opt, 4, gamma=0.5)
    t_sched = torch.optim.lr_scheduler.StepLR(t_opt, 4, 0.5)
    for epoch in range(12):
        if epoch == 6:
            opt.lr = t_opt.param_groups[0]["lr"] = 0.3
        opt.step()
        t_opt.step()
        sched.step()
        t_sched.step()
        assert opt.lr == pytest.approx(t_opt.param_groups[0]["lr"], rel=1e-12), epoch
    with pytest.raises(TypeError, match="StepLR: expected an Optimizer"):
        optim.StepLR(t_opt, 3)


# -- state dicts: resume exactly, and move optimizer state between torch and backprop_xp ----

STATEFUL = [
    ("SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}),
    ("Adam", {"lr": 0.01, "amsgrad": True}),
    ("AdamW", {"lr": 0.01, "betas": (0.8, 0.99)}),
]


def _steps(opts_and_params, rng, n):
    """``n`` steps with the same random gradients for every (optimizer, params) pair."""
    for _ in range(n):
        grads = [rng.standard_normal(s) for s in SHAPES]
        for opt, params, to_array in opts_and_params:
            for p, g in zip(params, grads, strict=True):
                p.grad = to_array(g)
            opt.step()


@pytest.mark.parametrize(("cls", "kw"), STATEFUL)
def test_state_dict_resumes_exactly(xp, rng, cls, kw):
    ours = _params(xp, _values(rng))
    opt = getattr(optim, cls)(ours, **kw)
    optim.StepLR(opt, 2, gamma=0.5)
    _steps([(opt, ours, xp.asarray)], rng, 3)
    # a second run from the saved state: copies of the parameters, a fresh optimizer
    copies = [nn.Parameter(xp.asarray(p.data, copy=True)) for p in ours]
    resumed = getattr(optim, cls)(copies, lr=123.0)
    resumed.load_state_dict(opt.state_dict())
    assert resumed.lr == opt.lr and resumed.initial_lr == opt.initial_lr
    seed = int(rng.integers(2**31))
    _steps([(opt, ours, xp.asarray)], np.random.default_rng(seed), 3)
    _steps([(resumed, copies, xp.asarray)], np.random.default_rng(seed), 3)
    for p, q in zip(ours, copies, strict=True):
        assert_close(q.data, p.data, rtol=0, atol=0)


@pytest.mark.parametrize(("cls", "kw"), STATEFUL)
def test_state_dict_moves_between_torch_and_ours(rng, cls, kw):
    torch = _torch()
    values = _values(rng)
    ours = _params(B.namespace("numpy"), values)
    theirs = [torch.tensor(v, requires_grad=True) for v in values]
    opt = getattr(optim, cls)(ours, **kw)
    t_opt = getattr(torch.optim, cls)(theirs, **kw, foreach=False)
    _steps([(opt, ours, np.asarray), (t_opt, theirs, torch.tensor)], rng, 3)
    # torch's state into a fresh optimizer of ours, ours into a fresh torch one
    from_torch = getattr(optim, cls)([nn.Parameter(p.detach().numpy().copy()) for p in theirs])
    from_torch.load_state_dict(t_opt.state_dict())
    to_torch_params = [torch.tensor(p.data, requires_grad=True) for p in ours]
    to_torch = getattr(torch.optim, cls)(to_torch_params, foreach=False)
    sd = opt.state_dict()
    sd["state"] = {
        i: {k: v if k == "step" or v is None else torch.tensor(v) for k, v in s.items()}
        for i, s in sd["state"].items()
    }
    to_torch.load_state_dict(sd)
    seed = int(rng.integers(2**31))
    _steps([(from_torch, from_torch.params, np.asarray)], np.random.default_rng(seed), 2)
    _steps([(t_opt, theirs, torch.tensor)], np.random.default_rng(seed), 2)
    _steps([(to_torch, to_torch_params, torch.tensor)], np.random.default_rng(seed), 2)
    _steps([(opt, ours, np.asarray)], np.random.default_rng(seed), 2)
    for p, tp, q, tq in zip(from_torch.params, theirs, ours, to_torch_params, strict=True):
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(tq.detach().numpy(), q.data, rtol=1e-12, atol=1e-14)


def test_load_state_dict_checks_before_changing_anything():
    params = [nn.Parameter(np.zeros((2, 3))), nn.Parameter(np.zeros(3))]
    opt = optim.Adam(params, lr=0.1)
    for p in params:
        p.grad = np.ones(p.shape)
    opt.step()
    good = opt.state_dict()
    fresh = optim.Adam(params, lr=0.5)
    with pytest.raises(
        ValueError, match=r"Adam\.load_state_dict: .* for 2 parameters, got a group of 1"
    ):
        fresh.load_state_dict({"state": {}, "param_groups": [{"lr": 0.1, "params": [0]}]})
    bad = {"state": {0: dict(good["state"][0]), 1: {"step": 1, "exp_avg": np.zeros(4)}},
           "param_groups": good["param_groups"]}  # fmt: skip
    with pytest.raises(ValueError, match=r"state 'exp_avg' of parameter 1 expected shape \(3,\)"):
        fresh.load_state_dict(bad)
    assert fresh.lr == 0.5 and fresh.state == {}


def test_scheduler_state_dict_round_trip():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.2)
    sched = optim.CosineAnnealingLR(opt, 5)
    for _ in range(3):
        sched.step()
    saved_lr, saved = opt.lr, sched.state_dict()
    opt2 = optim.SGD([nn.Parameter(np.zeros(1))], lr=opt.lr)
    opt2.initial_lr = opt.initial_lr
    sched2 = optim.CosineAnnealingLR(opt2, 99)
    sched2.load_state_dict(saved)
    assert "optimizer" not in saved and sched2.T_max == 5 and opt2.lr == saved_lr
    sched.step()
    sched2.step()
    assert opt2.lr == opt.lr


@pytest.mark.parametrize(
    ("cls", "kw"), [("StepLR", {"step_size": 2, "gamma": 0.5}), ("CosineAnnealingLR", {"T_max": 3})]
)
def test_scheduler_state_dict_moves_between_torch_and_ours(cls, kw):
    """Resume torch's schedule here and ours in torch: the next learning rates agree."""
    torch = _torch()

    def ours(o):
        return getattr(optim, cls)(o, **kw)

    def theirs(o):
        return getattr(torch.optim.lr_scheduler, cls)(o, **kw)

    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    t_sched = theirs(t_opt)
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.1)
    sched = ours(opt)
    for _ in range(3):
        t_opt.step()
        t_sched.step()
        sched.step()
    mine = optim.SGD([nn.Parameter(np.zeros(1))], lr=7.0)
    mine_sched = ours(mine)
    mine.load_state_dict(t_opt.state_dict())
    mine_sched.load_state_dict(t_sched.state_dict())
    t_mine = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=7.0)
    t_mine_sched = theirs(t_mine)
    t_mine.load_state_dict(opt.state_dict())
    t_mine_sched.load_state_dict(sched.state_dict())
    for _ in range(5):
        for s in (t_sched, mine_sched, t_mine_sched, sched):
            s.step()
        expected = t_opt.param_groups[0]["lr"]
        assert mine.lr == pytest.approx(expected, rel=1e-12)
        assert t_mine.param_groups[0]["lr"] == pytest.approx(expected, rel=1e-12)


def test_torch_adam_with_decoupled_weight_decay_loads_into_adamw_only():
    torch = _torch()
    params = [nn.Parameter(np.zeros(3))]
    t_adam = torch.optim.Adam([torch.zeros(3, requires_grad=True)], decoupled_weight_decay=True)
    with pytest.raises(ValueError, match="decoupled_weight_decay=True, this optimizer False"):
        optim.Adam(params).load_state_dict(t_adam.state_dict())
    optim.AdamW(params).load_state_dict(t_adam.state_dict())  # the same algorithm


def test_optimizer_load_state_dict_refuses_mismatches_and_changes_nothing():
    params = [nn.Parameter(np.zeros(3))]
    adamw = optim.AdamW(params).state_dict()
    assert adamw["param_groups"][0]["decoupled_weight_decay"] is True
    with pytest.raises(ValueError, match="decoupled_weight_decay=True, this optimizer False"):
        optim.Adam(params).load_state_dict(adamw)
    optim.AdamW(params).load_state_dict(adamw)
    opt = optim.Adam(params, lr=0.5)
    sd = {
        "state": {"0": {"step": 2, "exp_avg": np.ones(3), "exp_avg_sq": np.ones(3)}},
        "param_groups": [{"lr": 0.1, "betas": None, "params": [0]}],
    }
    with pytest.raises(TypeError, match="'betas' expected two numbers, got None"):
        opt.load_state_dict(sd)
    assert opt.lr == 0.5 and opt.state == {}
    sd["param_groups"][0]["betas"] = [0.8, 0.9]
    opt.load_state_dict(sd)  # string state keys, as after JSON
    assert opt.betas == (0.8, 0.9) and opt.state[id(params[0])]["step"] == 2
    sd["state"]["0"]["momentum_buffer"] = np.ones(3)
    with pytest.raises(ValueError, match=r"expected keys among .* got \['momentum_buffer'\]"):
        optim.Adam(params).load_state_dict(sd)
    sd["state"]["0"] = {"step": "x"}
    with pytest.raises(ValueError, match="state 'step' of parameter 0 expected a number"):
        optim.Adam(params).load_state_dict(sd)
