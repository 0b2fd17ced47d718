"""A public server's bounds, tested on the served app over raw HTTP: oversized bodies refused before they are read
(declared or chunked), uploads capped, sessions capped and expired, invalid Unicode refused in one line."""

from __future__ import annotations

import datetime
import json
import os
import random
import socket
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest
from tiny_models import free_port

from dpo_studio import ui
from dpo_studio.inference.model_sources import AppConfigError, ModelRegistry, discover_models_dir
from dpo_studio.ui.limits import ServerLimits, SessionExpiry

pytestmark = pytest.mark.usefixtures("single_thread")
LIMITS = ServerLimits(max_request_bytes=64 * 1024, max_sessions=20, session_ttl_s=600.0)


@pytest.fixture(scope="module")
def served(models_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    studio = ui.build_studio(ModelRegistry(discover_models_dir(models_dir)),
                             votes_file=tmp_path_factory.mktemp("votes") / "votes.jsonl", max_new_tokens_cap=4,
                             rng=random.Random(0))
    demo = ui.build_app(studio=studio, example_prompts=[])
    port = free_port()
    ui.launch(demo, server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, limits=LIMITS)
    try:
        yield demo, port
    finally:
        demo.close()


def raw_request(port: int, head: str, body: bytes = b"", timeout: float = 20.0) -> tuple[int, bytes]:
    """Send `head` (request line + headers, no blank line) and `body`; (status, response body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head.encode() + b"\r\nConnection: close\r\n\r\n" + body)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    status_line, _, rest = data.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


def call(port: int, api_name: str, data: list) -> tuple[str, str]:
    """A /gradio_api/call round trip: (last SSE event name, its data)."""
    body = json.dumps({"data": data}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/gradio_api/call/{api_name}", data=body,
                                     headers={"Content-Type": "application/json"})
    event_id = json.load(urllib.request.urlopen(request, timeout=30))["event_id"]
    stream = urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/call/{api_name}/{event_id}", timeout=60)
    lines = stream.read().decode().splitlines()
    events = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    payloads = [line.removeprefix("data: ") for line in lines if line.startswith("data: ")]
    return events[-1], payloads[-1]


def test_a_declared_oversized_body_is_refused_before_it_is_sent(served):
    _, port = served
    # 50 MB announced, not one byte sent: an answer at all proves nothing was waited for (or held).
    status, body = raw_request(port, "POST /gradio_api/call/compare HTTP/1.1\r\nHost: x\r\n"
                                     "Content-Type: application/json\r\nContent-Length: 52428800")
    assert status == 413
    assert json.loads(body) == {"error": "Request body over the server's limit of 65536 bytes."}


def test_a_chunked_oversized_body_is_cut_off_as_it_streams(served):
    _, port = served
    chunk = b"x" * 16384
    body = b"".join(b"%x\r\n" % len(chunk) + chunk + b"\r\n" for _ in range(8)) + b"0\r\n\r\n"  # 128 KB
    status, _ = raw_request(port, "POST /gradio_api/call/compare HTTP/1.1\r\nHost: x\r\n"
                                  "Content-Type: application/json\r\nTransfer-Encoding: chunked", body)
    assert status == 413


def test_uploads_are_capped(served):
    _, port = served
    boundary = "b0undary"
    big = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.bin\"\r\n"
           f"Content-Type: application/octet-stream\r\n\r\n").encode() + b"\0" * 100_000 + f"\r\n--{boundary}--\r\n".encode()
    status, _ = raw_request(port, f"POST /gradio_api/upload HTTP/1.1\r\nHost: x\r\nContent-Length: {len(big)}\r\n"
                                  f"Content-Type: multipart/form-data; boundary={boundary}", big)
    assert status == 413


def test_ordinary_requests_pass_and_invalid_unicode_is_one_line(served):
    _, port = served
    event, data = call(port, "scoreboard", [])
    assert event == "complete" and "gpt2" in data
    # Raw JSON with a lone surrogate escape: decoded by the server into text that is not valid Unicode.
    body = b'{"data": ["tea \\ud800 time", "gpt2", 4, 0.0, 1.0, 0]}'
    request = urllib.request.Request(f"http://127.0.0.1:{port}/gradio_api/call/compare", data=body,
                                     headers={"Content-Type": "application/json"})
    event_id = json.load(urllib.request.urlopen(request, timeout=30))["event_id"]
    stream = urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/call/compare/{event_id}", timeout=60)
    text = stream.read().decode()
    assert "event: error" in text
    assert "The prompt is not valid Unicode (a lone surrogate at character 5)." in text


def test_sessions_are_capped_and_expired(served):
    demo, port = served
    holder = demo.server_app.state_holder
    for _ in range(LIMITS.max_sessions + 15):  # each /call request opens a session
        assert call(port, "scoreboard", [])[0] == "complete"
    assert 0 < len(holder.session_data) <= LIMITS.max_sessions
    expiry = SessionExpiry(ttl_s=LIMITS.session_ttl_s)
    assert expiry.expire(holder) == 0  # all fresh
    later = datetime.datetime.now() + datetime.timedelta(seconds=LIMITS.session_ttl_s + 1)
    assert expiry.expire(holder, now=later) > 0 and len(holder.session_data) == 0


def test_limits_from_flags_and_space_variables():
    assert ServerLimits.from_env({}) == ServerLimits()
    env = {"DPO_STUDIO_MAX_REQUEST_BYTES": "100000", "DPO_STUDIO_MAX_SESSIONS": "50",
           "DPO_STUDIO_SESSION_TTL_MINUTES": "5"}
    assert ServerLimits.from_env(env) == ServerLimits(100_000, 50, 300.0)
    with pytest.raises(AppConfigError, match="DPO_STUDIO_MAX_SESSIONS='lots' is not a number"):
        ServerLimits.from_env({"DPO_STUDIO_MAX_SESSIONS": "lots"})
    kwargs = ServerLimits().launch_kwargs()
    assert kwargs["max_file_size"] == kwargs["app_kwargs"]["middleware"][0].kwargs["max_bytes"]
