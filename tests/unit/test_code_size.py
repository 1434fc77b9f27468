"""The size limits of issue 18: a module a newcomer can read at once, functions that fit a screen.

No module in ``worker/`` over :data:`MAX_MODULE_LINES` lines, no function (or method) over
:data:`MAX_FUNCTION_LINES` lines, docstrings included. A concept that outgrows a module becomes
a package (as ``worker/media/``, ``worker/storage/`` did); a long function is split into named
steps. The checks read the source with :mod:`ast` (no import, no process).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parents[2] / "worker"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(WORKER.rglob("*.py"))


def _long_functions(path: Path, limit: int) -> list[str]:
    """``name (lines)`` of every function in ``path`` longer than ``limit`` lines."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            lines = (node.end_lineno or node.lineno) - start + 1
            if lines > limit:
                found.append(f"{node.name} ({lines} lines)")
    return found


def test_the_worker_package_is_found() -> None:
    """The checks below read real files (an empty glob would pass them vacuously)."""
    assert len(_modules()) > 50
    assert (WORKER / "media" / "__init__.py") in _modules()


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(WORKER)))
def test_module_size(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, (
        f"worker/{path.relative_to(WORKER)} has {lines} lines (limit {MAX_MODULE_LINES}): "
        "split it by concept"
    )


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(WORKER)))
def test_function_size(path: Path) -> None:
    assert _long_functions(path, MAX_FUNCTION_LINES) == []


def test_the_function_check_can_fail(tmp_path: Path) -> None:
    """A 61-line function is reported, a 60-line one is not (decorators counted)."""
    body = "".join(f"    x{i} = {i}\n" for i in range(58))
    source = tmp_path / "m.py"
    source.write_text(f"@decorator\ndef long():\n{body}    return 0\n\ndef short():\n{body}\n")
    assert _long_functions(source, MAX_FUNCTION_LINES) == ["long (61 lines)"]
