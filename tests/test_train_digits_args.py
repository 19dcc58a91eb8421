"""examples/train_digits.py checks its command line before it loads or trains anything, and
records every setting in the checkpoint's metadata."""

from __future__ import annotations

import importlib
import os
import shlex
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

import backprop_xp
from backprop_xp import backend as B

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def train_digits(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(EXAMPLES))
    return importlib.import_module("train_digits")


def _refused(train_digits: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run main(argv), expect exit status 2 and one error line on stderr; return the line."""
    with pytest.raises(SystemExit) as info:
        train_digits.main(argv)
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""  # nothing ran
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("train_digits.py: error: argument --"), err
    return lines[0]


BAD = [
    (["--epochs", "0"], "--epochs", "expected an integer >= 1, got 0"),
    (["--epochs", "1.5"], "--epochs", "expected an integer, got '1.5'"),
    (["--batch-size", "-1"], "--batch-size", "expected an integer >= 1, got -1"),
    (["--batch-size", "0"], "--batch-size", "expected an integer >= 1, got 0"),
    (["--lr", "0"], "--lr", "expected a positive finite number, got '0'"),
    (["--lr", "-0.1"], "--lr", "expected a positive finite number, got '-0.1'"),
    (["--lr", "nan"], "--lr", "expected a positive finite number, got 'nan'"),
    (["--lr", "inf"], "--lr", "expected a positive finite number, got 'inf'"),
    (["--lr", "fast"], "--lr", "expected a number, got 'fast'"),
    (["--limit", "0"], "--limit", "expected an integer >= 1, got 0"),
    (["--limit", "1438"], "--limit", "expected at most the 1437 training images, got 1438"),
    (["--seed", "-1"], "--seed", "expected an integer >= 0, got -1"),
    (["--model", "vgg"], "--model", "invalid choice: 'vgg'"),
    (["--backend", "mxnet"], "--backend", "unknown backend 'mxnet'; expected one of"),
    (["--device", "cuda:7"], "--device", "backend 'numpy' has no device 'cuda:7' here"),
]


@pytest.mark.parametrize(("argv", "option", "message"), BAD, ids=[" ".join(a) for a, _, _ in BAD])
def test_bad_value_exits_2_with_one_line(train_digits, capsys, tmp_path, argv, option, message):
    line = _refused(train_digits, capsys, [*argv, "--out", str(tmp_path / "out")])
    assert line.startswith(f"train_digits.py: error: argument {option}: {message}"), line
    assert not (tmp_path / "out").exists()


def test_backend_not_installed_names_what_to_install(train_digits, capsys, tmp_path):
    for name in ("cupy", "jax", "ndonnx", "sparse", "dask"):
        try:
            B.namespace(name)
        except B.BackendUnavailableError:
            break
    else:
        pytest.skip("every optional backend is installed here")
    line = _refused(train_digits, capsys, ["--backend", name, "--out", str(tmp_path)])
    assert f"argument --backend: backend {name!r} needs the" in line and "install" in line


def test_out_that_cannot_be_written(train_digits, capsys, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    line = _refused(train_digits, capsys, ["--out", str(a_file)])
    assert line.endswith(f"argument --out: {a_file} exists and is not a folder"), line
    line = _refused(train_digits, capsys, ["--out", str(a_file / "deeper" / "run")])
    assert line.endswith(f"cannot create {a_file / 'deeper' / 'run'}: {a_file} is not a folder")
    (tmp_path / "run" / "model.safetensors").mkdir(parents=True)
    line = _refused(train_digits, capsys, ["--out", str(tmp_path / "run")])
    assert "model.safetensors is a folder, where the run writes a file" in line, line


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root may write anywhere"
)
def test_out_in_a_read_only_folder(train_digits, capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = _refused(train_digits, capsys, ["--out", str(locked / "run")])
    finally:
        locked.chmod(0o700)
    assert line.endswith(f"cannot create {locked / 'run'}: the folder {locked} is not writable")


def test_bad_value_on_the_command_line_prints_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_digits.py"), "--batch-size", "-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr == (
        "train_digits.py: error: argument --batch-size: expected an integer >= 1, got -1\n"
    )
    assert not (tmp_path / "runs").exists()


def test_default_output_folder_names_the_backend(train_digits, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = train_digits.parse_args(["--model", "mlp", "--backend", "np"])
    assert args.out == Path("runs") / "digits-mlp-numpy" and args.backend == "numpy"
    assert args.device == "cpu"
    args = train_digits.parse_args(["--backend", "array_api_strict"])
    assert args.out == Path("runs") / "digits-cnn-array_api_strict"


@pytest.mark.slow
def test_checkpoint_metadata_holds_every_setting(train_digits, tmp_path, capsys):
    for name in ("sklearn", "tqdm", "matplotlib"):
        pytest.importorskip(name)
    out = tmp_path / "run"
    train_digits.main(["--limit", "64", "--epochs", "1", "--no-progress", "--out", str(out)])
    assert capsys.readouterr().out.splitlines()[-1].startswith("test accuracy: ")
    meta = backprop_xp.checkpoint.read_metadata(out / "model.safetensors")
    expected = {
        "model": "cnn",
        "backend": "numpy",
        "device": "cpu",
        "epochs": "1",
        "batch_size": "32",
        "lr": "0.003",
        "seed": "0",
        "limit": "64",
    }
    assert {k: meta[k] for k in expected} == expected
    assert float(meta["test_accuracy"]) >= 0 and "loss" in meta["history"]
    # the recorded command line parses back to the same settings
    argv = shlex.split(meta["command"])
    assert argv[:2] == ["python", "examples/train_digits.py"]
    again = train_digits.settings(train_digits.parse_args([*argv[2:], "--out", str(out)]))
    assert again == {k: meta[k] for k in again}
