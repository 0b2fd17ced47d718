"""Under attack, still serving: 100 ordinary /compare visitors while 10 hostile ones send oversized bodies, bursts of
generations and bursts of replayed and forged votes. Every ordinary request is answered, every hostile excess is
refused (413, a rate-limit line, a round that already has its vote), memory stays bounded, each round counts once.

Visitors are told apart by the address the Space proxy appends to X-Forwarded-For (all connect from 127.0.0.1 here).
Sized for CI (tiny models, 4 new tokens); bench/public_limits.py measures the memory figure at full size.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
from tiny_models import FAMILIES, free_port

from dpo_studio import ui
from dpo_studio.arena.visitor_limits import RateLimits
from dpo_studio.arena.votes import read_votes_file
from dpo_studio.inference.model_sources import ModelRegistry, discover_models_dir
from dpo_studio.ui.limits import ServerLimits

pytestmark = pytest.mark.usefixtures("single_thread")
ORDINARY, HOSTILE = 100, 10
LIMITS = ServerLimits(max_request_bytes=64 * 1024, max_sessions=50)
RATES = RateLimits(generations_per_minute=3, votes_per_day=5)
MEMORY_BOUND_MB = 150


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def call(port: int, api: str, data: list, address: str) -> tuple[str, object]:
    """A /gradio_api/call round trip as a visitor behind the Space proxy: ("complete", value) or ("error", text)."""
    headers = {"Content-Type": "application/json", "X-Forwarded-For": address}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/gradio_api/call/{api}",
                                     data=json.dumps({"data": data}).encode(), headers=headers)
    event_id = json.load(urllib.request.urlopen(request, timeout=120))["event_id"]
    result = urllib.request.Request(f"http://127.0.0.1:{port}/gradio_api/call/{api}/{event_id}", headers=headers)
    lines = urllib.request.urlopen(result, timeout=300).read().decode().splitlines()
    event = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")][-1]
    payload = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")][-1]
    return event, json.loads(payload)


def oversized(port: int) -> int:
    """50 MB announced, 1 MB sent: the status the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(b"POST /gradio_api/call/compare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 52428800\r\nConnection: close\r\n\r\n")
        try:
            sock.sendall(b"x" * 2**20)
        except OSError:
            pass
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except OSError:
            pass
    return int(data.split()[1]) if data else 0


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    studio = ui.build_studio(ModelRegistry(discover_models_dir(models_dir)),
                             votes_file=tmp_path_factory.mktemp("votes") / "votes.jsonl", max_new_tokens_cap=4,
                             rng=random.Random(0), rate_limits=RATES)
    demo = ui.build_app(studio=studio, example_prompts=[])
    for family in FAMILIES:
        studio.registry.get(family)
    port = free_port()
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, limits=LIMITS)
    try:
        yield studio, port
    finally:
        demo.close()


def hostile(port: int, k: int) -> dict[str, list]:
    """One attacker: oversized bodies, a burst of generations, then a burst of votes (replays and forgeries)."""
    address = f"203.0.113.{k}"
    out: dict[str, list] = {"bodies": [oversized(port) for _ in range(3)], "generations": [], "votes": []}
    for i in range(RATES.generations_per_minute + 3):
        out["generations"].append(call(port, "blind", [f"attack {k}-{i}", FAMILIES[k % 2], 4, 0.0, 1.0, i], address))
    rounds = [value[0] for event, value in out["generations"] if event == "complete"]
    for i in range(12):  # each real round voted three times, then forged ids
        round_id = rounds[i % len(rounds)] if i < 3 * len(rounds) else f"forged-{k}-{i}"
        out["votes"].append((round_id, call(port, "vote", [round_id, "A"], address)))
    return out


def test_ordinary_visitors_are_served_while_hostile_ones_are_refused(served):
    studio, port = served
    warm = rss_mb()
    start = threading.Barrier(ORDINARY + HOSTILE, timeout=120)

    def ordinary(i: int):
        start.wait()
        return call(port, "compare", [f"Visitor {i}: tea or coffee?", FAMILIES[i % 2], 4, 0.0, 1.0, i],
                    f"198.51.100.{i}")

    def attacker(k: int):
        start.wait()
        return hostile(port, k)

    with ThreadPoolExecutor(max_workers=ORDINARY + HOSTILE) as pool:
        ordinary_jobs = [pool.submit(ordinary, i) for i in range(ORDINARY)]
        hostile_jobs = [pool.submit(attacker, k) for k in range(HOSTILE)]
        answers = [job.result(timeout=600) for job in ordinary_jobs]
        attacks = [job.result(timeout=600) for job in hostile_jobs]
    grown = rss_mb() - warm
    print(f"\n[attack] RSS growth {grown:.0f} MB over {ORDINARY} ordinary + {HOSTILE} hostile visitors")

    assert all(event == "complete" and all(value) for event, value in answers), [a for a in answers
                                                                                 if a[0] != "complete"][:3]
    for attack in attacks:
        assert attack["bodies"] == [413, 413, 413]
        events = [event for event, _ in attack["generations"]]
        assert events == ["complete"] * RATES.generations_per_minute + ["error"] * 3
        assert all(value["error"].startswith("Limit reached: 3 generations a minute per visitor; try again in ")
                   for event, value in attack["generations"]
                   if event == "error")
        accepted = [rid for rid, (event, _) in attack["votes"] if event == "complete"]
        refusals = [value["error"] for _, (event, value) in attack["votes"] if event == "error"]
        assert len(accepted) == RATES.generations_per_minute  # each real round once, replays and forgeries refused
        assert all(any(text in value for text in ("already has its vote", "Unknown round id", "Limit reached"))
                   for value in refusals)
    assert grown < MEMORY_BOUND_MB

    records = read_votes_file(studio.votes.path)
    assert len(records) == HOSTILE * RATES.generations_per_minute
    assert len({r["vote_id"] for r in records}) == len(records)
    assert sum(entry["votes"] for entry in studio.scoreboard().values()) == len(records)
