"""`--report_to trackio` offline: both families' Trainer logs and our held-out evaluations land in trackio's local
store (TRACKIO_DIR, a temp folder), read back through trackio's own storage API and checked against metrics.json;
the run is named after what ran; the card carries TRL's `trackio` tag."""

import json
import os
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard
from test_pipeline import TINY_DEMO
from toy_data import write_toy_pairs

from dpo_studio.outputs.card_conventions import tracker_tags
from dpo_studio.training.tracking import tracking_record, with_tracking_defaults

READ_BACK = """
import json, sys
from trackio.sqlite_storage import SQLiteStorage
project = sys.argv[1]
print(json.dumps({run: SQLiteStorage.get_logs(project, run) for run in SQLiteStorage.get_runs(project)}))
"""


def _env(tmp_path) -> dict[str, str]:
    return {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A tiny demo run of both families with --report_to trackio, in a fresh process whose trackio store is a temp
    folder (trackio reads TRACKIO_DIR once, at import)."""
    root = tmp_path_factory.mktemp("tracked")
    data = write_toy_pairs(root / "pairs.jsonl", 24)
    out = root / "demo-out"
    cmd = [sys.executable, "-m", "dpo_studio", "train", "--dataset", str(data), "--output-dir", str(out),
           "--models", "gpt2,t5", *TINY_DEMO, "--num-train-epochs", "1", "--demo-sft-epochs", "1",
           "--report_to", "trackio"]
    done = subprocess.run(cmd, env=_env(root), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    logs = subprocess.run([sys.executable, "-c", READ_BACK, "dpo-studio"], env=_env(root), capture_output=True,
                          text=True, timeout=120)
    assert logs.returncode == 0, logs.stderr[-2000:]
    return out, json.loads(logs.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_both_families_log_to_the_local_trackio_store(tracked, family):
    out, runs = tracked
    metrics = json.loads((out / family / "metrics.json").read_text())
    record = metrics["tracking"]["trackio"]
    assert record["project"] == "dpo-studio" and record["url"] is None  # local store, no Space
    assert record["run"].startswith(f"demo-out-{family}-")
    rows = runs[record["run"]]
    # Every Trainer log line with a loss (TRL's causal trainer, or our seq2seq trainer) is in the store, same values.
    trained = [entry for entry in metrics["log_history"] if "loss" in entry and "train_runtime" not in entry]
    logged = {row["train/global_step"]: row for row in rows if "train/loss" in row}  # TrackioCallback's step
    assert trained and len(logged) == len(trained)
    for entry in trained:
        row = logged[entry["step"]]
        assert row["train/loss"] == pytest.approx(entry["loss"], rel=1e-6)
        assert row["train/rewards/accuracies"] == pytest.approx(entry["rewards/accuracies"], rel=1e-6)
    # Our held-out evaluations: before DPO at step 0, after DPO at the last step.
    held_out = {row["step"]: row for row in rows if "held_out/loss" in row}
    last = max(entry["step"] for entry in metrics["log_history"])
    assert sorted(held_out) == [0, last]
    for step, key in ((0, "eval_before"), (last, "eval_after")):
        for metric in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen"):
            assert held_out[step][f"held_out/{metric}"] == pytest.approx(metrics[key][metric], rel=1e-6)


def test_card_carries_trls_trackio_tag(tracked):
    out, _ = tracked
    card = ModelCard.load(out / "gpt2" / "merged" / "README.md")
    assert "trackio" in card.data.tags
    assert 'trackio show --project "dpo-studio"' in card.text


def test_defaults_keep_the_users_names_and_resume_the_same_run(tmp_path):
    from dpo_studio.config.arguments import parse_config

    _, args, _ = parse_config(["--output-dir", str(tmp_path / "runs"), "--report_to", "trackio"])
    first = with_tracking_defaults(args, "gpt2", tmp_path / "runs", tmp_path / "work")
    assert first.project == "dpo-studio" and first.run_name.startswith("runs-gpt2-")
    again = with_tracking_defaults(args, "gpt2", tmp_path / "runs", tmp_path / "work")  # --resume: same work folder
    assert again.run_name == first.run_name
    _, mine, _ = parse_config(["--output-dir", str(tmp_path), "--report_to", "trackio", "--project", "p",
                               "--run_name", "r", "--trackio_space_id", "me/dash"])
    kept = with_tracking_defaults(mine, "gpt2", tmp_path, tmp_path / "w2")
    assert (kept.project, kept.run_name) == ("p", "r")
    record = tracking_record(kept)
    assert tracker_tags(record) == ["trackio", "trackio:https://huggingface.co/spaces/me/dash"]
    _, everything, _ = parse_config(["--output-dir", str(tmp_path), "--report_to", "all"])  # trackio is installed
    assert with_tracking_defaults(everything, "t5", tmp_path, tmp_path / "w4").project == "dpo-studio"
    _, untracked, _ = parse_config(["--output-dir", str(tmp_path)])
    assert with_tracking_defaults(untracked, "gpt2", tmp_path, tmp_path / "w3") is untracked
    assert tracking_record(untracked) is None and tracker_tags(None) == []
