"""The Scoreboard tab: blind-vote tallies per family from the votes file, with the Wilson interval."""

from dataclasses import dataclass

import gradio as gr

from dpo_studio.ui.events import Events
from dpo_studio.ui.studio import Studio
from dpo_studio.ui.tally import SCOREBOARD_HEADERS


@dataclass
class Scoreboard:
    table: gr.Dataframe
    plot: gr.BarPlot
    refresh: gr.Button

    @property
    def outputs(self) -> list[gr.components.Component]:
        """What `Studio.scoreboard_view` fills."""
        return [self.table, self.plot]


def layout(studio: Studio) -> Scoreboard:
    with gr.Tab("Scoreboard", id="scoreboard"):
        gr.Markdown("Blind A/B votes per family, from the votes file. DPO win rate = DPO wins / (DPO wins + "
                    "base wins); ties and both-bad votes are counted but not in the rate. The interval is "
                    "the 95 % Wilson score interval. The length-controlled win rate is P(DPO beats base at equal reply "
                    "length) from a Bradley–Terry fit with the log length ratio as a covariate (AlpacaEval's "
                    "length-controlled win rate), with a 95 % bootstrap interval; mean lengths are in characters.")
        rows, bars = studio.scoreboard_view()
        table = gr.Dataframe(value=rows, headers=SCOREBOARD_HEADERS, interactive=False, elem_id="scoreboard-table")
        plot = gr.BarPlot(bars, x="family", y="votes", color="outcome", title="Votes by outcome",
                          elem_id="scoreboard-plot")
        return Scoreboard(table, plot, gr.Button("Refresh"))


def wire(tab: Scoreboard, studio: Studio, events: Events) -> None:
    tab.refresh.click(studio.scoreboard_view, None, tab.outputs, api_name="ui_scoreboard", api_visibility="private",
                      **events.light)
