"""The installed package: a wheel built from this checkout, installed into a fresh venv (system site-packages, so torch
and friends are not downloaded), used from a folder outside the checkout: `dpo-studio --help`, the bundled demo
config, a short training run and the app answering /compare. Slow (a wheel build and a training run)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_models import ask_compare, free_port

REPO = Path(__file__).resolve().parents[1]
VERBS = ("train", "check-data", "evaluate", "push", "app", "space", "examples")


def _run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""})


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv with the wheel of this checkout installed (built without network: setuptools from the system)."""
    root = tmp_path_factory.mktemp("pkg")
    build = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"),
                  str(REPO)], cwd=root)
    assert build.returncode == 0, f"building the wheel failed:\n{build.stderr[-3000:]}"
    (wheel,) = (root / "dist").glob("dpo_studio-*.whl")
    assert _run([sys.executable, "-m", "venv", "--system-site-packages", str(root / "venv")], cwd=root).returncode == 0
    # The test environment's packages (torch, TRL, ...) also where it is itself a venv, which --system-site-packages
    # skips; the venv's own site-packages (the wheel) still comes first on sys.path.
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    (root / "venv" / "lib" / version / "site-packages" / "test_env.pth").write_text("\n".join(site.getsitepackages()))
    install = _run([str(root / "venv" / "bin" / "pip"), "install", "-q", "--no-deps", str(wheel)], cwd=root)
    assert install.returncode == 0, f"installing the wheel failed:\n{install.stderr[-3000:]}"
    return root / "venv"


def test_the_command_lists_its_verbs_and_the_examples_are_package_data(venv, tmp_path):
    out = _run([str(venv / "bin" / "dpo-studio"), "--help"], cwd=tmp_path)
    assert out.returncode == 0 and all(f"  {verb} " in out.stdout for verb in VERBS)
    examples = Path(_run([str(venv / "bin" / "dpo-studio"), "examples"], cwd=tmp_path).stdout.strip())
    assert examples.is_relative_to(venv) and (examples / "demo.yaml").is_file()
    assert (examples / "data" / "train.jsonl").is_file() and (examples.parent / "model_cards" / "merged.md").is_file()
    unknown = _run([str(venv / "bin" / "dpo-studio"), "fly"], cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown verb 'fly'" in unknown.stderr


def test_demo_trains_from_another_folder_and_the_app_serves_it(venv, tmp_path):
    cli = str(venv / "bin" / "dpo-studio")
    demo = Path(_run([cli, "examples"], cwd=tmp_path).stdout.strip()) / "demo.yaml"
    small = ["--models", "gpt2", "--max-train-pairs", "16", "--max-eval-pairs", "8", "--demo-sft-epochs", "1",
             "--num-train-epochs", "1", "--eval-generations", "2", "--generation-max-new-tokens", "8",
             "--demo-hidden-size", "32", "--demo-layers", "1", "--demo-vocab-size", "300"]
    check = _run([cli, "check-data", "--config", str(demo), *small], cwd=tmp_path)
    assert check.returncode == 0, check.stderr[-2000:]
    train = _run([cli, "train", "--config", str(demo), "--output-dir", str(tmp_path / "out"), *small], cwd=tmp_path,
                 timeout=600)
    assert train.returncode == 0, train.stderr[-3000:]
    assert (tmp_path / "out" / "gpt2" / "merged" / "README.md").is_file()  # the card, from the packaged template
    port = free_port()
    proc = subprocess.Popen([cli, "app", "--models-dir", str(tmp_path / "out"), "--port", str(port)], cwd=tmp_path,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ""},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        answer = ask_compare(proc, port, "gpt2", 4, timeout_s=240)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert answer is not None, f"dpo-studio app did not answer /compare:\n{err[-3000:]}"
    assert len(answer) >= 2
