"""The header and the controls every tab shares: model family and generation settings."""

from dataclasses import dataclass

import gradio as gr

from dpo_studio.ui.input_checks import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
)
from dpo_studio.ui.studio import Studio


@dataclass
class Controls:
    family: gr.Radio
    max_new: gr.Slider
    temperature: gr.Slider
    top_p: gr.Slider
    seed: gr.Number

    @property
    def settings(self) -> list[gr.components.Component]:
        """The four generation settings, in the order the Studio's methods take them."""
        return [self.max_new, self.temperature, self.top_p, self.seed]


def layout(studio: Studio, first_family: str) -> Controls:
    gr.Markdown("# DPO Studio: base vs DPO\nThe same prompt, seed and sampling settings go to the base model "
                "and its DPO-tuned version. Temperature 0 means greedy decoding.")
    with gr.Row():
        family = gr.Radio(studio.family_choices, value=first_family, label="Model family", scale=1)
        with gr.Accordion("Generation settings", open=False):
            with gr.Row():
                cap = studio.max_new_tokens_cap
                max_new = gr.Slider(1, cap, value=min(DEFAULT_MAX_NEW_TOKENS, cap), step=1, label="Max new tokens")
                temperature = gr.Slider(0.0, 2.0, value=DEFAULT_TEMPERATURE, step=0.05, label="Temperature")
                top_p = gr.Slider(0.05, 1.0, value=DEFAULT_TOP_P, step=0.05, label="Top-p")
                seed = gr.Number(value=DEFAULT_SEED, precision=0, label="Seed")
    return Controls(family, max_new, temperature, top_p, seed)


def example_prompts(prompts: list[str], textbox: gr.Textbox) -> None:
    """Clickable example prompts under a prompt box (none when there are none)."""
    if prompts:
        gr.Examples([[p] for p in prompts], inputs=[textbox], label="Example prompts")
