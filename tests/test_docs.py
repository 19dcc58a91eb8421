"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one file run in order, in one namespace (a block may use what an earlier block
of the same file defined), in a fresh temporary working directory. Conventions for the docs:

- ``# needs: NAME[, NAME ...]`` as a block's first line: the block runs only where each NAME
  works here: a backend name (``cupy``, which also needs a CUDA device, ``torch``, ...) or
  else an importable module. Elsewhere its test is reported as skipped, with the reason.
  Later blocks must not depend on such a block.
- ``# file: benchmarks/cases_<family>.py`` as a first line: the block is the text of such a
  file, run with ``benchmarks/`` on ``sys.path`` (as ``bench.py`` runs it);
  :func:`test_benchmark_case_example_runs` also runs the cases it defines.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from backprop_xp import backend as B

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


@dataclass(frozen=True)
class Block:
    path: Path
    index: int  # among the file's python blocks
    line: int  # of the first line of code, 1-based
    source: str

    @property
    def header(self) -> dict[str, str]:
        """The ``# key: value`` comments that open the block."""
        out = {}
        for text in self.source.splitlines():
            m = re.fullmatch(r"#\s*(needs|file):\s*(.+?)\s*", text)
            if not m:
                break
            out[m.group(1)] = m.group(2)
        return out

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def blocks(path: Path) -> list[Block]:
    found, current, start = [], None, 0
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if current is None and text.strip() == "```python":
            current, start = [], number + 1
        elif current is not None and text.strip() == "```":
            found.append(Block(path, len(found), start, "\n".join(current) + "\n"))
            current = None
        elif current is not None:
            current.append(text)
    assert current is None, f"{path}: a ```python block is never closed"
    return found


BLOCKS = [b for path in DOCS for b in blocks(path)]


def _missing(needs: str) -> str | None:
    """Why a ``# needs:`` line is not met here, or None."""
    for name in (n.strip() for n in needs.split(",")):
        try:
            B.namespace(name)
        except ValueError:  # not a backend name: a module
            if importlib.util.find_spec(name) is None:
                return f"needs {name}, which is not installed here"
        except B.BackendUnavailableError as e:
            return f"needs {name}: {e}"
    return None


@dataclass
class Outcome:
    skipped: str | None = None
    error: str | None = None


def _run_file(path: Path, workdir: Path) -> list[Outcome]:
    namespace: dict[str, Any] = {"__name__": "__doc__"}
    outcomes = []
    cwd, sys_path = os.getcwd(), list(sys.path)
    os.chdir(workdir)
    try:
        for block in blocks(path):
            header = block.header
            why = _missing(header["needs"]) if "needs" in header else None
            if why:
                outcomes.append(Outcome(skipped=f"{block.id} {why}"))
                continue
            if header.get("file", "").startswith("benchmarks/"):
                sys.path.insert(0, str(REPO / "benchmarks"))
            # padded so that a traceback gives the line in the Markdown file
            code = compile("\n" * (block.line - 1) + block.source, str(path), "exec")
            try:
                exec(code, namespace)
            except Exception:
                outcomes.append(Outcome(error=traceback.format_exc(limit=-3)))
            else:
                outcomes.append(Outcome())
            sys.path[:] = sys_path
    finally:
        os.chdir(cwd)
        sys.path[:] = sys_path
    return outcomes


_RUNS: dict[Path, list[Outcome]] = {}


@pytest.fixture(scope="session")
def doc_runs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``path`` -> the outcome of each of its blocks, the file run once per session."""

    def get(path: Path) -> list[Outcome]:
        if path not in _RUNS:
            _RUNS[path] = _run_file(path, tmp_path_factory.mktemp(path.stem))
        return _RUNS[path]

    return get


def test_the_docs_have_python_blocks():
    assert [b for b in BLOCKS if b.path.name == "README.md"], "no ```python block in README.md"


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_doc_block_runs(block: Block, doc_runs: Any) -> None:
    outcome = doc_runs(block.path)[block.index]
    if outcome.skipped:
        pytest.skip(outcome.skipped)
    if outcome.error:
        pytest.fail(f"the block at {block.id} raised:\n{outcome.error}", pytrace=False)


def test_benchmark_case_example_runs() -> None:
    """The ``cases(ctx)`` of docs/benchmarks.md builds cases whose two sides run."""
    torch = pytest.importorskip("torch")
    (block,) = [b for b in BLOCKS if b.header.get("file", "").startswith("benchmarks/cases_")]
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        namespace: dict[str, Any] = {"__name__": "cases_example"}
        exec(compile(block.source, block.id, "exec"), namespace)
        harness = sys.modules["_harness"]
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    ctx = harness.Context(
        "numpy", B.namespace("numpy"), "cpu", False, torch=torch,
        torch_device=torch.device("cpu"), quick=True,
    )  # fmt: skip
    cases = namespace["cases"](ctx)
    assert cases and all(isinstance(c, harness.Case) for c in cases)
    for case in cases:
        case.ours()
        case.torch()


INTERNAL = re.compile(r"issue [0-9]|\blent\b|device tool|this project's sessions", re.IGNORECASE)


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_speak_to_users(path: Path) -> None:
    """No words about how the project is run internally (issue numbers, lent machines)."""
    text = path.read_text(encoding="utf-8")
    hits = [
        f"{path.name}:{n}: {line.strip()}"
        for n, line in enumerate(text.splitlines(), 1)
        if INTERNAL.search(line)
    ]
    assert not hits, "\n".join(hits)
