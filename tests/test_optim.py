"""backprop_xp.optim: optimizer steps, clipping and schedules against torch.optim."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from helpers import to_np

from backprop_xp import backend as B
from backprop_xp import nn, optim
from backprop_xp.backend import library_name
from backprop_xp.testing import assert_close

torch = pytest.importorskip("torch")

SHAPES = [(3, 4), (5,), ()]


def _params(xp: Any, rng: np.random.Generator) -> tuple[list[nn.Parameter], list[Any]]:
    values = [rng.standard_normal(s) for s in SHAPES]
    ours = [nn.Parameter(xp.asarray(v)) for v in values]
    theirs = [torch.tensor(v, requires_grad=True) for v in values]
    return ours, theirs


def _run(xp: Any, rng: np.random.Generator, make_ours: Any, make_theirs: Any, steps: int = 6):
    ours, theirs = _params(xp, rng)
    opt, t_opt = make_ours(ours), make_theirs(theirs)
    for step in range(steps):
        grads = [rng.standard_normal(s) for s in SHAPES]
        for p, tp, g in zip(ours, theirs, grads, strict=True):
            p.grad = None if step == 2 and g.ndim == 0 else xp.asarray(g)  # a skipped param
            tp.grad = None if p.grad is None else torch.tensor(g)
        opt.step()
        t_opt.step()
        for p, tp in zip(ours, theirs, strict=True):
            assert library_name(p.data) == library_name(xp.asarray(np.zeros(1)))
            np.testing.assert_allclose(
                to_np(p.data), tp.detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=f"step {step}"
            )


@pytest.mark.parametrize(
    "kw",
    [
        {"lr": 0.1},
        {"lr": 0.1, "momentum": 0.9},
        {"lr": 0.05, "momentum": 0.9, "dampening": 0.3, "weight_decay": 0.01},
        {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.1},
        {"lr": 0.05, "momentum": 0.5, "maximize": True},
    ],
)
def test_sgd_matches_torch(xp, rng, kw):
    _run(xp, rng, lambda ps: optim.SGD(ps, **kw), lambda ps: torch.optim.SGD(ps, **kw))


@pytest.mark.parametrize("cls", ["Adam", "AdamW"])
@pytest.mark.parametrize(
    "kw",
    [
        {"lr": 1e-2},
        {"lr": 1e-2, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.1},
        {"lr": 3e-2, "amsgrad": True, "weight_decay": 0.05},
        {"lr": 1e-2, "maximize": True},
    ],
)
def test_adam_family_matches_torch(xp, rng, cls, kw):
    _run(
        xp,
        rng,
        lambda ps: getattr(optim, cls)(ps, **kw),
        lambda ps: getattr(torch.optim, cls)(ps, **kw, foreach=False),
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


@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        ("SGD", {"lr": -0.1}),
        ("SGD", {"lr": NAN}),  # torch lets NaN through its `< 0` checks
        ("SGD", {"momentum": -0.5}),
        ("SGD", {"momentum": NAN}),
        ("SGD", {"weight_decay": -1e-4}),
        ("SGD", {"dampening": -0.5}),  # not checked by torch
        ("SGD", {"dampening": 2.0}),
        ("SGD", {"momentum": 0.9, "dampening": 0.1, "nesterov": True}),
        ("SGD", {"momentum": 0.0, "nesterov": True}),
        *[
            (cls, kw)
            for cls in ("Adam", "AdamW")
            for kw in (
                {"lr": -1e-3},
                {"lr": NAN},
                {"eps": -1e-8},
                {"eps": NAN},
                {"eps": 0.0},
                {"weight_decay": -0.01},
                {"weight_decay": NAN},
                {"betas": (1.0, 0.999)},
                {"betas": (0.9, -0.1)},
                {"betas": (0.0, 0.0)},
            )
        ],
    ],
    ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={x}" for k, x in v.items()),
)
def test_optimizer_arguments_are_checked_like_torch(cls, kw):
    try:
        getattr(torch.optim, cls)([torch.zeros(1, requires_grad=True)], **kw)
    except ValueError:
        torch_refuses = True
    else:
        torch_refuses = False
    make = lambda: getattr(optim, cls)([nn.Parameter(np.zeros(1))], **kw)  # noqa: E731
    if not torch_refuses:
        make()
        return
    arg = next(iter(kw)) if "nesterov" not in kw else "nesterov"
    with pytest.raises(ValueError, match=rf"^{cls}: ") as info:
        make()
    message = str(info.value)
    assert arg.split("[")[0] in message, message
    if arg != "nesterov":  # the message says what was expected and what came
        assert "expected" in message and "got" in message, message


@pytest.mark.parametrize("cls", ["SGD", "Adam", "AdamW"])
def test_step_refuses_a_gradient_that_does_not_match_its_parameter(xp, cls):
    ps = [nn.Parameter(xp.asarray(np.zeros((3, 4)))), nn.Parameter(xp.asarray(np.zeros(4)))]
    opt = getattr(optim, cls)(ps, lr=0.1)
    ps[0].grad = xp.asarray(np.ones((3, 4)))
    bad = {
        "shape": (xp.asarray(np.ones((3, 4))), ValueError, r"parameter 1 has a gradient of shape \(3, 4\) but its data has shape \(4,\)"),
        "dtype": (xp.asarray(np.ones(4), dtype=xp.float32), TypeError, "parameter 1 has a gradient of dtype .*float32.* but its data has dtype .*float64"),
        "library": (torch.ones(4, dtype=torch.float64) if xp.backend_name != "torch" else np.ones(4), TypeError, r"arrays from different libraries: 'parameter 1 \(data\)' is a .* array but 'parameter 1 \(grad\)' is a"),
        "scalar": (1.0, TypeError, "parameter 1 has a .grad of type float, not an array"),
    }  # fmt: skip
    for grad, error, message in bad.values():
        ps[1].grad = grad
        with pytest.raises(error, match=f"^{cls}.step: {message}"):
            opt.step()
        # checked before any update: parameter 0 did not move
        np.testing.assert_array_equal(to_np(ps[0].data), np.zeros((3, 4)))
    # torch refuses such gradients too
    t = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError):
        t.grad = torch.ones(3, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError):
        t.grad = torch.ones(4, dtype=torch.float32)


@pytest.mark.parametrize(
    "norm_type", [2.0, 1.0, 3.0, 0.5, -1.0, 0, math.inf, -math.inf, "inf", "-inf", "2"]
)
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(xp, rng, norm_type, max_norm):
    ours, theirs = _params(xp, rng)
    for i, (p, tp) in enumerate(zip(ours, theirs, strict=True)):
        g = rng.standard_normal(p.shape)
        if i == 0:
            g[0] = 0.0  # exact zeros: the count of order 0, the minimum of order -inf
        p.grad, tp.grad = xp.asarray(g), torch.tensor(g)
    ours[1].grad = None  # parameters without a gradient are skipped
    theirs[1].grad = None
    total = optim.clip_grad_norm(ours, max_norm, norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type, foreach=False)
    # the norm stays an array on the backend: no host synchronization
    assert library_name(total) == library_name(ours[0].grad)
    np.testing.assert_allclose(float(total), float(t_total), rtol=1e-12)
    for p, tp in zip(ours, theirs, strict=True):
        if p.grad is not None:
            np.testing.assert_allclose(to_np(p.grad), tp.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("norm_type", [2.0, 0, -1.0, -math.inf, "inf"])
def test_clip_grad_norm_of_one_parameter_matches_torch(xp, norm_type):
    g = np.array([[0.0, 3.0], [-4.0, 0.5]])
    p = nn.Parameter(xp.asarray(np.zeros((2, 2))))
    tp = torch.zeros(2, 2, dtype=torch.float64, requires_grad=True)
    p.grad, tp.grad = xp.asarray(g), torch.tensor(g)
    total = optim.clip_grad_norm(p, 1.0, norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(tp, 1.0, norm_type, foreach=False)
    np.testing.assert_allclose(float(total), float(t_total), rtol=1e-12)
    np.testing.assert_allclose(to_np(p.grad), tp.grad.numpy(), rtol=1e-12)


def test_clip_grad_norm_bad_norm_type_and_empty_gradients():
    p = nn.Parameter(np.zeros(0))
    p.grad = np.zeros(0)
    with pytest.raises(ValueError, match="'norm_type' expected a number or 'inf', got 'max'"):
        optim.clip_grad_norm(p, 1.0, "max")
    with pytest.raises(ValueError, match="empty"):
        optim.clip_grad_norm(p, 1.0, math.inf)
    tp = torch.zeros(0, requires_grad=True)
    tp.grad = torch.zeros(0)
    with pytest.raises(RuntimeError, match="empty"):  # torch refuses these too
        torch.nn.utils.clip_grad_norm_(tp, 1.0, math.inf, foreach=False)
    for norm_type in (2.0, 0, 0.5):  # sums over nothing: 0, as torch
        assert float(optim.clip_grad_norm(p, 1.0, norm_type)) == 0.0


def test_clip_grad_norm_nonfinite():
    p = nn.Parameter(np.zeros(2))
    p.grad = np.array([np.inf, 1.0])
    with pytest.raises(RuntimeError, match="non-finite"):
        optim.clip_grad_norm([p], 1.0, error_if_nonfinite=True)
    assert optim.clip_grad_norm([nn.Parameter(np.zeros(2))], 1.0) == 0.0


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("norm_type", [-1.0, -2.0, 2.0, math.inf, -math.inf])
def test_clip_grad_norm_nan_propagates_as_torch(norm_type):
    """A zero entry makes a negative-order norm 0, but a NaN beside it still wins."""
    grads = [np.array([0.0, np.nan, 1.0]), np.array([2.0, 3.0])]
    p = [nn.Parameter(np.zeros(g.shape)) for g in grads]
    t = [torch.zeros(g.shape, dtype=torch.float64, requires_grad=True) for g in grads]
    for q, tq, g in zip(p, t, grads, strict=True):
        q.grad, tq.grad = g.copy(), torch.tensor(g)
    total = optim.clip_grad_norm(p, 1.0, norm_type)
    t_total = torch.nn.utils.clip_grad_norm_(t, 1.0, norm_type, foreach=False)
    np.testing.assert_array_equal(np.asarray(total), t_total.numpy())


def test_sgd_subclass_errors_name_the_subclass():
    class MySGD(optim.SGD):
        pass

    with pytest.raises(ValueError, match="MySGD: argument 'momentum'"):
        MySGD([nn.Parameter(np.zeros(2))], lr=0.1, momentum=-1.0)


SCHEDULES = {
    "step": (lambda o: optim.StepLR(o, 3, gamma=0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, 0.5)),
    "cosine": (lambda o: optim.CosineAnnealingLR(o, 7), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 7)),
    "cosine_eta_min": (lambda o: optim.CosineAnnealingLR(o, 5, eta_min=0.01), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 5, 0.01)),
    "cosine_T1": (lambda o: optim.CosineAnnealingLR(o, 1, eta_min=0.02), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 1, 0.02)),
}  # fmt: skip


def _compare_schedules(
    names: list[str], lr: float = 0.2, lr_before: float | None = None, epochs: int = 25
) -> None:
    """Attach the schedules ``names`` in order to one optimizer of ours and one of torch's and
    compare ``lr`` and each ``get_last_lr()`` every epoch (T_max < epochs, so the cosine's
    restart branch runs)."""
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=lr)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    if lr_before is not None:
        opt.lr = t_opt.param_groups[0]["lr"] = lr_before
    scheds = [SCHEDULES[n][0](opt) for n in names]
    t_scheds = [SCHEDULES[n][1](t_opt) for n in names]
    assert opt.initial_lr == t_opt.param_groups[0]["initial_lr"]
    for epoch in range(epochs):
        assert opt.lr == pytest.approx(t_opt.param_groups[0]["lr"], rel=1e-12, abs=1e-15), epoch
        for s, t_s in zip(scheds, t_scheds, strict=True):
            last = s.get_last_lr()
            assert isinstance(last, list) and len(last) == 1
            assert last[0] == pytest.approx(t_s.get_last_lr()[0], rel=1e-12, abs=1e-15), epoch
        opt.step()
        t_opt.step()
        for s, t_s in zip(scheds, t_scheds, strict=True):
            s.step()
            t_s.step()
    assert scheds[-1].get_last_lr() == [opt.lr]


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_lr_schedules_match_torch(name):
    _compare_schedules([name])


@pytest.mark.parametrize(
    "names", [["step", "cosine"], ["cosine", "step"], ["cosine_eta_min", "step", "cosine"]]
)
def test_lr_schedules_compose_like_torch(names):
    _compare_schedules(names)


@pytest.mark.parametrize("names", [["step"], ["cosine_eta_min"], ["step", "cosine"]])
def test_lr_changed_before_the_first_schedule_is_its_start(names):
    """``initial_lr`` comes from ``opt.lr`` when the first schedule attaches, not from the
    optimizer's constructor."""
    _compare_schedules(names, lr=0.2, lr_before=0.05)


def test_lr_changed_between_steps_carries_on_like_torch():
    opt = optim.SGD([nn.Parameter(np.zeros(1))], lr=0.2)
    t_opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.2)
    sched = optim.StepLR(opt, 4, gamma=0.5)
    t_sched = torch.optim.lr_scheduler.StepLR(t_opt, 4, 0.5)
    assert sched.base_lr == 0.2 and opt.initial_lr == 0.2
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
    ours, _ = _params(xp, rng)
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
    ours, theirs = _params(B.namespace("numpy"), rng)
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
    ("ours", "theirs"),
    [
        (lambda o: optim.StepLR(o, 2, 0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5)),
        (lambda o: optim.CosineAnnealingLR(o, 3), lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 3)),
    ],
)  # fmt: skip
def test_scheduler_state_dict_moves_between_torch_and_ours(ours, theirs):
    """Resume torch's schedule here and ours in torch: the next learning rates agree."""
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


def test_optimizer_load_state_dict_refuses_mismatches_and_changes_nothing():
    params = [nn.Parameter(np.zeros(3))]
    t_adam = torch.optim.Adam([torch.zeros(3, requires_grad=True)], decoupled_weight_decay=True)
    with pytest.raises(ValueError, match="decoupled_weight_decay=True, this optimizer False"):
        optim.Adam(params).load_state_dict(t_adam.state_dict())
    optim.AdamW(params).load_state_dict(t_adam.state_dict())  # the same algorithm
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
