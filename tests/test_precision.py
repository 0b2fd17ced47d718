"""Precision works on every host: the auto rule runs on faked hardware (a /proc/cpuinfo of either kind, GPUs of each
compute capability through `tests/fake_cuda.py` at torch.cuda's level; the product's own probes always run), and the
bf16 path runs on every CPU (emulated where the CPU has no native bf16) against fp32 with stated tolerances."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from test_speed import rows, tiny_model
from trainer_helpers import perturb_lora, word_tokenizer
from trl import DPOTrainer

from dpo_studio.config import precision
from dpo_studio.config.arguments import ConfigError, DPOTrainingArguments, parse_config
from dpo_studio.training import speed
from dpo_studio.training.seq2seq_dpo import Seq2SeqDPOTrainer

pytestmark = pytest.mark.usefixtures("single_thread")


def fake_cpuinfo(monkeypatch, tmp_path, flags: str) -> None:
    """/proc/cpuinfo as a CPU with these flags would write it (the product's reader runs on it)."""
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: amx_bf16 in a name is not a flag\nflags\t\t: {flags}\n\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path, *a, **k))


@pytest.fixture
def cpu_host(monkeypatch, tmp_path):
    """A CPU-only host (torch.cuda sees no GPU) whose bf16 support each test sets (`cpu_host(True)`)."""

    def make(native_bf16: bool) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        fake_cpuinfo(monkeypatch, tmp_path, "fpu avx2 avx512_bf16 amx_bf16" if native_bf16 else "fpu avx2 fma")
        monkeypatch.delenv(precision.AUTO_BF16_ENV, raising=False)

    return make


# ------------------------------------------------------------------------------------------------------- the rule
def test_auto_is_bf16_on_a_native_bf16_cpu_and_fp32_elsewhere(cpu_host, monkeypatch):
    cpu_host(True)
    chosen = precision.choose_precision(None, False)
    assert (chosen.compute, chosen.device, chosen.requested, chosen.native) == ("bf16", "cpu", "auto", True)
    assert "amx_bf16" in chosen.reason and "avx512_bf16" in chosen.reason
    monkeypatch.setenv(precision.AUTO_BF16_ENV, "0")
    assert precision.choose_precision(None, False).compute == "fp32"
    cpu_host(False)
    chosen = precision.choose_precision(None, False)
    assert (chosen.compute, chosen.requested) == ("fp32", "auto") and "no native bf16" in chosen.reason


@pytest.mark.parametrize("native", [True, False])
def test_explicit_choices_hold_on_any_cpu(cpu_host, native):
    cpu_host(native)
    forced = precision.choose_precision(True, False)
    assert (forced.compute, forced.requested, forced.native) == ("bf16", "bf16", native)
    assert ("emulates bf16" in forced.reason) is not native
    assert precision.choose_precision(False, False).compute == "fp32"
    assert precision.choose_precision(None, True).compute == "fp16"


# Per capability: (auto for a causal LM, auto for T5, native) -- V100, T4, A100, A10G, H100.
GPU_RULE = {
    (7, 0): ("fp16", "fp32", True),
    (7, 5): ("fp16", "fp32", True),
    (8, 0): ("bf16", "bf16", True),
    (8, 6): ("bf16", "bf16", True),
    (9, 0): ("bf16", "bf16", True),
}


@pytest.mark.parametrize("capability", sorted(GPU_RULE), ids=lambda c: f"sm{c[0]}{c[1]}")
def test_auto_on_gpus_follows_native_capability_not_torchs_emulation_flag(fake_cuda, monkeypatch, capability, caplog):
    """torch says a T4/V100 supports bf16 (it counts emulation); auto must still pick fp16 (causal) / fp32 (T5) there.
    The probe reads the rank's GPU properties and creates no tensor on any GPU."""
    fake = fake_cuda(capability, count=2)
    monkeypatch.setenv("LOCAL_RANK", "1")
    causal, t5, native = GPU_RULE[capability]
    assert torch.cuda.is_bf16_supported() is True  # the stand-in answers as torch does on that card
    fake.allocations.clear()
    fake.queried.clear()
    chosen = precision.choose_precision(None, False)
    assert (chosen.compute, chosen.device, chosen.requested, chosen.native) == (causal, "cuda", "auto", native)
    assert f"capability {capability[0]}.{capability[1]}" in chosen.describe()
    assert fake.allocations == [] and set(fake.queried) == {1} and fake.set_devices == []
    family = precision.for_family(chosen, "t5")
    assert family.compute == t5 and family.device == "cuda"
    if t5 != causal:
        assert "overflows in fp16" in family.reason
    assert precision.for_family(chosen, "gpt2") is chosen
    forced = precision.choose_precision(True, False)  # --bf16 true on a 7.x card: honoured, recorded as emulated
    assert forced.compute == "bf16" and forced.native is (capability >= (8, 0))


def test_fp16_on_t5_is_refused_in_one_line_unless_allowed(fake_cuda):
    fake_cuda((7, 5))
    forced = precision.choose_precision(None, True)
    with pytest.raises(precision.PrecisionError) as refused:
        precision.for_family(forced, "t5")
    message = str(refused.value)
    assert "\n" not in message and "--bf16" in message and "fp32" in message and "--allow-fp16-t5" in message
    allowed = precision.for_family(forced, "t5", allow_fp16_t5=True)
    assert allowed.compute == "fp16" and "--allow-fp16-t5" in allowed.reason
    assert precision.for_family(forced, "gpt2").compute == "fp16"


def test_use_cpu_on_a_gpu_host_is_a_cpu_run(fake_cuda, cpu_host, tmp_path):
    cpu_host(False)
    fake_cuda((8, 0))
    assert precision.choose_precision(None, False).device == "cuda"
    chosen = precision.choose_precision(None, False, use_cpu=True)
    assert (chosen.device, chosen.compute, chosen.hardware) == ("cpu", "fp32", "")
    _, args, _ = parse_config(["--output-dir", str(tmp_path), "--use_cpu", "true"])
    recorded = precision.precision_of(args)
    assert (recorded.device, args.use_cpu, args.bf16, args.fp16, args.dataloader_pin_memory) == ("cpu", True, False, False, False)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate's device state is process-wide: a run built on a faked GPU must not leak into the next test."""
    from accelerate.state import AcceleratorState, PartialState

    yield
    AcceleratorState._reset_state(True)
    PartialState._reset_state()


def test_parsed_options_on_a_t4_train_gpt2_in_fp16_with_pinned_memory(fake_cuda, tmp_path, fresh_accelerate_state):
    """The options as train_dpo.py builds them on a T4: fp16 mixed precision (auto), pinned memory on, a CUDA run
    (so the CPU-only thread/malloc tuning and speed features stay off: `speed.trainer.cpu_training`), nothing
    allocated on the GPU by the precision probe."""
    from dpo_studio.training.speed.trainer import cpu_training

    fake = fake_cuda((7, 5))
    _, args, _ = parse_config(["--output-dir", str(tmp_path), "--models", "gpt2"])
    chosen = precision.precision_of(args)
    assert (chosen.compute, chosen.device, chosen.requested) == ("fp16", "cuda", "auto")
    assert "Tesla T4, capability 7.5" in chosen.describe()
    assert (args.fp16, args.bf16, args.use_cpu, args.dataloader_pin_memory) == (True, False, False, True)
    assert cpu_training(args) is False and fake.allocations == []


@pytest.mark.parametrize("capability", [(7, 5), (8, 6)], ids=["t4", "a10g"])
def test_qlora_computes_in_the_familys_precision(fake_cuda, capability):
    from dpo_studio.models.families import describe_quantization, quantization_config

    fake_cuda(capability)
    run = precision.choose_precision(None, False)
    gpt2 = quantization_config(True, False, precision.for_family(run, "gpt2"))
    t5 = quantization_config(True, False, precision.for_family(run, "t5"))
    expected = {(7, 5): (torch.float16, torch.float32), (8, 6): (torch.bfloat16, torch.bfloat16)}[capability]
    assert (gpt2.bnb_4bit_compute_dtype, t5.bnb_4bit_compute_dtype) == expected
    assert describe_quantization(t5).endswith(("fp32 compute", "bf16 compute"))


def test_cpu_flags_are_read_from_the_flags_line(tmp_path, monkeypatch):
    fake_cpuinfo(monkeypatch, tmp_path, "fpu avx2 fma")
    assert precision.cpu_flags() == {"fpu", "avx2", "fma"}
    assert precision.cpu_has_native_bf16() is False


# --------------------------------------------------------------------------------------------------- the options
@pytest.mark.parametrize("native", [True, False])
def test_parsed_options_set_use_cpu_and_the_chosen_precision(cpu_host, tmp_path, native):
    cpu_host(native)
    for flags, bf16, requested in (([], native, "auto"), (["--bf16", "true"], True, "bf16"),
                                   (["--bf16", "false"], False, "fp32")):
        _, args, _ = parse_config(["--output-dir", str(tmp_path), *flags])
        assert args.use_cpu is True and args.bf16 is bf16 and args.fp16 is False
        assert precision.precision_of(args).requested == requested


def test_bf16_and_fp16_together_is_a_config_error(cpu_host, tmp_path):
    cpu_host(True)
    with pytest.raises(ConfigError, match="--bf16 true and --fp16 true"):
        parse_config(["--output-dir", str(tmp_path), "--bf16", "true", "--fp16", "true"])


# ------------------------------------------------------------------------------------------- the bf16 path, forced
def build(tmp_path, t5: bool, bf16: bool):
    """The product's trainer (speed.fast_trainer) on tiny models, bf16 forced on or off (runs on any CPU)."""
    args = DPOTrainingArguments(
        output_dir=str(tmp_path), report_to=[], bf16=bf16, gradient_checkpointing=False, logging_steps=1,
        save_strategy="no", per_device_train_batch_size=4, per_device_eval_batch_size=8, beta=0.1,
        learning_rate=5e-3, num_train_epochs=2, seed=0, precompute_ref_log_probs=True, disable_tqdm=True)
    lora = LoraConfig(task_type="SEQ_2_SEQ_LM" if t5 else "CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                      target_modules=["q", "v"] if t5 else ["c_attn"], fan_in_fan_out=not t5)
    return speed.fast_trainer(
        Seq2SeqDPOTrainer if t5 else DPOTrainer, model=tiny_model(t5), args=args,
        train_dataset=Dataset.from_list(rows(24, seed=1)), eval_dataset=Dataset.from_list(rows(12, seed=2)),
        processing_class=word_tokenizer(t5), peft_config=lora)


@pytest.mark.parametrize("t5", [False, True], ids=["gpt2", "t5"])
def test_bf16_log_probs_and_gradients_match_fp32(tmp_path, t5):
    """Per-token log-probs within 0.05 nats + 2% and gradients within 5% (GPT-2) / 10% (T5) of their scale: bf16 keeps
    8 bits of mantissa (relative rounding 2^-9 per op); the sums that DPO compares stay in fp32 (TRL's log-prob
    kernel). The policy forward really runs in bf16 here (the trainers' forwards enter the accelerator's autocast, as
    accelerate's wrapper does in training); measured worst gradient: 1.0% (GPT-2), 7.8% (T5's LoRA B of q/v, whose
    unscaled attention logits round more)."""
    outs = []
    for bf16 in (False, True):  # one after the other: accelerate's precision state is process-wide
        trainer = build(tmp_path / str(bf16), t5, bf16)
        assert trainer.accelerator.mixed_precision == ("bf16" if bf16 else "no")
        assert precision.precision_of(trainer.args).compute == ("bf16" if bf16 else "fp32")
        perturb_lora(trainer.model)
        keys = ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")
        examples = [{k: ex[k] for k in keys} for ex in trainer.train_dataset]
        batch = trainer.data_collator(examples[:8])
        trainer.model.train()
        trainer.model.zero_grad()
        with trainer.compute_loss_context_manager():  # what Trainer wraps the forward in: autocast under bf16
            loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        metrics = {key: values[-1] for key, values in trainer._metrics["train"].items()}  # this batch's TRL metrics
        grads = {n: p.grad.float().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        outs.append((loss.detach(), metrics, grads))
    (loss32, m32, g32), (loss16, m16, g16) = outs
    assert loss16.dtype == torch.float32  # the loss itself is fp32 under bf16 autocast
    assert abs(loss16 - loss32) < 0.02 + 0.02 * abs(loss32)
    for key in ("logps/chosen", "logps/rejected"):
        assert m16[key] == pytest.approx(m32[key], rel=0.02, abs=0.05)
    assert g32.keys() == g16.keys() and g32
    share = 0.10 if t5 else 0.05
    for name, grad in g32.items():
        scale = grad.abs().max().clamp(min=1e-6)
        assert (g16[name] - grad).abs().max() <= share * scale, name


@pytest.mark.parametrize("t5", [False, True], ids=["gpt2", "t5"])
def test_bf16_training_run_follows_the_fp32_loss_curve(tmp_path, t5):
    """A whole short run (12 steps) in bf16 stays within 0.03 of the fp32 loss at every step and learns as much."""
    curves = []
    for bf16 in (False, True):
        trainer = build(tmp_path / str(bf16), t5, bf16)
        config = trainer.model.get_base_model().config
        # CPU bf16 trains with eager attention (speed.use_eager_attention), fp32 keeps SDPA; SDPA is back afterwards.
        assert config._attn_implementation == ("eager" if bf16 else "sdpa")
        before = trainer.evaluate()["eval_loss"]
        trainer.train()
        assert config._attn_implementation == "sdpa"
        curves.append((before, [h["loss"] for h in trainer.state.log_history if "loss" in h], trainer.evaluate()["eval_loss"]))
    (before32, curve32, after32), (before16, curve16, after16) = curves
    assert len(curve32) == len(curve16) == 12
    assert curve16 == pytest.approx(curve32, abs=0.03)
    assert after32 < before32 - 0.02 and after16 < before16 - 0.02
    assert after16 == pytest.approx(after32, abs=0.03)


def test_bf16_really_runs_after_an_earlier_trainer_prepared_the_model(tmp_path):
    """The demo warm-starts with a plain fp32 Trainer first; accelerate then skipped the DPO run's autocast (it trained
    in fp32 while reporting bf16). Every Linear/Conv1D output during DPO training must be bf16 under autocast."""
    from transformers import Trainer, TrainingArguments

    model = tiny_model(False)
    warm = Dataset.from_list([{"input_ids": [3, 4, 5, 6], "labels": [3, 4, 5, 6]}] * 4)
    Trainer(model=model, train_dataset=warm, args=TrainingArguments(
        output_dir=str(tmp_path / "warm"), max_steps=1, use_cpu=True, report_to=[], save_strategy="no",
        disable_tqdm=True)).train()
    args = DPOTrainingArguments(
        output_dir=str(tmp_path / "dpo"), report_to=[], bf16=True, gradient_checkpointing=False, save_strategy="no",
        per_device_train_batch_size=4, max_steps=2, disable_tqdm=True)
    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True)
    trainer = speed.fast_trainer(DPOTrainer, model=model, args=args, train_dataset=Dataset.from_list(rows(8, seed=1)),
                                 processing_class=word_tokenizer(False), peft_config=lora)
    seen = []
    mlp = trainer.model.get_base_model().transformer.h[0].mlp.c_fc
    mlp.register_forward_hook(lambda module, inputs, output: seen.append((output.dtype, torch.is_autocast_enabled("cpu"))))
    trainer.train()
    assert seen and set(seen) == {(torch.bfloat16, True)}


@pytest.mark.parametrize("t5", [False, True], ids=["gpt2", "t5"])
def test_held_out_metrics_run_in_the_precision_of_the_reference(tmp_path, t5):
    """Before training the policy is the reference, so under bf16 too every implicit reward is exactly 0: the held-out
    pass runs under the same autocast as TRL's reference pass (it once ran fp32 against a bf16 reference)."""
    from dpo_studio.evaluation.held_out import evaluate_pairs

    trainer = build(tmp_path, t5, bf16=True)
    before = evaluate_pairs(trainer)
    assert before["rewards/margins"] == before["rewards/chosen"] == before["rewards/accuracies"] == 0.0
    assert before["loss"] == pytest.approx(0.693147, abs=1e-6)


def test_each_family_gets_its_precision_before_anything_loads(fake_cuda, caplog):
    """On a T4 the demo trains GPT-2 in fp16 and T5 in fp32 (one log line says why); --fp16 true on T5 stops the run
    in one line naming the family, before any data or model is read."""
    import logging

    from dpo_studio.config.arguments import ModelArguments, ScriptArguments
    from dpo_studio.training.pipeline import family_precisions

    fake_cuda((7, 5))
    script_args = ScriptArguments(demo=True)
    with caplog.at_level(logging.INFO, logger="dpo_studio"):
        chosen = family_precisions(["gpt2", "t5"], precision.choose_precision(None, False), script_args,
                                   ModelArguments())
    assert (chosen["gpt2"].compute, chosen["t5"].compute) == ("fp16", "fp32")
    assert "[t5] precision: fp32 on CUDA (Tesla T4, capability 7.5) (auto: t5 overflows in fp16" in caplog.text
    with pytest.raises(ConfigError, match=r"^\[t5\] --fp16 true: t5 models overflow in fp16 .*--allow-fp16-t5"):
        family_precisions(["gpt2", "t5"], precision.choose_precision(None, True), script_args, ModelArguments())
    allowed = family_precisions(["t5"], precision.choose_precision(None, True), ScriptArguments(demo=True, allow_fp16_t5=True),
                                ModelArguments())
    assert allowed["t5"].compute == "fp16"
