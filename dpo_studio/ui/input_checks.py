"""Input checks for every value a client sends (UI or API): prompt, family, generation settings, vote choice.

The API endpoints are typed from Python signatures (no slider bounds), so out-of-range numbers are capped or refused
here with one-line messages; family names and labels both work. Text with a lone surrogate (invalid Unicode) is
refused naming its field; control characters in a prompt are removed (`visitor_text.clean_text`); a message quotes
at most `visitor_text.QUOTE_CHARS` characters of any input; integer settings refuse non-integers (3.5, "3.5").
"""

import html
import math
import re
from collections.abc import Mapping
from typing import Any

import gradio as gr

from dpo_studio.arena.visitor_text import clean_text, invalid_unicode, shown
from dpo_studio.arena.votes import CHOICES
from dpo_studio.inference.model_sources import FamilySource

MAX_NEW_TOKENS_CAP = 256  # server-side cap, whatever a client sends
MAX_PROMPT_CHARS = 2000
DEFAULT_MAX_NEW_TOKENS = 64
DEFAULT_TEMPERATURE = 0.7
DEFAULT_TOP_P = 0.9
DEFAULT_SEED = 0
ALL_FAMILIES = "both"


def user_error(message: str) -> gr.Error:
    """A refusal of the user's input: not a server fault, so no traceback in the log."""
    return gr.Error(message, print_exception=False)


def check_text(value: Any, field: str) -> str:
    """`value` as text ("" for None); refused in one line naming `field` when it is not text or not valid Unicode."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise user_error(f"The {field} must be text, got {type(value).__name__}.")
    bad = invalid_unicode(value)
    if bad is not None:
        raise user_error(f"The {field} is not valid Unicode (a lone surrogate at character {bad + 1}).")
    return value


def whole_number(value: Any, field: str, default: int) -> int:
    """An integer setting: ints, integral floats (3.0) and digit strings; 3.5, "3.5", true and text are refused."""
    if value is None:
        return default
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and invalid_unicode(value) is None and re.fullmatch(r"\s*[+-]?\d{1,30}\s*", value):
        return int(value)
    raise user_error(f"{field} must be a whole number, got {html.escape(shown(value), quote=False)}.")


def _squashed(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


class InputChecks:
    """Validates what a request asks for, against the configured families and the server's limits."""

    def __init__(self, families: Mapping[str, FamilySource], *, max_new_tokens_cap: int = MAX_NEW_TOKENS_CAP,
                 max_prompt_chars: int = MAX_PROMPT_CHARS) -> None:
        self._families = families
        self.max_new_tokens_cap = max_new_tokens_cap
        self.max_prompt_chars = max_prompt_chars
        self._aliases: dict[str, list[str]] = {}
        for name, source in families.items():
            for alias in (name, source.label):
                self._aliases[alias.lower()] = [name]
                self._aliases[_squashed(alias)] = [name]
        if len(families) > 1:
            for alias in (ALL_FAMILIES, "all"):
                self._aliases[alias] = list(families)

    @property
    def family_choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs of the family selector, with "Both"/"All" when there are several families."""
        choices = [(s.label, name) for name, s in self._families.items()]
        if len(choices) > 1:
            choices.append(("Both" if len(choices) == 2 else "All", ALL_FAMILIES))
        return choices

    def families_for(self, family: str | None) -> list[str]:
        """Family names for a selector value: a name ("gpt2"), a label ("GPT-2") or "both"."""
        key = check_text(family if family is None or isinstance(family, str) else str(family), "family")
        key = key.strip().lower()
        names = self._aliases.get(key) or self._aliases.get(_squashed(key))
        if not names:
            options = ", ".join(value for _, value in self.family_choices)
            quoted = html.escape(shown(family), quote=False)
            raise user_error(f"Unknown model family {quoted}; choose one of: {options}.")
        return names

    def check_prompt(self, prompt: str | None, what: str = "prompt") -> str:
        """The stripped text, control characters removed; refused when it is not text, not valid Unicode, empty or
        over the length limit."""
        text = clean_text(check_text(prompt, what)).strip()
        if not text:
            raise user_error(f"Please enter a {what}: it is empty.")
        if len(text) > self.max_prompt_chars:
            raise user_error(f"The {what} is {len(text)} characters long; the limit is {self.max_prompt_chars}.")
        return text

    def settings(self, max_new_tokens: Any, temperature: Any, top_p: Any, seed: Any) -> dict[str, Any]:
        """Validated generation settings; max_new_tokens is capped server-side."""
        max_new = whole_number(max_new_tokens, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        seed_value = whole_number(seed, "seed", DEFAULT_SEED)
        try:
            if isinstance(temperature, bool) or isinstance(top_p, bool):
                raise TypeError
            temp = float(DEFAULT_TEMPERATURE if temperature is None else temperature)
            top = float(DEFAULT_TOP_P if top_p is None else top_p)
        except (TypeError, ValueError, OverflowError, UnicodeEncodeError):
            raise user_error("temperature and top_p must be numbers.") from None
        if max_new < 1:
            raise user_error(f"max_new_tokens must be at least 1, got {max_new}.")
        if not (math.isfinite(temp) and math.isfinite(top)):
            raise user_error("temperature and top_p must be finite numbers.")
        if temp < 0:
            raise user_error(f"temperature must be >= 0 (0 = greedy), got {temp}.")
        if not 0 < top <= 1:
            raise user_error(f"top_p must be in (0, 1], got {top}.")
        if not 0 <= seed_value < 2**63:  # what torch.manual_seed accepts
            raise user_error(f"seed must be in [0, 2^63), got {seed_value}.")
        return {"max_new_tokens": min(max_new, self.max_new_tokens_cap), "temperature": temp, "top_p": top,
                "seed": seed_value}

    def request(self, prompt: Any, family: Any, max_new_tokens: Any, temperature: Any, top_p: Any,
                seed: Any) -> tuple[str, list[str], dict[str, Any]]:
        """A whole generation request checked: (prompt text, family names, settings)."""
        return (self.check_prompt(prompt), self.families_for(family),
                self.settings(max_new_tokens, temperature, top_p, seed))


def check_choice(choice: Any) -> str:
    """A vote choice: "A", "B", "tie" or "both_bad" (case, spaces and dashes forgiven)."""
    text = check_text(choice if choice is None or isinstance(choice, str) else str(choice), "vote choice")
    key = re.sub(r"[\s-]+", "_", text.strip().lower())
    choice = {"a": "A", "b": "B"}.get(key, key)
    if choice not in CHOICES:
        quoted = html.escape(shown(choice), quote=False)
        raise user_error(f"Unknown vote {quoted}; choose one of: {', '.join(CHOICES)}.")
    return choice
