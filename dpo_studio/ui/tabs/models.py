"""The Models tab: where each family's models come from and how they are served."""

from dataclasses import dataclass

import gradio as gr

from dpo_studio.ui.events import Events
from dpo_studio.ui.studio import Studio


@dataclass
class Models:
    summary: gr.Markdown
    refresh: gr.Button


def layout(studio: Studio) -> Models:
    with gr.Tab("Models", id="models"):
        return Models(gr.Markdown(studio.serving_summary()), gr.Button("Refresh"))


def wire(tab: Models, studio: Studio, events: Events) -> None:
    tab.refresh.click(studio.serving_summary, None, [tab.summary], api_name="ui_models", api_visibility="private",
                      **events.light)
