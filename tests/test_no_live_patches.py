"""No module of dpo_studio swaps a method on a live object or builds a class at run time (issue 18).

AST scan of every module: `types.MethodType`, assignments of functions/lambdas/partials (or anything) to attributes
named like methods (`x.forward = ...`) on objects other than `self`, `setattr(obj, "<method>", ...)`, and
three-argument `type(...)`. Replacing a submodule (`setattr(parent, name, module)`) is not a method swap."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dpo_studio"
METHOD_NAMES = {"forward", "__call__", "generate", "_cast_input_dtype", "train", "eval", "step", "backward"}


def _is_function_value(node: ast.AST, local_functions: set[str]) -> bool:
    if isinstance(node, ast.Lambda):
        return True
    if isinstance(node, ast.Name):
        return node.id in local_functions
    if isinstance(node, ast.Call):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        return name in {"partial", "MethodType", "wraps", "update_wrapper"}
    return False


def live_patches(source: str) -> list[tuple[int, str]]:
    tree = ast.parse(source)
    local_functions = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "MethodType":
            found.append((node.lineno, "types.MethodType"))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "type" and len(node.args) == 3:
            found.append((node.lineno, "3-argument type(...)"))
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "setattr" and len(node.args) == 3:
            name = node.args[1]
            if isinstance(name, ast.Constant) and (name.value in METHOD_NAMES or _is_function_value(node.args[2], local_functions)):
                found.append((node.lineno, f"setattr(..., {name.value!r}, ...)"))
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if not isinstance(target, ast.Attribute) or (isinstance(target.value, ast.Name) and target.value.id == "self"):
                    continue
                if target.attr in METHOD_NAMES or _is_function_value(node.value, local_functions):
                    found.append((node.lineno, f"<obj>.{target.attr} = ..."))
    return found


def test_the_scan_finds_each_kind_of_swap():
    source = (
        "import types\n"
        "def f(self): pass\n"
        "model.forward = types.MethodType(f, model)\n"
        "layer.helper = f\n"
        "obj.cb = lambda: 1\n"
        "setattr(obj, 'forward', g)\n"
        "Fast = type('Fast', (A,), {})\n"
        "self.forward_count = 1\n"            # not a swap: state on self
        "setattr(parent, name, Module())\n"   # not a swap: a submodule replaced
        "x.count = 3\n"
    )
    kinds = [kind for _, kind in live_patches(source)]
    assert kinds.count("types.MethodType") == 1
    assert "<obj>.forward = ..." in kinds and "<obj>.helper = ..." in kinds and "<obj>.cb = ..." in kinds
    assert "setattr(..., 'forward', ...)" in kinds and "3-argument type(...)" in kinds
    assert len(kinds) == 6


def test_no_module_swaps_a_method_on_a_live_object():
    offences = [
        f"{path.relative_to(PACKAGE.parent)}:{line}: {kind}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, kind in live_patches(path.read_text(encoding="utf-8"))
    ]
    assert not offences, "live method swaps:\n" + "\n".join(offences)
