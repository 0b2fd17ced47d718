"""Per-visitor limits (dpo_studio.arena.visitor_limits): generations per minute and votes per day keyed by session and by
address, one-line refusals that say when to retry, bounded memory; duplicate votes kept, flagged, and left out of
ratings, exports and training pairs."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import datasets  # noqa: F401  (imported before local_hub so that the fixture points datasets.config at it)
import gradio as gr
import pytest

from dpo_studio import ui
from dpo_studio.arena.visitor_limits import RateLimited, RateLimits, VisitorLimits
from dpo_studio.arena.votes import export_votes, read_votes_file, scoreboard
from dpo_studio.data.reading import load_pairs
from dpo_studio.inference.model_sources import ModelRegistry, discover_models_dir
from dpo_studio.ui.limits import visitor_of

pytestmark = pytest.mark.usefixtures("single_thread")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_generations_per_minute_by_session_and_by_address():
    clock = Clock()
    limits = VisitorLimits(RateLimits(generations_per_minute=3, votes_per_day=2), clock=clock)
    for _ in range(3):
        limits.check("generation", ["session:s1", "address:1.2.3.4"])
    clock.now += 20
    with pytest.raises(RateLimited, match=r"^Limit reached: 3 generations a minute per visitor; try again in 40 s\.$"):
        limits.check("generation", ["session:s1", "address:1.2.3.4"])
    with pytest.raises(RateLimited):  # a new session from the same address
        limits.check("generation", ["session:s2", "address:1.2.3.4"])
    with pytest.raises(RateLimited):  # the same session from another address
        limits.check("generation", ["session:s1", "address:5.6.7.8"])
    limits.check("generation", ["session:s3", "address:5.6.7.8"])  # someone else
    clock.now += 41
    limits.check("generation", ["session:s1", "address:1.2.3.4"])  # the window slid
    # Votes per day: refused with the wait in hours.
    limits.check("vote", ["address:9.9.9.9"])
    limits.check("vote", ["address:9.9.9.9"])
    with pytest.raises(RateLimited, match="2 votes a day per visitor; try again in 24 h"):
        limits.check("vote", ["address:9.9.9.9"])
    # 0 turns a limit off.
    off = VisitorLimits(RateLimits(0, 0))
    for _ in range(100):
        off.check("generation", ["address:x"])


def test_memory_is_bounded():
    limits = VisitorLimits(RateLimits(5, 5), max_keys=10)
    for i in range(1000):
        limits.check("generation", [f"address:{i}"])
        limits.is_duplicate([f"address:{i}"], "gpt2", "p", ["base", "dpo"])
    assert len(limits._hits) <= 10 and len(limits._voted) <= 10


def test_visitor_keys_from_the_space_proxy():
    request = SimpleNamespace(session_hash="abc", headers={"x-forwarded-for": "6.6.6.6, 203.0.113.7"},
                              client=SimpleNamespace(host="10.0.0.1"))
    assert visitor_of(request) == ("session:abc", "address:203.0.113.7")  # the proxy's entry, not the forged one
    assert visitor_of(SimpleNamespace(session_hash=None, headers={}, client=SimpleNamespace(host="127.0.0.1"))) == (
        "address:127.0.0.1",)
    assert visitor_of(None) == ()
    assert RateLimits.from_env({"DPO_STUDIO_RATE_LIMIT_GENERATIONS_PER_MINUTE": "7"}) == RateLimits(7, 500)
    with pytest.raises(ValueError, match="DPO_STUDIO_RATE_LIMIT_VOTES_PER_DAY='lots' is not a whole number"):
        RateLimits.from_env({"DPO_STUDIO_RATE_LIMIT_VOTES_PER_DAY": "lots"})


def test_studio_refuses_over_the_limit_in_one_line(models_dir, tmp_path):
    studio = ui.build_studio(ModelRegistry(discover_models_dir(models_dir)), votes_file=tmp_path / "v.jsonl",
                             rate_limits=RateLimits(generations_per_minute=1, votes_per_day=1))
    request = SimpleNamespace(session_hash="s", headers={}, client=SimpleNamespace(host="198.51.100.1"))
    studio.admit("generation", request)
    with pytest.raises(gr.Error) as info:
        studio.admit("generation", request)
    assert info.value.message.startswith("Limit reached: 1 generations a minute per visitor; try again in ")


def test_duplicate_votes_are_kept_flagged_and_left_out(models_dir, tmp_path, local_hub):
    studio = ui.build_studio(ModelRegistry(discover_models_dir(models_dir)), votes_file=tmp_path / "v.jsonl",
                             max_new_tokens_cap=4, rng=random.Random(0), rate_limits=RateLimits())
    visitor = ("session:s", "address:198.51.100.2")
    reveals = []
    for seed in (0, 1):  # the same prompt twice: the family has one pair (base, dpo)
        round_id, _, _ = studio.blind("Same prompt?", "gpt2", 4, 0.0, 1.0, seed)
        reveals.append(studio.vote(round_id, "A", visitor))
    round_id, _, _ = studio.blind("Same prompt?", "gpt2", 4, 0.0, 1.0, 2)
    reveals.append(studio.vote(round_id, "B", ("address:198.51.100.3",)))  # another visitor: counted
    assert [r["duplicate"] for r in reveals] == [False, True, False]

    records = read_votes_file(studio.votes.path)
    assert len(records) == 3 and records[1]["duplicate"] and records[1]["chosen"] is None
    assert records[1]["duplicate_of_pair"]["chosen"]  # kept, not lost
    board = scoreboard(records)["gpt2"]
    assert board["votes"] == 2 and board["duplicates"] == 1 and board["lc_votes"] == 2
    assert studio.leaderboard()["gpt2"]["votes"] == 2
    assert "1 flagged as duplicates and not counted" in studio.votes_status()

    repo = f"{local_hub.user}/exported"
    export_votes(studio.votes, repo)
    exported = [json.loads(line) for line in local_hub.files(repo, repo_type="dataset")["data/train.jsonl"]
                .decode().splitlines()]
    assert len(exported) == 2 and not any(r.get("duplicate") for r in exported)
    # Training from the raw votes file: the duplicate has no pair (skipped and counted like a tie).
    pairs, report = load_pairs(str(Path(studio.votes.path)))
    assert len(pairs) == 2 and report.votes_without_preference == 1
