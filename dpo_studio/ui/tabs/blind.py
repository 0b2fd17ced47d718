"""The Blind A/B tab: two replies in random order, one vote per round, the reveal; and the votes' Hub export."""

from collections.abc import Iterable
from dataclasses import dataclass

import gradio as gr

from dpo_studio.ui.blind_rounds import CHOICE_LABELS, BlindStep
from dpo_studio.ui.events import Events
from dpo_studio.ui.studio import Studio
from dpo_studio.ui.tabs.controls import Controls, example_prompts
from dpo_studio.ui.tabs.scoreboard import Scoreboard


@dataclass
class Export:
    secret: gr.Textbox  # the owner secret; no repo id, no token: both are the server's configuration
    button: gr.Button
    message: gr.Markdown


@dataclass
class Blind:
    prompt: gr.Textbox
    button: gr.Button
    regenerate: gr.Button
    reply_a: gr.Textbox
    reply_b: gr.Textbox
    votes: dict[str, gr.Button]  # per choice; enabled only while a complete round waits for its vote
    status: gr.Markdown
    round_id: gr.State  # the open round's id only; its sides stay in the server's RoundStore
    export: Export | None  # None: export is off on this server (no component, no event, no endpoint)

    @property
    def outputs(self) -> list[gr.components.Component]:
        """What a blind step fills: both replies, the round id, the status line and the vote buttons."""
        return [self.reply_a, self.reply_b, self.round_id, self.status, *self.votes.values()]


def _export_layout(studio: Studio) -> Export | None:
    if not studio.owner.enabled("export"):
        return None
    with gr.Accordion("Export votes to the Hub (owner only)", open=False):
        gr.Markdown("Pushes the votes to this server's configured dataset repo with the server's own token.")
        return Export(gr.Textbox(label="Owner secret", type="password", visible=studio.owner.secret is not None),
                      gr.Button("Push votes"), gr.Markdown())


def layout(studio: Studio, prompts: list[str]) -> Blind:
    with gr.Tab("Blind A/B", id="blind"):
        gr.Markdown("Two replies, one from each model, in random order. Pick the better one: each vote "
                    "is saved (A/B votes as preference pairs: prompt, chosen, rejected) and counted on the "
                    "Scoreboard. Which model wrote which is revealed after your vote.")
        prompt = gr.Textbox(label="Prompt", lines=2, max_length=studio.max_prompt_chars, elem_id="blind-prompt")
        example_prompts(prompts, prompt)
        with gr.Row():
            button = gr.Button("Generate two replies", variant="primary", elem_id="blind-btn")
            regenerate = gr.Button("🔄 Regenerate (new seed)", elem_id="regenerate-btn")
        with gr.Row():
            reply_a = gr.Textbox(label="Reply A", lines=6, interactive=False, elem_id="reply-a", elem_classes="reply")
            reply_b = gr.Textbox(label="Reply B", lines=6, interactive=False, elem_id="reply-b", elem_classes="reply")
        with gr.Row():
            votes = {choice: gr.Button(text, elem_id=f"vote-{choice.lower().replace('_', '-')}", interactive=False)
                     for choice, text in CHOICE_LABELS.items()}
        status = gr.Markdown(studio.votes_status(), elem_id="blind-status")
        return Blind(prompt, button, regenerate, reply_a, reply_b, votes, status, gr.State(None), _export_layout(studio))


def _vote_as(ui_vote, choice: str):
    """The click handler of one vote button (a def, not a lambda: Gradio finds gr.Request by its type hint)."""
    def ui_vote_choice(round_id, request: gr.Request = None):
        return ui_vote(round_id, choice, request)

    return ui_vote_choice


def wire(tab: Blind, controls: Controls, board: Scoreboard, studio: Studio, events: Events) -> None:
    def with_vote_buttons(steps: Iterable[BlindStep]):
        for text_a, text_b, round_id, status in steps:
            yield text_a, text_b, round_id, status, *[gr.update(interactive=round_id is not None)] * len(tab.votes)

    def ui_blind(prompt_text, family_value, max_new_value, temp_value, top_p_value, seed_value,
                 request: gr.Request = None):
        studio.admit("generation", request)
        yield from with_vote_buttons(studio.blind_stream(prompt_text, family_value, max_new_value, temp_value,
                                                         top_p_value, seed_value))

    def ui_regenerate(round_id, prompt_text, family_value, max_new_value, temp_value, top_p_value,
                      request: gr.Request = None):
        studio.admit("generation", request)
        yield from with_vote_buttons(studio.regenerate(round_id, prompt_text, family_value, max_new_value,
                                                       temp_value, top_p_value))

    def ui_vote(round_id, choice, request: gr.Request = None):
        try:
            visitor = studio.admit("vote", request)
        except gr.Error as exc:  # over the limit: said in the status line, the round stays open
            return exc.message, round_id, *[gr.update()] * len(tab.votes)
        return *studio.vote_message(round_id, choice, visitor), *[gr.update(interactive=False)] * len(tab.votes)

    gr.on([tab.button.click, tab.prompt.submit], ui_blind, [tab.prompt, controls.family, *controls.settings],
          tab.outputs, api_name="ui_blind", api_visibility="private", **events.model)
    tab.regenerate.click(ui_regenerate, [tab.round_id, tab.prompt, controls.family, *controls.settings[:3]],
                         tab.outputs, api_name="ui_regenerate", api_visibility="private", **events.model)
    for choice, button in tab.votes.items():
        button.click(_vote_as(ui_vote, choice), [tab.round_id],
                     [tab.status, tab.round_id, *tab.votes.values()], api_name=f"ui_vote_{choice}",
                     api_visibility="private", **events.vote).then(
            studio.scoreboard_view, None, board.outputs, api_name=f"ui_scoreboard_{choice}",
            api_visibility="private", **events.light)
    export = tab.export
    if export is not None:
        export.button.click(studio.export, [export.secret], [export.message], api_name="ui_export",
                            api_visibility="private", concurrency_id="export", concurrency_limit=1)
