"""Quiet logs: no per-request HTTP lines or library deprecation warnings at the default level, all of it at debug;
progress bars stay. Checked on a real train-and-push against the local Hub and on the app."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_pipeline import TINY_DEMO
from tiny_models import ask_compare, build_models_dir, free_port
from toy_data import write_toy_pairs

REPO = Path(__file__).resolve().parents[1]
HTTP_LINE = "HTTP Request:"


def train_and_push(tmp_path: Path, name: str, *extra: str, env_extra: dict | None = None) -> str:
    data = write_toy_pairs(tmp_path / "pairs.jsonl", 16)
    env = {**os.environ, "DPO_STUDIO_CPU_BF16": "0", **(env_extra or {})}
    env.pop("HF_HUB_OFFLINE", None)
    proc = subprocess.run(
        [sys.executable, str(REPO / "train_dpo.py"), "--dataset", str(data), "--output-dir", str(tmp_path / name),
         "--models", "gpt2", *TINY_DEMO, "--num-train-epochs", "1", "--demo-sft-epochs", "1", "--push",
         "--hub-repo-ids", f"gpt2=test-org/{name}", *extra],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"pushed test-org/{name} (commit" in proc.stdout
    return proc.stderr


def test_train_and_push_logs_no_http_lines_by_default(local_hub, tmp_path):
    quiet = train_and_push(tmp_path, "quiet")
    assert quiet.count(HTTP_LINE) == 0
    assert "FutureWarning" not in quiet and "is_gradient_checkpointing" not in quiet
    assert "loss_type=None" not in quiet  # transformers' notice at GPT-2's warm start: it picks the right loss
    assert "dpo_studio INFO" in quiet and "it/s]" in quiet  # our own lines and the progress bars stay
    loud = train_and_push(tmp_path, "loud", "--log-level", "debug")
    requests = loud.count(HTTP_LINE)
    assert requests >= 10, loud[-2000:]  # one per request: whoami, create, preupload, commit, ... x 3 repos
    assert "`loss_type=None` was set in the config but it is unrecognized" in loud  # what the filter drops
    assert local_hub.count(path_contains="/api/") >= requests // 2
    env_loud = train_and_push(tmp_path, "envloud", env_extra={"LOG_LEVEL": "debug"})
    assert env_loud.count(HTTP_LINE) >= 10


@pytest.mark.parametrize("level", [None, "debug"])
def test_app_log_is_quiet_by_default(tmp_path, level):
    build_models_dir(tmp_path / "models")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_SERVER_PORT": str(port), "GRADIO_ANALYTICS_ENABLED": "False"}
    env.pop("LOG_LEVEL", None)
    cmd = [sys.executable, "app.py", "--models-dir", str(tmp_path / "models"), "--votes-file",
           str(tmp_path / "votes.jsonl"), *(["--log-level", level] if level else [])]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        answer = ask_compare(proc, port, "both", 4, timeout_s=180)
        assert answer is not None
    finally:
        proc.terminate()
        output = proc.communicate(timeout=30)[0]
    if level is None:
        assert output.count(HTTP_LINE) == 0, output
        assert "FutureWarning" not in output, output
        assert "Loading" in output  # our INFO lines stay
    else:
        assert output.count(HTTP_LINE) > 0, output
