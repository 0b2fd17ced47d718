"""The small-batch decode matmuls (`dpo_studio.cpu_decode`) change speed only: same numbers, same tokens, same
weights, stock behaviour under autograd."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration
from transformers.pytorch_utils import Conv1D

from dpo_studio import cpu_decode
from dpo_studio.cpu_decode import enable_masked_adapter_batches, enable_small_batch_matmuls

pytestmark = pytest.mark.usefixtures("single_thread")


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=97, n_positions=64)).eval()


def _t5() -> T5ForConditionalGeneration:
    torch.manual_seed(0)
    return T5ForConditionalGeneration(T5Config(vocab_size=97, d_model=32, d_ff=64, d_kv=8, num_layers=2,
                                               num_heads=2, decoder_start_token_id=0)).eval()


def _switched(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in model.modules() if getattr(m, "forward", None) is not None
            and getattr(m.forward, "__func__", None) is cpu_decode._small_batch_forward]


@pytest.mark.parametrize("kernel", cpu_decode.KERNELS)
@pytest.mark.parametrize("rows", [1, 2, 5, 32, 40])
def test_linear_and_conv1d_match_stock(rows: int, kernel: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both few-row kernels (the probe picks one per CPU) are forced here, so every host runs both."""
    monkeypatch.setenv(cpu_decode.KERNEL_ENV, kernel)
    torch.manual_seed(rows)
    for layer in (torch.nn.Linear(24, 40), torch.nn.Linear(24, 40, bias=False), Conv1D(40, 24)):
        stock = copy.deepcopy(layer)
        assert enable_small_batch_matmuls(layer) == 1
        x = torch.randn(rows, 1, 24)  # decode-shaped: rows x 1 position x features
        with torch.inference_mode():
            torch.testing.assert_close(layer(x), stock(x), rtol=1e-5, atol=1e-6)
        # Same parameter values and shapes: checkpoints and PEFT see the layer unchanged.
        for (name, p), (_, q) in zip(layer.named_parameters(), stock.named_parameters()):
            assert p.shape == q.shape and torch.equal(p, q), name


def test_kernel_probe_picks_the_faster_kernel_and_honours_the_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cpu_decode.KERNEL_ENV, raising=False)
    for fast in cpu_decode.KERNELS:
        monkeypatch.setattr(cpu_decode, "_chosen_kernel", None)
        monkeypatch.setattr(cpu_decode, "_time_kernel", lambda kernel, weight, x, fast=fast: 1.0 if kernel == fast else 2.0)
        assert cpu_decode.small_batch_kernel() == fast
    monkeypatch.setenv(cpu_decode.KERNEL_ENV, "transposed")
    assert cpu_decode.small_batch_kernel() == "transposed"


def test_conv1d_weight_relaid_out_without_a_second_copy() -> None:
    layer = Conv1D(40, 24)
    enable_small_batch_matmuls(layer)
    assert layer.weight.shape == (24, 40)
    assert layer.weight.t().is_contiguous()  # [out, in] storage, seen as [in, out]
    assert layer.weight.untyped_storage().nbytes() == 24 * 40 * 4


def test_autograd_takes_the_stock_path_with_equal_gradients() -> None:
    torch.manual_seed(0)
    layer = Conv1D(16, 8)
    stock = copy.deepcopy(layer)
    enable_small_batch_matmuls(layer)
    x = torch.randn(3, 8, requires_grad=True)
    layer(x).square().sum().backward()
    grad_fast, x.grad = x.grad.clone(), None
    stock(x).square().sum().backward()
    torch.testing.assert_close(grad_fast, x.grad)
    torch.testing.assert_close(layer.weight.grad, stock.weight.grad)


def _lora_model(family: str, lora_bias: bool = False):
    model = _gpt2() if family == "gpt2" else _t5()
    targets = ["c_attn", "c_fc"] if family == "gpt2" else ["q", "v", "wi"]
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets,
                                                  fan_in_fan_out=family == "gpt2", lora_bias=lora_bias))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # weights and (lora_bias=True) biases: non-zero, so that they show
                param.normal_(0.0, 0.5)
    return peft_model.eval()


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_masked_batch_applies_a_lora_b_bias_like_peft(family: str) -> None:
    """An adapter trained with `lora_bias=True`: the masked rows equal PEFT's own mixed batch (masked path off)."""
    peft_model = _lora_model(family, lora_bias=True)
    biases = [m.lora_B["default"].bias for m in peft_model.modules() if hasattr(m, "lora_B")]
    assert biases and all(b is not None and b.abs().sum() > 0 for b in biases)
    stock = copy.deepcopy(peft_model)  # PEFT's `_mixed_batch_forward`, untouched
    assert enable_masked_adapter_batches(peft_model) == len(biases)
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5], [5, 6, 7, 8, 9]])
    extra = {"decoder_input_ids": ids[:, :3]} if family == "t5" else {}
    names = ["__base__", "default", "default"]
    with torch.inference_mode():
        masked = peft_model(input_ids=ids, adapter_names=names, **extra).logits
        reference = stock(input_ids=ids, adapter_names=names, **extra).logits
        no_bias = copy.deepcopy(peft_model)
        for module in no_bias.modules():
            if hasattr(module, "lora_B"):
                module.lora_B["default"].bias.zero_()
        without = no_bias(input_ids=ids, adapter_names=names, **extra).logits
    torch.testing.assert_close(masked, reference, rtol=1e-5, atol=1e-5)
    assert (masked[1:] - without[1:]).abs().max() > 1e-2  # the bias matters: ignoring it would be caught
    torch.testing.assert_close(masked[0], without[0], rtol=1e-6, atol=1e-6)  # base rows: no bias


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_mixed_adapter_generate_gives_the_same_tokens(family: str) -> None:
    """Base row + LoRA row in one batch (the app's compare): tokens equal stock PEFT's mixed-batch greedy tokens."""
    peft_model = _lora_model(family)
    stock = copy.deepcopy(peft_model)
    switched = enable_small_batch_matmuls(peft_model)
    assert switched == len(_switched(peft_model)) > 0
    lora_layers = [m for m in peft_model.modules() if hasattr(m, "lora_A")]
    assert enable_masked_adapter_batches(peft_model) == len(lora_layers) == (4 if family == "gpt2" else 16)
    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 8, 9]])
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, min_new_tokens=12,
                  do_sample=False, adapter_names=["__base__", "default"], pad_token_id=0)
    with torch.inference_mode():
        fast, reference = peft_model.generate(**kwargs), stock.generate(**kwargs)
    assert torch.equal(fast, reference)
    assert not torch.equal(fast[0], fast[1])  # the adapter row really differs from the base row


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_masked_batch_rows_match_base_and_adapter_outputs(family: str) -> None:
    peft_model = _lora_model(family)
    enable_small_batch_matmuls(peft_model)
    enable_masked_adapter_batches(peft_model)
    ids = torch.tensor([[5, 6, 7, 8, 9], [9, 8, 7, 6, 5], [5, 6, 7, 8, 9]])
    extra = {"decoder_input_ids": ids[:, :3]} if family == "t5" else {}
    with torch.inference_mode():
        mixed = peft_model(input_ids=ids, adapter_names=["__base__", "default", "default"], **extra).logits
        with peft_model.disable_adapter():
            base = peft_model(input_ids=ids, **extra).logits
        adapted = peft_model(input_ids=ids, **extra).logits  # PEFT's own forward, adapter on for every row
    # "__base__" rows get the base output + 0; MKL's summation order may depend on memory alignment, hence 1e-6.
    torch.testing.assert_close(mixed[0], base[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mixed[1:], adapted[1:], rtol=1e-5, atol=1e-5)
    assert (mixed[2] - base[2]).abs().max() > 1e-2


def test_masked_batch_leaves_other_calls_to_peft() -> None:
    peft_model = _lora_model("gpt2")
    enable_masked_adapter_batches(peft_model)
    peft_model.train()  # autograd on: PEFT's forward, gradients reach the LoRA weights
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    peft_model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in peft_model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_switch_off_and_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_decode.ENV_SWITCH, "0")
    assert enable_small_batch_matmuls(_gpt2()) == 0
    monkeypatch.delenv(cpu_decode.ENV_SWITCH)
    model = _gpt2()
    first = enable_small_batch_matmuls(model)
    assert first == 2 * 4 + 1  # 4 Conv1D per block + the LM head
    assert enable_small_batch_matmuls(model) == 0


def test_relayout_of_a_mapped_checkpoint_keeps_every_value(tmp_path) -> None:
    """Loaded from safetensors (memory-mapped), re-laid out with the old pages dropped: same weights, same logits."""
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=256, n_head=4, vocab_size=97, n_positions=64)).save_pretrained(tmp_path)
    model = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    stock = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
    old = model.transformer.h[0].mlp.c_fc.weight.detach()
    assert (cpu_decode._file_mapping_of(old.data_ptr(), old.data_ptr() + 1) or "").endswith(".safetensors")
    enable_small_batch_matmuls(model)
    assert model.transformer.h[0].mlp.c_fc.weight.data_ptr() != old.data_ptr()
    for (name, p), (_, q) in zip(model.state_dict().items(), stock.state_dict().items()):
        assert torch.equal(p, q), name
    torch.testing.assert_close(old, stock.transformer.h[0].mlp.c_fc.weight)  # dropped pages re-read from the file
    ids = torch.tensor([[3, 4, 5], [6, 7, 8]])
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, stock(input_ids=ids).logits, rtol=1e-5, atol=1e-5)


def test_drop_file_pages_refuses_anonymous_or_shared_memory(tmp_path) -> None:
    anonymous = torch.randn(1 << 20)
    assert not cpu_decode._drop_file_pages(anonymous, [])
    assert torch.isfinite(anonymous).all() and anonymous.abs().sum() > 0
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=256, n_head=4, vocab_size=97)).save_pretrained(tmp_path)
    mapped = GPT2LMHeadModel.from_pretrained(tmp_path).transformer.h[0].mlp.c_fc.weight.detach()
    assert not cpu_decode._drop_file_pages(mapped, [mapped[:10]])  # a live view overlaps it
    expected = mapped.clone()
    assert cpu_decode._drop_file_pages(mapped, [])
    assert torch.equal(mapped, expected)  # clean file pages: read back from the file
