"""The one way this package writes its JSON files (metrics.json, evaluation.json, settings): indented UTF-8, values
that JSON lacks (paths, numpy scalars) as strings; `write_json_atomic` for files a reader may open at any moment."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` as indented JSON."""
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write `data` next to `path` and rename it into place, so a reader never sees a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    write_json(tmp, data)
    os.replace(tmp, path)
