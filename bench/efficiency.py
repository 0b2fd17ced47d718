"""Hardware efficiency of the product's GPT-2 DPO path: useful FLOP/s / measured fp32 matmul peak (same threads).

    python bench/efficiency.py [--preset gpt2-small|small] [--pairs 16] [--steps 2]

Useful FLOPs (counted analytically on real, unpadded tokens; nothing the product could skip is counted):
* one reference forward per pair (the one-off precompute): dense layers, causal attention, LM head on completion
  tokens;
* per training step and pair, the policy forward (the same + LoRA) and backward. With LoRA the frozen weights need
  no weight gradients, so the backward is: input gradients of the dense layers and LM head (= their forward FLOPs),
  2x the attention forward, 2x the LoRA forward (input + weight gradients).
Time = trainer construction (tokenization + reference precompute) + training. Peak = best torch.mm rate on
2048x2048 fp32 matrices, measured before and after the run; the higher one is used.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import common  # noqa: F401
from common import PRESETS, build_model, machine, make_pairs, matmul_peak_gflops, table, tokenizer_for

from dpo_studio.config import PRODUCT_DEFAULTS
from dpo_studio.data import to_dataset
from dpo_studio.families import Architecture, architecture_of, prepare_tokenizer
from dpo_studio.pipeline import build_trainer
from dpo_studio.speed import configure_threads
from trl import DPOConfig

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(SHAPES), default="gpt2-small")
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--length-scale", type=float, default=0.35, help="1.0 = full chat-reply lengths")
    opts = parser.parse_args()
    threads = configure_threads()
    shape = SHAPES[opts.preset]
    pairs = make_pairs(opts.pairs, opts.length_scale, seed=0)
    tokenizer = prepare_tokenizer(tokenizer_for(pairs, False), Architecture(False, "gpt2"))
    print(f"# efficiency — {opts.preset} {shape}, {opts.pairs} pairs, {opts.steps} steps; {machine()}")
    peak_before = matmul_peak_gflops()

    model = build_model("gpt2", shape, tokenizer, seed=0)
    arch = architecture_of(model.config)
    lora = arch.lora_config(16, 32, 0.0)
    train_ds = to_dataset(pairs, arch.prompt_format)
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOConfig(**{**PRODUCT_DEFAULTS, "output_dir": tmp, "max_steps": opts.steps, "report_to": "none",
                            "save_strategy": "no", "logging_steps": 1, "use_cpu": True, "disable_tqdm": True,
                            "learning_rate": 1e-3, "seed": 0})
        started = time.perf_counter()
        trainer = build_trainer(arch, model, tokenizer, train_ds, None, args, lora)
        precompute_s = time.perf_counter() - started
        # The pairs each step sees, recorded by wrapping the collator (the sampler decides the order).
        seen: list[dict] = []
        collate = trainer.data_collator
        trainer.data_collator = lambda examples: (seen.extend(examples), collate(examples))[1]
        trainer.train()
        total_s = time.perf_counter() - started
    peak_after = matmul_peak_gflops()
    peak = max(peak_before, peak_after)

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
    print(table(["phase", "time s", "useful TFLOP", "useful GFLOP/s"], rows))
    print(f"# fp32 matmul peak ({threads} threads): before {peak_before:.1f} GFLOP/s, after {peak_after:.1f} GFLOP/s")
    print(f"ratio efficiency: useful GFLOP/s / matmul peak = {achieved:.1f} / {peak:.1f} = {achieved / peak:.1%} "
          f"(target >= 70%)")


if __name__ == "__main__":
    main()
