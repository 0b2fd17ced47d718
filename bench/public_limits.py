"""Memory of the app under hostile requests: 50 MB bodies and fresh sessions, with the product's bounds vs Gradio's.

    python bench/public_limits.py [--bodies 200] [--sessions 1000] [--baseline-bodies 5]

Each variant is the app on the tiny GPT-2/T5 test models (tests/tiny_models.py), served in its own process on
127.0.0.1; the figure is that process's RSS (/proc/<pid>/status VmRSS):

* product: `ServerLimits()` defaults (256 KiB request bodies, 200 sessions, 30 min idle expiry);
* Gradio defaults (the baseline): no body limit, no upload cap, `state_session_capacity` 10,000, no expiry.

Steps per variant: warm-up (10 ordinary requests), then `--bodies` POST /gradio_api/call/compare with a 50 MB JSON
body (a prompt over the 2,000-character limit: the app refuses it after it is held), then `--sessions` fresh sessions
(one /gradio_api/call/scoreboard each, result never fetched, as a hostile client does), then 5 s idle. Printed: RSS
warm, after the bodies, after the sessions, and the growth over warm (issue 26's target: within 150 MB). The
baseline runs `--baseline-bodies` bodies only (each is held: 200 of them would take about 10 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BODY_MB = 50
TARGET_MB = 150

SERVER = textwrap.dedent("""
    import os, sys, random
    sys.path.insert(0, {tests!r})
    os.environ["HF_HUB_OFFLINE"] = "1"; os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from pathlib import Path
    from tiny_models import build_models_dir
    from dpo_studio import ui
    from dpo_studio.inference.model_sources import ModelRegistry, discover_models_dir
    from dpo_studio.ui.limits import ServerLimits
    root = Path({root!r}); build_models_dir(root / "models")
    studio = ui.build_studio(ModelRegistry(discover_models_dir(root / "models")), votes_file=root / "v.jsonl",
                             rng=random.Random(0))
    demo = ui.build_app(studio=studio, example_prompts=[])
    limits = ServerLimits() if {product} else ServerLimits(max_request_bytes=2**40, max_sessions=10_000,
                                                           session_ttl_s=10**9)
    kwargs = limits.launch_kwargs()
    if not {product}:  # Gradio's own defaults: no middleware, no upload cap
        kwargs = {{"state_session_capacity": 10_000}}
    demo.launch(server_name="127.0.0.1", server_port={port}, quiet=True, prevent_thread_lock=True,
                **kwargs)
    print("up", flush=True)
    demo.block_thread()
""")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def call(port: int, api: str, data: list, fetch: bool = True) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/gradio_api/call/{api}", data=json.dumps(
        {"data": data}).encode(), headers={"Content-Type": "application/json"})
    event = json.load(urllib.request.urlopen(request, timeout=60))["event_id"]
    if fetch:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/gradio_api/call/{api}/{event}", timeout=60).read()


def big_body(port: int, body: bytes) -> int:
    """POST a 50 MB body; the HTTP status (413 from the limit, 200 when the app took it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(f"POST /gradio_api/call/compare HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        try:
            sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the body: the server closed the connection
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    return int(data.split()[1]) if data else 0


def run(product: bool, bodies: int, sessions: int) -> dict[str, float]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as root:
        code = SERVER.format(tests=str(ROOT / "tests"), root=root, product=product, port=port)
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                text=True, env=env)
        try:
            while (line := proc.stdout.readline()) and line.strip() != "up":
                pass
            if not line:
                raise RuntimeError("the server did not start")
            for i in range(10):
                call(port, "compare" if i % 5 == 0 else "scoreboard",
                     [f"warm {i}", "gpt2", 8, 0.0, 1.0, 0] if i % 5 == 0 else [])
            time.sleep(2)
            figures = {"warm": rss_mb(proc.pid)}
            body = json.dumps({"data": ["x" * (BODY_MB * 2**20), "gpt2", 8, 0.0, 1.0, 0]}).encode()
            statuses = [big_body(port, body) for _ in range(bodies)]
            figures["after_bodies"] = rss_mb(proc.pid)
            for _ in range(sessions):
                call(port, "scoreboard", [], fetch=False)
            time.sleep(5)
            figures["after_sessions"] = rss_mb(proc.pid)
            figures["statuses"] = {s: statuses.count(s) for s in set(statuses)}
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bodies", type=int, default=200)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--baseline-bodies", type=int, default=5)
    args = parser.parse_args()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
          f"; bodies of {BODY_MB} MB; RSS of the server process in MB")
    product = run(True, args.bodies, args.sessions)
    baseline = run(False, args.baseline_bodies, args.sessions)
    for name, fig, n in (("product (ServerLimits defaults)", product, args.bodies),
                         ("Gradio defaults (baseline)", baseline, args.baseline_bodies)):
        growth = fig["after_sessions"] - fig["warm"]
        print(f"{name:34s} warm {fig['warm']:7.0f}  after {n} bodies {fig['after_bodies']:7.0f} "
              f"(HTTP {fig['statuses']})  after {args.sessions} sessions {fig['after_sessions']:7.0f}  "
              f"growth {growth:+6.0f} MB")
    per_body = (baseline["after_bodies"] - baseline["warm"]) / max(1, args.baseline_bodies)
    product_growth = product["after_sessions"] - product["warm"]
    print(f"baseline keeps {per_body:.0f} MB per refused 50 MB body; product growth {product_growth:.0f} MB for "
          f"{args.bodies} bodies + {args.sessions} sessions (target: within {TARGET_MB} MB): "
          f"{'met' if product_growth <= TARGET_MB else 'MISSED'}")


if __name__ == "__main__":
    main()
