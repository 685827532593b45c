"""The shape of the package, read from its source: rooms, arrows one way, no circles.

Every ``import`` in ``fitserve/`` (also those inside functions: a lazy import is an
arrow too) is parsed with :mod:`ast`.  The rooms, from the top::

    interfaces (fitserve.cli, fitserve.client, fitserve.web, fitserve.app, fitserve.generate)
        -> service (fitserve.service) -> executors (fitserve.executors) -> engine (fitserve.engine)

An arrow may point down any number of rooms, never up; the client imports only
httpx (and the standard library); the package root (``fitserve/__init__.py``,
where ``__version__`` lives) imports no room at all, so any room may read the
version from it without an arrow back.  No module imports itself round a circle.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fitserve"

#: room of a module by its longest matching prefix; a higher rank may import a lower one
ROOMS = {
    "fitserve.cli": "interfaces",
    "fitserve.client": "interfaces",
    "fitserve.web": "interfaces",
    "fitserve.app": "interfaces",
    "fitserve.generate": "interfaces",
    "fitserve.service": "service",
    "fitserve.executors": "executors",
    "fitserve.engine": "engine",
}
RANK = {"interfaces": 3, "service": 2, "executors": 1, "engine": 0}

#: Imports of engine modules other than its front door (``fitserve.engine``) from other rooms, today.
#: The submission desk goes through the engine's one submission check (check_submission -> PreparedJob);
#: each line goes when its import does.  The set may only shrink.
ENGINE_DEEP_IMPORTS: set[tuple[str, str]] = set()

#: Circles inside the engine, today (none: the batch widths live in budget, which scan asks); the list may
#: only shrink.
ENGINE_CIRCLES: list[list[str]] = []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """Every module ``name`` imports, absolute; ``from pkg import mod`` counts as ``pkg.mod`` when that is a module."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return found


GRAPH = {name: imports_of(name) for name in MODULES}


def room(name: str) -> str | None:
    best = max((prefix for prefix in ROOMS if name == prefix or name.startswith(prefix + ".")), key=len, default=None)
    return ROOMS[best] if best else None


def internal(targets: set[str]) -> set[str]:
    return {t for t in targets if t == "fitserve" or t.startswith("fitserve.")}


def test_every_module_has_a_room():
    assert {n for n in MODULES if n != "fitserve" and room(n) is None} == set()


def test_arrows_point_down_only():
    """interfaces -> service -> executors -> engine: no module imports one of a room above its own."""
    up = []
    for src, targets in GRAPH.items():
        if src == "fitserve":
            continue
        for dst in internal(targets):
            if dst == "fitserve":
                continue  # the root: __version__ (it imports no room, see below)
            if RANK[room(dst)] > RANK[room(src)]:
                up.append(f"{src} ({room(src)}) -> {dst} ({room(dst)})")
    assert up == []


def test_the_engine_stands_alone():
    """The engine imports nothing of fitserve outside itself but the version from the package root."""
    out = {
        (src, dst)
        for src, targets in GRAPH.items()
        if room(src) == "engine"
        for dst in internal(targets)
        if room(dst) != "engine"
    }
    assert {dst for _, dst in out} <= {"fitserve"}, out


def test_the_root_imports_no_room():
    """``fitserve/__init__.py`` holds ``__version__``; importing it must not pull a room in (its lazy
    ``Client`` is loaded by name on first use, not imported)."""
    assert internal(GRAPH["fitserve"]) == set()
    stdlib = set(sys.stdlib_module_names)
    assert {t.split(".")[0] for t in GRAPH["fitserve"]} <= stdlib


def test_the_client_imports_only_httpx():
    """The Python client is httpx and the standard library (the version from the package root; tqdm for a
    progress bar and pandas for a dataframe, both only when asked for)."""
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    outside = set()
    for src, targets in GRAPH.items():
        if src == "fitserve.client" or src.startswith("fitserve.client."):
            for t in targets:
                top = t.split(".")[0]
                if top == "fitserve":
                    if not (t in ("fitserve", "fitserve.client") or t.startswith("fitserve.client.")):
                        outside.add((src, t))
                elif top not in stdlib and top != "httpx":
                    outside.add((src, top))
    assert outside <= {("fitserve.client._core", "pandas"), ("fitserve.client._core", "tqdm")}, outside


def test_other_rooms_enter_the_engine_by_its_front_door():
    """Outside the engine, ``fitserve.engine`` is imported, not its modules (but the listed debts)."""
    deep = {
        (src, dst)
        for src, targets in GRAPH.items()
        if room(src) != "engine"
        for dst in internal(targets)
        if dst.startswith("fitserve.engine.")
    }
    new = deep - ENGINE_DEEP_IMPORTS
    assert not new, f"import these through fitserve.engine (or add them to its front door): {sorted(new)}"
    gone = ENGINE_DEEP_IMPORTS - deep
    assert not gone, f"paid off: remove from ENGINE_DEEP_IMPORTS: {sorted(gone)}"


def test_no_circles():
    """No module imports itself round a circle (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]
    edges = {n: sorted(t for t in internal(ts) if t in MODULES and t != n) for n, ts in GRAPH.items()}

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                circles.append(sorted(scc))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in edges:
        if v not in index:
            visit(v)
    assert sorted(circles) == ENGINE_CIRCLES


@pytest.mark.parametrize("name", ["fitserve.service.api", "fitserve.web.routes", "fitserve.cli"])
def test_graph_sees_the_imports(name):
    """The parser itself: modules known to import others are seen to (a broken parser passes everything)."""
    assert internal(GRAPH[name])
