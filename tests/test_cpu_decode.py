"""`MaskedLoraLinear` (dpo_studio.inference.serving_lora), the LoRA layer the app is built with, changes speed only: the same
logits and tokens as PEFT's own layers, the same state dict, PEFT's forward under autograd."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration
from transformers.pytorch_utils import Conv1D

from dpo_studio.inference import serving_lora as cpu_decode
from dpo_studio.inference.serving_lora import MaskedLoraLinear, serving_lora_config

pytestmark = pytest.mark.usefixtures("single_thread")

NAMES = ["__base__", "default", "default"]
IDS = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5], [5, 6, 7, 8, 9]])


def _base(family: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if family == "gpt2":
        return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=64)).eval()
    return T5ForConditionalGeneration(T5Config(vocab_size=97, d_model=32, d_ff=64, d_kv=8, num_layers=2,
                                               num_heads=2, decoder_start_token_id=0)).eval()


def _saved_adapter(family: str, root: Path, lora_bias: bool = False) -> Path:
    """A LoRA adapter with non-zero B weights (and biases with `lora_bias`), saved as training writes it."""
    targets = ["c_attn", "c_fc"] if family == "gpt2" else ["q", "v", "wi"]
    peft_model = get_peft_model(_base(family), LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                          fan_in_fan_out=family == "gpt2", lora_bias=lora_bias))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    path = root / f"{family}-adapter"
    peft_model.save_pretrained(path)
    return path


def _loaded(family: str, adapter: Path, serving: bool) -> PeftModel:
    config = LoraConfig.from_pretrained(adapter)
    if serving:
        serving_lora_config(config)
    return PeftModel.from_pretrained(_base(family), adapter, config=config).eval()


def _logits(model: PeftModel, family: str, **kwargs) -> torch.Tensor:
    extra = {"decoder_input_ids": IDS[:, :3]} if family == "t5" else {}
    return model(input_ids=IDS, **extra, **kwargs).logits


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_peft_builds_masked_layers_with_peft_state(family: str, tmp_path: Path) -> None:
    adapter = _saved_adapter(family, tmp_path)
    served, stock = _loaded(family, adapter, True), _loaded(family, adapter, False)
    layers = [m for m in served.modules() if isinstance(m, LoraLinear)]
    assert len(layers) == (4 if family == "gpt2" else 16) and all(type(m) is MaskedLoraLinear for m in layers)
    assert not any(isinstance(m, MaskedLoraLinear) for m in stock.modules())
    if family == "gpt2":  # over Conv1D, as PEFT's own dispatcher decides it
        assert all(m.fan_in_fan_out and m.is_target_conv_1d_layer and isinstance(m.base_layer, Conv1D)
                   for m in layers)
    served_state, stock_state = served.state_dict(), stock.state_dict()
    assert served_state.keys() == stock_state.keys()
    assert all(torch.equal(served_state[k], stock_state[k]) for k in stock_state)


@pytest.mark.parametrize("lora_bias", [False, True])
@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_mixed_batch_equals_peft_and_the_rows_equal_base_and_adapter(family: str, lora_bias: bool,
                                                                       tmp_path: Path) -> None:
    adapter = _saved_adapter(family, tmp_path, lora_bias)
    served, stock = _loaded(family, adapter, True), _loaded(family, adapter, False)
    with torch.inference_mode():
        masked = _logits(served, family, adapter_names=NAMES)
        reference = _logits(stock, family, adapter_names=NAMES)  # PEFT's split-and-scatter
        with stock.disable_adapter():
            base = _logits(stock, family)
        adapted = _logits(stock, family)  # adapter on for every row
    torch.testing.assert_close(masked, reference, rtol=1e-5, atol=1e-5)
    # "__base__" rows get the base output + 0; MKL's summation order may depend on memory alignment, hence 1e-6.
    torch.testing.assert_close(masked[0], base[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(masked[1:], adapted[1:], rtol=1e-5, atol=1e-5)
    assert (masked[2] - base[2]).abs().max() > 1e-2  # the adapter shows


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_mixed_adapter_generate_gives_peft_tokens(family: str, tmp_path: Path) -> None:
    """Base row + LoRA row in one batch (the app's compare): greedy and seeded-sampled tokens equal PEFT's."""
    adapter = _saved_adapter(family, tmp_path)
    served, stock = _loaded(family, adapter, True), _loaded(family, adapter, False)
    ids = IDS[:1].repeat(2, 1)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                  adapter_names=["__base__", "default"], pad_token_id=0)
    for sampling in ({"do_sample": False}, {"do_sample": True, "temperature": 0.9, "top_p": 1.0}):
        outs = []
        for model in (served, stock):
            torch.manual_seed(3)
            with torch.inference_mode():
                outs.append(model.generate(**kwargs, **sampling))
        assert torch.equal(outs[0], outs[1]), sampling
        assert not torch.equal(outs[0][0], outs[0][1])  # the adapter row really differs from the base row


def test_autograd_and_other_calls_take_peft_forward(tmp_path: Path) -> None:
    adapter = _saved_adapter("gpt2", tmp_path)
    served, stock = _loaded("gpt2", adapter, True), _loaded("gpt2", adapter, False)
    grads = []
    for model in (served, stock):
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name)
        model(input_ids=IDS, labels=IDS).loss.backward()
        grads.append([p.grad for n, p in model.named_parameters() if "lora_B" in n])
    assert grads[0] and all(g is not None and g.abs().sum() > 0 for g in grads[0])
    for fast, reference in zip(*grads):
        torch.testing.assert_close(fast, reference)


def test_switch_off_builds_peft_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = _saved_adapter("t5", tmp_path)
    monkeypatch.setenv(cpu_decode.ENV_SWITCH, "0")
    model = _loaded("t5", adapter, True)
    layers = [m for m in model.modules() if isinstance(m, LoraLinear)]
    assert layers and all(type(m) is LoraLinear for m in layers)
