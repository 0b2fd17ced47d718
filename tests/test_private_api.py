"""The private third-party names dpo_studio uses still exist in the installed releases (one line per break), and
every private attribute the package reads on another library's objects is in the registry."""

import ast
from pathlib import Path

from dpo_studio import private_api

PACKAGE = Path(__file__).resolve().parents[1] / "dpo_studio"
# Not a TRL/transformers/PEFT/accelerate name: torch's tensor version counter (bf16's cast cache).
OTHER_PRIVATE = {"_version"}


def test_every_private_name_still_exists():
    broken = private_api.check_private_api()
    assert not broken, "\n".join(broken)


def test_at_most_five_private_names_in_one_registry():
    packages = {package for package, *_ in private_api.PRIVATE_NAMES}
    assert packages <= {"trl", "transformers", "peft", "accelerate"}
    assert len(private_api.PRIVATE_NAMES) <= 5  # issue 18 target


def _own_private_names(trees) -> set[str]:
    """Private names dpo_studio defines itself (functions, classes, attributes it assigns)."""
    names = set()
    for tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {n for n in names if n.startswith("_")}


def test_every_private_attribute_of_another_library_is_registered():
    trees = [ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))]
    own = _own_private_names(trees)
    registered = {name for *_, name, _ in private_api.PRIVATE_NAMES}
    used = {
        node.attr for tree in trees for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in {"self", "cls"})
    }
    unregistered = used - own - registered - OTHER_PRIVATE
    assert not unregistered, f"private attributes of other libraries not in speed/private_api.py: {sorted(unregistered)}"


def test_a_changed_name_is_reported_with_package_and_version(monkeypatch):
    monkeypatch.setattr(private_api, "PRIVATE_NAMES", (("trl", "trl.trainer.utils", None, "_NO_SUCH_NAME_X", "why"),))
    (line,) = private_api.check_private_api()
    from importlib.metadata import version

    assert line.startswith(f"trl {version('trl')} no longer has trl.trainer.utils._NO_SUCH_NAME_X")
