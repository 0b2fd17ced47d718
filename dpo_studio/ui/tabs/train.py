"""The Train tab (owner only): the next DPO round of a family trained on its votes, followed live.

Shown only when the server enabled the owner action "train"; every click is checked again by `RoundTraining`
(owner secret included), so a request that bypasses the page is refused the same way. While a run is going, a
timer polls its status every second: progress bar, ETA, live loss and reward plots.
"""

from dataclasses import dataclass
from typing import Any

import gradio as gr
import pandas as pd

from dpo_studio.ui.events import Events
from dpo_studio.ui.render import md_text
from dpo_studio.ui.round_training import RUNNING, RoundTraining
from dpo_studio.ui.studio import Studio

POLL_S = 1.0


@dataclass
class Train:
    secret: gr.Textbox
    family: gr.Dropdown
    push: gr.Checkbox
    start: gr.Button
    cancel: gr.Button
    message: gr.Markdown
    bar: gr.HTML
    eta: gr.Markdown
    loss: gr.LinePlot
    rewards: gr.LinePlot
    timer: gr.Timer

    @property
    def outputs(self) -> list[gr.components.Component]:
        """What `status_view` fills."""
        return [self.bar, self.eta, self.loss, self.rewards, self.timer]


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def status_view(training: RoundTraining) -> tuple[Any, ...]:
    """Progress bar, the status / ETA line, the two plots' data, and the timer (on only while a run goes)."""
    status = training.status()
    fraction = status["progress"] or 0.0
    bar = (f'<progress id="train-progress" value="{fraction:.4f}" max="1" style="width:100%"></progress>'
           f"<span> {fraction:.0%}</span>")
    line = md_text(status["message"])
    if status.get("max_steps"):
        line += f" — step {status['step']} / {status['max_steps']}"
    if status["state"] == RUNNING:
        line += f" — elapsed {_duration(status.get('elapsed_s'))}, ETA {_duration(status['eta_s'])}"
    loss = pd.DataFrame(status["loss"], columns=["step", "loss"])
    rewards = pd.DataFrame(status["rewards"], columns=["step", "series", "value"])
    return bar, line, loss, rewards, gr.Timer(active=status["state"] == RUNNING)


def layout(studio: Studio, training: RoundTraining) -> Train | None:
    """The tab, or None (no component, no event) when training is off on this server."""
    if not studio.owner.enabled("train"):
        return None
    families = [(source.label, name) for name, source in studio.registry.families.items()]
    with gr.Tab("Train", id="train"):
        gr.Markdown(f"Train the next DPO round of a family on its blind votes (A/B picks; at least "
                    f"{training.min_votes}), starting from its latest round. It runs in a separate process, so "
                    "the app keeps answering; when it finishes, the new round joins the blind rounds and the "
                    "Leaderboard.")
        secret = gr.Textbox(label="Owner secret", type="password", visible=studio.owner.secret is not None,
                            elem_id="train-secret")
        with gr.Row():
            family = gr.Dropdown(families, value=families[0][1], label="Family", elem_id="train-family")
            push = gr.Checkbox(label="Push the new round to the Hub", value=False, elem_id="train-push",
                               visible=studio.owner.enabled("push") and training.hub_namespace is not None)
        with gr.Row():
            start = gr.Button("Start training", variant="primary", elem_id="train-start")
            cancel = gr.Button("Cancel", variant="stop", elem_id="train-cancel")
        message = gr.Markdown(elem_id="train-message")
        bar, eta, loss, rewards, _ = status_view(training)
        bar, eta = gr.HTML(bar, elem_id="train-bar"), gr.Markdown(eta, elem_id="train-eta")
        with gr.Row():
            loss_plot = gr.LinePlot(loss, x="step", y="loss", title="Training loss", elem_id="train-loss")
            rewards_plot = gr.LinePlot(rewards, x="step", y="value", color="series", title="Rewards",
                                       elem_id="train-rewards")
        return Train(secret, family, push, start, cancel, message, bar, eta, loss_plot, rewards_plot,
                     gr.Timer(POLL_S, active=training.running))


def wire(tab: Train | None, training: RoundTraining, events: Events) -> None:
    if tab is None:
        return

    def view():
        return status_view(training)

    def start(secret, family, push):
        return md_text(training.start(family, secret, bool(push))), *view()

    def cancel(secret):
        return md_text(training.cancel(secret)), *view()

    common = {"api_visibility": "private", **events.light}
    tab.start.click(start, [tab.secret, tab.family, tab.push], [tab.message, *tab.outputs], api_name="ui_train",
                    **common)
    tab.cancel.click(cancel, [tab.secret], [tab.message, *tab.outputs], api_name="ui_train_cancel", **common)
    tab.timer.tick(view, None, tab.outputs, api_name="ui_train_status", **common)
