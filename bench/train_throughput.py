"""Preference pairs per second: stock TRL vs the product (GPT-2), naive seq2seq DPO vs the product (T5).

    python bench/train_throughput.py [--preset arch|small|full] [--pairs N] [--epochs 3] [--precision auto|bf16|fp32]
                                     [--stock-bf16] [--bf16-check]

Same model (built from config, fixed seed), same data, same LoRA (the product's per-architecture config), same
hyper-parameters (lr, batch, epochs, beta, seed) in every variant; only the speed-relevant settings differ:

* stock TRL: `trl.DPOTrainer` with TRL's defaults (gradient checkpointing on, reference forward every step, random
  batches), in the precision the product runs in (`use_cpu=True` set by hand, as a TRL user on a CPU must), so
  that the ratio compares equal arithmetic; `--stock-bf16` adds the literal TRL default bf16=True too.
* naive seq2seq: our Seq2SeqDPOTrainer with the encoder run separately for the chosen and the rejected rows (as a
  concatenated seq2seq DPO forward does), the reference forward every step, random batches, the product's precision.
* product: `dpo_studio.pipeline.build_trainer` with the product's training arguments
  (`config.DPOTrainingArguments` over `PRODUCT_DEFAULTS`, what `train_dpo.py` runs; `--precision auto` is the
  product's own choice: bf16 on a CPU with native bf16, fp32 elsewhere). It keeps stock TRL's random batches, so its
  loss curve should equal the stock one (equal work), only faster.
* `--bf16-check`: the product in fp32 and in bf16 (forced; emulated and slow on CPUs without native bf16), final
  loss within 2% and pairs/s.

Every row prints the precision that ran (after the product's resolution), not the options given.

Each variant runs in its own fresh process (the product's process-wide settings, such as glibc malloc reuse and
threads, must not leak into a baseline). Time = trainer construction (tokenization, one-off reference pass) +
training. Final loss = DPO loss of the trained
model over all training pairs, computed after timing by the same `evaluate` code for every variant.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import common  # noqa: F401  (sets offline env)
import torch
from common import PRECISIONS, PRESETS, build_model, machine, make_pairs, product_args, table, tokenizer_for
from trl import DPOConfig, DPOTrainer

from dpo_studio.data import to_dataset
from dpo_studio.families import Architecture, architecture_of, prepare_tokenizer
from dpo_studio.pipeline import build_trainer
from dpo_studio.precision import choose_precision, cpu_has_native_bf16, precision_of
from dpo_studio.seq2seq_dpo import DataCollatorForSeq2SeqPreference, Seq2SeqDPOTrainer
from dpo_studio.speed import configure_threads

TARGETS = {"gpt2": "3.0x", "t5": "2.0x"}  # issue 18: GPT-2 vs stock TRL, T5 vs naive seq2seq DPO

# Hyper-parameters shared by all variants. lr is above the product's 5e-5 so that a handful of steps move the loss
# visibly (equal final loss is then a real check, not 0.693 everywhere).
SHARED = dict(learning_rate=2e-4, per_device_train_batch_size=8, per_device_eval_batch_size=16, beta=0.1, seed=0,
              max_length=1024, lr_scheduler_type="linear", warmup_steps=0)
RUN = dict(report_to="none", save_strategy="no", eval_strategy="no", logging_steps=1, disable_tqdm=True)


class NaiveSeq2SeqCollator(DataCollatorForSeq2SeqPreference):
    """One encoder row per decoder row: the encoder runs separately for the chosen and the rejected completion."""

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        for key in ("encoder_input_ids", "encoder_attention_mask"):
            batch[key] = torch.cat([batch[key], batch[key]], dim=0)
        return batch


def make_tokenizer(kind: str, pairs):
    return prepare_tokenizer(tokenizer_for(pairs, kind == "t5"), Architecture(kind == "t5", kind))


def run_variant(name, kind, preset, pairs, tokenizer, epochs, out_dir, trainer_kind, precision):
    """`precision`: the product's --precision (auto/bf16/fp32); the baselines run what it resolves to."""
    model = build_model(kind, getattr(preset, kind), tokenizer, seed=0)
    arch = architecture_of(model.config)
    lora = arch.lora_config(16, 32, 0.0)  # the product's LoRA (families.LORA_TARGETS), r/alpha/dropout defaults
    train_ds = to_dataset(pairs, arch.prompt_format)
    common_args = dict(output_dir=out_dir, num_train_epochs=epochs, **SHARED, **RUN)
    torch.manual_seed(0)
    started = time.perf_counter()
    bf16 = choose_precision(PRECISIONS[precision], False).bf16
    if trainer_kind == "product":
        args = product_args(precision, **common_args)
        trainer = build_trainer(arch, model, tokenizer, train_ds, None, args, lora)
    elif trainer_kind == "stock":
        # TRL defaults otherwise (gradient_checkpointing=True, ...)
        args = DPOConfig(**common_args, bf16=bf16, use_cpu=not torch.cuda.is_available())
        trainer = DPOTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                             peft_config=lora)
    else:  # naive seq2seq
        args = DPOConfig(**common_args, bf16=bf16, use_cpu=not torch.cuda.is_available(),
                         gradient_checkpointing=False, precompute_ref_log_probs=False)
        collator = NaiveSeq2SeqCollator(pad_token_id=tokenizer.pad_token_id,
                                        decoder_start_token_id=model.config.decoder_start_token_id)
        trainer = Seq2SeqDPOTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                                    peft_config=lora, data_collator=collator)
    steps = common.StepTimer()
    trainer.add_callback(steps.callback)
    result = trainer.train()
    elapsed = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steps_per_epoch = max(1, len(losses) // epochs)
    final = trainer.evaluate(eval_dataset=to_dataset(pairs, arch.prompt_format))["eval_loss"]
    ran = precision_of(trainer.args)
    settings = (f"ran {ran.compute}, gc={args.gradient_checkpointing}, precompute_ref={args.precompute_ref_log_probs}, "
                f"sampler={type(trainer._get_train_sampler()).__name__}, threads={torch.get_num_threads()}, "
                f"compile={common.compile_setting(trainer)}, {steps.describe()}")
    row = dict(name=name, seconds=elapsed, pairs_per_s=len(pairs) * epochs / elapsed, train_loss=result.training_loss,
               last_epoch_loss=sum(losses[-steps_per_epoch:]) / steps_per_epoch, final_loss=final, settings=settings,
               precision=ran.describe())
    del trainer, model
    common.collect()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="arch")
    parser.add_argument("--pairs", type=int, default=None, help="override the preset's number of pairs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--families", default="gpt2,t5")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="auto",
                        help="the product's --bf16 (auto: its own choice); the baselines run what it resolves to")
    parser.add_argument("--stock-bf16", action="store_true", help="also run stock TRL with its literal bf16 default")
    parser.add_argument("--bf16-check", action="store_true",
                        help="also the product in fp32 vs bf16: final loss (target within 2%%) and pairs/s")
    parser.add_argument("--bf16-check-only", action="store_true", help="--bf16-check without the baselines")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "name|kind|trainer_kind|precision": one variant -> JSON
    opts = parser.parse_args()
    preset = PRESETS[opts.preset]
    n = opts.pairs or preset.pairs
    pairs = make_pairs(n, preset.length_scale, seed=0)
    if opts.child:
        configure_threads()
        name, kind, trainer_kind, precision = opts.child.split("|")
        with tempfile.TemporaryDirectory() as tmp:
            row = run_variant(name, kind, preset, pairs, make_tokenizer(kind, pairs), opts.epochs, tmp, trainer_kind,
                              precision)
        print("RESULT " + json.dumps(row))
        return

    def run_isolated(name: str, kind: str, trainer_kind: str, precision: str) -> dict:
        command = [sys.executable, __file__, "--preset", opts.preset, "--pairs", str(n), "--epochs", str(opts.epochs),
                   "--child", f"{name}|{kind}|{trainer_kind}|{precision}"]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"variant {name!r} failed:\n{out.stderr[-3000:]}")
        return json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])

    configure_threads()
    print(f"# train_throughput — preset {preset.name}: {n} pairs x {opts.epochs} epochs, --precision {opts.precision} "
          f"(resolves to {choose_precision(PRECISIONS[opts.precision], False).describe()}); {machine()}")
    rows, ratios = [], []
    for kind in [] if opts.bf16_check_only else opts.families.split(","):
        tokenizer = make_tokenizer(kind, pairs)
        enc = [len(tokenizer(p.messages[-1][1] + p.chosen)["input_ids"]) for p in pairs]
        shape = getattr(preset, kind)
        print(f"# {kind}: {shape}, prompt+chosen tokens mean {sum(enc) / len(enc):.0f} (min {min(enc)}, max {max(enc)})")
        baseline_kind = "stock" if kind == "gpt2" else "naive"
        baseline_name = f"{kind}: stock TRL DPOTrainer" if kind == "gpt2" else f"{kind}: naive seq2seq DPO"
        variants = [(baseline_name, baseline_kind, opts.precision), (f"{kind}: product", "product", opts.precision)]
        if kind == "gpt2" and opts.stock_bf16:
            variants.insert(1, (f"{kind}: stock TRL DPOTrainer (TRL default bf16)", "stock", "bf16"))
        results = [run_isolated(name, kind, tk, precision) for name, tk, precision in variants]
        for r in results:
            rows.append([r["name"], round(r["seconds"], 1), round(r["pairs_per_s"], 3), round(r["train_loss"], 4),
                         round(r["last_epoch_loss"], 4), round(r["final_loss"], 4), r["settings"]])
        base, product = results[0], results[-1]
        ratios.append((kind, base, product))
        if kind == "gpt2" and opts.stock_bf16:
            ratios.append((kind, results[1], product))
    checks = []
    if opts.bf16_check or opts.bf16_check_only:
        for kind in opts.families.split(","):
            fp32 = run_isolated(f"{kind}: product --precision fp32", kind, "product", "fp32")
            bf16 = run_isolated(f"{kind}: product --precision bf16", kind, "product", "bf16")
            checks.append((kind, fp32, bf16))
            for r in (fp32, bf16):
                rows.append([r["name"], round(r["seconds"], 1), round(r["pairs_per_s"], 3), round(r["train_loss"], 4),
                             round(r["last_epoch_loss"], 4), round(r["final_loss"], 4), r["settings"]])
    print(table(["variant", "time s", "pairs/s", "train loss (mean)", "last-epoch loss", "final loss", "settings"], rows))
    print("# precision that ran:")
    described = {r["name"]: r["precision"] for _, b, p in ratios + checks for r in (b, p)}
    for name, precision in described.items():
        print(f"#   {name}: {precision}")
    for kind, base, product in ratios:
        diff = (product["final_loss"] - base["final_loss"]) / base["final_loss"]
        target = "stock TRL" if "stock" in base["name"] else "naive seq2seq"
        bf = " (TRL default bf16)" if "bf16" in base["name"] else ""
        print(f"ratio {kind}: product / {target}{bf} pairs/s = {product['pairs_per_s'] / base['pairs_per_s']:.2f}x "
              f"(target >= {TARGETS[kind]}); final loss {product['final_loss']:.4f} vs {base['final_loss']:.4f} ({diff:+.2%}, target +-2%)")
    for kind, fp32, bf16 in checks:
        rel = (bf16["final_loss"] - fp32["final_loss"]) / fp32["final_loss"]
        native = "" if cpu_has_native_bf16() else " (this CPU emulates bf16: its speed is not representative)"
        print(f"ratio bf16-check {kind}: final loss bf16 {bf16['final_loss']:.4f} vs fp32 {fp32['final_loss']:.4f} "
              f"({rel:+.2%}, target +-2%); pairs/s bf16 / fp32 = {bf16['pairs_per_s'] / fp32['pairs_per_s']:.2f}x{native}")


if __name__ == "__main__":
    main()
