"""dpo_studio: LoRA DPO for GPT-2 and T5 with TRL, published to the Hub, compared in a Gradio app."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("dpo-studio")
except PackageNotFoundError:  # a checkout used without `pip install -e .`
    __version__ = "0.0.0+checkout"
