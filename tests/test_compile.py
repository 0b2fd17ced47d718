"""The compile rule: explicit --torch_compile honoured, auto decided from the measured figures, recorded."""

from __future__ import annotations

import pytest
from datasets import Dataset

from dpo_studio.config.arguments import DPOTrainingArguments
from dpo_studio.training.speed import compile as rule


def test_explicit_settings_are_honoured_everywhere():
    for device, compute in (("cpu", "fp32"), ("cpu", "bf16"), ("cuda", "bf16")):
        assert rule.choose_compile(True, compute, device, steps=1).enabled is True
        assert rule.choose_compile(False, compute, device, steps=10**6).enabled is False


def test_auto_compiles_bf16_cpu_runs_only_once_the_saving_pays_for_compiling():
    # Break-even from the Xeon figures: 2 x (80 - 3.11) s of compiling / (4.33 - 3.11) s saved per step.
    assert rule.MIN_COMPILED_STEPS == 127
    long = rule.choose_compile(None, "bf16", "cpu", steps=rule.MIN_COMPILED_STEPS)
    short = rule.choose_compile(None, "bf16", "cpu", steps=rule.MIN_COMPILED_STEPS - 1)
    assert long.enabled and long.requested == "auto" and "127" in long.reason
    assert not short.enabled and "would not pay" in short.reason


@pytest.mark.parametrize("compute,device,quantized", [("fp32", "cpu", False), ("bf16", "cuda", False),
                                                      ("bf16", "cpu", True)])
def test_auto_stays_off_where_compiling_was_slower_or_not_measured(compute, device, quantized):
    decision = rule.choose_compile(None, compute, device, steps=10**6, quantized=quantized)
    assert not decision.enabled and decision.requested == "auto"


def test_planned_steps_counts_epochs_batches_and_max_steps(tmp_path):
    args = DPOTrainingArguments(output_dir=str(tmp_path), report_to=[], per_device_train_batch_size=4,
                                gradient_accumulation_steps=2, num_train_epochs=3, bf16=False)
    assert rule.planned_steps(args, train_pairs=20) == 9  # ceil(20 / 8) = 3 per epoch
    args = DPOTrainingArguments(output_dir=str(tmp_path), report_to=[], max_steps=5, bf16=False)
    assert rule.planned_steps(args, train_pairs=10**6) == 5


def test_unset_torch_compile_is_auto_and_the_trainer_records_what_ran(tmp_path, single_thread):
    """The CLI's unset flag reaches the trainer as None; the trainer resolves it (fp32 CPU here: off) and records it."""
    from peft import LoraConfig
    from test_speed import rows, tiny_model
    from trainer_helpers import word_tokenizer

    from dpo_studio.training import speed

    args = DPOTrainingArguments(output_dir=str(tmp_path), report_to=[], bf16=False, max_steps=1, save_strategy="no",
                                per_device_train_batch_size=4, disable_tqdm=True)
    assert args.torch_compile is None
    model, train = tiny_model(False), Dataset.from_list(rows(8, seed=1))
    settings = speed.settings_for(args, model, train)
    assert args.torch_compile is None  # settings_for is pure: the final arguments are a new object
    trainer = speed.CausalDPOTrainer(
        model=model, **settings.as_kwargs(), train_dataset=train,
        processing_class=word_tokenizer(False),
        peft_config=LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    assert trainer.compile_decision.as_dict() == {"enabled": False, "requested": "auto",
                                                  "reason": "fp32 on CPU measured slower compiled (5.32 -> 6.77 s/step)"}
    assert trainer.args.torch_compile is False


@pytest.mark.parametrize("t5", [False, True], ids=["gpt2", "t5"])
def test_compiled_training_runs_the_speed_forward_and_follows_the_eager_loss(tmp_path, single_thread, t5):
    """`--torch_compile true`: the trainer's forward (compact causal head / bucketed decoder rows), compiled once per
    model, trains to the same losses as eager (abs 1e-5; `aot_eager` traces and runs the same ops in the same order,
    so this tests the graph capture, not inductor's kernels)."""
    import torch
    from test_speed import build
    from trainer_helpers import perturb_lora

    curves = []
    for compiled in (False, True):
        torch.compiler.reset()
        backend = {"torch_compile_backend": "aot_eager"} if compiled else {}  # a backend alone turns compiling on
        trainer = build(tmp_path / str(compiled), t5, fast=True, torch_compile=compiled, max_steps=2,
                        num_train_epochs=1, **backend)
        assert trainer.args.torch_compile is compiled
        perturb_lora(trainer.model)
        trainer.train()
        curves.append([h["loss"] for h in trainer.state.log_history if "loss" in h])
    assert len(curves[0]) == 2 and curves[1] == pytest.approx(curves[0], abs=1e-5)
