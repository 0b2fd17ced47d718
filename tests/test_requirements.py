"""requirements.txt (the ranges users get) and constraints.txt (the exact set CI installs) agree: every package the
product needs is pinned once, and every pin lies inside its range."""

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]


def _lines(path: Path) -> list[str]:
    lines = [line.split("#", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line and not line.startswith("-")]


def _name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def test_every_requirement_is_pinned_within_its_range():
    pins = {}
    for line in _lines(REPO / "constraints.txt"):
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"constraints.txt: {line!r} is not an exact pin"
        pins[_name(req.name)] = Version(spec.version.split("+")[0])
    for path in ("requirements-core.txt", "requirements-qlora.txt", "requirements-app.txt", "requirements-dev.txt",
                 "requirements-space.txt", "dpo_studio/space_files/requirements-zerogpu.txt"):
        for line in _lines(REPO / path):
            req = Requirement(line)
            name = _name(req.name)
            assert name in pins, f"{path}: {req.name} is not pinned in constraints.txt"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"{path}: constraints.txt pins {req.name}=={pins[name]}, outside {req.specifier}")


def _resolved(path: Path) -> set[str]:
    """Package names `pip install -r path` asks for, following `-r` includes."""
    names = set()
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            names |= _resolved(path.parent / line[3:].strip())
        elif line and not line.startswith("-"):
            names.add(_name(Requirement(line).name))
    return names


def test_requirements_txt_names_training_qlora_and_the_app():
    # `pip install -r requirements.txt` then `python app.py` is the first thing a visitor of a Space-style repo tries
    names = _resolved(REPO / "requirements.txt")
    assert {"torch", "transformers", "trl", "peft", "datasets", "huggingface-hub", "bitsandbytes", "gradio"} <= names
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'file = ["requirements-core.txt"]' in pyproject  # setuptools reads no `-r` lines: the core file itself
