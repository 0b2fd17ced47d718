"""Quiet logs: no per-request HTTP lines or library deprecation warnings at the default level, all of it at debug;
progress bars stay. Checked on a real train-and-push against the local Hub and on the app."""

import os
import re
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
    # our own lines and the progress bars stay (tqdm says s/it instead of it/s on a slow or busy machine)
    assert re.search(r"dpo_studio\.[\w.]+ INFO", quiet) and re.search(r"(it/s|s/it)\]", quiet)
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


@pytest.mark.parametrize("level, shown", [(None, False), ("debug", True)])
def test_app_stream_has_no_attention_mask_false_alarm(tmp_path, level, shown):
    """One unpadded prompt: transformers' `generate` drops the all-ones mask, then warns when a finished row feeds the
    pad token (= EOS here). The sampled stream of the demo-like model ends a row early, which triggers it."""
    script = (
        "import sys\nfrom pathlib import Path\n"
        "from dpo_studio.logs import setup_logging\n"
        "from dpo_studio.inference.generation import load_pair, stream_pair_results\n"
        "from tiny_models import build_models_dir\n"
        f"setup_logging({level!r})\n"
        "build_models_dir(Path(sys.argv[1]), ('gpt2',), suppress_eos=False)\n"
        "root = Path(sys.argv[1])\n"
        "pair = load_pair(str(root / 'gpt2' / 'base'), str(root / 'gpt2' / 'adapter'))\n"
        "assert pair.tokenizer.pad_token_id == pair.tokenizer.eos_token_id\n"
        "pair.model.config.pad_token_id = pair.tokenizer.pad_token_id  # as the demo's models record it\n"
        "ended = False\n"
        "for seed in range(40):\n"
        "    *_, (base, dpo) = stream_pair_results(pair, 'Hi there', max_new_tokens=24, temperature=1.0, seed=seed)\n"
        "    ended = base.ended_with_eos != dpo.ended_with_eos or (base.ended_with_eos and len(base.token_ids) < 23)\n"
        "    if ended:\n"
        "        break\n"
        "print('ENDED', ended)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "models")], capture_output=True, text=True,
                          env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "ENDED True" in proc.stdout  # a row finished before the other: the case transformers warns about
    assert ("We strongly recommend passing in an `attention_mask`" in proc.stderr) is shown, proc.stderr[-2000:]
