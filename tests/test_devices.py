"""One device per family: with the trained model on a stand-in device (`meta`, standing in for a GPU on this CPU host),
everything the pipeline builds for the family -- the reloaded base of full DPO, the full-precision base of a QLoRA
merge, the merged weights, the prompts -- lands on that device through the product's own loaders; and the trained
adapter is saved before evidence or merging can fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from tiny_models import build_family
from toy_data import write_toy_pairs
from transformers import AutoTokenizer

from dpo_studio.config.arguments import parse_config
from dpo_studio.inference.generation import LoadedPair
from dpo_studio.models.families import architecture_of, load_architecture, load_model, prepare_tokenizer
from dpo_studio.run_layout import FamilyPaths
from dpo_studio.training.pipeline import published_model, run, serving_pair

META = torch.device("meta")


@pytest.fixture(scope="module", params=["gpt2", "t5"])
def family(request, tmp_path_factory):
    dirs = build_family(tmp_path_factory.mktemp("family"), request.param)
    arch = load_architecture(str(dirs["base"]))
    tokenizer = prepare_tokenizer(AutoTokenizer.from_pretrained(dirs["base"]), arch)
    return request.param, dirs, arch, tokenizer


def loader(dirs, arch, seen: list):
    """The pipeline's full-precision base loader (FamilyRun.load_full_precision_base), recording the device asked."""

    def load(device="cpu"):
        seen.append(torch.device(device))
        return load_model(str(dirs["base"]), arch, device=device)

    return load


def devices(model: torch.nn.Module) -> set[torch.device]:
    return {p.device for p in model.parameters()} | {b.device for b in model.buffers()}


def test_full_dpo_pair_has_one_device(family):
    """Full DPO: the frozen base is reloaded onto the trained model's device (it once stayed on the CPU)."""
    name, dirs, arch, tokenizer = family
    trained = load_model(str(dirs["merged"]), arch).to(META)
    seen = []
    pair = serving_pair(trained, loader(dirs, arch, seen), tokenizer, arch)
    assert seen == [META]
    assert devices(pair.base_model) == devices(pair.dpo_model) == {META} and pair.device == META
    assert pair.inputs(["hello there"])["input_ids"].device == META


def test_qlora_merge_runs_on_the_trained_device(family):
    """QLoRA: the adapter is put on a full-precision base loaded onto the trained model's device; merged weights
    stay there."""
    name, dirs, arch, tokenizer = family
    trained = PeftModel.from_pretrained(load_model(str(dirs["base"]), arch), str(dirs["adapter"])).to(META)
    seen = []
    model = published_model(trained, loader(dirs, arch, seen), quantized=True)
    assert seen == [META] and devices(model) == {META}
    pair = serving_pair(model, loader(dirs, arch, seen), tokenizer, arch)
    assert pair.shares_weights and pair.device == META and seen == [META]
    assert devices(model.merge_and_unload()) == {META}


def test_qlora_merge_on_the_cpu_is_base_plus_adapter(family):
    """The same path on a real device: merged == base + the adapter's B @ A * scale (computed here independently)."""
    name, dirs, arch, tokenizer = family
    trained = PeftModel.from_pretrained(load_model(str(dirs["base"]), arch), str(dirs["adapter"]))
    merged = published_model(trained, loader(dirs, arch, []), quantized=True).merge_and_unload()
    base = load_file(str(dirs["base"] / "model.safetensors"))
    adapter = load_file(str(dirs["adapter"] / "adapter_model.safetensors"))
    config = json.loads((dirs["adapter"] / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / config["r"]
    checked = 0
    for key, a in adapter.items():
        if ".lora_A." not in key:
            continue
        b = adapter[key.replace(".lora_A.", ".lora_B.")]
        weight_key = key.replace("base_model.model.", "").replace(".lora_A.weight", ".weight")
        delta = (b @ a) * scale
        expected = base[weight_key] + (delta.T if config.get("fan_in_fan_out") else delta)
        torch.testing.assert_close(merged.state_dict()[weight_key], expected, rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked >= 2


def test_a_pair_on_two_devices_is_refused(family):
    name, dirs, arch, tokenizer = family
    base = load_model(str(dirs["base"]), arch)
    with pytest.raises(ValueError, match="base on cpu, DPO on meta"):
        LoadedPair(model=None, base_model=base, dpo_model=load_model(str(dirs["merged"]), arch).to(META),
                   tokenizer=tokenizer, prompt_format=arch.prompt_format, is_encoder_decoder=arch.is_encoder_decoder)


def test_trained_adapter_is_saved_before_the_evidence_step_fails(tmp_path, monkeypatch, caplog):
    """A failure after training (here: the evidence generations) loses nothing: the adapter trained is on disk and
    loads back onto the base, and nothing looks finished."""
    import dpo_studio.training.pipeline as pipeline

    def broken(*args, **kwargs):
        raise RuntimeError("Expected all tensors to be on the same device")

    monkeypatch.setattr(pipeline, "generation_evidence", broken)
    data = write_toy_pairs(tmp_path / "pairs.jsonl", 24)
    out = tmp_path / "out"
    args = parse_config([
        "--dataset", str(data), "--output-dir", str(out), "--models", "gpt2", "--demo", "--demo-hidden-size", "32",
        "--demo-layers", "1", "--demo-vocab-size", "300", "--demo-sft-epochs", "1", "--num-train-epochs", "1",
        "--per-device-train-batch-size", "8", "--eval-fraction", "0.25", "--lora-r", "4", "--seed", "0",
        "--eval-generations", "2", "--max-length", "64",
    ])
    with pytest.raises(RuntimeError, match="same device"):
        run(*args)
    saved = FamilyPaths(out / "gpt2").trained
    assert not (out / "gpt2" / "metrics.json").exists()
    assert str(saved) in caplog.text and "nothing was published" in caplog.text
    base = load_model(str(out / ".work" / "gpt2" / "base"), architecture_of_dir(out / ".work" / "gpt2" / "base"))
    trained = PeftModel.from_pretrained(base, str(saved))
    lora_b = [p for n, p in trained.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained: LoRA B starts at zero


def architecture_of_dir(path: Path):
    from transformers import AutoConfig

    return architecture_of(AutoConfig.from_pretrained(path))


