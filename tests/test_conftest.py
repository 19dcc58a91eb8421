"""The test matrix itself: a run restricted to a backend that does not work here fails."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import conftest
import pytest

CONFTEST = Path(__file__).with_name("conftest.py")

TINY = """
def test_uses_xp(xp):
    assert xp.asarray([1.0]).shape == (1,)
"""


def _pytest(tmp_path: Path, *args: str, env: dict[str, str] | None = None):
    """pytest in a subprocess on one tiny test of the ``xp`` fixture, with our conftest."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_tiny.py").write_text(TINY)
    full_env = {k: v for k, v in os.environ.items() if k != "BACKPROP_XP_BACKENDS"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _unavailable() -> str:
    for name in conftest.ALL_BACKENDS:
        if not isinstance(conftest._get(name), conftest.TestNamespace):
            return name
    pytest.skip("every backend works on this machine")


def test_unavailable_backend_option_is_a_usage_error(tmp_path):
    name = _unavailable()
    proc = _pytest(tmp_path, "--backend", "numpy", "--backend", name)
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert f"ERROR: --backend: {name!r} is unavailable here: {conftest._get(name)}" in proc.stderr
    assert "passed" not in proc.stdout and "skipped" not in proc.stdout


def test_unavailable_backend_in_the_environment_is_a_usage_error(tmp_path):
    name = _unavailable()
    proc = _pytest(tmp_path, env={"BACKPROP_XP_BACKENDS": f"numpy,{name}"})
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert f"ERROR: BACKPROP_XP_BACKENDS: {name!r} is unavailable here" in proc.stderr


def test_unknown_backend_in_the_environment_is_a_usage_error(tmp_path):
    proc = _pytest(tmp_path, env={"BACKPROP_XP_BACKENDS": "numpy,nonesuch"})
    assert proc.returncode == pytest.ExitCode.USAGE_ERROR, proc.stdout + proc.stderr
    assert "BACKPROP_XP_BACKENDS: unknown backend 'nonesuch'; expected one of numpy" in proc.stderr


def test_available_backend_runs(tmp_path):
    proc = _pytest(tmp_path, "--backend", "numpy", "--backend", "numpy")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout  # a repeated name runs once
