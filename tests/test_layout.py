"""The house rules that a reader relies on, checked on the source: no import circle between dpo_studio's modules,
no function over 60 lines, thin entry scripts. Read with `ast` (nothing is imported), so a failure names the file."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "dpo_studio"
MAX_FUNCTION_LINES = 60
MAX_SCRIPT_LINES = 40


def _modules() -> dict[str, tuple[Path, bool]]:
    """dotted name -> (file, is a package's __init__)."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "space_files":  # the Space's own app.py, shipped as data: an entry point, not a room
            continue
        parts = path.relative_to(REPO).with_suffix("").parts
        is_package = path.name == "__init__.py"
        found[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return found


def _imports(name: str, path: Path, is_package: bool, modules: dict) -> set[str]:
    """The dpo_studio modules `name` imports, anywhere in the file. `from pkg import sub` depends on the submodule
    `pkg.sub` only (not on `pkg`'s __init__), as Python resolves it."""
    here = name.split(".") if is_package else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            submodules = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in modules]
            found.update(submodules or [module])
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in modules and m != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():  # the check below can fail
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_between_modules():
    modules = _modules()
    graph = {name: _imports(name, path, is_package, modules) for name, (path, is_package) in modules.items()}
    assert len(graph) > 50 and graph["dpo_studio.training.pipeline"]  # the graph was really read
    cycle = _cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_function_over_sixty_lines():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 60 lines: " + "; ".join(long)


def test_entry_scripts_stay_thin():
    for script in ("train_dpo.py", "app.py"):
        lines = (REPO / script).read_text(encoding="utf-8").splitlines()
        assert len(lines) <= MAX_SCRIPT_LINES, f"{script} has {len(lines)} lines; its logic belongs in dpo_studio/"


# Rooms along the data flow, lowest first (docs/architecture.md): a room imports only rooms on its floor or below.
# Modules at the package root are shared basics (floor 0); `__main__` is an entry point like the scripts.
FLOORS = {
    "config": 1, "data": 2, "models": 3, "arena": 3, "inference": 4, "evaluation": 5, "outputs": 6, "training": 7,
    "hub": 8, "ui": 9, "cli": 10,
}
ROOT_MODULES_MAX = 9


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in FLOORS) else ""


def _upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a room to a room on a higher floor, as `a -> b`."""
    up = []
    for name, deps in sorted(graph.items()):
        if name == "dpo_studio.__main__":
            continue
        for dep in sorted(deps):
            if FLOORS.get(_room(dep), 0) > FLOORS.get(_room(name), 0):
                up.append(f"{name} -> {dep}")
    return up


def test_floor_check_finds_an_upward_import():  # the check below can fail
    assert _upward_imports({"dpo_studio.models.families": {"dpo_studio.training.speed"}}) == [
        "dpo_studio.models.families -> dpo_studio.training.speed"]
    assert _upward_imports({"dpo_studio.training.pipeline": {"dpo_studio.models.families", "dpo_studio.logs"}}) == []


def test_no_room_imports_a_room_above_it():
    modules = _modules()
    assert set(FLOORS) == {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}, "a room without a floor"
    graph = {name: _imports(name, path, is_package, modules) for name, (path, is_package) in modules.items()}
    up = _upward_imports(graph)
    assert not up, "imports that run back up: " + "; ".join(up)


def test_few_modules_at_the_package_root():
    root = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root) <= ROOT_MODULES_MAX, f"{len(root)} modules at the package root: {root}"
