"""Short GPU check of the product's training paths: the offline demo in auto precision (bf16 on a capable GPU),
QLoRA 4-bit and full-parameter DPO, each to finished, loadable outputs. Prints one table and the precision that ran.

    python bench/gpu_check.py [--out /tmp/gpu_check] [--families gpt2,t5] [--quick]

Needs a CUDA GPU (exits 2 without one) and the packages of requirements.txt with a CUDA build of torch. Every run
is `train_dpo.py` itself (a subprocess), so the product's own paths are what is checked; `--quick` shrinks the demo
models and data for a first smoke run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import common  # noqa: F401  (offline env)
import torch
from common import table

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "demo (auto precision)": [],
    "QLoRA 4-bit": ["--load-in-4bit", "true"],
    "full DPO": ["--use-peft", "false", "--learning-rate", "1e-4"],
}
QUICK = ["--demo-hidden-size", "64", "--demo-layers", "2", "--demo-sft-epochs", "2", "--num-train-epochs", "1",
         "--eval-generations", "4", "--generation-max-new-tokens", "16"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/gpu_check")
    parser.add_argument("--families", default="gpt2,t5")
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: no CUDA GPU visible (torch.cuda.is_available() is False)", file=sys.stderr)
        return 2
    print(f"# GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
          f"bf16 supported: {torch.cuda.is_bf16_supported()}")
    rows, failed = [], 0
    for name, extra in VARIANTS.items():
        out = Path(opts.out) / name.split()[0].lower()
        cmd = [sys.executable, "train_dpo.py", "--config", "examples/demo.yaml", "--output-dir", str(out), "--overwrite",
               "--models", opts.families, *(QUICK if opts.quick else []), *extra]
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if proc.returncode != 0:
            failed += 1
            print(f"# {name}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-3000:]}")
            continue
        for family in opts.families.split(","):
            metrics = json.loads((out / family / "metrics.json").read_text())
            before, after = metrics["eval_before"], metrics["eval_after"]
            rows.append([name, family, metrics["precision"]["description"], metrics.get("quantization") or "-",
                         round(before["rewards/accuracies"], 3), round(after["rewards/accuracies"], 3),
                         round(metrics["train_pairs_per_s"], 2), round(seconds, 1),
                         "yes" if (out / family / "adapter").is_dir() else "no"])
    print(table(["variant", "family", "precision that ran", "quantization", "acc before", "acc after", "pairs/s",
                 "command s", "adapter/"], rows))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
