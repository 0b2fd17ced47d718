"""The prompt format a model was trained with, saved next to it and reused at generation time.

GPT-2 has no chat template and T5 expects a task prefix, so training renders every prompt with one plain,
documented format. The same `PromptFormat` is written to `prompt_format.json` in every output folder and the
app/generation engine loads it back, so generation sees exactly the text that training saw.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

PROMPT_FORMAT_FILE = "prompt_format.json"

# Role names in conversational rows mapped to the speaker labels of the plain format.
ROLE_LABELS = {"system": "System", "user": "User", "assistant": "Assistant"}


@dataclass(frozen=True)
class PromptFormat:
    """How a conversation is turned into the model's input text.

    Decoder-only (GPT-2):  "User: <prompt>\\nAssistant:"  and the completion is " <reply><eos>".
    Encoder-decoder (T5):  "respond: User: <prompt>"  to the encoder, "<reply></s>" to the decoder.
    """

    kind: str  # "plain-chat" (decoder-only) or "t5-prefix" (encoder-decoder)
    prefix: str = ""  # task prefix, e.g. "respond: " for T5
    turn_separator: str = "\n"
    assistant_cue: str = "Assistant:"  # appended after the history for decoder-only models
    completion_prefix: str = " "  # joins the cue and the reply for decoder-only models

    def render_prompt(self, messages: list[dict[str, str]]) -> str:
        """Render a conversation history (ending with a user turn) into the model's prompt text."""
        turns = [f"{ROLE_LABELS[m['role']]}: {m['content'].strip()}" for m in messages]
        body = self.turn_separator.join(turns)
        if self.kind == "plain-chat":
            return f"{self.prefix}{body}{self.turn_separator}{self.assistant_cue}"
        return f"{self.prefix}{body}"

    def render_completion(self, reply: str) -> str:
        """The completion text as the model must produce it (without EOS, which the tokenizer side adds)."""
        reply = reply.strip()
        return f"{self.completion_prefix}{reply}" if self.kind == "plain-chat" else reply

    def prompt_from_text(self, user_text: str) -> str:
        """Shortcut for a single user message, as typed in the app."""
        return self.render_prompt([{"role": "user", "content": user_text}])

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / PROMPT_FORMAT_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "PromptFormat":
        path = Path(directory) / PROMPT_FORMAT_FILE
        return cls(**json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def from_dict(cls, data: dict) -> "PromptFormat":
        return cls(**data)


DECODER_ONLY_FORMAT = PromptFormat(kind="plain-chat")
ENCODER_DECODER_FORMAT = PromptFormat(kind="t5-prefix", prefix="respond: ", completion_prefix="")
