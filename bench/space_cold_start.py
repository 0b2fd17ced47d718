"""Cold start of the deployed Space: from `python app.py` in a freshly downloaded Space to the first `/compare`.

    python bench/space_cold_start.py [--from DIR] [--family NAME] [--max-new-tokens 16] [--timeout 600]

1. starts the project's local Hub-compatible server (no machine here reaches huggingface.co);
2. pushes a trained output folder to it (`--from`; default `runs/demo` when present, else a tiny GPT-2 demo trained
   now with `train_dpo.py --demo`, about a minute on 2 cores) and deploys the Space (`dpo_studio.hub.space`, votes
   dataset included);
3. downloads the Space repo into an empty folder and runs its `app.py` with this interpreter (the Space's
   requirements are this venv's), `HF_ENDPOINT` at the local server, an empty Hub cache (models come over HTTP, as
   on a new Space), the Space's variables as environment and the deployer's token as its `HF_TOKEN` secret;
4. prints the CPU, threads and: process start -> the server answering at all, -> the first `/compare` answer
   (which loads the models), and one more `/compare` (warm) for contrast.

The local server is test code (`tests/hub_server.py`: huggingface_hub ships no server and the real Hub is out of
reach), so it is loaded from its file (`importlib`, no `sys.path` change); `pytest` must be installed for it.
Times are wall-clock: run it on a quiet machine. The figure goes to docs/performance.md ("Space cold start").
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]  # benches import the installed package (`pip install -e .`)
DEMO_OUTPUT = ROOT / "runs" / "demo"
PROMPT = "Any tips about tea?"
TINY_DEMO = ["--demo", "--models", "gpt2", "--dataset", str(ROOT / "examples" / "data" / "train.jsonl"),
             "--demo-hidden-size", "32", "--demo-layers", "1", "--demo-vocab-size", "300", "--demo-sft-epochs", "1",
             "--num-train-epochs", "1", "--eval-generations", "0"]


def load_hub_server() -> Any:
    """tests/hub_server.py as a module, loaded from its file."""
    spec = importlib.util.spec_from_file_location("hub_server", ROOT / "tests" / "hub_server.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def start_hub(root: Path) -> Any:
    """The local Hub, with this process's huggingface_hub pointed at it (before huggingface_hub is imported)."""
    hub = load_hub_server().LocalHub(root / "hub_storage").start()
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_IMPLICIT_TOKEN"):
        os.environ.pop(var, None)
    os.environ.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.token, HF_HOME=str(root / "deployer_hf_home"),
                      HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    if "huggingface_hub" in sys.modules:
        raise RuntimeError("huggingface_hub was imported before the local Hub's endpoint was set")
    return hub


def trained_output(from_dir: Path | None, root: Path) -> Path:
    """`--from`, else runs/demo, else a tiny demo trained now."""
    if from_dir is not None:
        return from_dir
    if DEMO_OUTPUT.is_dir():
        return DEMO_OUTPUT
    out = root / "tiny_demo"
    print(f"# no {DEMO_OUTPUT.relative_to(ROOT)}: training a tiny GPT-2 demo into a temporary folder", flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, str(ROOT / "train_dpo.py"), *TINY_DEMO, "--output-dir", str(out)], check=True,
                   env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def deploy(hub: Any, from_dir: Path, root: Path) -> tuple[Path, dict[str, str]]:
    """Push `from_dir`, deploy the Space, download it into an empty folder: (its folder, its variables)."""
    from huggingface_hub import HfApi, snapshot_download

    from dpo_studio.hub.publish import PushTarget, check_push_access, push_outputs
    from dpo_studio.hub.space import deploy_space

    target = check_push_access(PushTarget())
    push_outputs(from_dir, target)
    space_id = f"{hub.user}/dpo-arena"
    deploy_space(space_id, from_dir, target)
    folder = Path(snapshot_download(space_id, repo_type="space", local_dir=root / "space"))
    variables = {key: var.value for key, var in HfApi().get_space_variables(space_id).items()}
    return folder, variables


def space_env(hub: Any, root: Path, variables: dict[str, str], port: int) -> dict[str, str]:
    """The environment of the Space's process: its variables and secret, a Hub cache of its own (empty)."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(variables)
    env.update(HF_ENDPOINT=hub.url, HF_TOKEN=hub.token, HF_HOME=str(root / "space_hf_home"),
               GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False", DPO_STUDIO_VOTES_EVERY="60")
    env.pop("HF_HUB_CACHE", None)
    return env


def wait_for_server(url: str, proc: subprocess.Popen, deadline: float) -> bool:
    """Poll `url` until it answers HTTP 200; False when the process exits or the deadline passes."""
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:  # noqa: S310 - our own local server
                if answer.status == 200:
                    return True
        except OSError:
            time.sleep(0.1)
    return False


def measure(folder: Path, env: dict[str, str], family: str, max_new_tokens: int, timeout_s: float) -> dict:
    """Start the Space's app.py and time it: seconds to the server answering, to the first and a warm /compare."""
    from gradio_client import Client

    url = f"http://127.0.0.1:{env['GRADIO_SERVER_PORT']}/"
    log = open(folder.parent / "space_app.log", "w", encoding="utf-8")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        if not wait_for_server(url, proc, time.monotonic() + timeout_s):
            raise RuntimeError(f"the Space's app did not answer in {timeout_s:.0f} s; its log: {log.name}")
        figures = {"server": time.perf_counter() - started}
        client = Client(url, verbose=False, analytics_enabled=False)
        client.predict(PROMPT, family, max_new_tokens, 0.0, api_name="/compare")
        figures["first_compare"] = time.perf_counter() - started
        again = time.perf_counter()
        client.predict(PROMPT, family, max_new_tokens, 0.0, api_name="/compare")
        figures["warm_compare"] = time.perf_counter() - again
        return figures
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        log.close()


def cpu_line() -> str:
    import torch

    model = "cpu"
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {os.cpu_count()} logical CPUs, torch threads {torch.get_num_threads()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from", dest="from_dir", type=Path, help="trained output folder (default: runs/demo, "
                                                                   "else a tiny demo trained now)")
    parser.add_argument("--family", help="family asked in /compare (default: the Space's first)")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=600, help="seconds the Space may take to answer")
    args = parser.parse_args(argv)
    if args.from_dir is not None and not args.from_dir.is_dir():
        parser.error(f"--from {args.from_dir}: no such folder")
    with tempfile.TemporaryDirectory(prefix="space-cold-start-") as tmp:
        root = Path(tmp)
        hub = start_hub(root)
        try:
            from_dir = trained_output(args.from_dir, root)
            folder, variables = deploy(hub, from_dir, root)
            import yaml

            families = list(yaml.safe_load((folder / "app_config.yaml").read_text())["families"])
            family = args.family or families[0]
            if family not in families:
                parser.error(f"--family {family}: the Space serves {', '.join(families)}")
            figures = measure(folder, space_env(hub, root, variables, free_port()), family, args.max_new_tokens,
                              args.timeout)
        finally:
            hub.stop()
    print(f"# {cpu_line()}")
    print(f"# Space deployed from {from_dir} to the local Hub; families {', '.join(families)}; /compare {family}, "
          f"{args.max_new_tokens} greedy tokens")
    print(f"Space cold start: process start -> server answering {figures['server']:.1f} s, "
          f"-> first /compare {figures['first_compare']:.1f} s (models downloaded and loaded); "
          f"warm /compare {figures['warm_compare']:.2f} s")
    return 0


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
