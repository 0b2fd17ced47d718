"""The Score a pair tab: DPO's implicit rewards of two replies the user types, per selected family."""

from dataclasses import dataclass

import gradio as gr

from dpo_studio.ui.events import Events
from dpo_studio.ui.studio import Studio
from dpo_studio.ui.tabs.controls import Controls


@dataclass
class Score:
    prompt: gr.Textbox
    reply_a: gr.Textbox
    reply_b: gr.Textbox
    button: gr.Button
    table: gr.Dataframe
    verdict: gr.Markdown


def layout(studio: Studio) -> Score:
    with gr.Tab("Score a pair", id="score"):
        gr.Markdown("DPO's implicit reward of a reply is β · (log π_DPO(reply | prompt) − "
                    "log π_base(reply | prompt)), with the β it was trained with. The higher reward is the "
                    "reply DPO prefers.")
        limit = studio.max_prompt_chars
        prompt = gr.Textbox(label="Prompt", lines=2, max_length=limit)
        with gr.Row():
            reply_a = gr.Textbox(label="Reply A", lines=4, max_length=limit)
            reply_b = gr.Textbox(label="Reply B", lines=4, max_length=limit)
        button = gr.Button("Score", variant="primary")
        table = gr.Dataframe(headers=["Model", "Reply", "log p base", "log p DPO", "implicit reward"],
                             interactive=False)
        return Score(prompt, reply_a, reply_b, button, table, gr.Markdown())


def wire(tab: Score, controls: Controls, studio: Studio, events: Events) -> None:
    def ui_score(prompt_text, reply_a, reply_b, family_value, request: gr.Request = None):
        studio.admit("generation", request)
        return studio.score(prompt_text, reply_a, reply_b, family_value)

    tab.button.click(ui_score, [tab.prompt, tab.reply_a, tab.reply_b, controls.family], [tab.table, tab.verdict],
                     api_name="ui_score", api_visibility="private", **events.model)
