"""Reference log-probs computed once per base and data (`speed.ref_cache`): a second run that changes only DPO
hyper-parameters reuses them and trains bit-identically to a fresh computation; any change to the rows or the
precision recomputes them, with one log line naming what changed."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from peft import LoraConfig
from trl import DPOConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from trainer_helpers import rows, tiny_model, word_tokenizer  # noqa: E402

from dpo_studio.training import speed  # noqa: E402
from dpo_studio.training.speed.ref_cache import STORE_FILE  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def one_trainer_thread(single_thread):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


def trainer(tmp_path, t5: bool, store, train_rows=None, **overrides):
    kwargs = dict(output_dir=str(tmp_path / "out"), report_to=[], bf16=False, gradient_checkpointing=False,
                  use_cpu=True, logging_steps=1, save_strategy="no", per_device_train_batch_size=4,
                  per_device_eval_batch_size=8, beta=0.1, learning_rate=5e-3, num_train_epochs=1, seed=0,
                  precompute_ref_log_probs=True)
    kwargs.update(overrides)
    lora = LoraConfig(task_type="SEQ_2_SEQ_LM" if t5 else "CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0,
                      target_modules=["q", "v"] if t5 else ["c_attn"], fan_in_fan_out=not t5)
    cls = speed.FastSeq2SeqDPOTrainer if t5 else speed.CausalDPOTrainer
    model, train = tiny_model(t5), Dataset.from_list(train_rows or rows(16, seed=1))
    return cls(model=model, **speed.settings_for(DPOConfig(**kwargs), model, train).as_kwargs(), reference_store=store,
               train_dataset=train,
               eval_dataset=Dataset.from_list(rows(8, seed=2)), processing_class=word_tokenizer(t5), peft_config=lora)


def forget_trl_process_cache() -> None:
    """TRL caches precomputed log-probs of in-memory datasets in datasets' per-process temporary folder, keyed by the
    data and the model: drop those files so that a "fresh" trainer really runs the reference forward."""
    from datasets.fingerprint import get_temporary_cache_files_directory

    for path in Path(get_temporary_cache_files_directory()).glob("cache-*.arrow"):
        path.unlink()


def fresh_trainer(tmp_path, t5: bool, **overrides):
    forget_trl_process_cache()
    built = trainer(tmp_path, t5, None, **overrides)
    return built


def reference_columns(trainer_) -> tuple[list[float], ...]:
    return tuple(trainer_.train_dataset[c] for c in ("ref_chosen_logps", "ref_rejected_logps")) + tuple(
        trainer_.eval_dataset[c] for c in ("ref_chosen_logps", "ref_rejected_logps"))


def losses(trainer_) -> list[float]:
    trainer_.train()
    return [entry["loss"] for entry in trainer_.state.log_history if "loss" in entry] + [trainer_.evaluate()["eval_loss"]]


@pytest.mark.parametrize("t5", [False, True], ids=["gpt2", "t5"])
def test_a_second_run_changing_only_dpo_settings_reuses_them_bit_identically(tmp_path, t5, caplog):
    store = tmp_path / "store"
    first = trainer(tmp_path, t5, store)
    assert first.reference_store.computed > 0 and first.reference_store.served == 0
    assert (store / STORE_FILE).exists()
    # Another beta, learning rate and loss type: the saved values are served, nothing is recomputed ...
    changed = dict(beta=0.3, learning_rate=1e-2, loss_type=["ipo"])
    with caplog.at_level(logging.INFO, logger="dpo_studio"):
        reused = trainer(tmp_path, t5, store, **changed)
    assert reused.reference_store.computed == 0 and reused.reference_store.served == first.reference_store.computed
    assert any("reusing" in r.getMessage() for r in caplog.records)
    # ... and the run is bitwise the run that computes them afresh (no store).
    fresh = fresh_trainer(tmp_path, t5, **changed)
    assert reference_columns(reused) == reference_columns(fresh)
    assert losses(reused) == losses(fresh)


@pytest.mark.parametrize("t5", [False, True], ids=["gpt2", "t5"])
def test_a_changed_row_recomputes_them_with_one_line(tmp_path, t5, caplog):
    store = tmp_path / "store"
    trainer(tmp_path, t5, store)
    edited = rows(16, seed=1)
    edited[5] = {**edited[5], "chosen": edited[5]["chosen"] + " a1"}
    with caplog.at_level(logging.INFO, logger="dpo_studio"):
        second = trainer(tmp_path, t5, store, train_rows=edited)
    assert second.reference_store.served == 0 and second.reference_store.computed > 0
    lines = [r.getMessage() for r in caplog.records if "recomputed" in r.getMessage()]
    assert len(lines) == 1 and "rows changed" in lines[0]
    assert reference_columns(second) == reference_columns(fresh_trainer(tmp_path, t5, train_rows=edited))


def test_a_precision_change_never_reuses_them(tmp_path, caplog):
    store = tmp_path / "store"
    trainer(tmp_path, False, store)
    with caplog.at_level(logging.INFO, logger="dpo_studio"):
        bf16 = trainer(tmp_path, False, store, bf16=True)
    assert bf16.reference_store.served == 0 and bf16.reference_store.computed > 0
    lines = [r.getMessage() for r in caplog.records if "recomputed" in r.getMessage()]
    assert len(lines) == 1 and "precision" in lines[0]
    # and back: the fp32 store was replaced by the bf16 one, so fp32 is computed again, never served bf16 values
    with caplog.at_level(logging.INFO, logger="dpo_studio"):
        fp32 = trainer(tmp_path, False, store)
    assert fp32.reference_store.served == 0


def test_other_base_weights_or_tokenizer_invalidate_them(tmp_path):
    from dpo_studio.training.speed.ref_cache import tokenizer_hash, weights_hash

    model = tiny_model(False)
    before = weights_hash(model)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] += 1e-6
    assert weights_hash(model) != before
    other = word_tokenizer(False)
    other.padding_side = "left"
    assert tokenizer_hash(other) != tokenizer_hash(word_tokenizer(False))


def test_the_pipeline_keeps_them_beside_the_run_and_a_beta_rerun_reuses_them(tmp_path, caplog):
    from test_pipeline import TINY_DEMO
    from toy_data import write_toy_pairs

    from dpo_studio.config.arguments import parse_config
    from dpo_studio.training.pipeline import run

    data = write_toy_pairs(tmp_path / "pairs.jsonl", 40)
    out = tmp_path / "out"
    common = ["--dataset", str(data), "--output-dir", str(out), "--models", "gpt2", *TINY_DEMO, "--bf16", "false"]
    first = run(*parse_config(common))[0].metrics
    assert (out / ".ref_logps" / "gpt2" / STORE_FILE).exists()
    with caplog.at_level(logging.INFO, logger="dpo_studio"):
        second = run(*parse_config([*common, "--overwrite", "--beta", "0.3"]))[0].metrics
    messages = [r.getMessage() for r in caplog.records]
    assert any("reference log-probs: reusing" in m for m in messages), messages
    assert not any("recomputed" in m for m in messages)
    assert second.hyperparameters["beta"] == 0.3
    # Before training the policy is the reference: the held-out log-probs (policy) and rewards (policy - reference)
    # agree with the first run's, so the served reference values are the ones the first run computed.
    for name in ("logps/chosen", "logps/rejected", "rewards/margins"):
        assert second.eval_before[name] == first.eval_before[name]
