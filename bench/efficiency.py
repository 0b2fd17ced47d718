"""Hardware efficiency of the product's GPT-2 DPO path: useful FLOP/s / measured matmul peak of the precision that ran.

    python bench/efficiency.py [--preset gpt2-small|small] [--pairs 16] [--steps 2] [--precision auto|bf16|fp32 ...]

Useful FLOPs (counted analytically on real, unpadded tokens; nothing the product could skip is counted):
* one reference forward per pair (the one-off precompute): dense layers, causal attention, LM head on completion
  tokens;
* per training step and pair, the policy forward (the same + LoRA) and backward. With LoRA the frozen weights need
  no weight gradients, so the backward is: input gradients of the dense layers and LM head (= their forward FLOPs),
  2x the attention forward, 2x the LoRA forward (input + weight gradients).
Time = trainer construction (tokenization + reference precompute) + training. The training arguments are the
product's (`config.DPOTrainingArguments` over `PRODUCT_DEFAULTS`; `--precision auto` is the product's own choice).
Peak = best torch.mm rate on 2048x2048 matrices, fp32 and bf16, measured before and after the run (the higher of
the two is used); the ratio divides by the peak of the precision that ran. Several `--precision` values run one
after the other, each in its own process, and print their ratios side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401
import torch
from common import (
    PRECISIONS,
    PRESETS,
    build_model,
    machine,
    make_pairs,
    matmul_peak_gflops,
    product_args,
    ran_precision,
    table,
    tokenizer_for,
)

from dpo_studio.config.precision import precision_of
from dpo_studio.data.reading import to_dataset
from dpo_studio.models.families import Architecture, architecture_of, prepare_tokenizer
from dpo_studio.training.pipeline import build_trainer
from dpo_studio.training.speed import tune_host

SHAPES = {
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257),  # GPT-2-small, 124M parameters
    "small": PRESETS["small"].gpt2,
}


def pair_flops(p: int, c: int, r: int, shape: dict[str, int], lora_r: int) -> tuple[float, float, float]:
    """(reference forward, policy forward, policy backward) FLOPs of one pair with p prompt / c, r completion tokens."""
    d, n_layer, vocab = shape["n_embd"], shape["n_layer"], shape["vocab_size"]
    lora_per_token = sum(2 * lora_r * (fan_in + fan_out) for fan_in, fan_out in ((d, 3 * d), (d, d), (4 * d, d)))
    ref = fwd = bwd = 0.0
    for completion in (c, r):
        length = p + completion
        dense = 24 * d * d * n_layer * length
        attention = 2 * d * length * (length + 1) * n_layer  # causal QK^T and AV
        head = 2 * d * vocab * completion  # LM head on labelled positions only
        lora = lora_per_token * n_layer * length
        ref += dense + attention + head
        fwd += dense + attention + head + lora
        bwd += dense + 2 * attention + head + 2 * lora
    return ref, fwd, bwd


def peaks() -> dict[str, float]:
    return {"fp32": matmul_peak_gflops(dtype=torch.float32), "bf16": matmul_peak_gflops(dtype=torch.bfloat16)}


def run(opts: argparse.Namespace, precision: str) -> dict:
    """One product run in `precision`; prints its table and returns its figures."""
    threads = tune_host("cpu").threads  # as `dpo-studio train` does at its start on a CPU
    shape = SHAPES[opts.preset]
    pairs = make_pairs(opts.pairs, opts.length_scale, seed=0)
    tokenizer = prepare_tokenizer(tokenizer_for(pairs, False), Architecture(False, "gpt2"))
    print(f"# efficiency — {opts.preset} {shape}, {opts.pairs} pairs, {opts.steps} steps, --precision {precision}; "
          f"{machine()}")
    peak_before = peaks()

    model = build_model("gpt2", shape, tokenizer, seed=0)
    arch = architecture_of(model.config)
    lora = arch.lora_config(16, 32, 0.0)
    train_ds = to_dataset(pairs, arch.prompt_format)
    with tempfile.TemporaryDirectory() as tmp:
        args = product_args(precision, output_dir=tmp, max_steps=opts.steps, report_to="none", save_strategy="no",
                            logging_steps=1, disable_tqdm=True, learning_rate=1e-3, seed=0)
        started = time.perf_counter()
        trainer = build_trainer(arch, model, tokenizer, train_ds, None, args, lora)
        precompute_s = time.perf_counter() - started
        # The pairs each step sees, recorded by wrapping the collator (the sampler decides the order).
        seen: list[dict] = []
        collate = trainer.data_collator
        trainer.data_collator = lambda examples: (seen.extend(examples), collate(examples))[1]
        steps = common.StepTimer()
        trainer.add_callback(steps.callback)
        trainer.train()
        total_s = time.perf_counter() - started
    peak_after = peaks()
    ran = precision_of(trainer.args).compute
    peak = {k: max(peak_before[k], peak_after[k]) for k in peak_before}

    ds = trainer.train_dataset
    ref_flops = sum(pair_flops(len(p), len(c), len(r), shape, 16)[0]
                    for p, c, r in zip(ds["prompt_ids"], ds["chosen_ids"], ds["rejected_ids"]))
    train_flops = sum(sum(pair_flops(len(e["prompt_ids"]), len(e["chosen_ids"]), len(e["rejected_ids"]), shape, 16)[1:])
                      for e in seen)
    useful = ref_flops + train_flops
    achieved = useful / total_s / 1e9
    rows = [
        ["reference precompute (+ tokenization)", round(precompute_s, 1), round(ref_flops / 1e12, 3),
         round(ref_flops / precompute_s / 1e9, 1)],
        [f"training ({opts.steps} steps, {len(seen)} pairs)", round(total_s - precompute_s, 1),
         round(train_flops / 1e12, 3), round(train_flops / (total_s - precompute_s) / 1e9, 1)],
        ["total", round(total_s, 1), round(useful / 1e12, 3), round(achieved, 1)],
    ]
    print(f"# precision that ran: {ran_precision(trainer)}; threads {torch.get_num_threads()}")
    print(f"# compile that ran: {common.compile_setting(trainer)}; {steps.describe()}")
    print(table(["phase", "time s", "useful TFLOP", "useful GFLOP/s"], rows))
    for kind in ("fp32", "bf16"):
        print(f"# {kind} matmul peak ({threads} threads): before {peak_before[kind]:.1f} GFLOP/s, "
              f"after {peak_after[kind]:.1f} GFLOP/s")
    target = "25%" if ran == "bf16" else "60%"  # issue 18: of the bf16 peak on native-bf16 CPUs, else the fp32 peak
    print(f"ratio efficiency ({ran}): useful GFLOP/s / {ran} matmul peak = {achieved:.1f} / {peak[ran]:.1f} = "
          f"{achieved / peak[ran]:.1%} (target >= {target})")
    return dict(precision=precision, ran=ran, described=ran_precision(trainer), seconds=total_s, useful=achieved,
                peak=peak[ran], peaks=peak, target=target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(SHAPES), default="gpt2-small")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--length-scale", type=float, default=0.35, help="1.0 = full chat-reply lengths")
    parser.add_argument("--precision", nargs="+", choices=sorted(PRECISIONS), default=["auto"],
                        help="the product's --bf16: auto (its own choice), bf16 or fp32; several run side by side")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if len(opts.precision) == 1:
        result = run(opts, opts.precision[0])
        if opts.child:
            print("RESULT " + json.dumps(result))
        return
    results = []
    for precision in opts.precision:  # each in a fresh process: no warm heap or caches carried over
        command = [sys.executable, __file__, "--preset", opts.preset, "--pairs", str(opts.pairs), "--steps",
                   str(opts.steps), "--length-scale", str(opts.length_scale), "--precision", precision, "--child"]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"--precision {precision} failed:\n{out.stderr[-3000:]}")
        print("\n".join(l for l in out.stdout.splitlines() if not l.startswith(("RESULT ", "{"))))
        results.append(json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[7:]))
    print(table(["--precision", "ran", "time s", "useful GFLOP/s", "peak GFLOP/s (ran)", "efficiency"],
                [[r["precision"], r["ran"], round(r["seconds"], 1), round(r["useful"], 1), round(r["peak"], 1),
                  f"{r['useful'] / r['peak']:.1%}"] for r in results]))
    for r in results:
        print(f"ratio efficiency --precision {r['precision']} ({r['described']}): "
              f"{r['useful'] / r['peak']:.1%} of the {r['ran']} peak (target >= {r['target']})")
    if len(results) > 1:
        print(f"ratio time {results[0]['precision']} / {results[-1]['precision']} = "
              f"{results[0]['seconds'] / results[-1]['seconds']:.2f}x")


if __name__ == "__main__":
    main()
