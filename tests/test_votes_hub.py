"""Votes kept on a Hub dataset repo (dpo_studio.arena.hub_store) through the local Hub server: restart on an empty disk,
failed commits retried, SIGKILL between a vote and the next commit, and the repo trains the next round."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import datasets  # noqa: F401  (imported before local_hub so that the fixture points datasets.config at it)
import pytest

from dpo_studio.arena.hub_store import HubVoteStore, VotesRepoError
from dpo_studio.arena.votes import make_vote, scoreboard
from dpo_studio.data.reading import read_rows

EVERY = 60.0  # minutes: no scheduled commit happens during a test; commits are triggered (or happen at start)


def _vote(index: int, choice: str = "A") -> dict:
    return make_vote(prompt=f"prompt {index}", replies={"A": f"a{index}", "B": f"b{index}"},
                     sides={"A": "dpo", "B": "base"} if index % 2 else {"A": "base", "B": "dpo"}, choice=choice,
                     family="gpt2" if index % 3 else "t5", settings={"seed": index})


def _hub_rows(hub, repo_id: str) -> list[dict]:
    files = hub.files(repo_id, repo_type="dataset")
    return [json.loads(line) for name, data in sorted(files.items()) if name.startswith("data/")
            for line in data.decode().splitlines() if line.strip()]


def test_board_survives_a_restart_in_an_empty_folder_and_the_repo_trains(tmp_path, local_hub):
    repo_id = f"{local_hub.user}/arena-votes"
    first = HubVoteStore(repo_id, tmp_path / "replica1", every=EVERY)
    votes = [_vote(i, choice) for i, choice in enumerate(["A", "B", "tie", "A", "both_bad", "B"])]
    for vote in votes:
        first.append(vote)
    board = scoreboard(first.records())
    first.close()
    assert sorted(r["vote_id"] for r in _hub_rows(local_hub, repo_id)) == sorted(v["vote_id"] for v in votes)

    second = HubVoteStore(repo_id, tmp_path / "replica2-empty-disk", every=EVERY)
    assert second.count == len(votes)
    assert scoreboard(second.records()) == board
    second.append(_vote(10, "B"))
    second.close()
    assert len([n for n in local_hub.files(repo_id, repo_type="dataset") if n.startswith("data/")]) == 2

    rows = read_rows(repo_id)  # what train_dpo.py --dataset <repo> reads: both replicas' files, one split
    assert sorted(r["vote_id"] for r in rows) == sorted([v["vote_id"] for v in votes] + [second.records()[-1]["vote_id"]])
    third = HubVoteStore(repo_id, tmp_path / "replica3", every=EVERY)
    assert third.count == len(votes) + 1
    third.scheduler.stop()


def test_a_failed_commit_is_retried_with_no_vote_lost_or_doubled(tmp_path, local_hub):
    repo_id = f"{local_hub.user}/flaky-votes"
    store = HubVoteStore(repo_id, tmp_path / "votes", every=EVERY)
    store.append(_vote(1))
    local_hub.inject_faults("/commit/", ["500"], count=1, method="POST")
    with pytest.raises(Exception):
        store.commit_now()  # logged by CommitScheduler; the caller (export) shows one line
    store.append(_vote(2))  # still serving
    store.commit_now()  # the retry carries everything since the last good commit
    store.commit_now()  # nothing new: no commit, nothing doubled
    store.scheduler.stop()
    rows = _hub_rows(local_hub, repo_id)
    assert [r["prompt"] for r in rows] == ["prompt 1", "prompt 2"]
    assert len({r["vote_id"] for r in rows}) == 2


def test_sigkill_between_a_vote_and_the_next_commit(tmp_path, local_hub):
    """Killed with two votes committed and three not: locally nothing is lost (fsync per vote); the Hub misses
    only the last interval's three, and after a restart on the same disk they reach it once each."""
    repo_id = f"{local_hub.user}/killed-votes"
    folder = tmp_path / "votes"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_votes_hub import _vote
        from dpo_studio.arena.hub_store import HubVoteStore
        store = HubVoteStore({repo_id!r}, {str(folder)!r}, every={EVERY})
        for i in range(2):
            store.append(_vote(i))
        store.commit_now()
        for i in range(2, 5):
            store.append(_vote(i))
        print("voted", flush=True)
        import time; time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert child.stdout.readline().strip() == "voted"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert len(_hub_rows(local_hub, repo_id)) == 2  # the last interval's votes are only local

    on_empty_disk = HubVoteStore(repo_id, tmp_path / "elsewhere", every=EVERY)
    assert on_empty_disk.count == 2
    on_empty_disk.scheduler.stop()
    restarted = HubVoteStore(repo_id, folder, every=EVERY)  # same disk: the killed replica's file is read
    assert restarted.count == 5
    restarted.close()  # ... and committed
    rows = _hub_rows(local_hub, repo_id)
    assert sorted(r["prompt"] for r in rows) == [f"prompt {i}" for i in range(5)]
    assert len({r["vote_id"] for r in rows}) == 5
    third = HubVoteStore(repo_id, tmp_path / "third", every=EVERY)
    assert third.count == 5
    third.scheduler.stop()


def test_an_unusable_votes_repo_is_one_line(tmp_path, local_hub):
    with pytest.raises(VotesRepoError, match="votes repo someone-else/votes: "):
        HubVoteStore("someone-else/votes", tmp_path / "v", every=EVERY)
