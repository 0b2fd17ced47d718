"""The decode-step product is chosen once per CPU, at model load (`decode_kernel`): timed on the model's own shapes
with a private generator (torch's global RNG untouched), logged, never inside a request. Forced either way, the first
seeded request equals later ones and greedy tokens equal two plain models."""

from __future__ import annotations

import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from tiny_models import FAMILIES, plain_generate

from dpo_studio.inference import decode_kernel
from dpo_studio.inference.generation import generate_pair_results, load_pair
from dpo_studio.inference.serving_lora import MaskedLoraLinear

PROMPT = "How was your morning?"
CAP = 10
pytestmark = pytest.mark.usefixtures("single_thread")


def load(models_dir, family):
    return load_pair(str(models_dir / family / "base"), str(models_dir / family / "adapter"))


def replies(pair, temperature: float, seed: int = 3) -> tuple[str, str]:
    base, dpo = generate_pair_results(pair, [PROMPT], max_new_tokens=CAP, temperature=temperature, seed=seed)[0]
    return base.text, dpo.text


@pytest.mark.parametrize("kernel", [decode_kernel.LINEAR, decode_kernel.TRANSPOSED])
@pytest.mark.parametrize("family", FAMILIES)
def test_forced_either_way_first_seeded_request_equals_later_ones_and_greedy_equals_plain_models(
        models_dir, family, kernel, monkeypatch):
    monkeypatch.setenv(decode_kernel.KERNEL_ENV, kernel)
    pair = load(models_dir, family)
    masked = [m for m in pair.model.modules() if isinstance(m, MaskedLoraLinear)]
    head = pair.model.get_base_model().get_output_embeddings()
    assert masked and {m.decode_kernel for m in masked} == {kernel}
    assert isinstance(head, decode_kernel.FewRowLinear) and head.decode_kernel == kernel
    calls = []
    real = decode_kernel.few_row_product
    monkeypatch.setattr("dpo_studio.inference.serving_lora.few_row_product", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(99)  # whatever state the process is in, the request's seed decides
    first = replies(pair, 0.8)
    torch.randn(7)
    assert replies(pair, 0.8) == first and all(first)
    assert bool(calls) == (kernel == decode_kernel.TRANSPOSED)  # the transposed form really ran (decode steps)
    base, dpo = replies(pair, 0.0)
    assert base == plain_generate(models_dir / family / "base", family, PROMPT, CAP)
    assert dpo == plain_generate(models_dir / family / "merged", family, PROMPT, CAP)


@pytest.mark.parametrize("family", FAMILIES)
def test_auto_choice_is_made_at_load_on_the_model_with_a_private_generator_and_logged(
        models_dir, family, monkeypatch, caplog):
    monkeypatch.delenv(decode_kernel.KERNEL_ENV, raising=False)
    timed_shapes = []
    real_time = decode_kernel.time_kernels

    def recording(layers, *args, **kwargs):
        timed_shapes.extend(tuple(layer.weight.shape) for layer in layers)
        return real_time(layers, *args, **kwargs)

    monkeypatch.setattr(decode_kernel, "time_kernels", recording)
    with caplog.at_level(logging.INFO, logger="dpo_studio"):
        pair = load(models_dir, family)  # load_pair chooses (PEFT's own LoRA init draws from the global RNG here)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("decode kernel:")]
    assert len(lines) == 1 and "F.linear" in lines[0] and "(W @ x^T)^T" in lines[0]
    torch.manual_seed(5)
    state = torch.get_rng_state()
    decode_kernel.choose_decode_kernel(pair.model)  # the choice alone: timed with a private generator
    assert torch.equal(torch.get_rng_state(), state), "choosing drew from torch's global generator"
    head = pair.model.get_base_model().get_output_embeddings()
    assert tuple(head.weight.shape) in timed_shapes  # the loaded model's own LM head shape was timed
    # Requests never time kernels again.
    monkeypatch.setattr(decode_kernel, "time_kernels", lambda *a, **k: pytest.fail("timed inside a request"))
    assert replies(pair, 0.8) == replies(pair, 0.8)


def test_the_transposed_product_equals_f_linear_for_linear_and_conv1d():
    from transformers.pytorch_utils import Conv1D

    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(16, 24)
    conv = Conv1D(24, 16)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(16, 24, generator=generator))
        conv.bias.copy_(torch.randn(24, generator=generator))
        x = torch.randn(2, 1, 16, generator=generator)
        for layer in (linear, conv):
            torch.testing.assert_close(decode_kernel.few_row_product(layer, x), layer(x), rtol=1e-5, atol=1e-6)


def test_a_bad_forced_value_is_refused_in_one_line(models_dir, monkeypatch):
    monkeypatch.setenv(decode_kernel.KERNEL_ENV, "fastest-please-" * 10)
    with pytest.raises(ValueError, match="DPO_STUDIO_DECODE_KERNEL") as err:
        load(models_dir, "gpt2")
    assert len(str(err.value)) < 120
