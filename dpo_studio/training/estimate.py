"""`--check-data --estimate`: how long the whole run will take, measured before anything is trained.

Per family: the base is loaded as the run loads it (a demo base is built from config, without its warm start: the
same shapes cost the same), and the product's own trainer (`pipeline.build_trainer`, the run's resolved arguments:
precision, compile, batch sizes, lengths) runs a few DPO steps on a seeded sample of the user's training pairs in a
temporary folder that is removed afterwards. The steady step time (the first step, which warms kernels up, is timed
apart) and the reference pass per pair are then scaled to the run: optimizer steps x epochs, the one-off reference
pass over the train and held-out pairs, and the held-out evaluations before and after. No model, checkpoint or
reference store is written.
"""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch
from trl import DPOConfig

from dpo_studio.config.arguments import ModelArguments, ScriptArguments
from dpo_studio.data.reading import to_dataset
from dpo_studio.data.splits import PreparedData


@dataclass
class RunEstimate:
    """One family's measured step cost and the whole run projected from it."""

    family: str
    sample_pairs: int
    steps_timed: int
    first_step_s: float
    step_s: float  # median of the steady steps
    forward_s_per_pair: float  # one no-grad preference forward (reference pass, evaluation) per pair
    load_s: float
    train_steps: int
    projected_s: dict[str, float]  # load, reference, training, evaluation

    @property
    def total_s(self) -> float:
        return sum(self.projected_s.values())


def _step_times(trainer) -> list[float]:
    from transformers import TrainerCallback

    times: list[float] = []

    class StepClock(TrainerCallback):
        started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            StepClock.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - StepClock.started)

    trainer.add_callback(StepClock())
    trainer.train()
    return times


def _load(family: str, data: PreparedData, script_args: ScriptArguments, model_args: ModelArguments, seed: int):
    """(model, tokenizer, architecture) as the run would train them; a demo base is built, not warm-started."""
    from dpo_studio.models.families import (
        architecture_of,
        load_model_and_tokenizer,
        prepare_tokenizer,
        resolve_model_id,
    )

    if script_args.demo:
        from dpo_studio.models.demo import build_model, tokenizer_texts, train_tokenizer

        tokenizer = train_tokenizer(tokenizer_texts(data.train), script_args.demo_vocab_size, family == "t5")
        model = build_model(tokenizer, family == "t5", script_args.demo_hidden_size, script_args.demo_layers, seed)
        arch = architecture_of(model.config)
    else:
        model, tokenizer, arch = load_model_and_tokenizer(
            resolve_model_id(family), model_args.model_revision, script_args.trust_remote_code_models)
    prepare_tokenizer(tokenizer, arch)
    return model, tokenizer, arch


def estimate_family(family: str, data: PreparedData, script_args: ScriptArguments, training_args: DPOConfig,
                    model_args: ModelArguments) -> RunEstimate:
    """Time `script_args.estimate_steps` (+1 warm-up) DPO steps of `family` on a sample of the run's pairs."""
    from dpo_studio.training.pipeline import build_trainer

    started = time.perf_counter()
    model, tokenizer, arch = _load(family, data, script_args, model_args, training_args.seed)
    load_s = time.perf_counter() - started
    per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    steps = max(1, script_args.estimate_steps) + 1
    sample = random.Random(training_args.seed).sample(data.train, min(len(data.train), per_step * steps))
    lora = arch.lora_config(model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout,
                            model_args.lora_target_modules) if model_args.use_peft else None
    with tempfile.TemporaryDirectory(prefix="dpo-studio-estimate-") as tmp:
        args = dataclasses.replace(training_args, output_dir=tmp, num_train_epochs=1, max_steps=-1,
                                   save_strategy="no", eval_strategy="no", report_to=[], logging_steps=1)
        dataset = to_dataset(sample, arch.prompt_format)
        started = time.perf_counter()
        trainer = build_trainer(arch, model, tokenizer, dataset, None, args, lora)
        setup_s = time.perf_counter() - started  # tokenization, PEFT, and the reference pass over the sample
        times = _step_times(trainer)
        forward_s = _forward_s_per_pair(trainer, dataset)
    steady = statistics.median(times[1:]) if len(times) > 1 else times[0]
    world = max(1, training_args.world_size)
    train_steps = math.ceil(len(data.train) / (per_step * world)) * math.ceil(training_args.num_train_epochs)
    projected = {
        "load": load_s + max(0.0, setup_s - forward_s * len(sample)),  # the fixed part of building the trainer
        "reference": forward_s * (len(data.train) + len(data.eval)) / world,  # one forward per pair, once
        "training": steady * train_steps,
        "evaluation": 2 * forward_s * len(data.eval) / world,  # held-out pairs before and after: one forward each
    }
    return RunEstimate(family, len(sample), len(times), times[0], steady, forward_s, load_s, train_steps, projected)


def _forward_s_per_pair(trainer, dataset) -> float:
    """Seconds of one no-grad preference forward per pair: the second `evaluate` of the sample (the first also
    scores its reference, which TRL then keeps for the second)."""
    trainer.evaluate(eval_dataset=dataset)
    started = time.perf_counter()
    trainer.evaluate(eval_dataset=dataset)
    return (time.perf_counter() - started) / len(dataset)


def estimate_run(script_args: ScriptArguments, training_args: DPOConfig, model_args: ModelArguments,
                 data: PreparedData) -> list[RunEstimate]:
    return [estimate_family(family, data, script_args, training_args, model_args)
            for family in script_args.family_list()]


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def format_estimates(estimates: list[RunEstimate], data: PreparedData, training_args: DPOConfig) -> str:
    """The lines `--check-data --estimate` prints after the data report."""
    from dpo_studio.config.precision import cpu_flags, precision_of

    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), "unknown CPU")
    device = "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else model
    native = ", ".join(sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})) or "none"
    lines = ["", f"estimate on {device} (native bf16 flags: {native}), {torch.get_num_threads()} threads, "
                 f"{precision_of(training_args).describe()}:"]
    for e in estimates:
        p = e.projected_s
        lines.append(
            f"  {e.family}: {e.steps_timed} steps of {e.sample_pairs // e.steps_timed} pairs timed (first "
            f"{e.first_step_s:.2f} s, then {e.step_s:.2f} s/step; forward {e.forward_s_per_pair:.3f} s/pair)"
            f" -> {len(data.train)} pairs x {training_args.num_train_epochs:g} epochs = {e.train_steps} steps: "
            f"training {_hours(p['training'])}, reference pass {_hours(p['reference'])}, held-out evaluation "
            f"{_hours(p['evaluation'])}, loading and setup {_hours(p['load'])}; projected total {_hours(e.total_s)}")
    total = sum(e.total_s for e in estimates)
    lines.append(f"projected whole run: {_hours(total)} (generation evidence and saving not included)")
    return "\n".join(lines)


def _cpuinfo() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return handle.read().splitlines()
    except OSError:
        return []


def report_lines(script_args: ScriptArguments, training_args: DPOConfig, model_args: ModelArguments) -> str:
    """`--check-data --estimate`'s projection for the run these arguments describe (the data read once more)."""
    from dpo_studio.data.splits import prepare_data

    data = prepare_data(script_args, training_args.seed)
    return format_estimates(estimate_run(script_args, training_args, model_args, data), data, training_args)

