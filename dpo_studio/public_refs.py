"""What may leave this machine: model and data references as they appear in pushed files and on the app's pages.

A Hub id is public and passes through unchanged. A local path (absolute, `~`, `./`, or anything that exists on disk)
is this machine's business: it is shown as `local:<last two parts>` (e.g. `local:gpt2/base`), which says where it
came from without the directories above it and is never mistaken for a Hub id (`:` is not allowed in one).
Local files keep real paths where this machine needs them to load a model; publishing rewrites those.
"""

from __future__ import annotations

import os
from pathlib import Path

LOCAL_PREFIX = "local:"


def is_local_path(ref: str) -> bool:
    """True for a filesystem path rather than a Hub id (`gpt2`, `ns/name`)."""
    return (
        os.path.isabs(ref) or ref.startswith(("~", "./", "../", ".\\", "..\\")) or ref in (".", "..")
        or Path(ref).expanduser().exists()
    )


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
