"""Votes kept on the Hub: each replica appends to its own file, `CommitScheduler` commits the folder to a dataset repo.

A Space's disk is ephemeral, so the votes live in a dataset repo (`--votes-repo`, `$DPO_STUDIO_VOTES_REPO`):

* this replica appends to `<folder>/votes-<replica id>.jsonl` (fsync'ed per vote, under the scheduler's lock, so a
  commit never reads half a line) and huggingface_hub's `CommitScheduler` commits the folder to `data/` of the repo
  every `every` minutes. On SIGTERM/SIGINT (a Space restart, rebuild or sleep) the app calls `shutdown`: no more
  votes are taken, what the Hub lacks is committed, waited for (bounded), then the process exits; CommitScheduler's
  own atexit commit covers a normal interpreter exit. A failed commit is logged by the scheduler and retried at the next
  interval (the file is append-only, so the retry carries every vote since the last good commit); serving goes on.
* at start every `data/*.jsonl` already in the repo is downloaded (into the Hub cache, not the folder) and read, so
  the scoreboard survives a restart on an empty disk; votes are counted once by `vote_id`.
* the repo's files are `data/*.jsonl` preference rows, which `datasets.load_dataset(repo)` reads as one train split,
  so `train_dpo.py --dataset <repo>` trains the next round from them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import uuid
from pathlib import Path
from typing import Any

from huggingface_hub import CommitScheduler, HfApi, hf_hub_download

from dpo_studio.arena.votes import VoteStore, read_votes_file, unique_votes

logger = logging.getLogger(__name__)

VOTES_REPO_ENV = "DPO_STUDIO_VOTES_REPO"
VOTES_EVERY_ENV = "DPO_STUDIO_VOTES_EVERY"
DEFAULT_EVERY_MINUTES = 5.0
DEFAULT_VOTES_FOLDER = Path("votes") / "hub"
PATH_IN_REPO = "data"  # datasets reads every data/*.jsonl as the train split
# Hex replica ids cannot contain "test"/"valid"/"dev", which datasets would take for another split.
FILE_PATTERN = "votes-{replica}.jsonl"


def hub_votes(api: HfApi, repo_id: str) -> list[dict[str, Any]]:
    """Every vote in the repo's `data/*.jsonl` files (none if the repo is new or empty)."""
    files = [f for f in api.list_repo_files(repo_id, repo_type="dataset")
             if f.startswith(f"{PATH_IN_REPO}/") and f.endswith(".jsonl")]
    records: list[dict[str, Any]] = []
    for name in sorted(files):
        local = hf_hub_download(repo_id, name, repo_type="dataset", endpoint=api.endpoint, token=api.token)
        records.extend(read_votes_file(Path(local)))
    return records


class VotesRepoError(RuntimeError):
    """The votes repo cannot be created or read at start (one line: repo and cause)."""


class HubVoteStore(VoteStore):
    """A VoteStore whose file is this replica's, committed to a Hub dataset repo by a `CommitScheduler`.

    Args:
        repo_id: the dataset repo (created, private, if missing).
        folder: the local folder committed to the repo's `data/` (one file per replica; earlier replicas' files
            found there are read and committed too).
        every: minutes between commits.
        api: the HfApi (endpoint, token) to use; default: the server's login (`HF_TOKEN`, a Space secret).
    """

    def __init__(self, repo_id: str, folder: str | Path = DEFAULT_VOTES_FOLDER, *, every: float = DEFAULT_EVERY_MINUTES,
                 api: HfApi | None = None) -> None:
        self.api = api or HfApi()
        self.folder = Path(folder).expanduser()
        try:
            self.scheduler = CommitScheduler(repo_id=repo_id, repo_type="dataset", folder_path=self.folder,
                                             path_in_repo=PATH_IN_REPO, every=every, private=True, hf_api=self.api,
                                             allow_patterns=["*.jsonl"])
            self.repo_id = self.scheduler.repo_id
            self._remote = hub_votes(self.api, self.repo_id)
        except Exception as exc:  # auth, network, bad id: the app cannot keep its votes, so it does not start
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise VotesRepoError(f"votes repo {repo_id}: {first}") from None
        super().__init__(self.folder / FILE_PATTERN.format(replica=uuid.uuid4().hex), lock=self.scheduler.lock)
        logger.info("Votes: %d read from dataset %s; this replica appends to %s", self.count, self.repo_id,
                    self.path.name)

    def records(self) -> list[dict[str, Any]]:
        """The repo's votes as of start, then every local votes file (this replica's last), each vote once."""
        local = [read_votes_file(path) for path in sorted(self.folder.glob("*.jsonl")) if path != self.path]
        return unique_votes([*self._remote, *(r for rows in local for r in rows), *read_votes_file(self.path)])

    def commit_now(self) -> None:
        """Commit what is not on the Hub yet and wait for it (an error propagates: the caller shows it)."""
        self.scheduler.trigger().result()

    def close(self) -> None:
        """Final commit, then stop the scheduler (its atexit hook does the same on interpreter exit)."""
        try:
            self.commit_now()
        finally:
            self.scheduler.stop()

    def shutdown(self, timeout: float = 20.0) -> bool:
        """Stop taking votes, commit what the Hub lacks and wait up to `timeout` seconds; then stop the scheduler.

        True when the Hub has every vote. On a failure or timeout the votes stay in this replica's file (fsync'ed)
        and the reason is logged: a restart on the same disk commits them, a restart on an empty disk lacks them.
        """
        super().shutdown(timeout)
        try:
            self.scheduler.trigger().result(timeout=timeout)
            logger.info("Votes: %d on dataset %s; final commit done", self.count, self.repo_id)
            return True
        except concurrent.futures.TimeoutError:
            logger.error("Votes: final commit to %s did not finish in %g s; the last votes are only in %s",
                         self.repo_id, timeout, self.path.name)
        except Exception as exc:  # network, auth: the scheduler logged the cause
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            logger.error("Votes: final commit to %s failed (%s); the last votes are only in %s", self.repo_id,
                         first, self.path.name)
        finally:
            self.scheduler.stop()
        return False

    def location(self) -> str:
        return f"dataset {self.repo_id}"
