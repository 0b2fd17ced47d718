"""One product training step (GPT-2-small shape, 8 pairs, forward + backward under the trainer's autocast) with the
CPU speed patches switched on and off, interleaved in one process: min/median wall and CPU time per variant.

    OMP_NUM_THREADS=1 python bench/step_ab.py bf16 4 product,nohead+nocopies+sdpa,nohead,nocopies,sdpa

Variant tokens: nohead (TRL's log-prob kernel), nocopies (autocast re-casts frozen weights), sdpa (SDPA instead of eager attention under bf16), b<N> (at most N length buckets).
CPU time is the steadier figure on a shared machine.
"""
import functools
import os
import statistics
import sys
import tempfile
import time

import common  # noqa: F401
import torch
from common import build_model, make_pairs, product_args, tokenizer_for

from dpo_studio.data.reading import to_dataset
from dpo_studio.models.families import Architecture, architecture_of, prepare_tokenizer
from dpo_studio.training import speed
from dpo_studio.training.pipeline import build_trainer

prec = sys.argv[1]; rounds = int(sys.argv[2]); variants = sys.argv[3].split(",")
speed.tune_host("cpu")  # as `dpo-studio train` does at its start on a CPU
shape = dict(n_layer=12, n_embd=768, n_head=12, vocab_size=50257)
pairs = make_pairs(16, 0.35, seed=0)
tok = prepare_tokenizer(tokenizer_for(pairs, False), Architecture(False, "gpt2"))
model = build_model("gpt2", shape, tok, seed=0)
arch = architecture_of(model.config)
ds = to_dataset(pairs, arch.prompt_format)
args = product_args(prec, output_dir=tempfile.mkdtemp(), max_steps=1, save_strategy="no", disable_tqdm=True, seed=0)
trainer = build_trainer(arch, model, tok, ds, None, args, arch.lora_config(16, 32, 0.0))
batch = next(iter(trainer.get_train_dataloader()))
def step(m, b):
    with trainer.accelerator.autocast():
        return trainer.training_step(m, b)
m = trainer.model; m.train(); trainer.current_gradient_accumulation_steps = 1
orig = speed.batching.bucketed_rows  # looked up there by the bucket runner
base = m.get_base_model()
print(f"# {common.machine()}; threads {torch.get_num_threads()}; precision {common.ran_precision(trainer)}; "
      f"compile {trainer.compile_decision.enabled} ({trainer.compile_decision.reason})")
def setv(v):
    impl = "sdpa" if "sdpa" in v else "eager"
    base.set_attn_implementation(impl)
    os.environ[speed.CPU_HEAD_ENV] = "0" if "nohead" in v else "1"
    os.environ[speed.FROZEN_COPIES_ENV] = "0" if "nocopies" in v else "1"
    nb = [int(x[1:]) for x in v.split("+") if x.startswith("b") and x[1:].isdigit()]
    speed.batching.bucketed_rows = functools.partial(orig, max_buckets=nb[0]) if nb else orig
times = {v: [] for v in variants}; cpu = {v: [] for v in variants}; losses = {}
for v in variants: setv(v); step(m, batch)  # warm
for r in range(rounds):
    for v in variants:
        setv(v); t = time.perf_counter(); c = time.process_time(); loss = step(m, batch); times[v].append(time.perf_counter() - t); cpu[v].append(time.process_time() - c)
        losses[v] = loss.item()
m.zero_grad()
for v in variants:
    print(f"{prec} {v:24s} wall min {min(times[v]):.3f} med {statistics.median(times[v]):.3f} cpu min {min(cpu[v]):.3f} med {statistics.median(cpu[v]):.3f} loss {losses[v]:.5f}", flush=True)
