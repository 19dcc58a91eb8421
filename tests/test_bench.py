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


# -- exit status: 0 every selected case ran, 1 something raised, 2 nothing was run ----------

# Runs bench.main() once per scenario named on its command line, in one process (torch is
# imported once), with the patch that scenario needs; prints {name: [status, stderr]}.
EXIT_DRIVER = r"""
import contextlib, importlib.util, io, json, sys, types
from pathlib import Path

BENCH = Path(sys.argv[1])
spec = importlib.util.spec_from_file_location("bench_under_test", BENCH / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)  # puts benchmarks/ and the checkout on sys.path
harness = sys.modules["_harness"]
QUICK = ["--backend", "numpy", "--quick", "--threads", "1", "--repeat", "1", "--warmup", "0",
         "--no-memory", "--cases", "core"]


def slow_ours(ours, torch_side, **kw):  # ours takes twice torch's time: a missed target
    return harness.Timing([2e-3], [1e-3], 1, 1)


def raises(*args, **kw):
    raise RuntimeError("boom")


def family(cases):
    module = types.ModuleType("cases_core")
    module.cases = cases
    return {"cases_core": module}


SCENARIOS = {
    "ok": (QUICK + ["--ops", "softmax"], {}, {}),
    "missed_target": (QUICK + ["--ops", "cross_entropy"], {"time_pair": slow_ours}, {}),
    "case_raised": (QUICK + ["--ops", "softmax"], {"time_pair": raises}, {}),
    "family_raised": (QUICK, {}, family(raises)),
    "no_cases": (QUICK, {}, family(lambda ctx: [])),
    "unknown_op": (QUICK + ["--ops", "nonesuch"], {}, {}),
    "clock_cpu_threads_2": (QUICK + ["--threads", "2", "--clock", "cpu"], {}, {}),
    "torch_cuda_missing": (["--backend", "torch", "--device", "cuda", "--quick"], {}, {}),
    "cupy_missing": (["--backend", "cupy", "--quick"], {}, {}),
    "unknown_family": (["--cases", "nonesuch"], {}, {}),
    "repeat_0": (["--repeat", "0"], {}, {}),
    "numpy_on_cuda": (["--backend", "numpy", "--device", "cuda"], {}, {}),
    "json_under_a_file": (["--json", str(BENCH / "bench.py" / "out.json")], {}, {}),
    "torch_missing": (QUICK, {}, {"torch": None}),
}
results = {}
for name in sys.argv[2:]:
    argv, attrs, modules = SCENARIOS[name]
    saved = {k: getattr(bench, k) for k in attrs}
    saved_modules = {k: sys.modules.get(k) for k in modules}
    for k, v in attrs.items():
        setattr(bench, k, v)
    sys.modules.update(modules)
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                status = bench.main(argv)
            except SystemExit as e:
                status = e.code
    finally:
        for k, v in saved.items():
            setattr(bench, k, v)
        for k, v in saved_modules.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    results[name] = [status, err.getvalue()]
print(json.dumps(results))
"""


def _exit_statuses(*scenarios: str) -> dict[str, tuple[int, str]]:
    proc = subprocess.run(
        [sys.executable, "-c", EXIT_DRIVER, str(BENCH), *scenarios],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return {k: (v[0], v[1]) for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}


def _last_line(stderr: str) -> str:
    return stderr.strip().splitlines()[-1]


def test_bench_exit_status_when_nothing_can_run() -> None:
    """Exit 2, with one line saying why: bad options, and a side missing (torch among them:
    this test runs without torch too)."""
    got = _exit_statuses("unknown_family", "repeat_0", "numpy_on_cuda", "json_under_a_file",
                         "torch_missing")  # fmt: skip
    assert {name: status for name, (status, _) in got.items()} == dict.fromkeys(got, 2), got
    last = _last_line(got["unknown_family"][1])
    assert "--cases nonesuch: no such benchmarks/cases_*.py; known families: " in last
    assert "conv, core" in last
    assert "--repeat must be at least 1" in got["repeat_0"][1]
    assert "--device cuda: --backend numpy runs on the CPU" in got["numpy_on_cuda"][1]
    assert "--json" in _last_line(got["json_under_a_file"][1])
    err = got["torch_missing"][1]
    assert err.splitlines() == [err.strip()] and "Traceback" not in err, err
    assert err.startswith("bench: the reference side is torch autograd, and torch is not")


def test_bench_exit_status_of_runs() -> None:
    torch = pytest.importorskip("torch")
    scenarios = ["ok", "missed_target", "case_raised", "family_raised", "no_cases",
                 "unknown_op", "clock_cpu_threads_2"]  # fmt: skip
    from backprop_xp import backend as B

    if "cupy" not in B.available_backends():
        scenarios.append("cupy_missing")
    if not torch.cuda.is_available():
        scenarios.append("torch_cuda_missing")
    got = _exit_statuses(*scenarios)
    expected = {
        "ok": 0,
        "missed_target": 0,  # a missed target is reported, and does not fail the run
        "case_raised": 1,
        "family_raised": 1,
        "no_cases": 2,
        "unknown_op": 2,
        "clock_cpu_threads_2": 2,
        "cupy_missing": 2,
        "torch_cuda_missing": 2,
    }
    assert {k: v[0] for k, v in got.items()} == {k: expected[k] for k in got}, got
    assert "RuntimeError: boom" in got["case_raised"][1]
    assert "bench: skipped cases_core.py: RuntimeError: boom" in got["family_raised"][1]
    assert _last_line(got["no_cases"][1]) == "bench: no cases to run"
    assert _last_line(got["unknown_op"][1]).startswith(
        "bench: --ops nonesuch matched no case; known ops and families: "
    )
    assert _last_line(got["clock_cpu_threads_2"][1]) == (
        "bench: --clock cpu needs a CPU run with --threads 1"
    )
    if "cupy_missing" in got:
        assert "backend 'cupy'" in _last_line(got["cupy_missing"][1])
    if "torch_cuda_missing" in got:
        assert "torch sees no CUDA device" in _last_line(got["torch_cuda_missing"][1])
