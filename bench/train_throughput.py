"""Preference pairs per second: stock TRL (its defaults, and tuned) vs the product (GPT-2), naive seq2seq DPO vs the
product (T5); the second run's speedup from the saved reference log-probs; a per-op profile of the product's steps;
projected hours per epoch of the Human-Like set (10.9k pairs).

    python bench/train_throughput.py [--preset arch|small|full] [--pairs N] [--epochs 3] [--precision auto|bf16|fp32]
                                     [--stock-bf16] [--bf16-check] [--no-tuned] [--no-store] [--profile-ops 15]

Same model (built from config, fixed seed), same data, same LoRA (the product's per-architecture config), same
hyper-parameters (lr, batch, epochs, beta, seed) in every variant; only the speed-relevant settings differ:

* stock TRL tuned: the same with what a TRL user who reads the docs sets on a model this small,
  `gradient_checkpointing=False` and `precompute_ref_log_probs=True` (same precision, same pairs).
* stock TRL: `trl.DPOTrainer` with TRL's defaults (gradient checkpointing on, reference forward every step, random
  batches), in the precision the product runs in (`use_cpu=True` set by hand, as a TRL user on a CPU must), so
  that the ratio compares equal arithmetic; `--stock-bf16` adds the literal TRL default bf16=True too.
* naive seq2seq: our Seq2SeqDPOTrainer with the encoder run separately for the chosen and the rejected rows (as a
  concatenated seq2seq DPO forward does), the reference forward every step, random batches, the product's precision.
* product: `dpo_studio.training.pipeline.build_trainer` with the product's training arguments
  (`config.DPOTrainingArguments` over `PRODUCT_DEFAULTS`, what `train_dpo.py` runs; `--precision auto` is the
  product's own choice: bf16 on a CPU with native bf16, fp32 elsewhere). It keeps stock TRL's random batches, so its
  loss curve should equal the stock one (equal work), only faster.
* `--bf16-check`: the product in fp32 and in bf16 (forced; emulated and slow on CPUs without native bf16), final
  loss within 2% and pairs/s.

* product, second run: the product again on the same base and pairs with another beta, reading the reference
  log-probs the first run saved (`speed.ref_cache`); its speedup over the first run is printed.
* profile: the product's training under `torch.profiler`, top ops by self CPU time (where the time goes).

Projection: hours for one epoch over the Human-Like set's 10.9k pairs = setup (tokenization + the reference pass)
per measured pair x 10.9k + the steady step time x the steps of 10.9k pairs; meaningful with `--preset full` (GPT-2-small / T5-small shapes,
real vocabulary sizes, full chat lengths).

Every row prints the precision that ran (after the product's resolution), not the options given.

Each variant runs in its own fresh process (the product's process-wide settings, such as glibc malloc reuse and
threads, must not leak into a baseline). Time = trainer construction (tokenization, one-off reference pass) +
training. Final loss = DPO loss of the trained
model over all training pairs, computed after timing by the same `evaluate` code for every variant.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common  # noqa: F401  (sets offline env)
import torch
from common import PRECISIONS, PRESETS, build_model, machine, make_pairs, product_args, table, tokenizer_for
from trl import DPOConfig, DPOTrainer

from dpo_studio.config.precision import choose_precision, cpu_has_native_bf16, precision_of
from dpo_studio.data.reading import to_dataset
from dpo_studio.models.families import Architecture, architecture_of, prepare_tokenizer
from dpo_studio.training.pipeline import build_trainer
from dpo_studio.training.seq2seq_dpo import DataCollatorForSeq2SeqPreference, Seq2SeqDPOTrainer
from dpo_studio.training.speed import tune_host

TARGETS = {"gpt2": "3.5x", "t5": "2.5x"}  # issue 27: GPT-2 vs tuned stock TRL, T5 vs naive seq2seq DPO
HUMAN_LIKE_PAIRS = 10_900  # HumanLLMs/Human-Like-DPO-Dataset

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


def make_trainer(kind, trainer_kind, model, tokenizer, train_ds, common_args, precision, store):
    """The variant's trainer (see the module docstring for what each runs)."""
    arch = architecture_of(model.config)
    lora = arch.lora_config(16, 32, 0.0)  # the product's LoRA (families.LORA_TARGETS), r/alpha/dropout defaults
    bf16 = choose_precision(PRECISIONS[precision], False).bf16
    cpu = not torch.cuda.is_available()
    if trainer_kind.startswith("product"):
        args = product_args(precision, **common_args)
        return build_trainer(arch, model, tokenizer, train_ds, None, args, lora, reference_store=store)
    if trainer_kind in ("stock", "tuned"):
        tuned = dict(gradient_checkpointing=False, precompute_ref_log_probs=True) if trainer_kind == "tuned" else {}
        args = DPOConfig(**common_args, bf16=bf16, use_cpu=cpu, **tuned)  # TRL defaults otherwise
        return DPOTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer, peft_config=lora)
    args = DPOConfig(**common_args, bf16=bf16, use_cpu=cpu, gradient_checkpointing=False, precompute_ref_log_probs=False)
    collator = NaiveSeq2SeqCollator(pad_token_id=tokenizer.pad_token_id,
                                    decoder_start_token_id=model.config.decoder_start_token_id)
    return Seq2SeqDPOTrainer(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                             peft_config=lora, data_collator=collator)


def profiled(trainer, top: int) -> tuple[object, str]:
    """`trainer.train()` under torch.profiler: (train output, table of the top ops by self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = trainer.train()
    return result, prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=48)


def run_variant(name, kind, preset, pairs, tokenizer, epochs, out_dir, trainer_kind, precision, store=None, top=15):
    """`precision`: the product's --precision (auto/bf16/fp32); the baselines run what it resolves to."""
    model = build_model(kind, getattr(preset, kind), tokenizer, seed=0)
    arch = architecture_of(model.config)
    train_ds = to_dataset(pairs, arch.prompt_format)
    beta = 0.2 if trainer_kind == "product-second" else SHARED["beta"]  # the second run changes only beta
    common_args = dict(output_dir=out_dir, num_train_epochs=epochs, **{**SHARED, "beta": beta}, **RUN)
    torch.manual_seed(0)
    started = time.perf_counter()
    trainer = make_trainer(kind, trainer_kind, model, tokenizer, train_ds, common_args, precision, store)
    setup = time.perf_counter() - started
    steps = common.StepTimer()
    trainer.add_callback(steps.callback)
    ops = ""
    if trainer_kind == "product-profile":
        result, ops = profiled(trainer, top)
    else:
        result = trainer.train()
    elapsed = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    steps_per_epoch = max(1, len(losses) // epochs)
    final = trainer.evaluate(eval_dataset=to_dataset(pairs, arch.prompt_format))["eval_loss"]
    ran = precision_of(trainer.args)
    args = trainer.args
    settings = (f"ran {ran.compute}, gc={args.gradient_checkpointing}, precompute_ref={args.precompute_ref_log_probs}, "
                f"sampler={type(trainer._get_train_sampler()).__name__}, threads={torch.get_num_threads()}, "
                f"compile={common.compile_setting(trainer)}, {steps.describe()}")
    store_use = getattr(trainer, "reference_store", None)
    if store_use is not None:
        settings += f", reference store: {store_use.served} batches served, {store_use.computed} computed"
    row = dict(name=name, seconds=elapsed, setup_s=setup, pairs_per_s=len(pairs) * epochs / elapsed,
               train_loss=result.training_loss, last_epoch_loss=sum(losses[-steps_per_epoch:]) / steps_per_epoch,
               final_loss=final, settings=settings, precision=ran.describe(), ops=ops, pairs=len(pairs), epochs=epochs,
               step_times=steps.times)
    del trainer, model
    common.collect()
    return row


def hours_per_epoch(row: dict) -> float:
    """Projected hours of a one-epoch run over the Human-Like set: the setup (tokenization, the reference pass: both
    scale with the pairs) per measured pair x 10.9k, plus the steady step time (median after the first step, which
    warms kernels up once per run; the first step itself when only one ran) x the steps of 10.9k pairs."""
    times = row["step_times"]
    step = statistics.median(times[1:]) if len(times) > 1 else times[0]
    steps = math.ceil(HUMAN_LIKE_PAIRS / SHARED["per_device_train_batch_size"])
    return (row["setup_s"] / row["pairs"] * HUMAN_LIKE_PAIRS + step * steps) / 3600


BASELINE_SETTINGS = {
    "stock": "trl.DPOTrainer, TRL defaults: gradient_checkpointing=True, precompute_ref_log_probs=False (reference "
             "forward every step), random batches; use_cpu on CPU and the product's precision",
    "tuned": "trl.DPOTrainer, gradient_checkpointing=False, precompute_ref_log_probs=True, otherwise as stock",
    "naive": "Seq2SeqDPOTrainer, encoder run separately for chosen and rejected, reference forward every step, "
             "gradient_checkpointing=False, random batches, the product's precision",
}


def parse_options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="arch")
    parser.add_argument("--pairs", type=int, default=None, help="override the preset's number of pairs")
    parser.add_argument("--epochs", type=int, default=None, help="default: 3 (1 with --preset full)")
    parser.add_argument("--families", default="gpt2,t5")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="auto",
                        help="the product's --bf16 (auto: its own choice); the baselines run what it resolves to")
    parser.add_argument("--stock-bf16", action="store_true", help="also run stock TRL with its literal bf16 default")
    parser.add_argument("--no-tuned", action="store_true", help="skip the tuned stock TRL peer")
    parser.add_argument("--no-store", action="store_true", help="skip the second run over saved reference log-probs")
    parser.add_argument("--profile-ops", type=int, default=15, help="rows of the per-op profile (0: no profile)")
    parser.add_argument("--bf16-check", action="store_true",
                        help="also the product in fp32 vs bf16: final loss (target within 2%%) and pairs/s")
    parser.add_argument("--bf16-check-only", action="store_true", help="--bf16-check without the baselines")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # "name|kind|trainer_kind|precision|store": one variant
    opts = parser.parse_args()
    opts.epochs = opts.epochs or (1 if opts.preset == "full" else 3)
    return opts


def variants(kind: str, opts) -> list[tuple[str, str, str]]:
    """(name, trainer kind, precision) of the family's variants, baselines first."""
    if kind == "gpt2":
        out = [(f"{kind}: stock TRL DPOTrainer (defaults)", "stock", opts.precision)]
        if opts.stock_bf16:
            out.append((f"{kind}: stock TRL DPOTrainer (TRL default bf16)", "stock", "bf16"))
        if not opts.no_tuned:
            out.append((f"{kind}: stock TRL DPOTrainer (tuned)", "tuned", opts.precision))
    else:
        out = [(f"{kind}: naive seq2seq DPO", "naive", opts.precision)]
    out.append((f"{kind}: product", "product-first" if not opts.no_store else "product", opts.precision))
    if not opts.no_store:
        out.append((f"{kind}: product, second run (beta 0.2, saved reference)", "product-second", opts.precision))
    if opts.profile_ops:
        out.append((f"{kind}: product under torch.profiler", "product-profile", opts.precision))
    return out


def result_row(r: dict) -> list:
    return [r["name"], round(r["seconds"], 1), round(r["setup_s"], 1), round(r["pairs_per_s"], 3),
            round(r["train_loss"], 4), round(r["last_epoch_loss"], 4), round(r["final_loss"], 4),
            round(hours_per_epoch(r), 2), r["settings"]]


def print_ratios(results: dict[str, list[dict]]) -> None:
    for kind, rows in results.items():
        by_kind = {r["trainer_kind"]: r for r in rows}
        product = by_kind.get("product-first") or by_kind["product"]
        for base_kind in ("stock", "tuned", "naive"):
            base = by_kind.get(base_kind)
            if base is None:
                continue
            diff = (product["final_loss"] - base["final_loss"]) / base["final_loss"]
            target = {"stock": "(issue 18: >= 3.0x)", "tuned": f"(target >= {TARGETS[kind]})",
                      "naive": f"(target >= {TARGETS[kind]})"}[base_kind]
            print(f"ratio {kind}: product / {base['name'].split(': ', 1)[1]} pairs/s = "
                  f"{product['pairs_per_s'] / base['pairs_per_s']:.2f}x {target}; final loss "
                  f"{product['final_loss']:.4f} vs {base['final_loss']:.4f} ({diff:+.2%}, target +-2%)")
        second = by_kind.get("product-second")
        if second is not None:
            print(f"ratio {kind}: product second run (saved reference log-probs) / first run, wall time = "
                  f"{product['seconds'] / second['seconds']:.2f}x faster ({product['seconds']:.1f} s -> "
                  f"{second['seconds']:.1f} s; setup {product['setup_s']:.1f} s -> {second['setup_s']:.1f} s)")
        for r in rows:
            if r["trainer_kind"] != "product-profile":
                print(f"projection {kind}: {r['name'].split(': ', 1)[1]}: {hours_per_epoch(r):.2f} h per epoch of "
                      f"{HUMAN_LIKE_PAIRS} pairs (one-off setup included)")


def main() -> None:
    opts = parse_options()
    preset = PRESETS[opts.preset]
    n = opts.pairs or preset.pairs
    pairs = make_pairs(n, preset.length_scale, seed=0)
    if opts.child:
        tune_host("cpu")  # as `dpo-studio train` does at its start on a CPU
        name, kind, trainer_kind, precision, store = opts.child.split("|")
        with tempfile.TemporaryDirectory() as tmp:
            row = run_variant(name, kind, preset, pairs, make_tokenizer(kind, pairs), opts.epochs, tmp, trainer_kind,
                              precision, store or None, opts.profile_ops)
        print("RESULT " + json.dumps({**row, "trainer_kind": trainer_kind}))
        return

    def run_isolated(name: str, kind: str, trainer_kind: str, precision: str, store: str = "") -> dict:
        command = [sys.executable, __file__, "--preset", opts.preset, "--pairs", str(n), "--epochs", str(opts.epochs),
                   "--profile-ops", str(opts.profile_ops), "--child", f"{name}|{kind}|{trainer_kind}|{precision}|{store}"]
        out = subprocess.run(command, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"variant {name!r} failed:\n{out.stderr[-3000:]}")
        return json.loads(next(l for l in out.stdout.splitlines() if l.startswith("RESULT "))[len("RESULT "):])

    tune_host("cpu")
    print(f"# train_throughput — preset {preset.name}: {n} pairs x {opts.epochs} epochs, --precision {opts.precision} "
          f"(resolves to {choose_precision(PRECISIONS[opts.precision], False).describe()}); {machine()}")
    print(f"# load average at start: {common.load_average()}")
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as stores:
        for kind in [] if opts.bf16_check_only else opts.families.split(","):
            tokenizer = make_tokenizer(kind, pairs)
            enc = [len(tokenizer(p.messages[-1][1] + p.chosen)["input_ids"]) for p in pairs]
            print(f"# {kind}: {getattr(preset, kind)}, prompt+chosen tokens mean {sum(enc) / len(enc):.0f} "
                  f"(min {min(enc)}, max {max(enc)})")
            store = str(Path(stores) / kind)  # first and second product runs share it; the others never see it
            results[kind] = [run_isolated(name, kind, tk, precision, store if tk.startswith("product-") and
                                          tk != "product-profile" else "") for name, tk, precision in variants(kind, opts)]
        checks = bf16_checks(opts, run_isolated)
    rows = [result_row(r) for rs in results.values() for r in rs] + [result_row(r) for pair in checks for r in pair[1:]]
    print(table(["variant", "time s", "setup s", "pairs/s", "train loss (mean)", "last-epoch loss", "final loss",
                 f"h/epoch of {HUMAN_LIKE_PAIRS // 1000}.{HUMAN_LIKE_PAIRS % 1000 // 100}k", "settings"], rows))
    print("# baselines' settings:")
    for name, described in BASELINE_SETTINGS.items():
        print(f"#   {name}: {described}")
    print("# precision that ran:")
    for r in [r for rs in results.values() for r in rs] + [r for pair in checks for r in pair[1:]]:
        print(f"#   {r['name']}: {r['precision']}")
    for r in [r for rs in results.values() for r in rs if r["ops"]]:
        print(f"# where the time goes: {r['name']}, top ops by self CPU time (profiler overhead included)\n{r['ops']}")
    print(f"# load average at end: {common.load_average()}")
    print_ratios(results)
    print_bf16_checks(checks)


def bf16_checks(opts, run_isolated) -> list[tuple[str, dict, dict]]:
    checks = []
    if opts.bf16_check or opts.bf16_check_only:
        for kind in opts.families.split(","):
            fp32 = run_isolated(f"{kind}: product --precision fp32", kind, "product", "fp32")
            bf16 = run_isolated(f"{kind}: product --precision bf16", kind, "product", "bf16")
            checks.append((kind, fp32, bf16))
    return checks


def print_bf16_checks(checks) -> None:
    for kind, fp32, bf16 in checks:
        rel = (bf16["final_loss"] - fp32["final_loss"]) / fp32["final_loss"]
        native = "" if cpu_has_native_bf16() else " (this CPU emulates bf16: its speed is not representative)"
        print(f"ratio bf16-check {kind}: final loss bf16 {bf16['final_loss']:.4f} vs fp32 {fp32['final_loss']:.4f} "
              f"({rel:+.2%}, target +-2%); pairs/s bf16 / fp32 = {bf16['pairs_per_s'] / fp32['pairs_per_s']:.2f}x{native}")


if __name__ == "__main__":
    main()
