"""The Leaderboard tab: Bradley–Terry ratings of base and every DPO round per family, with head-to-head counts."""

from dataclasses import dataclass

import gradio as gr

from dpo_studio.ui.events import Events
from dpo_studio.ui.studio import Studio
from dpo_studio.ui.tally import HEAD_TO_HEAD_HEADERS, LEADERBOARD_HEADERS


@dataclass
class Leaderboard:
    tab: gr.Tab
    ratings: gr.Dataframe
    pairs: gr.Dataframe
    refresh: gr.Button

    @property
    def outputs(self) -> list[gr.components.Component]:
        """What `Studio.leaderboard_view` fills."""
        return [self.ratings, self.pairs]


def layout(studio: Studio) -> Leaderboard:
    with gr.Tab("Leaderboard", id="leaderboard") as tab:
        gr.Markdown("Every model of a family (base, DPO round 1 = `dpo`, later rounds) rated from the blind votes "
                    "with a Bradley–Terry fit, as Chatbot Arena does: ties and both-bad count as half a win each, "
                    "ratings on the Elo scale with base = 1000, 95 % intervals from 1000 bootstrap resamples of "
                    "the votes. Rank = 1 + the number of models whose interval lies wholly above. Beside it, the "
                    "length-controlled rating: the same fit with the log length ratio of the two replies as a "
                    "covariate (as Chatbot Arena's style control), i.e. each model's strength at equal reply "
                    "length. DPO often wins by writing longer: a raw lead that vanishes here was length.")
        ratings, pairs = studio.leaderboard_view()
        table = gr.Dataframe(value=ratings, headers=LEADERBOARD_HEADERS, interactive=False,
                             elem_id="leaderboard-table")
        gr.Markdown("Head to head")
        head = gr.Dataframe(value=pairs, headers=HEAD_TO_HEAD_HEADERS, interactive=False,
                            elem_id="head-to-head-table")
        return Leaderboard(tab, table, head, gr.Button("Refresh", elem_id="leaderboard-refresh"))


def wire(tab: Leaderboard, studio: Studio, events: Events) -> None:
    # Opening the tab refits: the votes cast since the page loaded are in.
    gr.on([tab.refresh.click, tab.tab.select], studio.leaderboard_view, None, tab.outputs, api_name="ui_leaderboard",
          api_visibility="private", **events.light)
