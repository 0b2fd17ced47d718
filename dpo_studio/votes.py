"""Blind A/B votes stored as a preference dataset (JSONL), and their export to the Hub as a dataset repo.

Each vote is one line `{prompt, chosen, rejected, family, winner_side, chosen_model, models, settings, timestamp}`
(the same `prompt/chosen/rejected` columns as the training data, so collected votes can be trained on directly).
Lines are appended with flush + fsync, so a vote that was acknowledged survives a crash or restart.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi

logger = logging.getLogger(__name__)

DEFAULT_VOTES_FILE = Path("votes") / "votes.jsonl"
EXPORT_PATH_IN_REPO = "data/train.jsonl"
SIDES = ("A", "B")
MODELS = ("base", "dpo")


def make_vote(
    *,
    prompt: str,
    replies: dict[str, str],
    sides: dict[str, str],
    winner_side: str,
    family: str,
    settings: dict[str, Any],
    models: dict[str, str] | None = None,
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """A preference record from a blind round.

    `replies` maps "A"/"B" to the text shown; `sides` maps "A"/"B" to the model behind it ("base"/"dpo");
    `winner_side` is the side the user picked.
    """
    if winner_side not in SIDES:
        raise ValueError(f"winner_side must be one of {SIDES}, got {winner_side!r}")
    if set(replies) != set(SIDES) or set(sides) != set(SIDES) or set(sides.values()) != set(MODELS):
        raise ValueError("replies and sides must map both 'A' and 'B' (sides to 'base' and 'dpo')")
    loser_side = "B" if winner_side == "A" else "A"
    stamp = (timestamp or datetime.now(timezone.utc)).isoformat()
    return {
        "prompt": prompt,
        "chosen": replies[winner_side],
        "rejected": replies[loser_side],
        "family": family,
        "winner_side": winner_side,
        "chosen_model": sides[winner_side],
        "models": dict(models or {}),
        "settings": dict(settings),
        "timestamp": stamp,
    }


class VoteStore:
    """Append-only JSONL file of votes; counts what is already there on start."""

    def __init__(self, path: str | Path = DEFAULT_VOTES_FILE) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._count = len(self.records())

    @property
    def count(self) -> int:
        """Number of votes stored (including those from earlier runs)."""
        return self._count

    def records(self) -> list[dict[str, Any]]:
        """All stored votes; a damaged line (e.g. cut by a crash mid-write) is skipped with a warning."""
        if not self.path.is_file():
            return []
        out = []
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    logger.warning("%s line %d: not valid JSON, skipped", self.path, number)
                    continue
                if isinstance(record, dict):
                    out.append(record)
        return out

    def append(self, record: dict[str, Any]) -> int:
        """Append one vote durably (flush + fsync) and return the new count."""
        line = json.dumps(record, ensure_ascii=False) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a+b") as handle:
                handle.seek(0, os.SEEK_END)
                if handle.tell() > 0:
                    handle.seek(-1, os.SEEK_END)
                    if handle.read(1) != b"\n":  # a crash cut the last line: don't glue this vote onto it
                        handle.write(b"\n")
                handle.write(line.encode("utf-8"))
                handle.flush()
                os.fsync(handle.fileno())
            self._count += 1
            return self._count

    def snapshot(self) -> bytes:
        """The file's bytes as of now (no half-written vote: appends hold the same lock)."""
        with self._lock:
            return self.path.read_bytes() if self.path.is_file() else b""


def export_votes(
    store: VoteStore | str | Path,
    repo_id: str,
    *,
    token: str | bool | None = None,
    private: bool = False,
    endpoint: str | None = None,
) -> str:
    """Push the votes as a Hub dataset repo (`data/train.jsonl`); returns the dataset's URL.

    A regular file upload through `HfApi.upload_file` (not `Dataset.push_to_hub`, which writes parquet through
    LFS/Xet); the Hub's dataset viewer and `load_dataset(repo_id)` read `data/train.jsonl` as the train split.
    """
    store = store if isinstance(store, VoteStore) else VoteStore(store)
    repo_id = repo_id.strip()
    if not repo_id:
        raise ValueError("export needs a dataset repo id such as 'your-name/dpo-studio-votes'")
    data = store.snapshot()
    count = sum(1 for line in data.splitlines() if line.strip())
    if count == 0:
        raise ValueError(f"no votes to export yet ({store.path} is empty or missing)")
    api = HfApi(endpoint=endpoint, token=token)
    repo_url = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    api.upload_file(
        path_or_fileobj=data,
        path_in_repo=EXPORT_PATH_IN_REPO,
        repo_id=repo_url.repo_id,
        repo_type="dataset",
        commit_message=f"Upload {count} blind A/B votes from DPO Studio",
    )
    return str(repo_url)
