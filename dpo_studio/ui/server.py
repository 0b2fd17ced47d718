"""Serving the app: `launch` with the app's theme and CSS, and the command line of `python app.py`."""

import argparse
import os
import sys
from collections.abc import Sequence

import gradio as gr

from dpo_studio.app_config import AppConfigError
from dpo_studio.logs import LEVELS, setup_logging
from dpo_studio.ui.app import build_app
from dpo_studio.ui.queueing import DEFAULT_MAX_QUEUE, MAX_QUEUE_ENV
from dpo_studio.ui.requests import MAX_NEW_TOKENS_CAP
from dpo_studio.votes import DEFAULT_VOTES_FILE

# Gradio 6 takes theme/css at launch. Soft uses fonts served by Gradio itself (no Google Fonts on a closed network).
THEME = gr.themes.Soft()
CSS = ".reply textarea {font-size: 0.95rem}"


def launch(demo: gr.Blocks, *, server_name: str | None = None, server_port: int | None = None,
           prevent_thread_lock: bool = False, quiet: bool = False) -> None:
    """`demo.launch` with the app's theme and CSS (Gradio 6 takes them at launch)."""
    demo.launch(server_name=server_name, server_port=server_port, prevent_thread_lock=prevent_thread_lock,
                quiet=quiet, theme=THEME, css=CSS)


def _port_from_env() -> int:
    value = os.environ.get("GRADIO_SERVER_PORT", "7860")
    try:
        port = int(value)
    except ValueError:
        raise AppConfigError(f"GRADIO_SERVER_PORT={value!r} is not a port number") from None
    return port


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="app.py", description="Serve the DPO Studio comparison app (base vs DPO, blind A/B votes).")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--models-dir", nargs="+", metavar="DIR",
                        help="use what train_dpo.py wrote into DIR (DIR/<family>/adapter|merged); further folders "
                             "are DPO rounds 2, 3, ... ranked in the arena")
    source.add_argument("--config", help="YAML file with Hub repo ids per family (default: $DPO_STUDIO_CONFIG, "
                                         "./app_config.yaml, else examples/app_config.yaml)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: $GRADIO_SERVER_PORT or 7860); host: $GRADIO_SERVER_NAME or 127.0.0.1")
    parser.add_argument("--votes-file", default=str(DEFAULT_VOTES_FILE),
                        help=f"JSONL file the blind A/B votes are appended to (default: {DEFAULT_VOTES_FILE})")
    parser.add_argument("--max-new-tokens-cap", type=int, default=MAX_NEW_TOKENS_CAP,
                        help=f"server-side cap on max new tokens (default: {MAX_NEW_TOKENS_CAP})")
    parser.add_argument("--max-queue-size", type=int, default=None,
                        help=f"requests that may wait in the queue before new ones are refused (default: "
                             f"${MAX_QUEUE_ENV} or {DEFAULT_MAX_QUEUE}); waiting visitors see their position")
    parser.add_argument("--log-level", default=None, choices=sorted(LEVELS),
                        help="log level (default: $LOG_LEVEL or info); debug also shows HTTP requests and "
                             "library deprecation warnings")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """`python app.py [--models-dir DIR] [--config FILE] [--port N] [--votes-file F]`."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.max_queue_size is not None and args.max_queue_size < 1:
        parser.error("--max-queue-size must be at least 1")
    setup_logging(args.log_level)
    try:
        port = args.port if args.port is not None else _port_from_env()
        demo = build_app(config=args.config, models_dir=args.models_dir, votes_file=args.votes_file,
                         max_new_tokens_cap=args.max_new_tokens_cap, max_queue_size=args.max_queue_size)
    except AppConfigError as exc:
        parser.exit(2, f"app.py: error: {exc}\n")
    launch(demo, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=port)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
