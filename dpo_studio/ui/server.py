"""Serving the app: `launch` with the app's theme and CSS, and the command line of `python app.py`."""

import argparse
import logging
import os
import signal
import sys
from collections.abc import Sequence

import gradio as gr

from dpo_studio.arena.hub_store import (
    DEFAULT_EVERY_MINUTES,
    DEFAULT_VOTES_FOLDER,
    VOTES_EVERY_ENV,
    VOTES_REPO_ENV,
    VotesRepoError,
)
from dpo_studio.arena.visitor_limits import (
    DEFAULT_GENERATIONS_PER_MINUTE,
    DEFAULT_VOTES_PER_DAY,
    GENERATIONS_ENV,
    VOTES_ENV,
    RateLimits,
)
from dpo_studio.arena.votes import DEFAULT_VOTES_FILE, VoteStore
from dpo_studio.inference.model_sources import AppConfigError
from dpo_studio.logs import LEVELS, setup_logging
from dpo_studio.ui.app import build_app, build_studio
from dpo_studio.ui.input_checks import MAX_NEW_TOKENS_CAP
from dpo_studio.ui.limits import (
    DEFAULT_MAX_REQUEST_BYTES,
    DEFAULT_MAX_SESSIONS,
    DEFAULT_SESSION_TTL_S,
    MAX_REQUEST_ENV,
    MAX_SESSIONS_ENV,
    SESSION_TTL_ENV,
    ServerLimits,
)
from dpo_studio.ui.owner import OWNER_ACTIONS, OWNER_ACTIONS_ENV, OWNER_SECRET_ENV
from dpo_studio.ui.queueing import DEFAULT_MAX_QUEUE, MAX_QUEUE_ENV
from dpo_studio.ui.round_training import DEFAULT_OUTPUT_DIR

logger = logging.getLogger(__name__)
SHUTDOWN_TIMEOUT_S = 20.0  # the final commit's wait; a Space sends SIGKILL about 30 s after SIGTERM

# Gradio 6 takes theme/css at launch. Soft uses fonts served by Gradio itself (no Google Fonts on a closed network).
THEME = gr.themes.Soft()
CSS = ".reply textarea {font-size: 0.95rem}"


def launch(demo: gr.Blocks, *, server_name: str | None = None, server_port: int | None = None,
           prevent_thread_lock: bool = False, quiet: bool = False, limits: ServerLimits | None = None) -> None:
    """`demo.launch` with the app's theme and CSS (Gradio 6 takes them at launch) and the server's bounds on request
    bodies, uploads and sessions (`limits`, default: `ServerLimits.from_env()`)."""
    limits = limits or ServerLimits.from_env()
    demo.launch(server_name=server_name, server_port=server_port, prevent_thread_lock=prevent_thread_lock,
                quiet=quiet, theme=THEME, css=CSS, **limits.launch_kwargs())


def stop_on_signals(votes: VoteStore, *, timeout: float = SHUTDOWN_TIMEOUT_S,
                    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT)) -> None:
    """On SIGTERM (a Space restart, rebuild or sleep) or SIGINT: stop taking votes, commit what the Hub lacks
    (`votes.shutdown`, bounded by `timeout`), then exit (status 0 when every vote is kept). A second signal during
    the commit exits at once. Python's default SIGTERM ends the process without atexit hooks, so CommitScheduler's
    own final commit would never run: hence this handler. Call from the main thread."""
    stopping = []

    def handler(signum: int, frame: object) -> None:
        if stopping:  # a second signal: the default action, now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        stopping.append(signum)
        logger.info("%s: no more votes; committing what the Hub lacks, then exiting", signal.Signals(signum).name)
        kept = votes.shutdown(timeout)
        raise SystemExit(0 if kept else 1)  # out of Gradio's block_thread; its server threads are daemons

    for each in signals:
        signal.signal(each, handler)


def _port_from_env() -> int:
    value = os.environ.get("GRADIO_SERVER_PORT", "7860")
    try:
        port = int(value)
    except ValueError:
        raise AppConfigError(f"GRADIO_SERVER_PORT={value!r} is not a port number") from None
    return port


def _every_from_env() -> float:
    value = os.environ.get(VOTES_EVERY_ENV)
    try:
        return float(value) if value else DEFAULT_EVERY_MINUTES
    except ValueError:
        raise AppConfigError(f"{VOTES_EVERY_ENV}={value!r} is not a number of minutes") from None


def _limit_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("limits for a public server (flags override the Space variables)")
    group.add_argument("--max-request-bytes", type=int, default=None,
                       help=f"larger request bodies (and uploads) are refused with 413 before they are read "
                            f"(default: ${MAX_REQUEST_ENV} or {DEFAULT_MAX_REQUEST_BYTES})")
    group.add_argument("--rate-limit-generations-per-minute", type=int, default=None, metavar="N",
                       help=f"generations (compare, blind rounds, scoring) per visitor per minute, 0 = off "
                            f"(default: ${GENERATIONS_ENV} or {DEFAULT_GENERATIONS_PER_MINUTE})")
    group.add_argument("--rate-limit-votes-per-day", type=int, default=None, metavar="N",
                       help=f"votes per visitor per day, 0 = off (default: ${VOTES_ENV} or {DEFAULT_VOTES_PER_DAY}); "
                            "a visitor is its session and its address (the Space proxy's X-Forwarded-For)")
    group.add_argument("--max-sessions", type=int, default=None,
                       help=f"Gradio sessions kept in memory; the oldest go first (default: ${MAX_SESSIONS_ENV} or "
                            f"{DEFAULT_MAX_SESSIONS})")
    group.add_argument("--session-ttl-minutes", type=float, default=None,
                       help=f"sessions idle this long are dropped (default: ${SESSION_TTL_ENV} or "
                            f"{DEFAULT_SESSION_TTL_S / 60:g})")


def _limits(args: argparse.Namespace) -> ServerLimits:
    """The server's bounds: each flag given, else its Space variable, else the default."""
    env = ServerLimits.from_env()
    ttl = args.session_ttl_minutes
    return ServerLimits(
        max_request_bytes=env.max_request_bytes if args.max_request_bytes is None else args.max_request_bytes,
        max_sessions=env.max_sessions if args.max_sessions is None else args.max_sessions,
        session_ttl_s=env.session_ttl_s if ttl is None else 60.0 * ttl)


def _rate_limits(args: argparse.Namespace) -> RateLimits:
    """Per-visitor limits: each flag given, else its Space variable, else the default."""
    env = RateLimits.from_env()
    per_minute, per_day = args.rate_limit_generations_per_minute, args.rate_limit_votes_per_day
    return RateLimits(env.generations_per_minute if per_minute is None else per_minute,
                      env.votes_per_day if per_day is None else per_day)


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
    parser.add_argument("--votes-repo", default=os.environ.get(VOTES_REPO_ENV) or None,
                        help=f"Hub dataset repo the votes are kept in (default: ${VOTES_REPO_ENV}): each replica's "
                             "votes file is committed there, and read back at start")
    parser.add_argument("--votes-folder", default=str(DEFAULT_VOTES_FOLDER),
                        help=f"local folder committed to --votes-repo (default: {DEFAULT_VOTES_FOLDER})")
    parser.add_argument("--votes-every", type=float, default=_every_from_env(),
                        help=f"minutes between commits to --votes-repo (default: ${VOTES_EVERY_ENV} or "
                             f"{DEFAULT_EVERY_MINUTES:g}; also committed at exit)")
    parser.add_argument("--owner-actions", default=None,
                        help=f"comma-separated owner-only actions to enable ({', '.join(OWNER_ACTIONS)}; default: "
                             f"${OWNER_ACTIONS_ENV} or none); with ${OWNER_SECRET_ENV} set they need that secret")
    parser.add_argument("--export-repo", default=None,
                        help="dataset repo an owner's export writes to when there is no --votes-repo")
    parser.add_argument("--train-output-dir", default=str(DEFAULT_OUTPUT_DIR),
                        help=f"where the Train tab's rounds are written (owner action train; default: "
                             f"{DEFAULT_OUTPUT_DIR})")
    parser.add_argument("--train-hub-namespace", default=None,
                        help="Hub user or organisation a trained round is pushed to (owner action push): "
                             "<ns>/<family>-dpo-<round>")
    parser.add_argument("--max-new-tokens-cap", type=int, default=MAX_NEW_TOKENS_CAP,
                        help=f"server-side cap on max new tokens (default: {MAX_NEW_TOKENS_CAP})")
    parser.add_argument("--max-queue-size", type=int, default=None,
                        help=f"requests that may wait in the queue before new ones are refused (default: "
                             f"${MAX_QUEUE_ENV} or {DEFAULT_MAX_QUEUE}); waiting visitors see their position")
    _limit_flags(parser)
    parser.add_argument("--log-level", default=None, choices=sorted(LEVELS),
                        help="log level (default: $LOG_LEVEL or info); debug also shows HTTP requests and "
                             "library deprecation warnings")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """`python app.py [--models-dir DIR] [--config FILE] [--port N] [--votes-file F]`."""
    try:
        parser = _parser()
    except AppConfigError as exc:
        sys.exit(f"app.py: error: {exc}")
    args = parser.parse_args(argv)
    if args.max_queue_size is not None and args.max_queue_size < 1:
        parser.error("--max-queue-size must be at least 1")
    if not args.votes_every > 0:
        parser.error("--votes-every must be a positive number of minutes")
    setup_logging(args.log_level)
    try:
        port = args.port if args.port is not None else _port_from_env()
        studio = build_studio(config=args.config, models_dir=args.models_dir, votes_file=args.votes_file,
                              max_new_tokens_cap=args.max_new_tokens_cap, votes_repo=args.votes_repo,
                              votes_folder=args.votes_folder, votes_every=args.votes_every,
                              owner_actions=args.owner_actions, export_repo=args.export_repo,
                              train_output_dir=args.train_output_dir, train_hub_namespace=args.train_hub_namespace,
                              rate_limits=_rate_limits(args))
        demo = build_app(studio=studio, max_queue_size=args.max_queue_size)
        limits = _limits(args)
    except (AppConfigError, VotesRepoError, ValueError) as exc:
        parser.exit(2, f"app.py: error: {exc}\n")
    stop_on_signals(studio.votes)
    launch(demo, server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), server_port=port, limits=limits)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
