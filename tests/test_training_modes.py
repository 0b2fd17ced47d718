"""QLoRA (bitsandbytes 4-bit / 8-bit) and full-parameter DPO, end to end on tiny demo models, on any CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from test_pipeline import TINY_DEMO
from toy_data import write_toy_pairs
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, BitsAndBytesConfig

from dpo_studio.cli.train import run_cli
from dpo_studio.config.arguments import parse_config
from dpo_studio.inference.generation import load_pair
from dpo_studio.models import families
from dpo_studio.training.pipeline import run

pytestmark = pytest.mark.usefixtures("single_thread")

AUTO = {"gpt2": AutoModelForCausalLM, "t5": AutoModelForSeq2SeqLM}
# bitsandbytes quantizes in blocks of 64 weights: the tiny demo models need a hidden size it divides.
QUANT_DEMO = [*TINY_DEMO, "--demo-hidden-size", "64", "--eval-generations", "4", "--generation-max-new-tokens", "6"]


def probe_logits(model, family: str) -> torch.Tensor:
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    extra = {"decoder_input_ids": torch.tensor([[0, 11, 23]])} if family == "t5" else {}
    with torch.no_grad():
        return model.eval()(input_ids=ids, **extra).logits.float()


def train(tmp_path: Path, *extra: str, families_: str = "gpt2,t5", pairs: int = 40) -> Path:
    data = write_toy_pairs(tmp_path / "pairs.jsonl", pairs)
    out = tmp_path / "out"
    run(*parse_config(["--dataset", str(data), "--output-dir", str(out), "--models", families_, *QUANT_DEMO, *extra]))
    return out


def assert_learned(metrics: dict) -> None:
    before, after = metrics["eval_before"], metrics["eval_after"]
    assert after["rewards/accuracies"] > before["rewards/accuracies"] + 0.3
    assert after["loss"] < before["loss"] - 0.1


# ----------------------------------------------------------------------------------------------------------- QLoRA
@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("qlora"), "--load-in-4bit", "true")


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_4bit_demo_trains_and_merges_into_the_full_precision_base(qlora_run, family):
    folder = qlora_run / family
    metrics = json.loads((folder / "metrics.json").read_text())
    assert_learned(metrics)
    assert metrics["training"] == "QLoRA DPO"
    assert metrics["quantization"].startswith("4-bit NF4 (double quantization)")
    assert metrics["hyperparameters"]["load_in_4bit"] is True
    assert metrics["generation_after"]["num_outputs"] == 4  # evidence generated from the published pair
    # merged/ is a plain full-precision model: no quantization in its config, loads without bitsandbytes.
    config = json.loads((folder / "merged" / "config.json").read_text())
    assert "quantization_config" not in config
    merged = AUTO[family].from_pretrained(folder / "merged")
    assert all(p.dtype == torch.float32 for p in merged.parameters())
    # Independent merge: the full-precision demo base + the saved adapter, folded by PEFT.
    base = AUTO[family].from_pretrained(folder / "base")
    reference = PeftModel.from_pretrained(base, folder / "adapter").merge_and_unload()
    torch.testing.assert_close(probe_logits(merged, family), probe_logits(reference, family), atol=1e-5, rtol=1e-5)
    # The adapter changed the model.
    plain = AUTO[family].from_pretrained(folder / "base")
    assert (probe_logits(merged, family) - probe_logits(plain, family)).abs().max() > 1e-3
    card = (folder / "merged" / "README.md").read_text()
    assert "QLoRA DPO" in card and "loads without bitsandbytes" in card and "4-bit NF4" in card


def test_8bit_and_the_8bit_optimizer_train_on_cpu(tmp_path):
    out = train(tmp_path, "--load-in-8bit", "true", "--optim", "adamw_bnb_8bit", families_="gpt2", pairs=24)
    metrics = json.loads((out / "gpt2" / "metrics.json").read_text())
    assert metrics["quantization"] == "8-bit (LLM.int8)" and metrics["hyperparameters"]["optim"] == "adamw_bnb_8bit"
    assert_learned(metrics)
    assert "quantization_config" not in json.loads((out / "gpt2" / "merged" / "config.json").read_text())


def test_4bit_weights_stay_trainable_after_an_eval_forward(tmp_path):
    """bitsandbytes repacks 4-bit weights for inference at an eval forward on AVX512-BF16 CPUs, then fails in training;
    the branch is forced here (as if on such a CPU) and must not be taken after `keep_4bit_weights_trainable`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=128, n_embd=64, n_layer=1, n_head=2, n_positions=32)).save_pretrained(tmp_path)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, quantization_config=quant, device_map={"": "cpu"})
    layers = [m for m in model.modules() if hasattr(m, "support_avx512bf16_for_cpu")]
    assert layers
    for layer in layers:
        layer.support_avx512bf16_for_cpu = True
    assert families.keep_4bit_weights_trainable(model) == len(layers)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        model.eval()(input_ids=ids)
    assert not any(getattr(layer.weight.quant_state, "packing_format_for_cpu", False) for layer in layers)


# ------------------------------------------------------------------------------------------------------- full DPO
@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    return train(tmp_path_factory.mktemp("full"), "--use-peft", "false", "--learning-rate", "3e-4")


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_full_dpo_outputs_are_the_trained_model_and_evidence_comes_from_two_models(full_run, family):
    folder = full_run / family
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["training"] == "full-parameter DPO" and metrics["hyperparameters"]["use_peft"] is False
    assert_learned(metrics)
    assert not (folder / "adapter").exists()
    assert metrics["generation_before"]["num_outputs"] == metrics["generation_after"]["num_outputs"] == 4
    merged = AUTO[family].from_pretrained(folder / "merged")
    base = AUTO[family].from_pretrained(folder / "base")
    # Every weight moved (not only attention projections as under LoRA).
    moved = {name for name, p in merged.named_parameters()
             if not torch.equal(p, dict(base.named_parameters())[name])}
    assert any("mlp" in n or "DenseReluDense" in n for n in moved) and any("ln" in n or "layer_norm" in n for n in moved)
    card = (folder / "merged" / "README.md").read_text()
    assert "Full-parameter DPO" in card and "LoRA adapter alone" not in card


def test_full_dpo_is_served_as_two_models(full_run):
    folder = full_run / "gpt2"
    pair = load_pair(str(folder / "base"), None, str(folder / "merged"))
    assert not pair.shares_weights
    for served, source in ((pair.base_model, "base"), (pair.dpo_model, "merged")):
        on_disk = AutoModelForCausalLM.from_pretrained(folder / source)
        torch.testing.assert_close(probe_logits(served, "gpt2"), probe_logits(on_disk, "gpt2"))
    assert (probe_logits(pair.base_model, "gpt2") - probe_logits(pair.dpo_model, "gpt2")).abs().max() > 1e-3


def test_full_dpo_pushes_without_an_adapter_repo(full_run, local_hub):
    from dpo_studio.hub.publish import PushTarget, check_push_access, push_outputs

    target = check_push_access(PushTarget(local_hub.user, None, False, None, "test"))
    pushed = push_outputs(full_run, target, [full_run / "gpt2"])
    assert f"{local_hub.user}/gpt2-dpo" in pushed and not any(repo.endswith("-lora") for repo in pushed)
    files = local_hub.files(f"{local_hub.user}/gpt2-dpo")
    assert "model.safetensors" in files and "Full-parameter DPO" in files["README.md"].decode()


# ----------------------------------------------------------------------------------------------- option errors
@pytest.mark.parametrize("extra, message", [
    (["--load-in-4bit", "true", "--load-in-8bit", "true"], "--load-in-4bit and --load-in-8bit together"),
    (["--load-in-4bit", "true", "--use-peft", "false"], "drop --use-peft false"),
    (["--bf16", "true", "--fp16", "true"], "--bf16 true and --fp16 true together"),
])
def test_contradictory_options_are_one_line_errors(tmp_path, capsys, extra, message):
    data = write_toy_pairs(tmp_path / "pairs.jsonl", 8)
    assert run_cli(["--dataset", str(data), "--output-dir", str(tmp_path / "o"), "--demo", "--models", "gpt2", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err
    assert not (tmp_path / "o").exists()


def test_missing_or_unusable_bitsandbytes_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import importlib.util

    import bitsandbytes.functional

    data = write_toy_pairs(tmp_path / "pairs.jsonl", 8)
    argv = ["--dataset", str(data), "--output-dir", str(tmp_path / "o"), "--demo", "--models", "gpt2", "--load-in-4bit", "true"]
    real_find_spec = importlib.util.find_spec
    with monkeypatch.context() as patch:
        patch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
        assert run_cli(argv) == 2
    assert "bitsandbytes is not installed: pip install 'bitsandbytes>=0.50'" in capsys.readouterr().err

    def unsupported(*args, **kwargs):
        raise RuntimeError("no kernel for this CPU")

    monkeypatch.setattr(families.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(bitsandbytes.functional, "quantize_4bit", unsupported)
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot quantize on this CPU (RuntimeError: no kernel for this CPU)" in err
    assert not (tmp_path / "o").exists()
