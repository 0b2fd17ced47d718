""""What DPO changed", under the Compare tab: per-token log π_DPO − log π_base of the DPO reply, per family."""

from dataclasses import dataclass
from typing import Any

import gradio as gr

from dpo_studio.ui.events import Events
from dpo_studio.ui.studio import Studio


@dataclass
class Changed:
    views: dict[str, gr.HighlightedText]  # one per family, shown once it has tokens
    summary: gr.Markdown


def layout(studio: Studio) -> Changed:
    gr.Markdown("**What DPO changed**: log π_DPO − log π_base for each token of the DPO reply "
                "(red: DPO made the token more likely, purple: less likely).")
    views = {name: gr.HighlightedText(label=source.label, visible=False, elem_id=f"changes-{name}")
             for name, source in studio.registry.families.items()}
    return Changed(views, gr.Markdown())


def wire_after(compared: Any, tab: Changed, runs: gr.State, studio: Studio, events: Events) -> None:
    """Once a compare has succeeded: the per-token views of its runs."""

    def ui_changes(runs_value):
        highlights, summary = studio.changes(runs_value)
        views = [gr.update(value=highlights.get(name), visible=name in highlights) for name in tab.views]
        return *views, summary

    compared.success(ui_changes, [runs], [*tab.views.values(), tab.summary], api_name="ui_changes",
                     api_visibility="private", **events.model)
