"""Text made safe to show: Markdown/HTML escaping of user and model text, and the side-by-side column layout."""

import html
import re
from typing import Any


def md_text(text: str) -> str:
    """Model or user text made inert inside Markdown/HTML: HTML-escaped, Markdown syntax as entities."""
    escaped = re.sub(r"[\\`*_{}\[\]()#+\-.!|~<>]", lambda m: f"&#{ord(m.group())};", html.escape(text, quote=False))
    # Quotes as decimal entities, added last: Gradio's Markdown shows `&#x27;` literally inside <code>.
    return escaped.replace('"', "&#34;").replace("'", "&#39;")


def html_text(text: str) -> str:
    """Text for a gr.Error message, which Gradio renders as HTML."""
    return html.escape(text, quote=False)


def columns(runs: list[dict[str, Any]], sections: bool) -> tuple[str, str, list[dict[str, Any]]]:
    """(base column, DPO column, runs): the texts, or one "[Label]" section per family (a failed one: ⚠ why)."""
    if not sections:
        return runs[0]["base"], runs[0]["dpo"], runs

    def section(run: dict[str, Any], side: str) -> str:
        body = run.get(side, f"⚠ {run.get('error', '')}")
        return f"[{run['label']}]\n{body}"

    return ("\n\n".join(section(r, "base") for r in runs), "\n\n".join(section(r, "dpo") for r in runs), runs)
