"""Local path or Hub id, and what may leave this machine: the one home of both rules.

A reference (`--models`, `--dataset`, the app's `base`/`adapter`/`merged`, a card's `base_model`) is a local path when
it is written as one (absolute, `~`, `./`, `../`), names a data file (`pairs.jsonl`), or exists on disk; everything
else is a Hub id. A Hub id is public and passes through unchanged. A local path is this machine's business: it is
shown as `local:<last two parts>` (e.g. `local:gpt2/base`), which says where it came from without the directories
above it and is never mistaken for a Hub id (`:` is not allowed in one). Local files keep real paths where this
machine needs them to load a model; publishing rewrites those.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    RemoteEntryNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

LOCAL_PREFIX = "local:"
RELATIVE_PREFIXES = ("./", "../", ".\\", "..\\")
# Preference-pair files data.py reads; such a name is a file (maybe a missing one), never a Hub dataset id.
DATA_FILE_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


def _written_as_path(ref: str) -> bool:
    return os.path.isabs(ref) or ref.startswith(("~", *RELATIVE_PREFIXES)) or ref in (".", "..")


def is_local_path(ref: str) -> bool:
    """True for a filesystem path rather than a Hub id (`gpt2`, `ns/name`)."""
    return _written_as_path(ref) or Path(ref).suffix.lower() in DATA_FILE_SUFFIXES or Path(ref).expanduser().exists()


def is_hub_id(ref: str) -> bool:
    """True for a reference the Hub accepts as a repo id (huggingface_hub's own check) that is not a local path."""
    if not ref or is_local_path(ref):
        return False
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return False
    return True


def local_path(ref: str, base_dir: Path | None = None) -> Path:
    """The absolute path a local reference names: `./x` and `../x` relative to `base_dir` (default: the working
    directory), `~` expanded."""
    path = Path(ref).expanduser()
    if path.is_absolute():
        return path
    anchor = Path(base_dir) if base_dir is not None and ref.startswith(RELATIVE_PREFIXES) else Path.cwd()
    return (anchor / path).resolve()


def public_ref(ref: str | None) -> str | None:
    """`ns/model` -> unchanged; `/home/me/runs/demo/gpt2/base` -> `local:gpt2/base`; None -> None."""
    if ref is None or ref.startswith(LOCAL_PREFIX) or not is_local_path(ref):
        return ref
    parts = Path(ref).expanduser().resolve().parts[1:]  # without the root ("/" or a drive)
    return LOCAL_PREFIX + "/".join(parts[-2:]) if parts else LOCAL_PREFIX + "."


def scrub(text: str, ref: str | None) -> str:
    """`text` with every spelling of the local reference `ref` (as given and resolved) replaced by its public form."""
    if ref is None or not is_local_path(ref):
        return text
    public = public_ref(ref) or ""
    for spelling in sorted({ref, str(Path(ref).expanduser()), str(Path(ref).expanduser().resolve())}, key=len,
                           reverse=True):
        text = text.replace(spelling, public)
    return text


def resolve_file(
    source: str, filename: str, *, revision: str | None = None, token: str | bool | None = None
) -> Path | None:
    """Path of `filename` in a local directory or a Hub repo, or None when that source has no such file.

    Used for prompt_format.json, dpo_config.json and to decide where the tokenizer lives.
    """
    if is_local_path(source):
        path = local_path(source) / filename
        return path if path.is_file() else None
    try:
        return Path(hf_hub_download(source, filename, revision=revision, token=token))
    except (EntryNotFoundError, RemoteEntryNotFoundError):
        # Missing in the repo, or (offline) not in the local cache: the caller falls back to the next source.
        return None
    except HFValidationError:
        raise ValueError(f"{source!r} is neither an existing local directory nor a valid Hub repo id") from None
