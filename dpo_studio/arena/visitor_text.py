"""Text from a visitor: the one home of what may be stored and what may be quoted back.

* `invalid_unicode(text)`: the position of a lone surrogate (JSON `"\\ud800"` decodes to one; it cannot be encoded
  as UTF-8, so a tokenizer or the votes file would fail on it), else None. Such text is refused, naming the field.
* `clean_text(text)`: control characters are **removed** (normalised, not refused): C0 (NUL included) and C1
  controls and DEL, except tab and newline; `\\r\\n` and a lone `\\r` become `\\n`. Prompts are cleaned before
  generation and every text of a vote before it is stored, so none reaches the votes file or the training data.
* `shown(value)`: a visitor's value as a message may quote it: its repr cut to `QUOTE_CHARS` characters (with the
  full length said), so a 200 KB round id is never echoed back.
* `without_paths(text)`: a message (e.g. a library's exception) with every absolute path cut to its last part, so
  no server folder is shown to a visitor.
"""

from __future__ import annotations

import re
from typing import Any

QUOTE_CHARS = 80
_SURROGATE = re.compile("[\ud800-\udfff]")
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:[A-Za-z]:)?[/\\](?:[^\s/\\'\"]+[/\\])+(?=[^\s/\\'\"])")
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def invalid_unicode(text: str) -> int | None:
    """Index of the first lone surrogate in `text`, else None."""
    found = _SURROGATE.search(text)
    return None if found is None else found.start()


def clean_text(text: str) -> str:
    """`text` with line ends as `\\n` and every other control character (but tab) removed."""
    return _CONTROLS.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def shown(value: Any, limit: int = QUOTE_CHARS) -> str:
    """`repr(value)` of at most `limit` characters of it: `'abc…' (120000 characters)` for a long string."""
    if isinstance(value, str):
        if len(value) <= limit:
            return repr(value)
        return f"{value[:limit]!r}… ({len(value)} characters)"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def without_paths(text: str) -> str:
    """`text` with the folders of every absolute path removed (`/srv/app/votes/v.jsonl` -> `…/v.jsonl`)."""
    return _ABSOLUTE_PATH.sub("…/", text)
