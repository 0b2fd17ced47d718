"""Nothing lost on a restart: `app.py --votes-repo` stopped by SIGTERM (a Space restart) right after a vote commits
it before exiting, and the app restarted in an empty folder reads it back (through the local Hub server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets  # noqa: F401  (imported before local_hub so that the fixture points datasets.config at it)
import pytest
from tiny_models import free_port

from dpo_studio.arena.votes import VotesClosed, VoteStore, make_vote

APP = Path(__file__).parents[1] / "app.py"
UP_TIMEOUT_S = 180.0


def _start(models_dir: Path, cwd: Path, repo_id: str, port: int) -> subprocess.Popen:
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    # --votes-every 60: no scheduled commit during the test; only the SIGTERM handler can commit the vote.
    return subprocess.Popen([sys.executable, str(APP), "--models-dir", str(models_dir), "--votes-repo", repo_id,
                             "--votes-every", "60", "--port", str(port)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _client(proc: subprocess.Popen, port: int):
    from gradio_client import Client

    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return Client(f"http://127.0.0.1:{port}/", verbose=False, analytics_enabled=False)
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.5)
    proc.kill()
    raise AssertionError(f"the app did not come up: {proc.communicate()[0][-2000:]}")


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.kill()
    return proc.communicate()[0]


def test_sigterm_right_after_a_vote_commits_it_and_a_restart_on_an_empty_disk_reads_it(models_dir, tmp_path,
                                                                                        local_hub):
    repo_id = f"{local_hub.user}/sigterm-votes"
    port = free_port()
    first = _start(models_dir, tmp_path / "disk1", repo_id, port)
    try:
        client = _client(first, port)
        round_id, _, _ = client.predict("How was your weekend?", "gpt2", 4, 0.0, 1.0, 0, api_name="/blind")
        reveal = client.predict(round_id, "A", api_name="/vote")
        assert reveal["votes"] == 1
        start = time.monotonic()
        first.send_signal(signal.SIGTERM)  # right after the vote: the next scheduled commit is an hour away
        output = first.communicate(timeout=60)[0]
        print(f"\n[shutdown] SIGTERM to exit: {time.monotonic() - start:.1f} s")
    finally:
        output = _stop(first) if first.returncode is None else output
    assert first.returncode == 0, output[-2000:]
    assert "Traceback" not in output, output[-2000:]
    rows = [json.loads(line) for name, data in local_hub.files(repo_id, repo_type="dataset").items()
            if name.startswith("data/") for line in data.decode().splitlines() if line.strip()]
    assert [r["prompt"] for r in rows] == ["How was your weekend?"]

    port = free_port()
    second = _start(models_dir, tmp_path / "disk2-empty", repo_id, port)  # a restarted Space: an empty disk
    try:
        board = _client(second, port).predict(api_name="/scoreboard")
        assert board["gpt2"]["votes"] == 1
        second.send_signal(signal.SIGINT)  # Ctrl+C: the same clean stop
        output = second.communicate(timeout=60)[0]
    finally:
        output = _stop(second) if second.returncode is None else output
    assert second.returncode == 0 and "Traceback" not in output, output[-2000:]
    assert "Votes: 1 read from dataset" in output


def test_a_stopped_store_refuses_votes_and_keeps_the_ones_it_has(tmp_path):
    store = VoteStore(tmp_path / "votes.jsonl")
    vote = make_vote(prompt="p", replies={"A": "a", "B": "b"}, sides={"A": "base", "B": "dpo"}, choice="A",
                     family="gpt2", settings={})
    store.append(vote)
    assert store.shutdown() is True and not store.accepting
    with pytest.raises(VotesClosed, match="restarting"):
        store.append(dict(vote, vote_id=None))
    assert VoteStore(store.path).count == 1
