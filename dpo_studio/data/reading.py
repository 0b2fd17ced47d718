"""Preference data: load (Hub id or local file), validate with precise errors, normalise, format, split.

Rows are either *standard* (`prompt`, `chosen`, `rejected` strings) or *conversational* (`prompt` a list of
`{role, content}` messages ending with a user turn; `chosen`/`rejected` lists holding the assistant reply). Rows with
no `prompt` column whose `chosen`/`rejected` are full conversations get the shared prefix as prompt (TRL's
"implicit prompt" format).

Local files are parsed here rather than by `datasets.load_dataset`, because a user with a broken file needs the line
and field that is wrong, which `datasets`' Arrow readers do not report. Hub ids go through `datasets.load_dataset`.
Files are read as written: UTF-8 with or without BOM; JSON lines end at "\n" (or "\r\n"), so strings may hold
U+2028/U+2029/U+0085; blank lines are skipped; CSV fields may hold quoted newlines. Columns other than
prompt/chosen/rejected are accepted, ignored and named once in the log.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from datasets import Dataset

from dpo_studio.data.prompt_format import ROLE_LABELS, PromptFormat
from dpo_studio.public_refs import DATA_FILE_SUFFIXES, is_local_path

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("prompt", "chosen", "rejected")
VOTES_WITHOUT_PREFERENCE = ("tie", "both_bad")  # the app's votes file (dpo_studio/arena/votes.py): no chosen/rejected


class DataError(ValueError):
    """Bad preference data. The message is one line naming the file, the row and the field."""


@dataclass(frozen=True)
class PreferencePair:
    """One validated pair: the conversation so far and the two candidate assistant replies."""

    messages: tuple[tuple[str, str], ...]  # ((role, content), ...), ends with a user turn
    chosen: str
    rejected: str

    @property
    def prompt_key(self) -> str:
        """Stable identity of the prompt, used for the deterministic split."""
        return "\n".join(f"{role}:{content}" for role, content in self.messages)

    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": role, "content": content} for role, content in self.messages]


@dataclass
class LoadReport:
    source: str
    rows_read: int = 0
    rows_kept: int = 0
    rows_skipped: int = 0
    skipped_examples: list[str] = field(default_factory=list)  # first few error messages
    extra_columns: list[str] = field(default_factory=list)  # columns besides prompt/chosen/rejected, ignored
    votes_without_preference: int = 0  # tie / both-bad lines of an app votes file: not pairs, always skipped

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "rows_kept": self.rows_kept,
            "rows_skipped": self.rows_skipped,
            "skipped_examples": self.skipped_examples[:5],
            "extra_columns": self.extra_columns,
            "votes_without_preference": self.votes_without_preference,
        }


# ----------------------------------------------------------------------------------------------------------- reading
def read_rows(source: str, split: str = "train") -> list[dict[str, Any]]:
    """Raw rows (dicts) from a local file or a Hub dataset id. Raises DataError for unreadable input."""
    if is_local_path(source):
        return _read_local(Path(source))
    from datasets import (
        load_dataset,  # Hub path: the datasets library does loading, caching and auth
    )

    try:
        dataset = load_dataset(source, split=split)
    except Exception as exc:  # noqa: BLE001 - any loader failure becomes one clear line
        raise DataError(f"{source}: cannot load dataset split '{split}': {type(exc).__name__}: {exc}") from None
    return [dict(row) for row in dataset]


def _read_local(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a .jsonl/.json/.csv/.parquet file")
    kind = DATA_FILE_SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix}', expected one of {sorted(DATA_FILE_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")
    if kind == "parquet":
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{path}: not a readable parquet file: {exc}") from None
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: row {line}: not valid UTF-8 (byte {exc.start})") from None
    if kind == "jsonl":
        return _parse_jsonl(path, text)
    if kind == "json":
        return _parse_json(path, text)
    return _parse_csv(path, text)


def _parse_jsonl(path: Path, text: str) -> list[dict[str, Any]]:
    rows = []
    # Only "\n" ends a JSON line ("\r\n" too: JSON ignores the "\r"). `str.splitlines` would also split inside
    # strings holding U+2028, U+2029 or U+0085, which `json.dumps(..., ensure_ascii=False)` writes as is.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: row {line_no}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {line_no}: expected a JSON object, got {type(row).__name__}")
        row["__row__"] = line_no
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: file has no rows")
    return rows


def _parse_json(path: Path, text: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # A .json file holding JSON lines is common; accept it.
        if exc.msg == "Extra data":
            return _parse_jsonl(path, text)
        raise DataError(f"{path}: row {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if isinstance(data, dict):
        # {"train": [...]} or {"data": [...]}: take the single list value.
        lists = [value for value in data.values() if isinstance(value, list)]
        if len(lists) != 1:
            raise DataError(f"{path}: expected a JSON array of rows (or an object holding one array)")
        data = lists[0]
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of rows, got {type(data).__name__}")
    rows = []
    for index, row in enumerate(data, start=1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: row {index}: expected a JSON object, got {type(row).__name__}")
        rows.append({**row, "__row__": index})
    if not rows:
        raise DataError(f"{path}: file has no rows")
    return rows


def _parse_csv(path: Path, text: str) -> list[dict[str, Any]]:
    # The csv module's own line handling (as with open(newline="")): quoted fields may hold newlines, and only
    # "\r", "\n" or "\r\n" end a record (not U+2028 & co.).
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(f"{path}: file is empty") from None
    rows = []
    for values in reader:
        line_no = reader.line_num
        if not any(value.strip() for value in values):
            continue
        if len(values) != len(header):
            raise DataError(
                f"{path}: row {line_no}: has {len(values)} fields but the header has {len(header)} ({', '.join(header)})"
            )
        row = dict(zip(header, values))
        # Conversational columns in CSV are JSON-encoded lists.
        for key in REQUIRED_FIELDS:
            value = row.get(key)
            if isinstance(value, str) and value.lstrip().startswith("[{"):
                try:
                    row[key] = json.loads(value)
                except json.JSONDecodeError:
                    pass
        row["__row__"] = line_no
        rows.append(row)
    if not rows:
        raise DataError(f"{path}: file has a header but no rows")
    return rows


# -------------------------------------------------------------------------------------------------------- validating
def _check_text(value: Any, where: str) -> str:
    if value is None:
        raise DataError(f"{where}: is null")
    if not isinstance(value, str):
        raise DataError(f"{where}: expected a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: is empty")
    return value.strip()


def _check_messages(value: Any, where: str) -> list[tuple[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: expected a non-empty list of {{role, content}} messages")
    messages = []
    for index, message in enumerate(value):
        spot = f"{where}[{index}]"
        if not isinstance(message, dict):
            raise DataError(f"{spot}: expected a {{role, content}} object, got {type(message).__name__}")
        role = message.get("role")
        if role not in ROLE_LABELS:
            raise DataError(f"{spot}.role: unknown role {role!r}, expected one of {sorted(ROLE_LABELS)}")
        messages.append((role, _check_text(message.get("content"), f"{spot}.content")))
    return messages


def _reply_text(value: Any, where: str) -> str:
    """A reply is a string, or a conversational list whose messages are all assistant turns."""
    if isinstance(value, list):
        messages = _check_messages(value, where)
        for index, (role, _) in enumerate(messages):
            if role != "assistant":
                raise DataError(f"{where}[{index}].role: expected 'assistant' in a reply, got {role!r}")
        return "\n".join(content for _, content in messages)
    return _check_text(value, where)


def _split_implicit_prompt(row: dict[str, Any], where: str) -> tuple[list, list, list]:
    """TRL's implicit-prompt format: chosen/rejected are whole conversations sharing the prompt as prefix."""
    chosen = _check_messages(row.get("chosen"), f"{where}: field 'chosen'")
    rejected = _check_messages(row.get("rejected"), f"{where}: field 'rejected'")
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == 0:
        raise DataError(f"{where}: field 'prompt' is missing and 'chosen'/'rejected' share no prompt messages")
    return chosen[:shared], chosen[shared:], rejected[shared:]


def validate_row(row: dict[str, Any], where: str) -> PreferencePair:
    """Validate one raw row; `where` is e.g. "data.jsonl: row 17". Raises DataError naming the field."""
    present = [name for name in REQUIRED_FIELDS if name in row]
    if not present:
        columns = ", ".join(sorted(k for k in row if k != "__row__")) or "none"
        raise DataError(f"{where}: no 'prompt'/'chosen'/'rejected' fields (found: {columns})")
    if "prompt" not in row and isinstance(row.get("chosen"), list):
        messages, chosen_msgs, rejected_msgs = _split_implicit_prompt(row, where)
        chosen = _reply_text([{"role": r, "content": c} for r, c in chosen_msgs], f"{where}: field 'chosen'")
        rejected = _reply_text([{"role": r, "content": c} for r, c in rejected_msgs], f"{where}: field 'rejected'")
    else:
        for name in REQUIRED_FIELDS:
            if name not in row:
                raise DataError(f"{where}: field '{name}' is missing")
        prompt = row["prompt"]
        if isinstance(prompt, list):
            messages = _check_messages(prompt, f"{where}: field 'prompt'")
        else:
            messages = [("user", _check_text(prompt, f"{where}: field 'prompt'"))]
        chosen = _reply_text(row["chosen"], f"{where}: field 'chosen'")
        rejected = _reply_text(row["rejected"], f"{where}: field 'rejected'")
    if messages[-1][0] != "user":
        raise DataError(f"{where}: field 'prompt': the last message must be a user turn, got {messages[-1][0]!r}")
    if chosen == rejected:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' are identical (not a preference pair)")
    return PreferencePair(tuple(messages), chosen, rejected)


def is_vote_without_preference(row: dict[str, Any]) -> bool:
    """A line of the app's votes file that picked no side ("tie", "both_bad"), or a vote flagged as a duplicate (the
    same visitor, prompt and pair again): it has no chosen/rejected, so it is not a preference pair; `load_pairs`
    skips and counts it (whatever `skip_invalid` says)."""
    no_pair = row.get("chosen") is None and row.get("rejected") is None
    return no_pair and (row.get("vote") in VOTES_WITHOUT_PREFERENCE or row.get("duplicate") is True)


def load_pairs(source: str, split: str = "train", skip_invalid: bool = False) -> tuple[list[PreferencePair], LoadReport]:
    """Read and validate every row. Stops at the first bad row unless `skip_invalid`, which drops and counts them.
    Tie and both-bad votes of an app votes file are skipped and counted in `votes_without_preference`."""
    rows = read_rows(source, split)
    report = LoadReport(source=source, rows_read=len(rows))
    votes = [row for row in rows if is_vote_without_preference(row)]
    if votes:
        report.votes_without_preference = len(votes)
        rows = [row for row in rows if not is_vote_without_preference(row)]
        logger.info("%s: skipped %d tie / both-bad votes (not preference pairs)", source, len(votes))
    extra = {key for row in rows for key in row if key not in REQUIRED_FIELDS and key != "__row__"}
    report.extra_columns = sorted(extra)
    if extra:  # accepted (ids, scores, metadata are common), named once so a misspelt column does not go unnoticed
        logger.info("%s: ignoring extra columns: %s", source, ", ".join(report.extra_columns))
    pairs = []
    for index, row in enumerate(rows, start=1):
        where = f"{source}: row {row.pop('__row__', index)}"
        try:
            pairs.append(validate_row(row, where))
        except DataError as exc:
            if not skip_invalid:
                raise
            report.rows_skipped += 1
            report.skipped_examples.append(str(exc))
    report.rows_kept = len(pairs)
    if not pairs:
        detail = f" ({report.rows_skipped} invalid rows skipped; first: {report.skipped_examples[0]})" if rows else ""
        if report.votes_without_preference:
            detail += f" ({report.votes_without_preference} tie / both-bad votes skipped)"
        raise DataError(f"{source}: no valid preference pairs{detail}")
    return pairs, report


# ---------------------------------------------------------------------------------------------- splitting/formatting
def split_pairs(
    pairs: list[PreferencePair], eval_fraction: float, seed: int
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """Deterministic train/eval split by a hash of (seed, prompt).

    Hashing the prompt (not the row position) keeps every pair of one prompt on the same side, and a pair's side does
    not change when rows are added, removed or reordered.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise DataError(f"eval_fraction must be between 0 and 1, got {eval_fraction}")
    train, held_out = [], []
    for pair in pairs:
        digest = hashlib.sha256(f"{seed}\x00{pair.prompt_key}".encode()).digest()
        (held_out if int.from_bytes(digest[:8], "big") / 2**64 < eval_fraction else train).append(pair)
    if not train or not held_out:
        raise DataError(
            f"splitting {len(pairs)} pairs with eval_fraction={eval_fraction} left an empty "
            f"{'train' if not train else 'eval'} split; add data or pass --eval-dataset"
        )
    return train, held_out


def to_dataset(pairs: Iterable[PreferencePair], prompt_format: PromptFormat) -> Dataset:
    """Render pairs as TRL's standard prompt/chosen/rejected strings in the family's prompt format."""
    records = [
        {
            "prompt": prompt_format.render_prompt(pair.message_dicts()),
            "chosen": prompt_format.render_completion(pair.chosen),
            "rejected": prompt_format.render_completion(pair.rejected),
        }
        for pair in pairs
    ]
    return Dataset.from_list(records)
