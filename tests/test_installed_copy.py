"""Installed = checkout: a wheel of the project, installed into a fresh target folder, deploys the Space from another
folder through the local Hub server, exactly as a user's `pip install .` copy would (`dpo-studio push` then
`dpo-studio space`); no file is read from the checkout and no local path shows up in what the user sees."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from test_publish import outputs  # noqa: F401  (fixture: finished tiny demo outputs of both families)

REPO = Path(__file__).resolve().parents[1]


def _wheel(tmp_path: Path) -> Path:
    dist = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(dist), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = dist.glob("dpo_studio-*.whl")
    return wheel


def test_installed_copy_pushes_and_deploys_a_zero_gpu_space_from_another_folder(outputs, local_hub, tmp_path):  # noqa: F811
    site = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                           str(_wheel(tmp_path))], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # The installed copy first on the path (the checkout's editable install stays behind it); the dependencies are
    # the environment's. The console script `dpo-studio` is what pip wrote into the target.
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = subprocess.run([sys.executable, "-c", "import dpo_studio; print(dpo_studio.__file__)"], cwd=elsewhere,
                           env=env, capture_output=True, text=True, timeout=120)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    command = [sys.executable, str(site / "bin" / "dpo-studio")]
    ns = local_hub.user
    push = subprocess.run([*command, "push", str(outputs), "--hub-namespace", ns], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=600)
    assert push.returncode == 0, push.stderr[-3000:]
    deploy = subprocess.run([*command, "space", "--space-id", f"{ns}/installed", "--from", str(outputs),
                             "--hardware", "zero-a10g"], cwd=elsewhere, env=env, capture_output=True, text=True,
                            timeout=600)
    assert deploy.returncode == 0, deploy.stderr[-3000:]
    assert deploy.stdout.startswith(f"{local_hub.url}/spaces/{ns}/installed (commit ")
    assert str(site) not in deploy.stdout + deploy.stderr and str(tmp_path) not in deploy.stdout
    files = local_hub.files(f"{ns}/installed", "space")
    installed = site / "dpo_studio"
    assert files["app.py"] == (REPO / "app.py").read_bytes()
    assert files["requirements.txt"] == (installed / "space_files" / "requirements-zerogpu.txt").read_bytes()
    assert files["examples/prompts.txt"] == (installed / "examples" / "prompts.txt").read_bytes()
    assert files["dpo_studio/hub/space.py"] == (installed / "hub" / "space.py").read_bytes()
    assert "app_config.yaml" in files and not any(name.endswith(".pyc") for name in files)
    assert not any(str(tmp_path).encode() in content for name, content in files.items() if name != "README.md")


def test_a_broken_install_says_which_package_file_is_missing_without_a_local_path(outputs, local_hub, tmp_path):  # noqa: F811
    """A package folder without its Space files: one line naming the package file, not the user's absolute path."""
    import shutil

    import pytest

    from dpo_studio.hub import publish, space
    from dpo_studio.hub.publish import PushAccessError, PushTarget

    broken = tmp_path / "dpo_studio"
    shutil.copytree(space.PACKAGE_DIR, broken, ignore=shutil.ignore_patterns("__pycache__", "space_files"))
    with pytest.raises(PushAccessError) as error:
        space.deploy_space(f"{local_hub.user}/x", outputs, publish.check_push_access(PushTarget()), package=broken)
    assert str(error.value) == "the installed dpo_studio lacks its package file space_files/app.py: reinstall dpo-studio"
