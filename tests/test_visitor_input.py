"""Every input a visitor sends is refused cleanly or normalised, and nothing dirty is stored: invalid Unicode names its
field, integer settings refuse non-integers, messages quote at most a few dozen characters, control characters never
reach the votes file, and no message shows a server path."""

from __future__ import annotations

import html
import json
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import gradio as gr
import pytest

from dpo_studio import ui
from dpo_studio.arena.visitor_text import QUOTE_CHARS, clean_text, shown, without_paths
from dpo_studio.arena.votes import make_vote, read_votes_file
from dpo_studio.inference.model_sources import ModelRegistry, discover_models_dir

pytestmark = pytest.mark.usefixtures("single_thread")
SURROGATE = "tea \ud800 time"  # what JSON "tea \ud800 time" decodes to: not encodable as UTF-8


@pytest.fixture(scope="module")
def studio(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> ui.Studio:
    return ui.build_studio(ModelRegistry(discover_models_dir(models_dir)),
                           votes_file=tmp_path_factory.mktemp("votes") / "votes.jsonl", max_new_tokens_cap=8,
                           rng=random.Random(0), owner_actions="export", export_repo="owner/votes")


def _refusal(call, *args) -> str:
    with pytest.raises(gr.Error) as info:
        result = call(*args)
        if hasattr(result, "__next__"):
            list(result)
    message = info.value.message
    assert "\n" not in message and len(message) < 300, message
    return message


@pytest.mark.parametrize("field, args", [
    ("prompt", (SURROGATE, "gpt2")), ("prompt", (SURROGATE, "t5")), ("family", ("Hi", SURROGATE))])
def test_invalid_unicode_is_one_line_naming_the_field(studio, field, args):
    for call in (studio.compare, studio.blind):
        assert f"The {field} is not valid Unicode (a lone surrogate at character 5)" in _refusal(call, *args)
    assert "reply B is not valid Unicode" in _refusal(studio.score_all, "Hi", "fine", SURROGATE, "gpt2")
    assert "round id is not valid Unicode" in _refusal(studio.vote, SURROGATE, "A")
    assert "vote choice is not valid Unicode" in _refusal(studio.vote, "r", SURROGATE)


@pytest.mark.parametrize("setting, value", [("max_new_tokens", 3.5), ("max_new_tokens", "3.5"), ("seed", 1.5),
                                            ("seed", "one"), ("seed", True), ("max_new_tokens", float("inf"))])
def test_integer_settings_refuse_non_integers(studio, setting, value):
    settings = {"max_new_tokens": 4, "temperature": 0.0, "top_p": 1.0, "seed": 0, setting: value}
    message = _refusal(studio.compare, "Hi", "gpt2", *settings.values())
    assert message.startswith(f"{setting} must be a whole number, got ")
    # Integral values in any spelling are the same request.
    assert studio.checks.settings(4.0, 0.0, 1.0, "7")["seed"] == 7


def test_messages_quote_at_most_a_few_dozen_characters(studio):
    huge = "x" * 120_000
    for message in (_refusal(studio.compare, "Hi", huge), _refusal(studio.vote, huge * 2, "A"),
                    _refusal(studio.vote, "r", huge), _refusal(studio.compare, "Hi", "gpt2", huge)):
        assert "x" * (QUOTE_CHARS + 1) not in message and len(message) < 300
    assert "(240000 characters)" in _refusal(studio.vote, huge * 2, "A")
    assert shown("ab") == "'ab'" and shown("y" * 100).endswith("… (100 characters)")


def test_control_characters_never_reach_the_votes_file(studio):
    dirty = "Tea\x00 or\x1b[31m coffee?\r\nSay\x7f \u0085why\tnow."
    assert clean_text(dirty) == "Tea or[31m coffee?\nSay why\tnow."
    round_id, reply_a, reply_b = studio.blind(dirty, "gpt2", 4, 0.0, 1.0, 0)
    studio.vote(round_id, "A")
    raw = studio.votes.path.read_bytes()
    record = read_votes_file(studio.votes.path)[-1]
    assert record["prompt"] == "Tea or[31m coffee?\nSay why\tnow."  # generation saw the same cleaned prompt
    for code in [*range(0, 9), 11, 12, *range(14, 32), *range(127, 160)]:
        assert chr(code) not in json.loads(raw.splitlines()[-1])["prompt"] + (record["chosen"] or "")
    # Model text is cleaned too before it is stored (it becomes training data).
    vote = make_vote(prompt="p", replies={"A": "ok\x00", "B": "no\x07"}, sides={"A": "base", "B": "dpo"},
                     choice="A", family="gpt2", settings={})
    assert (vote["chosen"], vote["rejected"]) == ("ok", "no")


def test_no_message_shows_a_server_path(models_dir, tmp_path):
    empty = ui.build_studio(ModelRegistry(discover_models_dir(models_dir)), votes_file=tmp_path / "sub" / "v.jsonl",
                            owner_actions="export", export_repo="owner/votes")
    message = empty.export()
    assert html.unescape(message) == "Export failed: ValueError: no votes to export yet (v.jsonl is empty or missing)"
    assert str(tmp_path) not in message
    assert without_paths(f"OSError: cannot open '{tmp_path}/a/b.txt'") == "OSError: cannot open '…/b.txt'"
