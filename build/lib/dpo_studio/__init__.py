"""dpo_studio: LoRA DPO for GPT-2 and T5 with TRL, published to the Hub, compared in a Gradio app."""

__version__ = "0.1.0"
