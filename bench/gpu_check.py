"""Acceptance run on one CUDA GPU: the hardware rules and every training path of the product, end to end.

    python bench/gpu_check.py [--out /tmp/gpu_check] [--quick]

One command; prints one table (one row per check) and exits 1 if any check fails, 2 without a CUDA device. Checks:

1. precision: auto precision for this GPU's compute capability (8.0+: bf16 for GPT-2 and T5; 7.x: fp16 mixed
   precision for GPT-2, fp32 for T5; below: fp32), from the product's rule, and as each run recorded it in metrics.json;
2. runs of `train_dpo.py` on the offline demo (subprocesses, so the product's own paths run): LoRA (auto precision),
   QLoRA 4-bit, full-parameter DPO, GPT-2 with `--fp16 true`; T5 with `--fp16 true` must be refused in one line;
3. outputs load back: merged/ equals base/ + adapter/ (PEFT's merge recomputed here, fp32 on the CPU);
4. the app's /compare path on CUDA (`ui.build_studio` over the LoRA outputs: the mixed-adapter batch) gives the same
   greedy tokens as the base and merged models loaded as two plain models;
5. GPT-2 LoRA pairs/s of the product's trainer beside stock TRL `DPOTrainer` (TRL's defaults otherwise: gradient
   checkpointing on, no reference precompute) on the same GPU, base, data, batch size and precision, in one process.

Written without a GPU (none was lent while issue 25 was built): it has not yet run on real hardware, see
docs/performance.md. Its parts run on this project's CPUs through the tests that fake the hardware.
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
FAMILIES = ("gpt2", "t5")
# name -> (families, extra flags); every run is the offline demo (examples/demo.yaml)
RUNS = {
    "lora": ("gpt2,t5", []),
    "qlora": ("gpt2,t5", ["--load-in-4bit", "true"]),
    "full": ("gpt2,t5", ["--use-peft", "false", "--learning-rate", "1e-4"]),
    "fp16": ("gpt2", ["--fp16", "true"]),
}
QUICK = ["--demo-hidden-size", "64", "--demo-layers", "2", "--demo-sft-epochs", "2", "--num-train-epochs", "1",
         "--eval-generations", "4", "--generation-max-new-tokens", "16"]
PROMPTS = ["Any tips for a rainy weekend?", "What do you think about tea?", "How do I start running?"]


class Checks:
    """The table's rows; a failed check is a row with `FAIL` and the exit code becomes 1."""

    def __init__(self) -> None:
        self.rows: list[list[str]] = []
        self.failed = 0

    def add(self, check: str, ok: bool, detail: str) -> bool:
        self.rows.append([check, "ok" if ok else "FAIL", detail])
        self.failed += not ok
        return ok


def expected_precision() -> dict[str, str]:
    """What auto precision must be on this GPU, per family, from its compute capability alone."""
    from dpo_studio.config.precision import cuda_capability

    capability = cuda_capability()
    causal = "bf16" if capability >= (8, 0) else "fp16" if capability >= (7, 0) else "fp32"
    return {"gpt2": causal, "t5": "bf16" if causal == "bf16" else "fp32"}


def check_rule(checks: Checks, expected: dict[str, str]) -> None:
    from dpo_studio.config.precision import choose_precision, for_family

    run = choose_precision(None, False)
    got = {family: for_family(run, family).compute for family in FAMILIES}
    checks.add("auto precision rule", got == expected, f"{run.hardware}: expected {expected}, rule gives {got}")


def train(name: str, out: Path, quick: bool) -> tuple[subprocess.CompletedProcess, float]:
    families, extra = RUNS[name]
    cmd = [sys.executable, "train_dpo.py", "--config", "examples/demo.yaml", "--output-dir", str(out / name),
           "--overwrite", "--models", families, *(QUICK if quick else []), *extra]
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    return proc, time.perf_counter() - started


def check_runs(checks: Checks, out: Path, quick: bool, expected: dict[str, str]) -> None:
    for name, (families, _) in RUNS.items():
        proc, seconds = train(name, out, quick)
        if not checks.add(f"train {name}", proc.returncode == 0, f"exit {proc.returncode} in {seconds:.0f} s"):
            print(f"# {name}: {(proc.stdout + proc.stderr)[-3000:]}")
            continue
        for family in families.split(","):
            metrics = json.loads((out / name / family / "metrics.json").read_text())
            ran = metrics["precision"]["compute"]
            want = "fp16" if name == "fp16" else expected[family]
            checks.add(f"{name} {family} precision", ran == want,
                       f"recorded {metrics['precision']['description']}; {metrics.get('quantization') or 'no quant'}; "
                       f"acc {metrics['eval_before']['rewards/accuracies']:.2f} -> "
                       f"{metrics['eval_after']['rewards/accuracies']:.2f}; {metrics['train_pairs_per_s']:.1f} pairs/s")
    refused = subprocess.run([sys.executable, "train_dpo.py", "--config", "examples/demo.yaml", "--output-dir",
                              str(out / "t5_fp16"), "--models", "t5", "--fp16", "true"], cwd=REPO, capture_output=True,
                             text=True)
    last = (refused.stderr.strip().splitlines() or [""])[-1]
    checks.add("T5 --fp16 true refused", refused.returncode == 2 and "--bf16" in last and "--allow-fp16-t5" in last,
               f"exit {refused.returncode}: {last[:100]}")


def check_merged(checks: Checks, out: Path) -> None:
    """merged/ == base/ + adapter/ (fp32, CPU): the largest difference per run and family."""
    from peft import PeftModel

    from dpo_studio.models.families import load_architecture, load_model

    for name in ("lora", "qlora"):
        for family in FAMILIES:
            folder = out / name / family
            if not (folder / "merged").is_dir():
                continue
            arch = load_architecture(str(folder / "merged"))
            ours = PeftModel.from_pretrained(load_model(str(folder / "base"), arch), str(folder / "adapter"))
            ours = ours.merge_and_unload().state_dict()
            merged = load_model(str(folder / "merged"), arch).state_dict()
            worst = max((ours[k].float() - v.float()).abs().max().item() for k, v in merged.items() if k in ours)
            checks.add(f"{name} {family} merged == base + adapter", worst <= 1e-5 and ours.keys() >= merged.keys(),
                       f"max |diff| {worst:.2e} over {len(merged)} tensors")


def check_compare(checks: Checks, out: Path) -> None:
    """The app's pair (mixed-adapter batch on CUDA) vs two plain models, greedy, token for token."""
    from dpo_studio import ui
    from dpo_studio.inference.generation import generate_pair_results, load_pair

    studio = ui.build_studio(models_dir=str(out / "lora"), votes_file=str(out / "votes.jsonl"))
    for family in FAMILIES:
        folder = out / "lora" / family
        served = studio.registry.get(family)
        plain = load_pair(str(folder / "base"), None, str(folder / "merged"), device="cuda")
        app = generate_pair_results(served, PROMPTS, max_new_tokens=32)
        two = generate_pair_results(plain, PROMPTS, max_new_tokens=32)
        same = [a.token_ids == b.token_ids for pair_a, pair_b in zip(app, two) for a, b in zip(pair_a, pair_b)]
        text = studio.compare(PROMPTS[0], family, 32, 0.0, 1.0, 0)[1]
        checks.add(f"/compare {family} on CUDA", all(same) and text == app[0][1].text and served.device.type == "cuda",
                   f"{sum(same)}/{len(same)} replies token-identical; app pair on {served.device}, "
                   f"shared weights: {served.shares_weights}")


def pairs_per_second(out: Path, stock: bool) -> tuple[float, str]:
    """GPT-2 LoRA DPO on the demo's base and data: the product's trainer, or stock TRL's with its defaults."""
    from trl import DPOConfig, DPOTrainer

    from dpo_studio.config.precision import choose_precision, for_family
    from dpo_studio.data.reading import load_pairs, to_dataset
    from dpo_studio.models.families import load_model_and_tokenizer
    from dpo_studio.training.pipeline import build_trainer

    model, tokenizer, arch = load_model_and_tokenizer(str(out / "lora" / "gpt2" / "base"))
    pairs, _ = load_pairs(str(REPO / "examples" / "data" / "train.jsonl"))
    data = to_dataset(pairs, arch.prompt_format)
    precision = for_family(choose_precision(None, False), "gpt2")
    shared = dict(output_dir=str(out / ("stock" if stock else "product")), num_train_epochs=1, learning_rate=1e-3,
                  per_device_train_batch_size=16, max_length=160, beta=0.25, report_to=[], save_strategy="no",
                  logging_steps=1000, disable_tqdm=True, seed=0, bf16=precision.bf16, fp16=precision.fp16)
    lora = arch.lora_config(16, 32, 0.0)
    if stock:
        trainer = DPOTrainer(model=model, args=DPOConfig(**shared), train_dataset=data, processing_class=tokenizer,
                             peft_config=lora)
    else:
        from common import product_args

        args = product_args("auto", **{k: v for k, v in shared.items() if k not in ("bf16", "fp16")})
        trainer = build_trainer(arch, model, tokenizer, data, None, args, lora)
    torch.cuda.synchronize()
    started = time.perf_counter()
    trainer.train()
    torch.cuda.synchronize()
    settings = f"gc={trainer.args.gradient_checkpointing}, precompute_ref={trainer.args.precompute_ref_log_probs}"
    return len(data) / (time.perf_counter() - started), f"{precision.compute}, {settings}"


def check_speed(checks: Checks, out: Path) -> None:
    ours, ours_settings = pairs_per_second(out, stock=False)
    stock, stock_settings = pairs_per_second(out, stock=True)
    checks.add("GPT-2 LoRA pairs/s vs stock TRL", ours > 0 and stock > 0,
               f"dpo_studio {ours:.1f} ({ours_settings}) vs TRL {stock:.1f} ({stock_settings}): {ours / stock:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/gpu_check")
    parser.add_argument("--quick", action="store_true", help="smaller demo models and fewer generations")
    opts = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); this acceptance run needs one GPU",
              file=sys.stderr)
        return 2
    from dpo_studio.config.precision import cuda_hardware

    print(f"# {cuda_hardware()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    checks, out, expected = Checks(), Path(opts.out), expected_precision()
    check_rule(checks, expected)
    check_runs(checks, out, opts.quick, expected)
    for step in (check_merged, check_compare, check_speed):
        try:
            step(checks, out)
        except Exception as exc:  # noqa: BLE001 - a failed step is a failed row; the others still run
            checks.add(step.__name__, False, f"{type(exc).__name__}: {str(exc)[:120]}")
    print(table(["check", "result", "detail"], checks.rows))
    return 1 if checks.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
