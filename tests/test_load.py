"""The comparison app under load: bursts of concurrent `/compare` requests through gradio_client on localhost.

Bounded by construction: a fixed number of requests, every wait has a timeout, the server is closed in teardown.
Throughput and latency are printed, never asserted (tests check behaviour, not wall-clock time). The queue is
generous (default cap 256), so a burst of 100 clients waits its turn instead of being turned away.
"""

from __future__ import annotations

import inspect
import json
import os
import random
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError
from gradio_client.utils import QueueError
from tiny_models import FAMILIES, free_port, plain_generate

from dpo_studio import ui
from dpo_studio.inference.model_sources import AppConfigError, ModelRegistry, discover_models_dir

CAP = 12  # the app's server-side max_new_tokens cap here
MAX_CHARS = 200
NEW_TOKENS = 8  # what the burst asks for (below the cap)
BURST = 100
DEADLINE_S = 300.0  # the whole burst, submission to last answer; never reached in a healthy run
OVERSIZED = "y" * (MAX_CHARS + 1)
QUEUE_SIZE = inspect.signature(ui.build_app).parameters["max_queue_size"].default  # the app's default queue
REFUSAL = f"{MAX_CHARS + 1} characters long; the limit is {MAX_CHARS}"
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword is deprecated).*"),
    pytest.mark.usefixtures("single_thread"),
]

@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The app with its default queue (concurrency 1 for model work, max_size 256) on a free 127.0.0.1 port."""
    studio = ui.build_studio(ModelRegistry(discover_models_dir(models_dir)),
                             votes_file=tmp_path_factory.mktemp("votes") / "votes.jsonl", max_new_tokens_cap=CAP,
                             max_prompt_chars=MAX_CHARS, rng=random.Random(0))
    demo = ui.build_app(studio=studio, example_prompts=[])
    for family in FAMILIES:  # load before the burst, so it measures serving rather than the first load
        studio.registry.get(family)
    port = free_port()
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    # One client shared by all threads, as gradio_client 2.7 supports (its event bookkeeping is under a lock);
    # max_workers above the burst size so that the client's own pool does not serialise the requests.
    client = Client(f"http://127.0.0.1:{port}/", verbose=False, max_workers=2 * BURST, analytics_enabled=False)
    try:
        yield studio, client, models_dir
    finally:
        client.close()
        demo.close()


def _burst(clients: list[Client], requests: list[tuple], watch: int = 5) -> list[dict]:
    """Send all requests at once, request i from clients[i % len(clients)] (a barrier releases the threads
    together); outcome, latency and the highest queue position reported to each of the last `watch` requests."""
    barrier = threading.Barrier(len(requests), timeout=60)
    deadline = time.monotonic() + DEADLINE_S

    def one(index_args: tuple[int, tuple]) -> dict:
        index, args = index_args
        client = clients[index % len(clients)]
        barrier.wait()
        start = time.perf_counter()
        rank = None
        try:
            job = client.submit(*args, api_name="/compare")
            if index >= len(requests) - watch:  # a visitor late in the burst: is it told where it stands?
                while not job.done() and time.monotonic() < deadline:
                    status = job.status()
                    if status.rank is not None:
                        rank = max(rank or 0, status.rank)
                    time.sleep(0.02)
            value = job.result(timeout=max(1.0, deadline - time.monotonic()))
            outcome = {"kind": "ok", "value": tuple(value)}
        except QueueError as exc:
            outcome = {"kind": "queue_full", "message": str(exc)}
        except AppError as exc:
            outcome = {"kind": "refused", "message": str(exc)}
        except Exception as exc:  # anything else (a timeout, a dropped connection) is a failure of the app
            outcome = {"kind": "error", "message": f"{type(exc).__name__}: {exc}"}
        return {**outcome, "latency": time.perf_counter() - start, "rank": rank}

    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        start = time.perf_counter()
        outcomes = list(pool.map(one, enumerate(requests)))
        elapsed = time.perf_counter() - start
    done = sorted(o["latency"] for o in outcomes if o["kind"] in ("ok", "refused"))
    counts = {kind: sum(o["kind"] == kind for o in outcomes) for kind in ("ok", "refused", "queue_full", "error")}
    p95 = done[min(len(done) - 1, round(0.95 * (len(done) - 1)))] if done else float("nan")
    print(f"\n[load] {len(requests)} concurrent /compare from {len(clients)} clients: {counts}; "
          f"{len(done) / elapsed:.1f} answered requests/s; latency p50 "
          f"{statistics.median(done) if done else float('nan'):.2f} s, p95 {p95:.2f} s")
    return outcomes


def _request(i: int) -> tuple:
    """Request i: families alternate; greedy for i % 4 in (0, 1) (checked against plain generate), else sampled."""
    family = FAMILIES[i % 2]
    temperature = 0.0 if i % 4 < 2 else 0.8
    return f"Request {i}: how was your day?", family, NEW_TOKENS, temperature, 0.9, i


def _check_answers(outcomes: list[dict], requests: list[tuple], studio: ui.Studio, models_dir: Path) -> None:
    """Every answered request got its own outputs: greedy ones equal plain `generate`, sampled ones a replay."""
    for outcome, (prompt, family, max_new, temperature, top_p, seed) in zip(outcomes, requests):
        if outcome["kind"] != "ok" or prompt == OVERSIZED:
            continue
        base, dpo = outcome["value"]
        assert base and dpo
        if temperature == 0.0:
            expected = (plain_generate(models_dir / family / "base", family, prompt, max_new),
                        plain_generate(models_dir / family / "merged", family, prompt, max_new))
        else:  # same seed, same settings, no concurrency: what the request should have got
            expected = studio.compare(prompt, family, max_new, temperature, top_p, seed)[:2]
        assert (base, dpo) == expected, f"request {prompt!r} got another request's or a differently seeded reply"


def test_hundred_concurrent_clients_are_all_answered(served):
    studio, client, models_dir = served
    url = client.src
    # 100 separate clients (as 100 visitors would be), each its own session with the server.
    clients = [Client(url, verbose=False, analytics_enabled=False) for _ in range(BURST)]
    try:
        requests = [_request(i) if i % 10 != 3 else (OVERSIZED, "gpt2", NEW_TOKENS, 0.0, 1.0, 0)
                    for i in range(BURST)]
        outcomes = _burst(clients, requests)
    finally:
        for each in clients:
            each.close()

    for outcome, request in zip(outcomes, requests):
        assert outcome["kind"] != "error", outcome["message"]
        assert outcome["kind"] != "queue_full", "the queue turned a visitor away"
        if request[0] == OVERSIZED:
            assert outcome["kind"] == "refused" and REFUSAL in outcome["message"]
        else:
            assert outcome["kind"] == "ok", outcome.get("message")
    _check_answers(outcomes, requests, studio, models_dir)
    # Waiting visitors were told their place in the queue (the last ones of a 100-request burst wait).
    assert any(o["rank"] for o in outcomes), "no queue position reached the late visitors"

    # The server survived the burst: a normal request afterwards is answered, and correctly.
    prompt = "After the burst: still there?"
    assert client.predict(prompt, "gpt2", NEW_TOKENS, 0.0, 1.0, 0, api_name="/compare") == (
        plain_generate(models_dir / "gpt2" / "base", "gpt2", prompt, NEW_TOKENS),
        plain_generate(models_dir / "gpt2" / "merged", "gpt2", prompt, NEW_TOKENS))


def test_queue_cap_is_generous_and_configurable():
    assert QUEUE_SIZE is None and ui.DEFAULT_MAX_QUEUE >= 200  # None: $DPO_STUDIO_MAX_QUEUE, else the default
    assert ui.max_queue_from_env({}) == ui.DEFAULT_MAX_QUEUE
    assert ui.max_queue_from_env({"DPO_STUDIO_MAX_QUEUE": "500"}) == 500
    with pytest.raises(AppConfigError, match="DPO_STUDIO_MAX_QUEUE='lots' is not a whole number"):
        ui.max_queue_from_env({"DPO_STUDIO_MAX_QUEUE": "lots"})


def test_burst_within_queue_size_answers_all_refuses_oversized_and_caps_length(served):
    """Fewer requests than the queue holds: none is turned away, so every outcome is deterministic."""
    studio, client, models_dir = served
    greedy_capped = [(f"Long one {f}", f, 100_000, 0.0, 1.0, 0) for f in FAMILIES]  # far above the cap
    requests = ([_request(i) for i in range(16)] + [(OVERSIZED, f, NEW_TOKENS, 0.0, 1.0, 0) for f in FAMILIES * 2]
                + greedy_capped)
    assert len(requests) < ui.DEFAULT_MAX_QUEUE
    outcomes = _burst([client], requests)

    for outcome, request in zip(outcomes, requests):
        assert outcome["kind"] != "error", outcome["message"]
        if request[0] == OVERSIZED:
            assert outcome["kind"] == "refused" and REFUSAL in outcome["message"]
        else:
            assert outcome["kind"] == "ok", outcome.get("message")
    _check_answers(outcomes, requests[:16], studio, models_dir)

    for outcome, (prompt, family, *_) in zip(outcomes[-len(greedy_capped):], greedy_capped):
        for side, text in zip(("base", "merged"), outcome["value"]):
            # Counted against the model's own greedy tokens, not by re-encoding the text: BPE re-encodes decoded
            # text into a different split (14 tokens for these 12). EOS is suppressed in the tiny models, so
            # "exactly CAP tokens" = plain generate at CAP, and different from a few tokens more.
            assert text == plain_generate(models_dir / family / side, family, prompt, CAP)
            assert text != plain_generate(models_dir / family / side, family, prompt, CAP + 4)


VOTERS = 50


def test_fifty_concurrent_votes_from_separate_clients_are_fifty_records(served):
    """50 visitors vote at once, each through its own gradio_client: 50 records, one per round (distinct vote
    ids), and the /scoreboard equals a recount of the file."""
    from dpo_studio.arena.votes import read_votes_file, scoreboard

    studio, client, _ = served
    before = studio.votes.count
    rounds = [client.predict(f"vote {i}", FAMILIES[i % len(FAMILIES)], NEW_TOKENS, 0.0, 1.0, i, api_name="/blind")[0]
              for i in range(VOTERS)]
    voters = [Client(client.src, verbose=False, analytics_enabled=False) for _ in range(VOTERS)]  # one each
    barrier = threading.Barrier(VOTERS, timeout=120)

    def vote(index: int) -> dict:
        barrier.wait()
        return voters[index].predict(rounds[index], ("A", "B", "tie", "both_bad")[index % 4], api_name="/vote")

    try:
        with ThreadPoolExecutor(max_workers=VOTERS) as pool:
            reveals = list(pool.map(vote, range(VOTERS)))
    finally:
        for voter in voters:
            voter.close()
    assert sorted(r["round_id"] for r in reveals) == sorted(rounds)
    records = read_votes_file(studio.votes.path)[before:]
    assert len(records) == VOTERS and len({r["vote_id"] for r in records}) == VOTERS
    assert studio.votes.count == before + VOTERS
    recount = scoreboard(read_votes_file(studio.votes.path), families=FAMILIES)
    assert client.predict(api_name="/scoreboard") == json.loads(json.dumps(recount))
