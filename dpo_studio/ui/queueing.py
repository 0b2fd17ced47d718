"""How many requests may wait in Gradio's queue: generous by default, set by --max-queue-size or the environment."""

import os

from dpo_studio.inference.model_sources import AppConfigError

DEFAULT_MAX_QUEUE = 256  # requests waiting beyond this are refused ("Queue is full"); --max-queue-size / env
MAX_QUEUE_ENV = "DPO_STUDIO_MAX_QUEUE"


def max_queue_from_env(environ: dict[str, str] | None = None) -> int:
    """The queue cap: $DPO_STUDIO_MAX_QUEUE, else DEFAULT_MAX_QUEUE."""
    value = (os.environ if environ is None else environ).get(MAX_QUEUE_ENV, "").strip()
    if not value:
        return DEFAULT_MAX_QUEUE
    try:
        size = int(value)
    except ValueError:
        raise AppConfigError(f"{MAX_QUEUE_ENV}={value!r} is not a whole number") from None
    if size < 1:
        raise AppConfigError(f"{MAX_QUEUE_ENV}={value!r}: the queue must hold at least 1 request")
    return size
