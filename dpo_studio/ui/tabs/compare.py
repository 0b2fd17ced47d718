"""The Compare tab: one prompt to both models, the replies streamed side by side, then What DPO changed."""

from dataclasses import dataclass

import gradio as gr

from dpo_studio.ui.events import Events
from dpo_studio.ui.studio import Studio
from dpo_studio.ui.tabs import changed
from dpo_studio.ui.tabs.controls import Controls, example_prompts


@dataclass
class Compare:
    prompt: gr.Textbox
    button: gr.Button
    base_out: gr.Textbox
    dpo_out: gr.Textbox
    changed: changed.Changed
    runs: gr.State  # what the last compare generated, for the per-token view


def layout(studio: Studio, prompts: list[str]) -> Compare:
    with gr.Tab("Compare", id="compare"):
        prompt = gr.Textbox(label="Prompt", lines=2, max_length=studio.max_prompt_chars, elem_id="prompt",
                            placeholder="Ask something, e.g. How was your weekend?")
        example_prompts(prompts, prompt)
        button = gr.Button("Compare", variant="primary", elem_id="compare-btn")
        with gr.Row():
            base_out = gr.Textbox(label="Base model", lines=6, interactive=False, elem_id="base-out",
                                  elem_classes="reply")
            dpo_out = gr.Textbox(label="DPO model", lines=6, interactive=False, elem_id="dpo-out",
                                 elem_classes="reply")
        what_changed = changed.layout(studio)
        return Compare(prompt, button, base_out, dpo_out, what_changed, gr.State([]))


def wire(tab: Compare, controls: Controls, studio: Studio, events: Events) -> None:
    def ui_compare(prompt_text, family_value, max_new_value, temp_value, top_p_value, seed_value,
                   progress=gr.Progress(), request: gr.Request = None):
        studio.admit("generation", request)
        yield from studio.compare_stream(prompt_text, family_value, max_new_value, temp_value, top_p_value,
                                         seed_value, progress=progress)

    compared = gr.on([tab.button.click, tab.prompt.submit], ui_compare, [tab.prompt, controls.family,
                                                                         *controls.settings],
                     [tab.base_out, tab.dpo_out, tab.runs], api_name="ui_compare", api_visibility="private",
                     **events.model)
    changed.wire_after(compared, tab.changed, tab.runs, studio, events)
