"""The layout shows the programs: which top-level package may import which, read from the source.

collectors and estimators are libraries that import nothing of ours; the metrics server (`adapter`) builds
on both (what both programs share, label selectors and settings fields, lives in `collectors`, the lowest
layer either may import, so no new edge is needed); the power operator (`poweroperator`) is a client of the metrics API and never imports the server.
The server reads PowerBudgets with the operator's parser, which owns that API (`poweroperator.budget`),
and the one `wattscale` console script (`adapter.cli`) dispatches to both programs' commands.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from adapter.cli import COMMANDS

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("collectors", "estimators", "adapter", "poweroperator")
ALLOWED: dict[str, set[str]] = {
    "collectors": set(),
    "estimators": set(),
    "adapter": {"collectors", "estimators", "poweroperator"},
    "poweroperator": {"collectors", "estimators"},
}
ADAPTER_MAY_USE = {"poweroperator.budget"}
"""The PowerBudget API; everything else of the operator is reached only through the command table."""


def imports(path: Path) -> Iterator[str]:
    """Every absolute module a file imports, at any depth (function bodies and TYPE_CHECKING too)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def edges() -> dict[tuple[str, str], set[str]]:
    """(from package, to package) -> the importing files and imported modules, for the message."""
    found: dict[tuple[str, str], set[str]] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            for module in imports(path):
                target = module.split(".")[0]
                if target in PACKAGES and target != package:
                    found.setdefault((package, target), set()).add(f"{path.relative_to(REPO)}: {module}")
    for module in COMMANDS.values():
        target = module.split(".")[0]
        if target != "adapter":
            found.setdefault(("adapter", target), set()).add(f"adapter/cli.py COMMANDS: {module}")
    return found


def test_each_package_imports_only_the_packages_below_it() -> None:
    forbidden = {
        f"{source} -> {target}": sorted(where)
        for (source, target), where in edges().items()
        if target not in ALLOWED[source]
    }
    assert forbidden == {}


def test_the_server_uses_only_the_operators_power_budget_api() -> None:
    used = edges().get(("adapter", "poweroperator"), set())
    outside = sorted(
        item
        for item in used
        if "COMMANDS" not in item
        and not any(item.split(": ")[1].startswith(allowed) for allowed in ADAPTER_MAY_USE)
    )
    assert outside == []


def test_there_is_no_cycle_between_packages() -> None:
    graph: dict[str, set[str]] = {package: set() for package in PACKAGES}
    for source, target in edges():
        graph[source].add(target)

    def reaches(start: str, goal: str, seen: frozenset[str] = frozenset()) -> bool:
        return any(
            nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph[start]
        )

    assert [package for package in PACKAGES if reaches(package, package)] == []


def test_the_graph_walk_sees_imports_inside_functions() -> None:
    # The CLI's commands import their dependencies lazily; a walk of module-level imports alone would
    # miss the operator command's use of kubernetes_asyncio and pass vacuously.
    found = set(imports(REPO / "poweroperator" / "commands" / "operator.py"))
    assert "kubernetes_asyncio" in found and "poweroperator.loop.Capper" in found
