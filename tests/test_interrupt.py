"""SIGTERM during training saves a checkpoint and exits cleanly; --resume reaches the uninterrupted result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from toy_data import write_toy_pairs

REPO = Path(__file__).resolve().parents[1]
ARGS = [
    "--demo", "--models", "gpt2", "--demo-hidden-size", "32", "--demo-layers", "1", "--demo-vocab-size", "300",
    "--demo-sft-epochs", "1", "--learning-rate", "3e-3", "--num-train-epochs", "20", "--per-device-train-batch-size",
    "4", "--logging-steps", "5", "--eval-fraction", "0.25", "--lora-r", "4", "--seed", "0", "--eval-generations", "0",
    "--save-steps", "1000", "--bf16", "false",  # exact resume parity: one precision on every host
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def train(data: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train_dpo.py", "--dataset", str(data), "--output-dir", str(out), *ARGS, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=ENV, timeout=600)


def test_sigterm_checkpoints_and_resume_matches_uninterrupted(tmp_path):
    data = write_toy_pairs(tmp_path / "pairs.jsonl", 40)
    reference = train(data, tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-2000:]
    expected = json.loads((tmp_path / "reference" / "gpt2" / "metrics.json").read_text())

    out = tmp_path / "interrupted"
    cmd = [sys.executable, "train_dpo.py", "--dataset", str(data), "--output-dir", str(out), *ARGS]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    # Wait until training has started (the handlers are installed by then), let a few steps run, then interrupt.
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if "training started" in line:
            break
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=300)
    stderr = "".join(seen) + rest
    assert proc.returncode == 130, stderr[-3000:]
    assert "SIGTERM received: checkpoint saved at step" in stderr and "--resume" in stderr
    assert not (out / "gpt2" / "metrics.json").exists(), "an interrupted run must not look finished"
    checkpoints = list((out / ".work" / "gpt2" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints, "a checkpoint was saved"

    resumed = train(data, out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got = json.loads((out / "gpt2" / "metrics.json").read_text())
    assert got["resumed_from_step"] == int(checkpoints[0].name.split("-")[1])
    # Same seed, same data order, same optimizer state: the resumed run ends where the uninterrupted one does.
    for key in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected"):
        assert got["eval_after"][key] == pytest.approx(expected["eval_after"][key], rel=1e-3, abs=1e-4), key
