"""The layout's rules, read from the code itself (every import, lazy ones inside functions too).

- no import circles in ``omsd/`` and ``workers/``;
- the worker side imports only leaf modules of the supervisor side (logging, exit codes, wire helpers);
  ``workers.compat`` is the exception: it is the OpenMSIStream program API, an entry point like
  ``omsd.cli`` whose classes start the daemon, and nothing else in ``workers/`` imports it;
- the supervisor side reaches the worker side only through ``workers.main``, ``workers.messages`` and
  ``workers.pipeline``;
- no module is longer than 450 lines;
- README.md's module map names every module of each folder it lists.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("omsd", "workers")
MAX_LINES = 450
#: What any worker-side module may import from the supervisor side.
WORKER_MAY_IMPORT = ("omsd.logging", "omsd.exitcodes", "omsd.wire")
#: The program API may also load a config and run the daemon.
COMPAT_MAY_IMPORT = (*WORKER_MAY_IMPORT, "omsd.config", "omsd.daemon")
#: How the supervisor side reaches the worker side: the process entry point, the messages, step validation.
SUPERVISOR_MAY_IMPORT = ("workers.main", "workers.messages", "workers.pipeline")


def module_files() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = module_files()


def _imported(module: str, path: Path) -> Iterator[tuple[str, int]]:
    """(module of this tree, line) for every import statement anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import mod` imports the module pkg.mod; `from mod import name` imports mod.
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in MODULES:  # `import omsd.wire.protocol.x`: the longest module named
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name, node.lineno


GRAPH = {module: sorted(set(_imported(module, path))) for module, path in MODULES.items()}


def circles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _line in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_is_read() -> None:
    """The checks below see real edges (a reader that found none would pass them all)."""
    assert "omsd.dispatch.pool" in {t for t, _ in GRAPH["omsd.dispatch.jobs"]}
    assert "workers.main" in {t for t, _ in GRAPH["omsd.dispatch.pool"]}
    assert "omsd.daemon" in {t for t, _ in GRAPH["workers.compat.classes"]}  # a lazy import, inside a method
    assert circles({"a": [("b", 1)], "b": [("c", 1)], "c": [("a", 1)], "d": [("a", 1)]}) == [["a", "b", "c"]]


def test_no_import_circles() -> None:
    found = circles(GRAPH)
    detail = ["  " + " -> ".join(component) + ": " + "; ".join(
        f"{m} -> {t} (line {line})" for m in component for t, line in GRAPH[m] if t in component)
        for component in found]
    assert not found, "import circles:\n" + "\n".join(detail)


def _allowed(target: str, allowed: tuple[str, ...]) -> bool:
    return target == "omsd" or any(target == a or target.startswith(a + ".") for a in allowed)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("workers")))
def test_the_worker_side_imports_only_leaf_modules_of_the_supervisor_side(module: str) -> None:
    compat = module == "workers.compat" or module.startswith("workers.compat.")
    allowed = COMPAT_MAY_IMPORT if compat else WORKER_MAY_IMPORT
    wrong = [f"{target} (line {line})" for target, line in GRAPH[module]
             if target.startswith("omsd") and not _allowed(target, allowed)]
    if not compat:
        wrong += [f"{target} (line {line}): the program API starts the daemon"
                  for target, line in GRAPH[module] if target.startswith("workers.compat")]
    assert not wrong, f"{MODULES[module].relative_to(ROOT)} imports " + ", ".join(wrong)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("omsd")))
def test_the_supervisor_side_reaches_the_workers_only_through_their_entry_points(module: str) -> None:
    wrong = [f"{target} (line {line})" for target, line in GRAPH[module]
             if target.startswith("workers") and target not in SUPERVISOR_MAY_IMPORT]
    assert not wrong, f"{MODULES[module].relative_to(ROOT)} imports " + ", ".join(wrong)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_is_longer_than_the_limit(module: str) -> None:
    lines = len(MODULES[module].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines (at most {MAX_LINES})"


def test_the_readme_module_map_names_every_module() -> None:
    """Each folder's row of README.md's module map lists exactly the modules (and sub-packages) it holds."""
    rows: dict[str, set[str]] = {}
    for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines():
        cells = line.split("|")
        folder = cells[1].strip().strip("`") if len(cells) > 3 else ""
        if folder.endswith("/") and folder.split("/")[0] in PACKAGES and (ROOT / folder).is_dir():
            rows[folder.rstrip("/")] = set(re.findall(r"`([\w/]+)`", cells[2]))
    assert {"omsd", "workers", "omsd/intake", "omsd/dispatch"} <= set(rows), "README.md's module map is missing"
    for folder, listed in rows.items():
        here = ROOT / folder
        present = {p.stem for p in here.glob("*.py") if p.stem != "__init__"}
        present |= {f"{p.name}/" for p in here.iterdir() if (p / "__init__.py").exists()}
        present -= {f"{name.rpartition('/')[2]}/" for name in rows if name.rpartition("/")[0] == folder}
        assert listed == present, (f"README.md module map, {folder}/: missing {sorted(present - listed)}, "
                                   f"no such module {sorted(listed - present)}")
