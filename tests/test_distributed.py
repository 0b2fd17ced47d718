"""Training runs under torchrun: 2 CPU processes (gloo DDP), both train both families (GPT-2 through TRL, T5 through
our seq2seq trainer), rank 0 alone writes outputs. accelerate applies FSDP only on GPUs/accelerators: `--fsdp` on CPU
ranks trains with DDP, and the run says so."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tiny_models import free_port
from toy_data import write_toy_pairs

REPO = Path(__file__).resolve().parents[1]


def _torchrun(tmp_path: Path, *extra: str, models: str = "gpt2,t5") -> tuple[str, Path]:
    data = write_toy_pairs(tmp_path / "pairs.jsonl", 48)
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
        "train_dpo.py", "--dataset", str(data), "--output-dir", str(out), "--demo", "--models", models,
        "--demo-hidden-size", "32", "--demo-layers", "1", "--demo-vocab-size", "300", "--demo-sft-epochs", "1",
        "--learning-rate", "3e-3", "--num-train-epochs", "2", "--per-device-train-batch-size", "4",
        "--eval-fraction", "0.25", "--lora-r", "4", "--seed", "0", "--eval-generations", "4",
        "--generation-max-new-tokens", "8", *extra,
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    logs = proc.stdout + proc.stderr
    assert proc.returncode == 0, logs[-4000:]
    return logs, out


def test_torchrun_two_cpu_ranks(tmp_path):
    logs, out = _torchrun(tmp_path)
    assert "--fsdp" not in logs
    for family in ("gpt2", "t5"):
        for rank in (0, 1):
            assert f"[{family}] rank {rank}/2 finished" in logs, f"{family}: rank {rank} did not train"
        metrics = json.loads((out / family / "metrics.json").read_text())
        assert metrics["world_size"] == 2 and metrics["distributed"] == "MULTI_CPU"
        # Each rank sees half of every global batch: 36 train pairs / (4 per rank x 2 ranks) = 5 steps per epoch.
        assert max(e["step"] for e in metrics["log_history"]) == 10
        assert metrics["eval_after"]["rewards/accuracies"] > metrics["eval_before"]["rewards/accuracies"]
    assert logs.count("outputs written to") == 2, "exactly one rank writes each family's outputs"
    assert sorted(p.name for p in out.iterdir() if p.name != ".work") == ["gpt2", "t5"]


def test_fsdp_flag_on_cpu_says_it_trains_with_ddp(tmp_path):
    config = tmp_path / "fsdp.json"
    config.write_text(json.dumps({"version": 2, "auto_wrap_policy": "TRANSFORMER_BASED_WRAP"}))
    logs, out = _torchrun(tmp_path, "--fsdp", "--fsdp_config", str(config), models="gpt2")
    assert "--fsdp: accelerate runs FSDP only on GPUs/accelerators; this run trains with DDP instead" in logs
    assert json.loads((out / "gpt2" / "metrics.json").read_text())["distributed"] == "MULTI_CPU"


def test_torchrun_qlora_demo_waits_for_the_base_and_saves_before_the_tail(tmp_path):
    """Demo + QLoRA (4-bit, bitsandbytes' CPU backend) under DDP: every rank reads the warm-started base rank 0 wrote
    (a barrier stands between the write and the reads), every rank saves the trained adapter collectively before
    rank 0's merge and evidence, and the other rank waits at the barrier while rank 0 writes."""
    logs, out = _torchrun(tmp_path, "--load-in-4bit", "true", models="gpt2")
    for rank in (0, 1):
        assert f"[gpt2] rank {rank}/2 finished" in logs
    metrics = json.loads((out / "gpt2" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["training"] == "QLoRA DPO"
    assert metrics["quantization"].startswith("4-bit NF4")
    assert logs.count("[gpt2] trained adapter saved in") == 1 and logs.count("outputs written to") == 1
    saved_at, written_at = logs.index("[gpt2] trained adapter saved in"), logs.index("outputs written to")
    assert saved_at < logs.index("generating from base and DPO") < written_at
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(out / "gpt2" / "merged")  # full precision: no bitsandbytes needed
    assert all(p.dtype.is_floating_point for p in merged.parameters())
    base = AutoModelForCausalLM.from_pretrained(out / "gpt2" / "base")
    assert PeftModel.from_pretrained(base, out / "gpt2" / "adapter") is not None
