"""Smoke runs of every example (small --epochs/--limit), part of the default test run."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import backprop_xp

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

pytestmark = pytest.mark.slow

pytest.importorskip("sklearn")
pytest.importorskip("tqdm")
pytest.importorskip("matplotlib")


@pytest.fixture
def example(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return lambda name: importlib.import_module(name)


def test_train_digits_cli(tmp_path):
    """The command line as the README runs it (CNN, NumPy), shortened."""
    out = tmp_path / "cnn"
    args = ["--epochs", "1", "--limit", "300", "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_digits.py"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"test accuracy: 0\.\d{4}", last), last
    assert "step" in proc.stderr  # the tqdm progress bar
    assert (out / "curves.png").stat().st_size > 1000
    meta = backprop_xp.checkpoint.read_metadata(out / "model.safetensors")
    assert meta["model"] == "cnn"
    state = backprop_xp.load(out / "model.safetensors")
    assert "net.0.weight" in state and state["net.0.weight"].shape == (16, 1, 3, 3)


@pytest.mark.parametrize(
    ("model", "backend"),
    [("mlp", "numpy"), ("rnn", "numpy"), ("mlp", "torch"), ("cnn", "array_api_strict")],
)
def test_train_digits_models(example, tmp_path, capsys, model, backend):
    if backend != "numpy":
        pytest.importorskip(backend)
    train_digits = example("train_digits")
    result = train_digits.train(
        train_digits.parse_args(
            ["--model", model, "--backend", backend, "--epochs", "2", "--limit", "300",
             "--no-progress", "--out", str(tmp_path)]
        )
    )  # fmt: skip
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("test accuracy: ")
    losses = result["history"]["loss"]
    assert len(losses) == 2 and losses[1] < losses[0]  # learning, even from 300 images
    assert (tmp_path / "model.safetensors").exists()


def test_digits_models_match_torch_architectures(example):
    torch = pytest.importorskip("torch")
    import numpy as np

    models = example("digits_models")
    x = np.random.default_rng(0).random((3, 8, 8)).astype(np.float32)
    for name in ("mlp", "cnn", "rnn"):
        ours, theirs = models.build(name, 0), models.build_torch(name)
        theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
        with torch.no_grad():
            ref = theirs(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(ours(x)[0], ref, rtol=1e-4, atol=1e-5, err_msg=name)


def test_sigmoid_vs_softmax(example, capsys):
    example("sigmoid_vs_softmax").main([])
    assert "equal to float64 rounding" in capsys.readouterr().out


def test_vanishing_gradients(example, tmp_path, capsys):
    mod = example("vanishing_gradients")
    mod.main(["--steps", "30", "--out", str(tmp_path)])
    assert (tmp_path / "gradient_norms.png").stat().st_size > 1000
    norms = mod.gradient_norms(T=30)
    rnn, lstm = norms["RNN (tanh)"], norms["LSTM, forget bias 1"]
    assert rnn[-1] / rnn[0] < lstm[-1] / lstm[0]  # the RNN's gradient fades faster


def test_custom_op(example, capsys):
    example("custom_op").main([])
    out = capsys.readouterr().out
    assert "gradcheck(swish): ok" in out and "buggy backward is caught" in out


@pytest.mark.parametrize(("model", "target"), [("cnn", 0.97), ("mlp", 0.96), ("rnn", 0.93)])
def test_train_digits_defaults_reach_the_target_accuracy(example, tmp_path, model, target):
    """The README's bar: each model, default settings, NumPy, on the fixed test split."""
    train_digits = example("train_digits")
    args = train_digits.parse_args(["--model", model, "--no-progress", "--out", str(tmp_path)])
    result = train_digits.train(args)
    assert result["test_accuracy"] >= target, result["test_accuracy"]
