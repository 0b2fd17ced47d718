"""Speed features keep every pair's loss: samplers are permutations, buckets are exact, trained runs agree."""

from __future__ import annotations

import contextlib
import os
import random

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import GPT2Config, GPT2LMHeadModel
from trl import DPOConfig, DPOTrainer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trainer_helpers import WORDS, perturb_lora, rows, tiny_model, word_tokenizer  # noqa: E402

from dpo_studio.training import speed  # noqa: E402
from dpo_studio.training.fused_output import policy_fields  # noqa: E402
from dpo_studio.training.seq2seq_dpo import Seq2SeqDPOTrainer  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_trainer_thread(single_thread):
    """conftest's `single_thread`; OMP_NUM_THREADS=1 keeps it for a `tune_host` call too (trainers never tune)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def dpo_args(tmp_path, **overrides) -> DPOConfig:
    kwargs = dict(output_dir=str(tmp_path), report_to=[], bf16=False, gradient_checkpointing=False, use_cpu=True,
                  logging_steps=1, save_strategy="no", per_device_train_batch_size=4, per_device_eval_batch_size=8,
                  beta=0.1, learning_rate=5e-3, num_train_epochs=2, seed=0, precompute_ref_log_probs=True)
    kwargs.update(overrides)
    return DPOConfig(**kwargs)


def build(tmp_path, t5: bool, fast: bool, speed_settings=None, **overrides):
    cls = Seq2SeqDPOTrainer if t5 else DPOTrainer
    lora = LoraConfig(task_type="SEQ_2_SEQ_LM" if t5 else "CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                      target_modules=["q", "v"] if t5 else ["c_attn"], fan_in_fan_out=not t5)
    kwargs = dict(model=tiny_model(t5), args=dpo_args(tmp_path, **overrides),
                  train_dataset=Dataset.from_list(rows(24, seed=1)), eval_dataset=Dataset.from_list(rows(12, seed=2)),
                  processing_class=word_tokenizer(t5), peft_config=lora)
    if not fast:
        return cls(**kwargs)
    settings = speed.settings_for(kwargs.pop("args"), kwargs["model"], kwargs["train_dataset"], speed_settings)
    return (speed.FastSeq2SeqDPOTrainer if t5 else speed.CausalDPOTrainer)(**settings.as_kwargs(), **kwargs)


# ---------------------------------------------------------------------------------------------------------- sampler
def test_length_grouped_indices_are_a_seeded_permutation_with_grouped_batches():
    rng = random.Random(3)
    lengths = [rng.randint(1, 300) for _ in range(203)]
    order = speed.length_grouped_indices(lengths, 8, torch.Generator().manual_seed(5))
    assert sorted(order) == list(range(203))
    assert order == speed.length_grouped_indices(lengths, 8, torch.Generator().manual_seed(5))
    assert order != speed.length_grouped_indices(lengths, 8, torch.Generator().manual_seed(6))
    # Padded tokens (batch max * batch size) are far fewer than for a random order of the same batches.
    def padded(indices):
        return sum(max(lengths[i] for i in indices[k:k + 8]) * len(indices[k:k + 8]) for k in range(0, 203, 8))
    random_order = torch.randperm(203, generator=torch.Generator().manual_seed(5)).tolist()
    assert padded(order) < 0.8 * padded(random_order)
    assert padded(order) >= sum(lengths)


def test_sampler_gives_a_new_permutation_each_epoch_and_repeats_for_the_same_epoch():
    lengths = list(range(50))
    sampler = speed.LengthGroupedPairSampler(lengths, batch_size=4, seed=1)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    second = list(sampler)
    sampler.set_epoch(0)
    assert list(sampler) == first
    assert sorted(first) == sorted(second) == list(range(50)) and first != second
    assert len(sampler) == 50


def test_pair_lengths_count_prompt_and_longer_completion():
    ds = Dataset.from_list([{"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4, 5, 6]}])
    assert speed.pair_lengths(ds) == [5]


# ---------------------------------------------------------------------------------------------------------- buckets
def test_buckets_cover_every_row_once_with_their_longest_length():
    lengths = [5, 100, 7, 98, 6, 50, 52, 101]
    groups = speed.bucketed_rows(lengths)
    assert sorted(i for rows_, _ in groups for i in rows_) == list(range(8))
    for rows_, length in groups:
        assert length == max(lengths[i] for i in rows_)
    padded = sum(len(rows_) * length for rows_, length in groups)
    assert padded < 0.7 * 8 * max(lengths)  # one bucket would pad everything to 101
    assert speed.bucketed_rows([9, 9, 9]) == [([0, 1, 2], 9)]  # equal lengths: nothing to gain from a split


@contextlib.contextmanager
def row_calls(trainer):
    """(rows, length) of every call of the module that runs the rows of a preference batch: GPT-2's backbone, T5's
    decoder (the behaviour the length buckets change: several shorter calls instead of one padded one)."""
    base = trainer.model.get_base_model()
    module = base.decoder if base.config.is_encoder_decoder else base.base_model
    calls = []
    hook = module.register_forward_pre_hook(
        lambda m, args, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        yield calls
    finally:
        hook.remove()


def scoring_forward(trainer):
    """What TRL's `_compute_loss` calls for this trainer's policy: the callable our trainers hand it, else the model
    (stock TRL's own fused head)."""
    forward = getattr(trainer, "preference_forward", lambda model, fields: None)(
        trainer.model, policy_fields(trainer.args.use_weighting))
    return trainer.model if forward is None else forward


def preference_batch(trainer, n: int):
    """The first `n` training pairs, collated (with their precomputed reference log-probs when there are some)."""
    keys = ("prompt_ids", "chosen_ids", "rejected_ids", "ref_chosen_logps", "ref_rejected_logps")
    return trainer.data_collator([{k: ex[k] for k in keys if k in ex} for ex in trainer.train_dataset.select(range(n))])


@pytest.mark.parametrize("t5", [False, True], ids=["gpt2", "t5"])
def test_fast_forward_gives_the_same_per_token_log_probs(tmp_path, t5):
    """fp32: per-token log-probs within 1e-5, gradients within rtol 1e-4 / atol 1e-5 (float reordering only)."""
    stock, fast = build(tmp_path / "s", t5, fast=False), build(tmp_path / "f", t5, fast=True)
    for trainer in (stock, fast):
        perturb_lora(trainer.model)
    batch = preference_batch(stock, 12)
    assert batch["attention_mask"].sum() < batch["attention_mask"].numel()  # padding present
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    inputs = {k: v for k, v in batch.items() if k not in ("completion_mask", "ref_chosen_logps", "ref_rejected_logps")}
    outs, calls = [], []
    for trainer in (stock, fast):
        trainer.model.train()
        with row_calls(trainer) as seen:
            out = scoring_forward(trainer)(**inputs, labels=labels, fused_lm_head=True, use_cache=False)
        calls.append(seen)
        out.log_probs.sum().backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        outs.append((out.log_probs.detach(), out.is_top1, grads))
    rows, length = batch["input_ids"].shape
    decoder_length = length - 1 if t5 else length  # T5's decoder input drops the last label
    # Stock: one padded call of all rows. Fast: the same rows in several calls, each trimmed to its own length.
    assert calls[0] == [(rows, decoder_length)]
    assert len(calls[1]) > 1 and sum(r for r, _ in calls[1]) == rows and min(n for _, n in calls[1]) < decoder_length
    torch.testing.assert_close(outs[0][0], outs[1][0], atol=1e-5, rtol=1e-5)
    assert torch.equal(outs[0][1], outs[1][1])
    assert outs[0][2].keys() == outs[1][2].keys() and outs[0][2]
    for name in outs[0][2]:
        torch.testing.assert_close(outs[0][2][name], outs[1][2][name], atol=1e-5, rtol=1e-4)
    # Precomputed reference log-probs (fast path inside TRL's __init__) equal the stock ones.
    torch.testing.assert_close(torch.tensor(stock.train_dataset["ref_chosen_logps"]),
                               torch.tensor(fast.train_dataset["ref_chosen_logps"]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("t5", [False, True], ids=["gpt2", "t5"])
def test_trained_run_follows_stock_trl_exactly(tmp_path, t5):
    """Default settings: the same batches as stock TRL, so the trained model ends at the same loss (float noise)."""
    results = []
    for fast in (False, True):
        trainer = build(tmp_path / str(fast), t5, fast=fast)
        assert type(trainer._get_train_sampler()).__name__ == "RandomSampler"
        before = trainer.evaluate()
        trainer.train()
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        results.append((before, trainer.evaluate(), losses))
    (stock_before, stock_after, stock_curve), (fast_before, fast_after, fast_curve) = results
    assert fast_before["eval_loss"] == pytest.approx(stock_before["eval_loss"], abs=1e-5)
    assert stock_after["eval_loss"] < stock_before["eval_loss"] - 0.02  # training moved the loss
    assert fast_curve == pytest.approx(stock_curve, abs=1e-4)
    assert fast_after["eval_loss"] == pytest.approx(stock_after["eval_loss"], abs=1e-4)


@pytest.mark.parametrize("t5", [False, True], ids=["gpt2", "t5"])
def test_group_by_length_is_opt_in_and_reaches_similar_metrics(tmp_path, t5):
    results = []
    for fast in (False, True):
        # Stock TRL cannot group preference pairs by length (transformers finds no `input_ids`): compare to random.
        overrides = {"train_sampling_strategy": "group_by_length"} if fast else {}
        trainer = build(tmp_path / str(fast), t5, fast=fast, **overrides)
        if fast:
            assert isinstance(trainer._get_train_sampler(), speed.LengthGroupedPairSampler)
        before = trainer.evaluate()
        trainer.train()
        results.append((before, trainer.evaluate()))
    (stock_before, stock_after), (fast_before, fast_after) = results
    # Different batch composition changes the optimisation path a little, not the outcome.
    assert stock_after["eval_loss"] < stock_before["eval_loss"] - 0.02
    assert fast_after["eval_loss"] == pytest.approx(stock_after["eval_loss"], rel=0.1, abs=0.02)
    assert fast_after["eval_rewards/accuracies"] == pytest.approx(stock_after["eval_rewards/accuracies"], abs=0.2)


def test_the_trainer_receives_final_arguments_decided_by_settings_for(tmp_path):
    """`settings_for` makes the argument decisions (eval-sized reference batches, our pair sampler, compile) without
    changing the given arguments; the trainer keeps the arguments it receives, and refuses ones only
    `settings_for` can serve."""
    args = dpo_args(tmp_path, train_sampling_strategy="group_by_length")
    model, train = tiny_model(False), Dataset.from_list(rows(24, seed=1))
    settings = speed.settings_for(args, model, train)
    assert (args.train_sampling_strategy, args.precompute_ref_batch_size) == ("group_by_length", None)  # unchanged
    assert (settings.args.train_sampling_strategy, settings.args.precompute_ref_batch_size) == ("random", 8)
    assert settings.speed.length_grouped_pairs and settings.compile_decision.enabled is False
    off = speed.settings_for(args, model, train, speed.SpeedSettings(eval_sized_reference_batches=False))
    assert off.args.precompute_ref_batch_size is None
    kwargs = dict(model=model, train_dataset=train, processing_class=word_tokenizer(False),
                  peft_config=LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["c_attn"], fan_in_fan_out=True))
    trainer = speed.CausalDPOTrainer(**settings.as_kwargs(), **kwargs)
    assert trainer.args is settings.args and trainer.speed is settings.speed
    with pytest.raises(ValueError, match="settings_for"):
        speed.CausalDPOTrainer(args=args, **kwargs)


def test_generation_is_untouched_by_the_patches(tmp_path):
    for t5 in (False, True):
        trainer = build(tmp_path / str(t5), t5, fast=True)
        model = trainer.model.eval()
        ids = torch.tensor([[3 + 10, 3 + 11, 3 + 12]])  # p-words
        with torch.no_grad(), model.disable_adapter():
            out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False)
        reference = tiny_model(t5).eval().generate(input_ids=ids, max_new_tokens=5, do_sample=False)
        assert torch.equal(out, reference)


# ---------------------------------------------------------------------------------------------------------- CPU
# Two sockets x two cores x two hyper-threads, as /proc/cpuinfo lists them (processor, physical id, core id).
FAKE_CPUINFO = "\n\n".join(
    f"processor\t: {n}\nmodel name\t: Fake CPU\nphysical id\t: {n // 4}\ncore id\t: {(n // 2) % 2}"
    for n in range(8)
) + "\n"


@pytest.fixture
def fake_cpuinfo(monkeypatch, tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(FAKE_CPUINFO, encoding="utf-8")
    real_open = open
    monkeypatch.setattr(
        "builtins.open", lambda file, *a, **k: real_open(path if file == "/proc/cpuinfo" else file, *a, **k)
    )


@pytest.mark.parametrize(
    "affinity, cores",
    [
        (set(range(8)), 4),  # 8 hyper-threads on 2 x 2 physical cores
        ({0, 1}, 1),  # both hyper-threads of one core
        ({0, 2, 4, 6}, 4),  # one hyper-thread of every core
        ({1, 3}, 2),  # two cores of socket 0
    ],
)
def test_physical_cores_counts_distinct_socket_core_pairs_within_the_affinity(fake_cpuinfo, monkeypatch, affinity, cores):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: affinity)
    assert speed.physical_cores() == cores


def test_threads_follow_omp_num_threads_else_physical_cores(fake_cpuinfo, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    previous = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert speed.configure_threads() == torch.get_num_threads() == 3
        monkeypatch.delenv("OMP_NUM_THREADS")
        assert speed.configure_threads() == torch.get_num_threads() == 2 * 2  # sockets x cores of FAKE_CPUINFO
        monkeypatch.setenv("OMP_NUM_THREADS", "none")  # not a count: physical cores
        assert speed.configure_threads() == 4
    finally:
        torch.set_num_threads(previous)


# A child process: after SETUP (the tuning, or not; or constructing a trainer) it mallocs and frees a 64 MiB block and reports
# how glibc's `mallinfo2` counters moved: without the tuning the block is an mmap() given back on free (hblkhd grows
# while held); with it the block comes from the heap (arena grows) and stays there after free (fordblks: free bytes
# kept in the heap).
MALLOC_CHILD = """
import ctypes, json, sys
from dpo_studio.training.speed import keep_freed_memory_for_reuse
SETUP

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
applied = APPLY
size = 64 << 20
before = libc.mallinfo2()  # importing torch has mmapped blocks of its own: compare against this
block = libc.malloc(size)
held = libc.mallinfo2()
libc.free(block)
freed = libc.mallinfo2()
print(json.dumps({"applied": applied, "held_mmapped": held.hblkhd - before.hblkhd,
                  "unmapped_on_free": held.hblkhd - freed.hblkhd, "held_in_heap": held.uordblks - before.uordblks,
                  "heap_trimmed_on_free": held.arena - freed.arena}))
"""


def _malloc_child(tuning: str, setup: str = "", apply: str = "keep_freed_memory_for_reuse()") -> dict:
    import json
    import subprocess
    import sys

    env = {**os.environ, "DPO_STUDIO_MALLOC_TUNING": tuning}
    code = MALLOC_CHILD.replace("SETUP", setup).replace("APPLY", apply)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(__file__))
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc_with_mallinfo2() -> bool:
    import ctypes
    import platform

    return platform.libc_ver()[0] == "glibc" and hasattr(ctypes.CDLL(None), "mallinfo2")


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc's mallopt/mallinfo2 only")
def test_malloc_tuning_keeps_large_freed_blocks_in_the_heap():
    stock, tuned = _malloc_child("0"), _malloc_child("1")
    assert stock["applied"] is False and tuned["applied"] is True
    # Stock glibc: a 64 MiB block is its own mmap(), unmapped again by free (the page faults the tuning avoids).
    assert stock["held_mmapped"] >= 64 << 20 and stock["unmapped_on_free"] >= 64 << 20
    # Tuned: no mmap, the block is heap memory (in-use bytes, which do not depend on free space the heap already had)
    # and free keeps the heap at its size for reuse (no trim).
    assert tuned["held_mmapped"] == 0 and tuned["held_in_heap"] >= 64 << 20
    assert tuned["heap_trimmed_on_free"] == 0


# Builds the product's trainer (CPU, tiny GPT-2 LoRA) in the child, with the malloc tuning allowed by the environment.
TRAINER_SETUP = """
import os, tempfile
snapshot = dict(os.environ)
import test_speed
trainer = test_speed.build(tempfile.mkdtemp(), False, fast=True)
assert dict(os.environ) == snapshot, "the trainer changed the environment"
"""


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc's mallopt/mallinfo2 only")
def test_constructing_a_trainer_leaves_malloc_and_the_environment_alone():
    """The trainer constructor applies no process tuning: after building one, a 64 MiB block is still mmapped as
    stock glibc does (the tuning, allowed here, would put it in the heap) and os.environ is unchanged."""
    built = _malloc_child("1", TRAINER_SETUP, "False")
    assert built["held_mmapped"] >= 64 << 20 and built["unmapped_on_free"] >= 64 << 20


def test_constructing_a_trainer_leaves_threads_alone_and_the_command_start_tunes(fake_cpuinfo, monkeypatch, tmp_path):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))  # 4 physical cores (FAKE_CPUINFO)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("DPO_STUDIO_MALLOC_TUNING", "0")  # this process's allocator stays as it is
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for t5 in (False, True):
            build(tmp_path / str(t5), t5, fast=True)
            assert torch.get_num_threads() == 1
        assert speed.tune_host("cuda") == speed.HostTuning(threads=None, malloc_reuse=False)  # a GPU run: untouched
        assert torch.get_num_threads() == 1
        assert speed.tune_host("cpu") == speed.HostTuning(threads=4, malloc_reuse=False)
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(previous)


def test_fused_gelu_matches_gpt2_gelu_new_in_values_and_gradients():
    torch.manual_seed(0)
    stock = GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS), n_embd=32, n_layer=2, n_head=2, n_positions=64))
    fused = GPT2LMHeadModel(stock.config)
    fused.load_state_dict(stock.state_dict())
    assert speed.use_fused_gelu(fused) == 2 and speed.use_fused_gelu(fused) == 0
    assert fused.config.activation_function == "gelu_new"  # saved models are unchanged
    ids = torch.tensor([[3, 4, 5, 6, 7, 8]])
    outs = []
    for model in (stock, fused):
        model.eval()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        outs.append((loss.detach(), model.transformer.h[0].mlp.c_fc.weight.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=1e-4, atol=1e-6)


@pytest.fixture
def gpu_arguments(fake_cuda):
    """`gpu_arguments(args)`: the same arguments as a run on an A100 resolves them (torch.cuda faked at torch's level,
    tests/fake_cuda.py): their device is cuda:0. accelerate's process-wide state is set aside while they resolve their
    device (cached on the arguments) and put back, so the trainer already built keeps its CPU accelerator."""
    import dataclasses

    from accelerate.state import AcceleratorState, PartialState

    def on_gpu(args):
        saved = {cls: dict(cls._shared_state) for cls in (AcceleratorState, PartialState)}
        fake_cuda((8, 0))
        try:
            AcceleratorState._reset_state(True)
            gpu = dataclasses.replace(args, use_cpu=False)
            assert gpu.device.type == "cuda"
        finally:
            for cls, state in saved.items():
                cls._shared_state.clear()
                cls._shared_state.update(state)
        return gpu

    return on_gpu


@pytest.mark.parametrize("cpu", [True, False], ids=["cpu", "cuda"])
def test_cpu_only_patches_stay_off_trls_gpu_path(tmp_path, gpu_arguments, cpu):
    """On a GPU (the trainer's arguments resolved on a faked A100) TRL's fused head and the plain seq2seq forward
    stay; the batch itself runs on this CPU."""
    for t5 in (False, True):
        trainer = build(tmp_path / str(t5), t5, fast=True, precompute_ref_log_probs=False)
        if not cpu:
            trainer.args = gpu_arguments(trainer.args)
            assert speed.trainer.cpu_training(trainer.args) is False
        batch = preference_batch(trainer, 12)
        with row_calls(trainer) as calls:
            trainer.compute_loss(trainer.model, batch)
        # Behaviour, not markers: the CPU path runs its rows per length bucket (policy and reference: more calls
        # than the two forwards); TRL's GPU path calls every row at once, once per forward.
        rows = batch["input_ids"].size(0)
        assert (len(calls) > 2) is cpu, (t5, cpu, calls)
        assert sum(r for r, _ in calls) == 2 * rows


# ------------------------------------------------------------------------------------- bf16 on CPU (forced, any CPU)
def bf16_autocast():
    """CPU bf16 autocast as Trainer runs it under --bf16 (emulated on CPUs without native bf16: slower, same values)."""
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_frozen_weight_is_autocasts_cast_made_once_and_redone_when_the_weight_changes(monkeypatch):
    layer = torch.nn.Linear(8, 4)
    layer.requires_grad_(False)
    assert speed.frozen_weight(layer, "weight") is layer.weight  # no autocast: the parameter itself
    with bf16_autocast():
        first = speed.frozen_weight(layer, "weight")
        assert first.dtype == torch.bfloat16 and torch.equal(first, layer.weight.to(torch.bfloat16))
        assert speed.frozen_weight(layer, "weight") is first  # reused, not re-cast
        with torch.no_grad():
            layer.weight.add_(1.0)  # an in-place change (e.g. a merge) invalidates the copy
        again = speed.frozen_weight(layer, "weight")
        assert again is not first and torch.equal(again, layer.weight.to(torch.bfloat16))
        layer.weight.requires_grad_(True)  # trainable: autocast's own (cached) cast, not ours
        assert speed.frozen_weight(layer, "weight") is layer.weight
        layer.weight.requires_grad_(False)
        monkeypatch.setenv(speed.FROZEN_COPIES_ENV, "0")
        assert speed.frozen_weight(layer, "weight") is layer.weight
    speed.drop_frozen_weight_copies(layer)
    assert "_dpo_studio_lowp" not in layer.__dict__


def test_reused_frozen_casts_give_bitwise_the_autocast_outputs_and_gradients():
    """GPT-2 (Conv1D) and T5 (nn.Linear) with LoRA under bf16 autocast: the patched layers compute exactly what
    autocast computes (the same bf16 copy of each weight), forward and
    backward; fp32 calls are untouched."""
    from peft import get_peft_model

    for t5 in (False, True):
        lora = LoraConfig(task_type="SEQ_2_SEQ_LM" if t5 else "CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                          target_modules=["q", "v"] if t5 else ["c_attn"], fan_in_fan_out=not t5)
        models = []
        for patched in (False, True):
            model = get_peft_model(tiny_model(t5), lora)
            perturb_lora(model)
            if patched:
                base = model.get_base_model()
                before = {k: v.data_ptr() for k, v in model.state_dict().items()}
                assert speed.reuse_frozen_weight_casts(base) > 0
                # Same parameters under the same names (nothing copied); the LM head is left to the log-prob head.
                assert {k: v.data_ptr() for k, v in model.state_dict().items()} == before
                assert type(base.get_output_embeddings()) is torch.nn.Linear
                from transformers.pytorch_utils import Conv1D

                frozen = [m for m in base.modules() if isinstance(m, (torch.nn.Linear, Conv1D))
                          and not m.weight.requires_grad and m is not base.get_output_embeddings()]
                assert frozen and all(isinstance(m, (speed.FrozenCastLinear, speed.FrozenCastConv1D)) for m in frozen)
            models.append(model)
        ids = torch.tensor([[3, 4, 5, 6, 7, 8, 9]])
        extra = {"decoder_input_ids": torch.tensor([[0, 13, 14, 15]])} if t5 else {}
        outs = []
        for model in models:
            model.eval()  # no dropout (the tiny configs have some); gradients flow all the same
            for autocast in (False, True):
                with bf16_autocast() if autocast else torch.autocast("cpu", enabled=False):
                    logits = model(input_ids=ids, **extra).logits
                logits.float().square().mean().backward()
                grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
                model.zero_grad()
                outs.append((logits.detach(), grads))
        for (plain, plain_grads), (patched, patched_grads) in zip(outs[:2], outs[2:]):
            assert torch.equal(plain, patched)
            assert plain_grads.keys() == patched_grads.keys() and plain_grads
            for name in plain_grads:
                assert torch.equal(plain_grads[name], patched_grads[name]), name


def reference_head(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor):
    """Independent float64 computation of what the head returns (full logits, torch.log_softmax)."""
    logits = hidden.double() @ weight.double().t()
    log_p = torch.log_softmax(logits, dim=-1)
    p = log_p.exp()
    return dict(
        log_probs=log_p.gather(1, targets[:, None])[:, 0],
        entropy=-(p * log_p).sum(-1),
        log_sum_sq_probs=torch.log((p * p).sum(-1)),
        mean_logits=logits.mean(-1),
        is_top1=logits.argmax(-1) == targets,
    )


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_cpu_log_prob_head_matches_a_float64_log_softmax(monkeypatch, bf16):
    """Values and hidden-state gradients (through log-probs and entropy) against float64, in chunks of 7 tokens.
    fp32: 1e-4. bf16 (logits from a bf16 GEMM, each rounded to 8 bits of mantissa, statistics in fp32): log-probs and
    entropy within 0.05 nats + 1%, gradients within 3% of their scale."""
    monkeypatch.setattr(speed.heads, "_head_token_chunk", lambda vocab: 7)
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(30, 16, generator=gen)
    weight = torch.randn(50, 16, generator=gen)
    targets = torch.randint(0, 50, (30,), generator=gen)
    hidden[0] = weight[targets[0]]  # row 0 certainly has its target on top (|w|^2 against w'.w)
    weight[targets[0]] *= 2
    hidden.requires_grad_(True)
    fields = ("entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    g_lp, g_ent = torch.randn(30, generator=gen), torch.randn(30, generator=gen)
    with bf16_autocast() if bf16 else torch.autocast("cpu", enabled=False):
        log_probs, entropy, log_sum_sq, mean_logits, is_top1 = speed.CpuLogProbHead.apply(hidden, weight, targets, fields)
    ((log_probs * g_lp).sum() + (entropy * g_ent).sum()).backward()
    assert log_probs.dtype == entropy.dtype == torch.float32 and hidden.grad.dtype == torch.float32

    reference_hidden = hidden.detach().double().requires_grad_(True)
    ref = reference_head(reference_hidden, weight, targets)
    ((ref["log_probs"] * g_lp.double()).sum() + (ref["entropy"] * g_ent.double()).sum()).backward()
    tol = dict(atol=0.05, rtol=0.01) if bf16 else dict(atol=1e-4, rtol=1e-4)
    for name, value in (("log_probs", log_probs), ("entropy", entropy), ("log_sum_sq_probs", log_sum_sq),
                        ("mean_logits", mean_logits)):
        torch.testing.assert_close(value.double(), ref[name].detach(), **tol, msg=name)
    assert is_top1[0] and (is_top1 == ref["is_top1"]).float().mean() >= (0.9 if bf16 else 1.0)
    scale = reference_hidden.grad.abs().max()
    assert (hidden.grad.double() - reference_hidden.grad).abs().max() <= (0.03 if bf16 else 1e-5) * scale


def test_cpu_log_prob_head_equals_trls_kernel_under_bf16():
    """TRL's ChunkedLogProbFunction is what the head replaces on CPU: under bf16 autocast both score within bf16
    rounding (0.05 nats + 1%) and give gradients within 3% of their scale."""
    from trl.kernels import ChunkedLogProbFunction

    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(40, 32, generator=gen)
    weight = torch.randn(300, 32, generator=gen) * 0.3
    targets = torch.randint(0, 300, (40,), generator=gen)
    outs = []
    for head in ("ours", "trl"):
        h = hidden.clone().requires_grad_(True)
        with bf16_autocast():
            if head == "ours":
                log_probs, entropy, *_ = speed.CpuLogProbHead.apply(h, weight, targets, ("entropy",))
            else:
                log_probs, entropy, *_ = ChunkedLogProbFunction.apply(h, weight, None, targets, 1.0, 128, None, 1.0,
                                                                      ("entropy",))
        log_probs.sum().backward()
        outs.append((log_probs.detach(), entropy.detach(), h.grad))
    (lp, ent, grad), (lp_trl, ent_trl, grad_trl) = outs
    torch.testing.assert_close(lp, lp_trl, atol=0.05, rtol=0.01)
    torch.testing.assert_close(ent, ent_trl, atol=0.05, rtol=0.01)
    assert (grad - grad_trl).abs().max() <= 0.03 * grad_trl.abs().max()


def test_cpu_patches_are_opt_out_and_leave_trainable_heads_to_trl(tmp_path, monkeypatch):
    head = torch.nn.Linear(8, 20, bias=False)
    hidden = torch.zeros(3, 8)
    assert not speed.heads._use_cpu_log_prob_head(hidden, head)  # trainable head (full DPO): TRL's kernel
    head.requires_grad_(False)
    assert speed.heads._use_cpu_log_prob_head(hidden, head)
    monkeypatch.setenv(speed.CPU_HEAD_ENV, "0")
    assert not speed.heads._use_cpu_log_prob_head(hidden, head)
    monkeypatch.setenv(speed.FROZEN_COPIES_ENV, "0")
    assert speed.SpeedSettings().frozen_weight_casts is False
    monkeypatch.setenv(speed.EAGER_ATTENTION_ENV, "0")
    assert speed.SpeedSettings().eager_attention_bf16 is False


# ------------------------------------------------------------------------------------------ each feature on vs off
FEATURES = [("gpt2", "fused_gelu", True), ("gpt2", "compact_head", True), ("gpt2", "compact_head", False),
            ("gpt2", "eval_sized_reference_batches", True), ("t5", "seq2seq_buckets", True),
            ("t5", "seq2seq_buckets", False), ("t5", "eval_sized_reference_batches", True)]
# The features that change how rows reach the model: with them on, the rows run in more (shorter) calls.
ROW_FEATURES = {"compact_head", "seq2seq_buckets"}


@pytest.mark.parametrize("family,feature,precompute", FEATURES,
                         ids=[f"{f}-{x}-{'precomputed' if p else 'online'}-ref" for f, x, p in FEATURES])
def test_each_speed_feature_keeps_loss_gradients_and_metrics(tmp_path, family, feature, precompute):
    """fp32: one feature off vs all on gives the same held-out loss and metrics (abs 1e-5) and the same gradients of
    one training batch (rtol 1e-4, atol 1e-6: float reordering only), with the reference log-probs precomputed or
    computed with every batch (the reference pass then goes through the same forward as the policy)."""
    t5 = family == "t5"
    results = []
    for settings in (speed.SpeedSettings(), speed.SpeedSettings(**{feature: False})):
        trainer = build(tmp_path / str(len(results)), t5, fast=True, speed_settings=settings,
                        precompute_ref_log_probs=precompute)
        perturb_lora(trainer.model)
        metrics = trainer.evaluate()
        batch = preference_batch(trainer, 12)
        trainer.model.train()
        with row_calls(trainer) as calls:
            trainer.compute_loss(trainer.model, batch).backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results.append((metrics, grads, len(calls)))
    (on, on_grads, on_calls), (off, off_grads, off_calls) = results
    if feature in ROW_FEATURES:  # the feature really ran when on (and not when off)
        assert on_calls > off_calls == (1 if precompute else 2)
    for key in on:
        if key.startswith("eval_") and not any(t in key for t in ("runtime", "per_second", "time")):
            assert on[key] == pytest.approx(off[key], abs=1e-5), key
    assert on_grads.keys() == off_grads.keys() and on_grads
    for name in on_grads:
        torch.testing.assert_close(on_grads[name], off_grads[name], rtol=1e-4, atol=1e-6)


def test_the_train_command_tunes_the_host_once_at_its_start_with_the_chosen_device(monkeypatch, tmp_path):
    """`dpo-studio train` calls `tune_host` once, before training, with the device `config.precision` chose (this
    CPU); the trainer itself never does (tests above)."""
    from dpo_studio.cli.train import run_cli
    from dpo_studio.training import pipeline
    from dpo_studio.training.speed import host_tuning

    calls = []
    monkeypatch.setattr(host_tuning, "tune_host", lambda device: calls.append(("tune_host", device)))
    monkeypatch.setattr(pipeline, "run", lambda *args: calls.append(("run",)) or [])
    assert run_cli(["--demo", "--models", "gpt2", "--output-dir", str(tmp_path / "out")]) == 0
    assert calls == [("tune_host", "cpu"), ("run",)]


@pytest.mark.parametrize("t5", [False, True], ids=["gpt2", "t5"])
def test_a_reference_scored_per_batch_reaches_trl_in_the_batch_without_flipping_its_switch(tmp_path, t5):
    """`precompute_ref_log_probs=False`: `compute_loss` adds the reference log-probs to the batch (TRL's switch for
    that is set once at construction and never changes), and `evaluate(dataset)` scores a passed dataset per batch
    like the held-out split (TRL's upfront pass, keyed without a model hash, is not run)."""
    trainer = build(tmp_path, t5, fast=True, precompute_ref_log_probs=False)
    perturb_lora(trainer.model)
    assert trainer.precompute_ref_logps is True
    on_eval_split = trainer.evaluate()
    passed = trainer.evaluate(eval_dataset=Dataset.from_list(rows(12, seed=2)))  # the same pairs as eval_dataset
    assert passed["eval_loss"] == pytest.approx(on_eval_split["eval_loss"], abs=1e-6)
    assert passed["eval_rewards/margins"] != 0  # the perturbed adapter moved the policy away from the reference
    assert passed["eval_rewards/margins"] == pytest.approx(on_eval_split["eval_rewards/margins"], abs=1e-6)
    batch = preference_batch(trainer, 12)
    assert "ref_chosen_logps" not in batch
    trainer.compute_loss(trainer.model, batch)
    assert trainer.precompute_ref_logps is True
