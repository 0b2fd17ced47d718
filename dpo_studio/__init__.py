"""dpo_studio: LoRA DPO for GPT-2 and T5 with TRL, published to the Hub, compared in a Gradio app."""

from importlib.metadata import PackageNotFoundError, version

from .bnb_messages import install_filter

install_filter()  # before anything imports peft (and through it bitsandbytes): see bnb_messages.py

try:
    __version__ = version("dpo-studio")
except PackageNotFoundError:  # a checkout used without `pip install -e .`
    __version__ = "0.0.0+checkout"
