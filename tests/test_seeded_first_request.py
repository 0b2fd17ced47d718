"""A seed means the same replies on the first request after start as on every later one (issue 18): /compare,
/compare_stream and /blind, through the Studio and through gradio_client against a launched app.

The bug this guards against: a kernel probe that ran on the first decode step drew `torch.randn` from torch's
global generator after the request had seeded it, so only the first sampled request after start differed.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
import torch
from gradio_client import Client
from tiny_models import FAMILIES, free_port

from dpo_studio import ui
from dpo_studio.inference.model_sources import ModelRegistry, resolve_sources

CAP = 12
PROMPT = "How was your morning?"
SAMPLED = (CAP, 0.7, 1.0, 3)  # max_new_tokens, temperature, top_p, seed
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword is deprecated).*"),
    pytest.mark.usefixtures("single_thread"),
]


def _fresh_app(models_dir: Path, tmp_path: Path):
    """A just-built app and its Studio: no model loaded, no request served yet."""
    registry = ModelRegistry(resolve_sources(models_dir=models_dir, environ={}))
    studio = ui.build_studio(registry, votes_file=tmp_path / "votes.jsonl", max_new_tokens_cap=CAP,
                             rng=random.Random(0))
    return ui.build_app(studio=studio, example_prompts=[PROMPT]), studio


@pytest.mark.parametrize("family", FAMILIES)
def test_first_seeded_stream_equals_later_requests_through_the_studio(models_dir, tmp_path, family):
    _, studio = _fresh_app(models_dir, tmp_path)
    torch.manual_seed(123)  # whatever state the process is in, the request's seed decides
    first = tuple(list(studio.compare_stream(PROMPT, family, *SAMPLED))[-1][:2])
    assert all(first) and first[0] != first[1]
    torch.randn(5)  # other work between requests draws from the global generator
    assert tuple(studio.compare(PROMPT, family, *SAMPLED)[:2]) == first
    assert tuple(list(studio.compare_stream(PROMPT, family, *SAMPLED))[-1][:2]) == first
    _, reply_a, reply_b = studio.blind(PROMPT, family, *SAMPLED)
    assert {reply_a, reply_b} == set(first)
    greedy = tuple(studio.compare(PROMPT, family, CAP, 0.0, 1.0, 3)[:2])
    assert greedy != first  # the temperature reached the sampler: these really are sampled replies


def test_first_seeded_requests_equal_later_ones_through_the_http_api(models_dir, tmp_path):
    demo, _ = _fresh_app(models_dir, tmp_path)
    port = free_port()
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        for family in FAMILIES:  # each family's first request is its first after its model loads
            first = tuple(client.submit(PROMPT, family, *SAMPLED, api_name="/compare_stream").result())
            assert all(first)
            assert tuple(client.predict(PROMPT, family, *SAMPLED, api_name="/compare")) == first
            assert tuple(client.submit(PROMPT, family, *SAMPLED, api_name="/compare_stream").result()) == first
            _, reply_a, reply_b = client.predict(PROMPT, family, *SAMPLED, api_name="/blind")
            assert {reply_a, reply_b} == set(first)
    finally:
        demo.close()


def test_first_seeded_blind_equals_a_later_compare(models_dir, tmp_path):
    """/blind as the very first request of a fresh app."""
    _, studio = _fresh_app(models_dir, tmp_path)
    _, reply_a, reply_b = studio.blind(PROMPT, "gpt2", *SAMPLED)
    assert {reply_a, reply_b} == set(studio.compare(PROMPT, "gpt2", *SAMPLED)[:2])
