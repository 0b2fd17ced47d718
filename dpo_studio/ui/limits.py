"""Server bounds a public Space needs: request bodies, uploads, sessions (the `ui/` server settings).

* `BodyLimit`, an ASGI middleware on Gradio's FastAPI app: a request whose `Content-Length` is over the limit gets
  413 before one byte of its body is read; a body without a length (chunked) is counted as it streams and refused the
  moment it passes the limit. Hand-written because neither Gradio nor uvicorn limits request bodies (uvicorn reads
  any size; Gradio's `max_file_size` covers uploads only, and only after they are received).
* uploads: the app has no file input, so `max_file_size` is set to the same limit (Gradio refuses larger uploads).
* sessions: Gradio keeps per-session state (a copy of every component's config) for `state_session_capacity`
  sessions, 10,000 by default, and every `/gradio_api/call/...` request opens one. `ServerLimits.max_sessions` caps
  that, and `SessionExpiry` drops sessions idle longer than `session_ttl_s` (Gradio expires only `gr.State` values
  with a `time_to_live`, never the session itself).
* per-event concurrency: `events.Events` (model work one at a time, votes one at a time, light reads four) and the
  queue cap (`queueing`).

Defaults suit a public Space; `app.py` flags and Space variables change them (see `from_env`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from dpo_studio.inference.model_sources import AppConfigError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MAX_REQUEST_BYTES = 256 * 1024  # a 2,000-character prompt and two replies as JSON \u escapes fit many times
DEFAULT_MAX_SESSIONS = 200
DEFAULT_SESSION_TTL_S = 30 * 60.0
MAX_REQUEST_ENV = "DPO_STUDIO_MAX_REQUEST_BYTES"
MAX_SESSIONS_ENV = "DPO_STUDIO_MAX_SESSIONS"
SESSION_TTL_ENV = "DPO_STUDIO_SESSION_TTL_MINUTES"


class BodyLimit:
    """ASGI middleware: HTTP request bodies over `max_bytes` are refused with 413 and one line, never held."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"error": f"Request body over the server's limit of {self.max_bytes} bytes."}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = self.max_bytes + 1
            if declared > self.max_bytes:
                await self._refuse(send)
                return
        received = 0
        started = refused = False

        async def counted() -> Message:
            # Past the limit: answer 413 now and tell the app the client left (FastAPI would turn an exception
            # raised here into its own 400); whatever the app answers after that is dropped.
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes and not started:
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted, watched)


class SessionExpiry:
    """Drops Gradio sessions idle longer than `ttl_s` from the app's state holder, checked every `every_s` seconds
    while the server runs (`lifespan`, handed to FastAPI through `launch`)."""

    def __init__(self, ttl_s: float, every_s: float = 60.0) -> None:
        self.ttl = datetime.timedelta(seconds=ttl_s)
        self.every_s = every_s

    def expire(self, holder: Any, now: datetime.datetime | None = None) -> int:
        """Drop every session of `holder` (Gradio's StateHolder) idle longer than the ttl; returns how many."""
        now = now or datetime.datetime.now()
        stale = [sid for sid, last in list(holder.time_last_used.items()) if now - last > self.ttl]
        with holder.lock:
            for sid in stale:
                holder.session_data.pop(sid, None)
                holder.time_last_used.pop(sid, None)
        return len(stale)

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any):
        async def sweep() -> None:
            while True:
                await asyncio.sleep(self.every_s)
                self.expire(app.state_holder)

        task = asyncio.create_task(sweep())
        try:
            yield
        finally:
            task.cancel()


def _env_number(environ: MutableMapping[str, str], name: str, default: float, minimum: float) -> float:
    value = environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise AppConfigError(f"{name}={value[:40]!r} is not a number") from None
    if not number >= minimum:
        raise AppConfigError(f"{name}={value[:40]!r}: must be at least {minimum:g}")
    return number


@dataclass(frozen=True)
class ServerLimits:
    """Request body, upload and session bounds of one server."""

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_sessions: int = DEFAULT_MAX_SESSIONS
    session_ttl_s: float = DEFAULT_SESSION_TTL_S

    def __post_init__(self) -> None:
        if self.max_request_bytes < 1024 or self.max_sessions < 1 or not self.session_ttl_s > 0:
            raise ValueError("server limits: a request limit of at least 1024 bytes, at least 1 session and a "
                             "positive session lifetime")

    @classmethod
    def from_env(cls, environ: MutableMapping[str, str] | None = None) -> ServerLimits:
        """$DPO_STUDIO_MAX_REQUEST_BYTES, $DPO_STUDIO_MAX_SESSIONS, $DPO_STUDIO_SESSION_TTL_MINUTES, else defaults."""
        env = os.environ if environ is None else environ
        return cls(max_request_bytes=int(_env_number(env, MAX_REQUEST_ENV, DEFAULT_MAX_REQUEST_BYTES, 1024)),
                   max_sessions=int(_env_number(env, MAX_SESSIONS_ENV, DEFAULT_MAX_SESSIONS, 1)),
                   session_ttl_s=60.0 * _env_number(env, SESSION_TTL_ENV, DEFAULT_SESSION_TTL_S / 60.0, 0.1))

    def launch_kwargs(self) -> dict[str, Any]:
        """What `Blocks.launch` takes: the body-limit middleware, the upload cap, the session cap."""
        from fastapi.middleware import Middleware  # Starlette's, re-exported by FastAPI (Gradio's server)

        return {"app_kwargs": {"middleware": [Middleware(BodyLimit, max_bytes=self.max_request_bytes)],
                               "lifespan": SessionExpiry(self.session_ttl_s).lifespan},
                "max_file_size": self.max_request_bytes, "state_session_capacity": self.max_sessions}


def visitor_of(request: Any) -> tuple[str, ...]:
    """The keys a visitor is limited by: its Gradio session and its client address. Behind a Space's proxy the
    address is the last one in `X-Forwarded-For` (the one the proxy appended: a client can prepend anything, but not
    that); without the header, the connection's peer. None (a direct call, a test) gives no keys."""
    if request is None:
        return ()
    keys = []
    session = getattr(request, "session_hash", None)
    if session:
        keys.append(f"session:{str(session)[:64]}")
    headers = getattr(request, "headers", None) or {}
    forwarded = headers.get("x-forwarded-for") if hasattr(headers, "get") else None
    client = getattr(request, "client", None)
    address = forwarded.split(",")[-1].strip() if forwarded else getattr(client, "host", None)
    if address:
        keys.append(f"address:{str(address)[:64]}")
    return tuple(keys)
