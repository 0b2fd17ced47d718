"""Graceful interruption: SIGINT/SIGTERM during training save a checkpoint and stop, so `--resume` can continue.

Transformers' Trainer already knows how to save a resumable checkpoint (model, optimizer, scheduler, RNG states) and
how to stop; this only turns a signal into `should_save` + `should_training_stop` at the next step boundary. A
second SIGINT falls back to Python's default (KeyboardInterrupt) for users who really want out now.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after saving a checkpoint."""


class StopOnSignal(TrainerCallback):
    """A Trainer callback that saves and stops at the next step after SIGINT/SIGTERM."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self.stopped_at_step: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame) -> None:  # noqa: ANN001 - signal handler signature
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 - TrainerCallback signature
        logger.info("training started: Ctrl-C or SIGTERM saves a checkpoint and stops (then rerun with --resume)")

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001 - TrainerCallback signature
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at_step = state.global_step
        return control

    @contextlib.contextmanager
    def installed(self) -> Iterator["StopOnSignal"]:
        """Install the handlers for the duration of training (main thread only; elsewhere a no-op)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
