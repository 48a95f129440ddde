"""The walls between the parts (docs/architecture.md), checked on the source itself: what each package
may import, no import circles (imports inside functions count), kdcore reads no service settings, and
no source module grows past 500 lines."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("api", "worker", "kdcore", "distillery")
MAX_LINES = 500
# what a package must never import (its own name or anything below it)
FORBIDDEN = {
    "worker": ("api",),
    "kdcore": ("api", "worker", "distillery", "celery", "redis", "fastapi", "kombu", "starlette", "uvicorn"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module this one imports, at the top or inside a function, resolved to the longest known
    module name (`from a.b import c` imports a.b.c when that is a module, else a.b)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            found.add(t)
    return found


def _internal(target: str) -> str | None:
    while target:
        if target in MODULES:
            return target
        target = target.rpartition(".")[0]
    return None


GRAPH = {name: {m for t in _imports(name, path) if (m := _internal(t)) and m != name}
         for name, path in MODULES.items()}


@pytest.mark.parametrize("pkg", sorted(FORBIDDEN))
def test_packages_import_only_what_their_wall_allows(pkg: str) -> None:
    bad = []
    for name, path in MODULES.items():
        if name.split(".")[0] != pkg:
            continue
        for target in _imports(name, path):
            top = target.split(".")[0]
            if top in FORBIDDEN[pkg]:
                bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(bad)


def test_no_import_circles() -> None:
    """Tarjan's strongly connected components over the module graph. A package's __init__ is a module
    like any other: a submodule that imports its own package's __init__, which imports it back, is a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)


def test_kdcore_reads_no_service_setting() -> None:
    bad = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in (ROOT / "kdcore").rglob("*.py")
           for m in re.finditer(r"KD_[A-Z_]+", p.read_text())]
    assert not bad, "\n".join(bad)


def test_no_source_module_over_500_lines() -> None:
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_status_strings_and_redis_keys_are_defined_once() -> None:
    """Status names live in worker/lifecycle.py and Redis key names in worker/keys.py; no other module of
    the service spells them."""
    status = re.compile(r"""["'](queued|running|cancelling|succeeded|failed|cancelled)["']""")
    key = re.compile(r"""["']kd:""")
    bad = []
    for name, path in MODULES.items():
        if name.split(".")[0] not in ("api", "worker", "distillery"):
            continue
        text = path.read_text()
        if name != "worker.lifecycle":
            bad += [f"{name}: {m.group(0)}" for m in status.finditer(text)]
        if name != "worker.keys":
            bad += [f"{name}: {m.group(0)}" for m in key.finditer(text)]
    assert not bad, "\n".join(bad)
