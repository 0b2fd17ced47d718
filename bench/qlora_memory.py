"""QLoRA vs LoRA: peak memory and pairs/s of DPO on the GPT-2-small shape, 4-bit / 8-bit vs 16/32-bit base weights.

    python bench/qlora_memory.py [--pairs 16] [--steps 4] [--length-scale 0.35] [--variants fp32,bf16,4bit,8bit]

Each variant runs in its own fresh process through the product's own path (`pipeline.build_trainer` on a base loaded
by `families.load_model`, arguments from `config.DPOTrainingArguments`), so nothing leaks between them. Peak memory
is the process's VmHWM minus its RSS after the imports, which also shows what the base weights themselves cost.
Prints one table, the precision and quantization that ran, and ratio lines against the 32/16-bit baseline.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401  (offline env)
from common import build_model, current_rss_mb, machine, make_pairs, peak_rss_mb, table, tokenizer_for

GPT2_SMALL = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257)
VARIANTS = {  # name: (--bf16, 4-bit, 8-bit)
    "fp32": (False, False, False),
    "bf16": (True, False, False),
    "4bit": (None, True, False),
    "8bit": (None, False, True),
}


def reset_peak_rss() -> None:
    """Start a new VmHWM window (Linux: writing 5 to clear_refs resets the peak RSS to the current RSS)."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def weight_mb(model) -> float:
    """Bytes of the model's parameters and buffers as stored (packed 4-bit/8-bit weights count as stored)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors) / 2**20


def run_variant(name: str, base_dir: str, pairs_n: int, steps: int, length_scale: float) -> dict:
    import torch
    from transformers import AutoTokenizer

    from dpo_studio.config.arguments import PRODUCT_DEFAULTS, DPOTrainingArguments
    from dpo_studio.config.precision import precision_of
    from dpo_studio.data.reading import to_dataset
    from dpo_studio.models.families import (
        Architecture,
        describe_quantization,
        load_model,
        prepare_tokenizer,
        quantization_config,
    )
    from dpo_studio.training.pipeline import build_trainer
    from dpo_studio.training.speed import tune_host

    after_imports = current_rss_mb()
    bf16, four, eight = VARIANTS[name]
    pairs = make_pairs(pairs_n, length_scale, seed=0)
    arch = Architecture(is_encoder_decoder=False, model_type="gpt2")
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(base_dir), arch)
    with tempfile.TemporaryDirectory() as tmp:
        args = DPOTrainingArguments(**{
            **PRODUCT_DEFAULTS, "output_dir": tmp, "max_steps": steps, "report_to": "none", "save_strategy": "no",
            "logging_steps": 1, "disable_tqdm": True, "learning_rate": 1e-3, "seed": 0, "bf16": bf16})
        precision = precision_of(args)
        tune_host(precision.device)  # as `dpo-studio train` does at its start
        quant = quantization_config(four, eight, precision)
        model = load_model(base_dir, arch, quantization_config=quant)
        loaded_rss, load_peak = current_rss_mb(), peak_rss_mb()
        reset_peak_rss()
        train_ds = to_dataset(pairs, arch.prompt_format)
        started = time.perf_counter()
        trainer = build_trainer(arch, model, tokenizer, train_ds, None, args, arch.lora_config(16, 32, 0.0))
        trainer.train()
        seconds = time.perf_counter() - started
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "name": name, "seconds": seconds, "pairs_per_s": steps * args.per_device_train_batch_size / seconds,
        "weights_mb": weight_mb(model), "load_peak_mb": load_peak - after_imports,
        "train_peak_mb": peak_rss_mb() - after_imports, "loaded_mb": loaded_rss - after_imports,
        "first_loss": losses[0], "last_loss": losses[-1], "precision": precision.describe(),
        "quantization": describe_quantization(quant) or "-", "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--length-scale", type=float, default=0.35)
    parser.add_argument("--variants", default="fp32,bf16,4bit,8bit")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        name, base_dir = opts.child.split("|", 1)
        print(json.dumps(run_variant(name, base_dir, opts.pairs, opts.steps, opts.length_scale)))
        return
    print(f"# qlora_memory — GPT-2-small shape {GPT2_SMALL}, {opts.pairs} pairs x {opts.steps} steps, LoRA r=16; "
          f"{machine()}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:  # one fp32 base on disk, loaded by every variant
        pairs = make_pairs(opts.pairs, opts.length_scale, seed=0)
        tokenizer = tokenizer_for(pairs, False)
        build_model("gpt2", GPT2_SMALL, tokenizer, seed=0).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name in opts.variants.split(","):
            cmd = [sys.executable, __file__, "--child", f"{name}|{tmp}", "--pairs", str(opts.pairs), "--steps",
                   str(opts.steps), "--length-scale", str(opts.length_scale)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"# {name}: failed\n{proc.stderr[-2000:]}")
                continue
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    print(table(["variant", "precision that ran", "quantization", "weights MB (stored)", "loading peak MB",
                 "training peak MB", "pairs/s", "loss step 1", "loss last"],
                [[r["name"], r["precision"], r["quantization"], round(r["weights_mb"]), round(r["load_peak_mb"]),
                  round(r["train_peak_mb"]), round(r["pairs_per_s"], 3), round(r["first_loss"], 4),
                  round(r["last_loss"], 4)] for r in results]))
    print("# peaks are VmHWM minus RSS after imports; the training peak window starts after the model is loaded")
    by_name = {r["name"]: r for r in results}
    for quantized in ("4bit", "8bit"):
        for full in ("fp32", "bf16"):
            if quantized in by_name and full in by_name:
                q, f = by_name[quantized], by_name[full]
                print(f"ratio {quantized} / {full}: weights {q['weights_mb'] / f['weights_mb']:.2f}x, training peak "
                      f"memory {q['train_peak_mb'] / f['train_peak_mb']:.2f}x, pairs/s "
                      f"{q['pairs_per_s'] / f['pairs_per_s']:.2f}x")


if __name__ == "__main__":
    main()
