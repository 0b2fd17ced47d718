"""The output folder's layout has one owner (`run_layout.FamilyPaths`): the names it gives, and no other module of
the package spelling them (checked on the source with `ast`)."""

from __future__ import annotations

import ast
from pathlib import Path

from dpo_studio.run_layout import FamilyPaths

PACKAGE = Path(__file__).resolve().parents[1] / "dpo_studio"


def test_a_family_folder_and_its_neighbours(tmp_path):
    paths = FamilyPaths.of(tmp_path / "out", "org/My Model")  # a Hub id: the folder is its safe last part
    assert paths.folder == tmp_path / "out" / "My-Model"
    assert paths.metrics == paths.folder / "metrics.json"
    assert (paths.adapter, paths.merged, paths.base) == tuple(paths.folder / n for n in ("adapter", "merged", "base"))
    assert (paths.plots, paths.report, paths.progress) == (
        paths.folder / "plots", paths.folder / "report.html", paths.folder / "progress.jsonl")
    assert paths.old == tmp_path / "out" / "My-Model.old"
    assert paths.work == tmp_path / "out" / ".work" / "My-Model"
    assert paths.staging.metrics == paths.work / "staging" / "metrics.json"  # staging is laid out as the folder
    assert (paths.checkpoints, paths.trained) == (paths.work / "checkpoints", paths.work / "trained")
    assert paths.demo_base.folder == paths.work / "base"
    assert paths.shared_split("eval") == paths.work / "data" / "eval"
    assert paths.reference_store() == tmp_path / "out" / ".ref_logps" / "My-Model"
    assert paths.reference_store(tmp_path / "kept") == tmp_path / "kept" / "My-Model"
    # A demo base is named relative to adapter/ and merged/: it resolves to the base/ beside them.
    assert (paths.adapter / FamilyPaths.DEMO_BASE_REF).resolve() == paths.base.resolve()


def test_finished_families_are_the_folders_with_metrics(tmp_path):
    for name in ("t5", "gpt2", "half"):
        (tmp_path / name).mkdir()
    for name in ("t5", "gpt2"):
        FamilyPaths(tmp_path / name).metrics.write_text("{}", encoding="utf-8")
    assert [p.name for p in FamilyPaths.finished_in(tmp_path)] == ["gpt2", "t5"]
    assert not FamilyPaths(tmp_path / "half").is_finished()
    assert [FamilyPaths.is_scratch(n) for n in (".work", ".ref_logps", "gpt2.old", "gpt2")] == [True, True, True, False]


def _hits(source: str, name: str) -> list[int]:
    """Lines of the string constants in `source` that are the layout name `name` or a path through it (prose, which
    has spaces, and dict keys, such as a card template's `plots`, are not paths)."""
    tree = ast.parse(source)
    keys = {id(key) for node in ast.walk(tree) if isinstance(node, ast.Dict) for key in node.keys}
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in keys
            and not any(c.isspace() for c in node.value) and name in node.value.split("/")]


def test_the_spelling_check_finds_a_name():  # the check below can fail
    assert _hits('p = d / "metrics.json"\nq = f"{d}/.work/x"', "metrics.json") == [1]
    assert _hits('q = f"{d}/.work/x"', ".work") == [1]
    assert _hits('"""Writes metrics.json last."""', "metrics.json") == []  # prose may name the file
    assert _hits('ctx = {"plots": []}', "plots") == []


def _spelled_paths(name: str) -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name != "run_layout.py":
            found += [f"{path.relative_to(PACKAGE.parent)}:{line}" for line in _hits(path.read_text(encoding="utf-8"), name)]
    return found


def test_no_other_module_spells_the_layout():
    names = [FamilyPaths.METRICS_FILE, FamilyPaths.REPORT_FILE, FamilyPaths.PROGRESS_FILE, FamilyPaths.WORK_DIR,
             FamilyPaths.REF_LOGPS_DIR, FamilyPaths.OLD_SUFFIX, FamilyPaths.PLOTS_DIR, "staging", "checkpoints"]
    spelled = [hit for name in names for hit in _spelled_paths(name)]
    assert not spelled, "output folder names outside run_layout.py: " + "; ".join(spelled)
