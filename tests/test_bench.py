"""Smoke tests of the benchmark harness (benchmarks/): it runs, prints a table, writes JSON.

These check the machinery, not speed: ``--quick`` shapes are tiny and the numbers meaningless.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _harness() -> ModuleType:
    """benchmarks/_harness.py, loaded by path (benchmarks/ is not a package)."""
    name = "_backprop_xp_bench_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BENCH / "_harness.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while being built
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_time_pair_alternates_and_takes_medians() -> None:
    h = _harness()
    calls: list[str] = []
    timing = h.time_pair(
        lambda: calls.append("o"),
        lambda: calls.append("t"),
        sync=lambda: None,
        repeat=4,
        warmup=2,
        min_sample_s=0.0,
    )
    # warm-up pairs, one calibration call each, then ABBA samples
    assert calls == ["o", "t"] * 2 + ["o", "t"] + ["o", "t", "t", "o"] * 2
    assert len(timing.ours) == len(timing.torch) == 4
    assert timing.ms_ours >= 0 and timing.ms_torch >= 0


def test_peak_memory_numpy_sees_temporaries() -> None:
    h = _harness()
    n = 1_000_000

    def fn() -> float:
        a = np.ones(n)  # 8 MB, freed before returning
        return float(a.sum())

    peak = h.peak_memory(fn, "numpy")
    assert peak is not None and 8 * n <= peak < 16 * n


def test_bench_quick_numpy_writes_table_and_json(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "bench.json"
    cmd = [
        sys.executable,
        str(BENCH / "bench.py"),
        "--backend",
        "numpy",
        "--quick",
        "--cases",
        "core",
        "--ops",
        "softmax",
        "--repeat",
        "2",
        "--threads",
        "1",
        "--json",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert any(line.startswith("device: ") for line in lines), proc.stdout
    head = next(i for i, line in enumerate(lines) if line.startswith("op "))
    for col in ("shape", "ms ours", "ms torch", "ratio", "target", "GFLOP/s", "MiB ours"):
        assert col in lines[head]
    assert lines[head + 1].split()[0] == "softmax"

    doc = json.loads(out.read_text())
    assert doc["machine"]["cpu_model"]
    assert doc["machine"]["threads"] == 1
    (rec,) = doc["records"]
    assert rec["op"] == "softmax" and rec["backend"] == "numpy"
    assert rec["ms_ours"] > 0 and rec["ms_torch"] > 0
    assert rec["ratio"] == pytest.approx(rec["ms_ours"] / rec["ms_torch"])
    for key in ("shape", "device", "target", "gflops", "peak_share", "mem_ours", "mem_torch"):
        assert key in rec
    assert rec["mem_ours"] is not None and rec["mem_ours"] > 0
