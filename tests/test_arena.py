"""Streaming, blind rounds, votes and the scoreboard: the engine directly, and the app through gradio_client."""

from __future__ import annotations

import json
import os
import random
import threading
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from tiny_models import FAMILIES, build_family, free_port, plain_generate

from dpo_studio import ui
from dpo_studio.arena.votes import RoundError, RoundStore, VoteStore, make_vote, scoreboard, wilson_interval
from dpo_studio.inference.generation import generate_pair_results, load_pair, stream_pair_results
from dpo_studio.inference.model_sources import ModelRegistry, discover_models_dir
from dpo_studio.ui import engine

CAP = 12
PROMPT = "How was your morning?"
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword is deprecated).*"),
    pytest.mark.usefixtures("single_thread"),
]


@pytest.fixture(scope="module")
def pairs(models_dir: Path) -> dict:
    return {f: load_pair(str(models_dir / f / "base"), str(models_dir / f / "adapter")) for f in FAMILIES}


@pytest.fixture(scope="module")
def fallback_pairs(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two plain models per family (no adapter published: what full-parameter DPO runs give)."""
    root = tmp_path_factory.mktemp("fallback")
    dirs = {f: build_family(root, f, with_adapter=False) for f in FAMILIES}
    return {f: load_pair(str(d["base"]), None, merged=str(d["merged"])) for f, d in dirs.items()}


SETTINGS = [{"temperature": 0.0, "top_p": 1.0, "seed": 0}, {"temperature": 0.9, "top_p": 0.9, "seed": 7}]


# ------------------------------------------------------------------------------------------------------ engine
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("settings", SETTINGS, ids=["greedy", "sampled"])
def test_stream_grows_both_rows_together_and_ends_with_the_non_streamed_result(pairs, family, settings):
    pair = pairs[family]
    updates = list(stream_pair_results(pair, PROMPT, max_new_tokens=CAP, **settings))
    [expected] = generate_pair_results(pair, [PROMPT], max_new_tokens=CAP, **settings)
    assert updates[-1] == expected
    # One decode loop for both rows: after step k both sides hold k tokens (the tiny models never emit EOS).
    steps = updates[:-1]
    assert [(b.num_tokens, d.num_tokens) for b, d in steps] == [(k, k) for k in range(1, CAP + 1)]
    for base, dpo in steps:  # every update is the start of the final reply
        assert base.token_ids == expected[0].token_ids[: base.num_tokens]
        assert dpo.token_ids == expected[1].token_ids[: dpo.num_tokens]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("settings", SETTINGS, ids=["greedy", "sampled"])
def test_two_model_mode_streams_base_then_dpo_with_the_same_result(fallback_pairs, family, settings):
    pair = fallback_pairs[family]
    assert not pair.shares_weights
    updates = list(stream_pair_results(pair, PROMPT, max_new_tokens=CAP, **settings))
    assert updates[-1] == generate_pair_results(pair, [PROMPT], max_new_tokens=CAP, **settings)[0]
    counts = [(b.num_tokens, d.num_tokens) for b, d in updates[:-1]]
    assert counts == [(k, 0) for k in range(1, CAP + 1)] + [(CAP, k) for k in range(1, CAP + 1)]


def test_closing_a_stream_early_stops_the_generation(pairs):
    pair = pairs["gpt2"]
    stream = stream_pair_results(pair, PROMPT, max_new_tokens=200)
    next(stream)
    stream.close()
    assert pair.lock.acquire(timeout=30)  # the worker stopped at its next step and let go of the model
    pair.lock.release()
    assert generate_pair_results(pair, [PROMPT], max_new_tokens=3)  # and the pair still serves


# ------------------------------------------------------------------------------------------------- votes room
def test_wilson_interval_matches_published_values():
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I, method 3 (Wilson).
    for (successes, trials), interval in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605),
                                          (0, 20): (0.0, 0.1611), (1, 29): (0.0061, 0.1718)}.items():
        assert wilson_interval(successes, trials) == pytest.approx(interval, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_scoreboard_tallies_outcomes_per_family():
    sides = {"A": "dpo", "B": "base"}
    records = [make_vote(prompt="p", replies={"A": "x", "B": "y"}, sides=sides, choice=c, family=f, settings={})
               for f, c in [("gpt2", "A")] * 8 + [("gpt2", "B")] * 2 + [("gpt2", "tie"), ("gpt2", "both_bad"),
                                                                       ("t5", "tie")]]
    records.append({"prompt": "old", "chosen": "a", "rejected": "b", "family": "t5", "chosen_model": "base"})
    records.append({"note": "not a vote"})
    board = scoreboard(records, families=["gpt2", "t5", "extra"])
    assert list(board) == ["gpt2", "t5", "extra"]
    gpt2 = board["gpt2"]
    assert {k: gpt2[k] for k in ("votes", "dpo_wins", "base_wins", "ties", "both_bad")} == {
        "votes": 12, "dpo_wins": 8, "base_wins": 2, "ties": 1, "both_bad": 1}
    assert gpt2["dpo_win_rate"] == 0.8
    # 8 of 10 decisive, by hand: (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.96
    assert (gpt2["ci_low"], gpt2["ci_high"]) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert board["t5"]["votes"] == 2 and board["t5"]["base_wins"] == 1 and board["t5"]["dpo_win_rate"] == 0.0
    assert board["extra"]["votes"] == 0 and board["extra"]["dpo_win_rate"] is None


def test_identical_replies_are_recorded_as_a_tie():
    record = make_vote(prompt="p", replies={"A": "same", "B": "same"}, sides={"A": "dpo", "B": "base"},
                       choice="A", family="gpt2", settings={})
    assert record["vote"] == "tie" and record["chosen"] is None and record["outcome"] == "tie"
    with pytest.raises(ValueError, match="choice must be one of A, B, tie, both_bad"):
        make_vote(prompt="p", replies={"A": "x", "B": "y"}, sides={"A": "dpo", "B": "base"}, choice="C",
                  family="gpt2", settings={})


def test_round_store_takes_one_vote_per_round():
    store = RoundStore(max_open=2)
    rounds = [store.open(prompt="p", family="gpt2", texts={"base": "b", "dpo": "d"}, sides={"A": "dpo", "B": "base"},
                         settings={}) for _ in range(3)]
    assert len({r.round_id for r in rounds}) == 3 and rounds[0].replies == {"A": "d", "B": "b"}
    with pytest.raises(RoundError, match="Unknown round id"):  # the oldest was dropped past max_open
        store.close(rounds[0].round_id)
    assert store.close(rounds[1].round_id) is rounds[1]
    with pytest.raises(RoundError, match="already has its vote"):
        store.close(rounds[1].round_id)
    store.discard(rounds[2].round_id)
    with pytest.raises(RoundError, match="Unknown round id"):
        store.close(rounds[2].round_id)


# ------------------------------------------------------------------------------------------ through the API
class Gate:
    """Holds a stream after its first update until the test has seen that update arrive at the client."""

    def __init__(self) -> None:
        self.armed = False
        self.seen = threading.Event()

    def wrap(self, stream):
        def gated(*args, **kwargs):
            for i, step in enumerate(stream(*args, **kwargs)):
                yield step
                if i == 0 and self.armed:
                    assert self.seen.wait(timeout=60), "the client never saw the first update"
        return gated


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    gate = Gate()
    votes_file = tmp_path_factory.mktemp("votes") / "votes.jsonl"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(engine, "stream_pair_results", gate.wrap(engine.stream_pair_results))
        studio = ui.build_studio(ModelRegistry(discover_models_dir(models_dir)), votes_file=votes_file,
                                 max_new_tokens_cap=CAP, rng=random.Random(0))
        demo = ui.build_app(studio=studio, example_prompts=[])
        port = free_port()
        ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
        try:
            yield studio, Client(f"http://127.0.0.1:{port}/", verbose=False), gate, votes_file
        finally:
            demo.close()


@pytest.mark.parametrize("family", [*FAMILIES, "both"])
@pytest.mark.parametrize("settings", SETTINGS, ids=["greedy", "sampled"])
def test_compare_stream_updates_arrive_before_the_end_and_the_last_equals_compare(served, models_dir, family,
                                                                                 settings):
    _, client, gate, _ = served
    args = (PROMPT, family, CAP, settings["temperature"], settings["top_p"], settings["seed"])
    gate.armed, gate.seen = True, threading.Event()
    job = client.submit(*args, api_name="/compare_stream")
    updates = []
    try:
        for update in job:
            if not updates:
                assert not job.done()  # the generation is held until this update has arrived: it came first
                gate.seen.set()
            updates.append(tuple(update))
    finally:
        gate.armed = False
        gate.seen.set()
    final = client.predict(*args, api_name="/compare")
    assert job.outputs()[-1] == final and updates[-1] == final
    assert len(updates) > 2 and all(len(u[0]) <= len(final[0]) for u in updates)
    assert updates[0] != final  # the first update was part of the way
    if settings["temperature"] == 0.0 and family != "both":
        assert final == (plain_generate(models_dir / family / "base", family, PROMPT, CAP),
                         plain_generate(models_dir / family / "merged", family, PROMPT, CAP))


def test_blind_round_vote_and_scoreboard(served, models_dir):
    studio, client, _, votes_file = served
    info = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    # /compare_stream takes exactly /compare's inputs and streams its two outputs.
    assert [p["parameter_name"] for p in info["/compare_stream"]["parameters"]] == [
        p["parameter_name"] for p in info["/compare"]["parameters"]]
    assert len(info["/compare_stream"]["returns"]) == 2
    assert len(info["/blind"]["returns"]) == 3 and {p["parameter_name"] for p in info["/vote"]["parameters"]} == {
        "round_id", "choice"}
    base = plain_generate(models_dir / "gpt2" / "base", "gpt2", PROMPT, CAP)
    dpo = plain_generate(models_dir / "gpt2" / "merged", "gpt2", PROMPT, CAP)
    before = client.predict(api_name="/scoreboard")["gpt2"]

    outcomes = []
    for choice in ("A", "B", "tie", "both_bad"):
        answer = client.predict(PROMPT, "gpt2", CAP, 0.0, 1.0, 0, api_name="/blind")
        # Before the vote the client holds an opaque id and two texts, nothing that says which model is which.
        assert len(answer) == 3 and all(isinstance(v, str) for v in answer)
        round_id, reply_a, reply_b = answer
        assert {reply_a, reply_b} == {base, dpo} and round_id not in (base, dpo)
        assert client.predict(api_name="/scoreboard")["gpt2"]["votes"] == before["votes"] + len(outcomes)
        reveal = client.predict(round_id, choice, api_name="/vote")
        truth = {"A": "base" if reply_a == base else "dpo", "B": "base" if reply_b == base else "dpo"}
        assert (reveal["A"], reveal["B"], reveal["family"], reveal["vote"]) == (truth["A"], truth["B"], "gpt2",
                                                                                choice)
        outcomes.append(truth[choice] if choice in "AB" else choice)
        assert reveal["outcome"] == outcomes[-1] and reveal["preference_pair"] == (choice in "AB")
        with pytest.raises(AppError, match="already has its vote"):  # one vote per round
            client.predict(round_id, "B", api_name="/vote")
    with pytest.raises(AppError, match="Unknown round id"):
        client.predict("no-such-round", "A", api_name="/vote")
    round_id, *_ = client.predict(PROMPT, "gpt2", CAP, 0.0, 1.0, 0, api_name="/blind")
    with pytest.raises(AppError, match="Unknown vote 'maybe'"):
        client.predict(round_id, "maybe", api_name="/vote")

    board = client.predict(api_name="/scoreboard")["gpt2"]
    gained = {k: board[k] - before[k] for k in ("votes", "dpo_wins", "base_wins", "ties", "both_bad")}
    assert gained == {"votes": 4, "dpo_wins": outcomes.count("dpo"), "base_wins": outcomes.count("base"),
                      "ties": 1, "both_bad": 1}
    # The votes file is the source of truth: a restarted app (new store on the file) shows the same board.
    restarted = ui.Studio(studio.registry, VoteStore(votes_file))
    assert restarted.scoreboard() == client.predict(api_name="/scoreboard")
    lines = [json.loads(line) for line in votes_file.read_text(encoding="utf-8").splitlines()]
    assert [r["vote"] for r in lines[-4:]] == ["A", "B", "tie", "both_bad"]


def test_regenerate_draws_a_new_round_with_a_new_seed(served):
    studio, _, _, _ = served
    *_, first_id, _ = list(studio.blind_stream(PROMPT, "gpt2", CAP, 0.9, 0.9, 0))[-1]
    *_, (text_a, text_b, second_id, status) = list(studio.regenerate(first_id, PROMPT, "gpt2", CAP, 0.9, 0.9))
    assert second_id != first_id and "seed" in status
    with pytest.raises(Exception, match="Unknown round id"):  # the re-drawn round can no longer be voted on
        studio.vote(first_id, "A")
    assert studio.vote(second_id, "tie")["vote"] == "tie"


def test_blind_stream_hides_the_order_in_two_model_mode(tmp_path):
    dirs = build_family(tmp_path, "gpt2", with_adapter=False)
    studio = ui.Studio(ModelRegistry(discover_models_dir(tmp_path)), VoteStore(tmp_path / "v.jsonl"),
                       max_new_tokens_cap=CAP)
    updates = list(studio.blind_stream(PROMPT, "gpt2", CAP, 0.0, 1.0, 0))
    assert len(updates) == 1 and updates[0][2] is not None  # base would grow before DPO: only the final is shown
    assert {updates[0][0], updates[0][1]} == {plain_generate(dirs["base"], "gpt2", PROMPT, CAP),
                                              plain_generate(dirs["merged"], "gpt2", PROMPT, CAP)}


def test_votes_and_the_scoreboard_do_not_wait_behind_a_generation(served):
    """A long generation holds the model group; the vote and scoreboard endpoints have their own and answer."""
    studio, client, gate, _ = served
    round_id, *_ = studio.blind(PROMPT, "gpt2", CAP, 0.0, 1.0, 0)
    gate.armed, gate.seen = True, threading.Event()
    job = client.submit(PROMPT, "gpt2", CAP, 0.0, 1.0, 0, api_name="/compare_stream")
    try:
        next(iter(job))  # the generation has started and is now held at its first step
        assert client.submit(api_name="/scoreboard").result(timeout=60)["gpt2"]["votes"] >= 0
        assert client.submit(round_id, "tie", api_name="/vote").result(timeout=60)["vote"] == "tie"
        assert not job.done()  # both answered while the generation was still running
    finally:
        gate.armed = False
        gate.seen.set()
    assert job.result(timeout=60)


def test_score_a_pair_refuses_input_beyond_the_context_window(served, pairs):
    studio, client, _, _ = served
    long_reply = "How are you doing today? " * 60  # ~1500 characters: within the app's text limit
    n_tokens = len(pairs["gpt2"].tokenizer(long_reply)["input_ids"])
    assert n_tokens > 256  # the tiny GPT-2's n_positions
    message = r"GPT-2: The prompt \+ reply A is \d+ tokens; the model reads at most 256 tokens \(its max positions\)\."
    with pytest.raises(AppError, match=message):
        client.predict(PROMPT, long_reply, "fine", "gpt2", api_name="/score")
    with pytest.raises(Exception, match=message):  # the tab's callback: the same one line
        studio.score(PROMPT, long_reply, "fine", "gpt2")
    assert client.predict(PROMPT, long_reply, "fine", "t5", api_name="/score")["t5"]["reward_a"]  # T5: no such limit


# ------------------------------------------------------------------------------------------- across rounds
@pytest.fixture(scope="module")
def rounds_dirs(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The tiny gpt2 family's output folder plus two later rounds (other LoRA seeds on the same base)."""
    from tiny_models import build_round

    later = [tmp_path_factory.mktemp(f"round{n}") for n in (2, 3)]
    for n, folder in zip((2, 3), later):
        build_round(models_dir, folder, "gpt2", seed=10 + n)
    return [models_dir, *later]


def test_several_models_dirs_are_rounds_and_config_rounds_parse(rounds_dirs, tmp_path):
    from dpo_studio.inference.model_sources import AppConfigError, load_config_file, resolve_sources

    families = resolve_sources(models_dir=rounds_dirs, environ={})
    assert families["gpt2"].model_names == ("base", "dpo", "round2", "round3")
    assert families["t5"].model_names == ("base", "dpo")  # no later round of t5 in those folders
    assert families["gpt2"].dpo_round("round3").adapter == str(rounds_dirs[2] / "gpt2" / "adapter")
    assert len(families["gpt2"].arena_pairs()) == 6
    config = tmp_path / "app.yaml"
    config.write_text("families:\n  gpt2: {base: ./b, adapter: ./a, rounds: {round2: {merged: ./r2}}}\n")
    [source] = load_config_file(config).values()
    assert source.dpo_round("round2").merged == str(tmp_path / "r2")
    assert ("dpo", "round2") not in source.arena_pairs()  # an adapter and a merged model: not side by side
    assert ("base", "round2") in source.arena_pairs()
    config.write_text("families:\n  gpt2: {base: ./b, adapter: ./a, rounds: {dpo: {merged: ./r2}}}\n")
    with pytest.raises(AppConfigError, match=r"families\.gpt2\.rounds: round name 'dpo'"):
        load_config_file(config)


def test_blind_rounds_draw_every_pair_and_the_replies_are_those_models(rounds_dirs, tmp_path):
    families = {"gpt2": discover_rounds_gpt2(rounds_dirs)}
    studio = ui.build_studio(ModelRegistry(families), votes_file=tmp_path / "votes.jsonl", max_new_tokens_cap=CAP,
                             rng=random.Random(3))
    folders = {"base": rounds_dirs[0] / "gpt2" / "base", "dpo": rounds_dirs[0] / "gpt2" / "merged",
               "round2": rounds_dirs[1] / "gpt2" / "merged", "round3": rounds_dirs[2] / "gpt2" / "merged"}
    expected = {name: plain_generate(folder, "gpt2", PROMPT, CAP) for name, folder in folders.items()}
    assert len(set(expected.values())) == 4  # four different models
    seen = set()
    for _ in range(24):
        round_id, reply_a, reply_b = studio.blind(PROMPT, "gpt2", CAP, 0.0, 1.0, 0)
        reveal = studio.vote(round_id, "A")
        assert (reply_a, reply_b) == (expected[reveal["A"]], expected[reveal["B"]])
        assert reveal["outcome"] == reveal["A"]
        seen.add(frozenset((reveal["A"], reveal["B"])))
    assert len(seen) == 6
    [record, *_] = studio.votes.records()
    assert set(record["pair"].values()) <= set(folders) and set(record["models"]) == set(record["pair"].values())


def discover_rounds_gpt2(rounds_dirs):
    from dpo_studio.inference.model_sources import discover_rounds

    return discover_rounds(rounds_dirs)["gpt2"]


def _planted_votes(votes_file: Path) -> list[dict]:
    """Votes where round3 beats everyone, round2 beats base and dpo, dpo beats base (with ties)."""
    order = ["base", "dpo", "round2", "round3"]
    records = []
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            for k in range(12):
                choice = "B" if k < 9 else "A" if k < 11 else "tie"
                records.append(make_vote(prompt="p", replies={"A": f"{a}{k}", "B": f"{b}{k}"},
                                         sides={"A": a, "B": b}, choice=choice, family="gpt2", settings={}))
    # A line from before `pair` existed (base vs dpo, DPO won as side B), still read.
    records.append({"prompt": "p", "chosen": "x", "rejected": "y", "chosen_model": "dpo", "winner_side": "B",
                    "family": "gpt2"})
    store = VoteStore(votes_file)
    for record in records:
        store.append(record)
    return records


def test_leaderboard_ranks_base_and_two_rounds_through_the_api(rounds_dirs, tmp_path):
    from dpo_studio.arena.ratings import rate
    from dpo_studio.arena.votes import comparisons

    votes_file = tmp_path / "votes.jsonl"
    records = _planted_votes(votes_file)
    families = {"gpt2": discover_rounds_gpt2(rounds_dirs)}
    demo = ui.build_app(ModelRegistry(families), votes_file=votes_file, max_new_tokens_cap=CAP, example_prompts=[])
    port = free_port()
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        board = client.predict(api_name="/leaderboard")["gpt2"]
        scores = client.predict(api_name="/scoreboard")["gpt2"]
    finally:
        demo.close()
    ranked = sorted(board["models"], key=lambda r: -r["rating"])
    assert [r["model"] for r in ranked] == ["round3", "round2", "dpo", "base"]
    assert all(r["ci_low"] < r["rating"] < r["ci_high"] for r in ranked)
    raw = {key: board[key] for key in ("votes", "models", "pairs")}
    assert raw == json.loads(json.dumps(rate(["base", "dpo", "round2", "round3"], comparisons(records, "gpt2"))))
    assert [r["model"] for r in board["length_controlled"]["models"]] == ["base", "dpo", "round2", "round3"]
    assert set(board["mean_length"]) == {"base", "dpo", "round2", "round3"}
    counts = {(p["a"], p["b"]): (p["a_wins"], p["b_wins"], p["ties"]) for p in board["pairs"]}
    assert counts[("base", "dpo")] == (2, 10, 1)  # 12 planted + the old line
    assert counts[("round2", "round3")] == (2, 9, 1)
    # The base-vs-DPO scoreboard counts only base vs dpo votes, old line included.
    assert (scores["votes"], scores["dpo_wins"], scores["base_wins"], scores["ties"]) == (13, 10, 2, 1)
