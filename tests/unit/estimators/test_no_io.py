"""`estimators/` is pure: no network, files, processes or clocks, so results follow from inputs alone."""

from __future__ import annotations

import ast
from pathlib import Path

import estimators

FORBIDDEN = {
    "aiohttp",
    "asyncio",
    "datetime",
    "glob",
    "http",
    "httpx",
    "io",
    "os",
    "pathlib",
    "pickle",
    "random",
    "requests",
    "shutil",
    "socket",
    "sqlite3",
    "ssl",
    "subprocess",
    "tempfile",
    "threading",
    "time",
    "urllib",
    "adapter",
    "collectors",
}
# Reading the package's own read-only table is the one allowed access (module docstring says why).
ALLOWED = {("power_curve.py", "importlib.resources")}


def _imports(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.extend([node.module, *(f"{node.module}.{alias.name}" for alias in node.names)])
    return names


def test_estimators_import_no_io_or_clock_modules() -> None:
    root = Path(estimators.__file__).parent
    offenders = []
    files = sorted(root.rglob("*.py"))
    assert len(files) >= 3
    for path in files:
        for name in _imports(ast.parse(path.read_text(), filename=str(path))):
            if (path.name, name) in ALLOWED or (path.name, name.rsplit(".", 1)[0]) in ALLOWED:
                continue
            if name.split(".")[0] in FORBIDDEN or name == "importlib.resources":
                offenders.append(f"{path.relative_to(root)}: {name}")
    assert offenders == []


def test_no_builtin_open_or_clock_calls() -> None:
    root = Path(estimators.__file__).parent
    calls = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in {"open", "input", "print"}
            ):
                calls.append(f"{path.name}:{node.lineno} {node.func.id}()")
    assert calls == []
