"""Logging for `train_dpo.py` and `app.py`: our INFO lines, progress bars, and no per-request HTTP chatter.

huggingface_hub, transformers and gradio log one INFO line per HTTP request through their HTTP clients (httpx,
httpx2, httpcore, urllib3), and libraries warn about their own deprecations (transformers' `is_gradient_checkpointing`
FutureWarning, which TRL itself triggers): none of it is actionable for our users. At the default level those go to
WARNING; `--log-level debug` (or `LOG_LEVEL=debug`) shows everything. Progress bars (tqdm) are not logging and stay.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import warnings

from dpo_studio.bnb_messages import install_filter

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "huggingface_hub")
LIBRARY_WARNING_MODULES = r"(transformers|trl|peft|accelerate|torch|huggingface_hub|gradio|datasets)(\.|$)"
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
          "critical": logging.CRITICAL}


def resolve_level(level: str | None = None) -> int:
    """`--log-level` value, else $LOG_LEVEL, else info; TrainingArguments' "passive" means the default."""
    name = (level or "").strip().lower()
    if name in ("", "passive"):
        name = os.environ.get("LOG_LEVEL", "info").strip().lower() or "info"
    if name not in LEVELS:
        raise ValueError(f"unknown log level {name!r}: expected one of {', '.join(LEVELS)}")
    return LEVELS[name]


def setup_logging(level: str | None = None) -> int:
    """Configure the root logger and silence request lines / deprecation noise unless the level is debug."""
    resolved = resolve_level(level)
    install_filter()  # bitsandbytes' kernel notice, before anything imports peft: see bnb_messages.py
    logging.basicConfig(level=resolved, format=LOG_FORMAT, datefmt="%H:%M:%S")  # no-op if already configured
    quiet = resolved > logging.DEBUG
    if not quiet and importlib.util.find_spec("trackio") is not None:
        # trackio sets httpx/httpx2 to WARNING when imported (TRL's trainers import it); imported first, our debug wins
        import trackio  # noqa: F401
    for name in HTTP_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, resolved) if quiet else logging.DEBUG)
    if quiet:
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=LIBRARY_WARNING_MODULES)
        # transformers emits some deprecations with stacklevel pointing at the caller (TRL, our code): by message
        warnings.filterwarnings("ignore", message=r".*(gradient_checkpointing|activation_checkpointing).*",
                                category=FutureWarning)
        for name, drop in LIBRARY_NOTICE_FILTERS.items():
            _add_filter_once(logging.getLogger(name), drop)
    return resolved


class _DropStartingWith(logging.Filter):
    """Drops the records whose message starts with one of `prefixes` (library notices that are noise for us)."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


# Library notices that are wrong about our calls or not actionable, per logger, by how they start:
LIBRARY_NOTICE_FILTERS = {
    # 8-bit QLoRA: bitsandbytes logs this at every matmul; casting inputs to fp16 is how LLM.int8 works
    "bitsandbytes.autograd._functions": _DropStartingWith("MatMul8bitLt: inputs will be cast"),
    "transformers.modeling_utils": _DropStartingWith(
        # transformers names a model's loss from its class name; `GPT2LMHeadModel` has no "ForCausalLM" in it, so
        # its first loss with labels (the demo's warm start) says "unrecognized", then uses ForCausalLMLoss: right
        "`loss_type=None` was set in the config but it is unrecognized",
        # `generate` drops an all-ones mask (one unpadded prompt), then warns itself once a finished row feeds the
        # pad token (= EOS in GPT-2's tokenizers); every call of ours passes its mask (padded batches included)
        "We strongly recommend passing in an `attention_mask`",
    ),
}


def _add_filter_once(logger: logging.Logger, function) -> None:
    if function not in logger.filters:
        logger.addFilter(function)


def argv_log_level(argv: list[str]) -> str | None:
    """`--log-level X` / `--log_level=X` from a command line, before the full parser runs (the imports it needs log)."""
    for i, arg in enumerate(argv):
        flag, _, value = arg.partition("=")
        if flag.replace("_", "-") == "--log-level":
            return value or (argv[i + 1] if i + 1 < len(argv) else None)
    return None
