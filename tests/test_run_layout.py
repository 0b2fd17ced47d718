"""The output folder has one owner (`run_layout`): the names `FamilyPaths` gives, no other module of the package
spelling them (checked on the source with `ast`), and metrics.json read and written through `RunMetrics` only."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from dpo_studio.run_layout import SCHEMA_VERSION, FamilyPaths, MetricsFileError, RunMetrics

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


# ------------------------------------------------------------------------------------------------ RunMetrics
OLD_FILE = {  # a metrics.json from before schema_version, with a key this version does not know
    "family": "gpt2", "architecture": "causal", "base_model": "openai-community/gpt2", "dataset": "me/prefs",
    "data": {"train_pairs": 8, "eval_pairs": 2}, "train_runtime_s": 1.5, "train_pairs_per_s": 5.333,
    "eval_before": {"rewards/accuracies": 0.5, "logps/chosen": -20.0}, "eval_after": {"rewards/accuracies": 1.0},
    "hyperparameters": {"beta": 0.1}, "log_history": [{"step": 1, "loss": 0.69}],
    "generation_before": {"distinct_1": 0.5}, "generation_after": {"distinct_1": 0.4},
    "from_a_future_field": {"kept": True},
}


def test_an_old_metrics_file_loads_and_writes_back_every_key(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(OLD_FILE), encoding="utf-8")
    metrics = RunMetrics.load(path)
    assert metrics.family == "gpt2" and metrics.eval_before["rewards/accuracies"] == 0.5  # TRL's names, as written
    assert metrics.train_pairs_per_s == 5.333 and metrics.generation_after == {"distinct_1": 0.4}
    assert metrics.schema_version == SCHEMA_VERSION and metrics.extra == {"from_a_future_field": {"kept": True}}
    metrics.save(tmp_path / "again.json")
    again = json.loads((tmp_path / "again.json").read_text(encoding="utf-8"))
    assert {k: again[k] for k in OLD_FILE} == OLD_FILE  # nothing lost, nothing renamed
    assert again["schema_version"] == SCHEMA_VERSION and list(again)[0] == "schema_version"
    assert not list(tmp_path.glob("*.tmp"))  # written atomically (json_files.write_json_atomic)


def test_evidence_keys_are_written_only_when_measured(tmp_path):
    metrics = RunMetrics(family="t5", base_model="google-t5/t5-small", dataset="d", eval_before={}, eval_after={})
    metrics.save(tmp_path / "metrics.json")
    written = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert "generation_before" not in written and "degeneration" not in written and "extra" not in written
    assert {"family", "base_model", "dataset", "train_runtime_s", "train_pairs_per_s", "eval_before", "eval_after",
            "log_history"} <= set(written)
    assert RunMetrics.load(tmp_path / "metrics.json") == metrics


def test_unreadable_or_newer_metrics_are_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(MetricsFileError, match=r"bad\.json: cannot read metrics\.json"):
        RunMetrics.load(bad)
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({**OLD_FILE, "schema_version": SCHEMA_VERSION + 1}), encoding="utf-8")
    with pytest.raises(MetricsFileError, match="newer than this dpo-studio reads"):
        RunMetrics.load(newer)
    listed = tmp_path / "list.json"
    listed.write_text("[]", encoding="utf-8")
    with pytest.raises(MetricsFileError, match="expected a JSON object"):
        RunMetrics.load(listed)
