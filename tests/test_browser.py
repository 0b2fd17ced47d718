"""The app in a real browser (Debian chromium driven by playwright): streaming compare, blind A/B vote, the
scoreboard, no console errors.

The tiny models generate a whole reply in a few milliseconds, so the engine's per-step stream is slowed here (a
pause after each step, the tokens untouched) to catch the page mid-stream.
The screenshots stay under the test's tmp dir: the pictures in README.md and docs/ are the demo's own, made by
docs/make_screenshots.py, never the tests' random tiny models.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium (/usr/bin/chromium) is not installed"),
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword is deprecated).*"),
    pytest.mark.usefixtures("single_thread"),
]
sync_api = pytest.importorskip("playwright.sync_api", reason="python playwright is not installed")

from tiny_models import free_port  # noqa: E402

from dpo_studio import ui  # noqa: E402
from dpo_studio.inference.model_sources import ModelRegistry, discover_models_dir  # noqa: E402
from dpo_studio.ui import engine  # noqa: E402

STEP_PAUSE_S = 0.15  # per decoding step, so that a 32-token reply streams for ~5 s
PROMPT = "How was your morning?"
TIMEOUT_MS = 60_000  # generous: a busy 2-core CI box; the waits return as soon as the condition holds


def _slowed(stream):
    def slow(*args, **kwargs):
        for step in stream(*args, **kwargs):
            yield step
            time.sleep(STEP_PAUSE_S)

    return slow


@pytest.fixture()
def app_url(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(engine, "stream_pair_results", _slowed(engine.stream_pair_results))
    votes_file = tmp_path / "votes" / "votes.jsonl"
    demo = ui.build_app(ModelRegistry(discover_models_dir(models_dir)), votes_file=votes_file,
                        max_new_tokens_cap=32)
    port = free_port()
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", votes_file
    finally:
        demo.close()


def _value(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea").input_value()


@contextlib.contextmanager
def _page(url: str, errors: list[str]):
    """A page of headless Debian chromium at `url`; console errors and page errors are appended to `errors`."""
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            yield page
        finally:
            browser.close()


def test_compare_and_blind_vote_in_chromium(app_url, tmp_path):
    url, votes_file = app_url
    errors: list[str] = []
    with _page(url, errors) as page:

        # Compare tab, one family: a screenshot while both columns are still growing.
        page.locator("#prompt textarea").fill(PROMPT)
        page.locator("#compare-btn").click()
        page.wait_for_function(  # a few tokens in (a 32-token reply is ~80 characters here)
            "() => ['base-out', 'dpo-out'].every(id => document.querySelector(`#${id} textarea`)?.value.length "
            ">= 15)")
        partial = (_value(page, "base-out"), _value(page, "dpo-out"))
        page.screenshot(path=str(tmp_path / "streaming.png"), full_page=True)
        page.get_by_text("Σ log-ratio", exact=False).first.wait_for()  # the end: "What DPO changed" arrived
        final = (_value(page, "base-out"), _value(page, "dpo-out"))
        for part, whole in zip(partial, final):  # the screenshot caught both replies part-way
            assert part and len(part) < len(whole) and whole.startswith(part.rstrip())

        # Both families: one section each, each streamed in turn.
        page.get_by_label("Both").check()
        page.locator("#compare-btn").click()
        page.wait_for_function(
            "() => ['base-out', 'dpo-out'].every(id => document.querySelector(`#${id} textarea`)?.value"
            "?.includes('[T5]'))")
        page.locator("#changes-t5").wait_for(state="visible")  # "What DPO changed" for both: the end
        base, dpo = _value(page, "base-out"), _value(page, "dpo-out")
        assert base.startswith("[GPT-2]\n") and "\n\n[T5]\n" in base
        assert dpo.startswith("[GPT-2]\n") and "\n\n[T5]\n" in dpo
        assert all(section.split("\n", 1)[1].strip() for section in (base + "\n\n" + dpo).split("\n\n"))
        for family in ("gpt2", "t5"):  # one highlighted view per family, with its tokens
            view = page.locator(f"#changes-{family}")
            view.wait_for(state="visible")
            assert view.inner_text().strip()
        shot = tmp_path / "app.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000

        # Scoreboard before any vote.
        page.get_by_role("tab", name="Scoreboard").click()
        table = page.locator("#scoreboard-table")
        page.wait_for_function("() => document.querySelector('#scoreboard-table')?.innerText.includes('GPT-2')")
        before = table.inner_text()

        # Blind A/B tab: vote buttons wait for the complete round, one vote, the vote is in the dataset file.
        page.get_by_role("tab", name="Blind A/B").click()
        page.locator("#blind-prompt textarea").fill(PROMPT)
        page.locator("#blind-btn").click()
        page.locator("#blind-status").get_by_text("Which reply is better?", exact=False).wait_for()
        reply_a, reply_b = _value(page, "reply-a"), _value(page, "reply-b")
        page.locator("#vote-a").click()
        page.locator("#blind-status").get_by_text("Votes collected: 1", exact=False).wait_for()
        page.locator("#blind-status").get_by_text("Reply A was the", exact=False).wait_for()
        page.screenshot(path=str(tmp_path / "blind.png"), full_page=True)

        # The scoreboard counted it (refreshed after the vote, no reload).
        page.get_by_role("tab", name="Scoreboard").click()
        # The table is re-rendered: wait for its new rows, not for the first change (an empty body while redrawn).
        page.wait_for_function("before => { const text = document.querySelector('#scoreboard-table').innerText; "
                               "return text !== before && text.includes('GPT-2'); }", arg=before)
        after = table.inner_text()
        assert "100.0%" in after or "0.0%" in after  # one decisive vote: a win rate of 0 or 1 for its family
        page.locator("#scoreboard-plot").wait_for(state="visible")
        page.screenshot(path=str(tmp_path / "scoreboard.png"), full_page=True)

    [line] = votes_file.read_text(encoding="utf-8").splitlines()
    vote = json.loads(line)
    assert (vote["prompt"], vote["chosen"], vote["rejected"], vote["winner_side"]) == (PROMPT, reply_a, reply_b, "A")
    assert vote["family"] in ("gpt2", "t5")  # "Both" selected: the blind round drew one family at random
    # Every console error fails the test: the page loads nothing from the (closed) network.
    assert errors == []


@pytest.fixture()
def arena_url(models_dir: Path, tmp_path: Path):
    """gpt2 with base + dpo + two later rounds, and votes already cast between every pair."""
    from tiny_models import build_round

    from dpo_studio.arena.votes import VoteStore, make_vote
    from dpo_studio.inference.model_sources import discover_rounds

    later = [tmp_path / f"round{n}" for n in (2, 3)]
    for n, folder in zip((2, 3), later):
        build_round(models_dir, folder, "gpt2", seed=10 + n)
    family = discover_rounds([models_dir, *later])["gpt2"]
    store = VoteStore(tmp_path / "votes.jsonl")
    order = family.model_names
    for i, a in enumerate(order):
        for b in order[i + 1:]:
            for k in range(10):  # the later model wins 8 of 10, one loss, one tie
                choice = "B" if k < 8 else "A" if k == 8 else "tie"
                store.append(make_vote(prompt="p", replies={"A": f"{a}{k}", "B": f"{b}{k}"}, sides={"A": a, "B": b},
                                       choice=choice, family="gpt2", settings={}))
    demo = ui.build_app(ModelRegistry({"gpt2": family}), votes_file=store.path, max_new_tokens_cap=16)
    port = free_port()
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/", store
    finally:
        demo.close()


def test_leaderboard_ranks_base_and_two_rounds_in_chromium(arena_url, tmp_path):
    url, store = arena_url
    errors: list[str] = []
    with _page(url, errors) as page:
        # One more vote from the page: a blind round between two of the four models.
        page.get_by_role("tab", name="Blind A/B").click()
        page.locator("#blind-prompt textarea").fill(PROMPT)
        page.locator("#blind-btn").click()
        page.locator("#blind-status").get_by_text("Which reply is better?", exact=False).wait_for()
        page.locator("#vote-tie").click()
        page.locator("#blind-status").get_by_text("Votes collected: 61", exact=False).wait_for()
        page.get_by_role("tab", name="Leaderboard").click()
        page.wait_for_function("() => document.querySelector('#head-to-head-table')?.innerText.includes('round3')")
        page.wait_for_function("() => /\\b61\\b|\\b31\\b/.test(document.querySelector('#leaderboard-table')"
                               ".innerText)")  # the page's vote is counted (a model with 30 + 1 votes)
        page.wait_for_function("() => !['#leaderboard-table', '#head-to-head-table'].some(id => "
                               "document.querySelector(id).innerText.includes('processing'))")  # refit shown
        board = page.locator("#leaderboard-table").inner_text()
        shot = tmp_path / "leaderboard.png"
        page.screenshot(path=str(shot), full_page=True)
    names = ("round3", "round2", "dpo", "base")
    where = [re.search(rf"\b{m}\b", board) for m in names]
    assert all(where), board
    assert [m.start() for m in where] == sorted(m.start() for m in where), board  # ranked, best first
    assert len(re.findall(r"\d+ – \d+", board)) == 8, board  # every model has its raw and length-controlled interval
    assert shot.stat().st_size > 10_000
    assert len(store.records()) == 61  # the page's vote is in the file
    assert errors == []
