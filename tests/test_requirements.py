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
    for path in ("requirements.txt", "requirements-qlora.txt", "requirements-app.txt", "requirements-dev.txt",
                 "requirements-space.txt", "dpo_studio/space_files/requirements-zerogpu.txt"):
        for line in _lines(REPO / path):
            req = Requirement(line)
            name = _name(req.name)
            assert name in pins, f"{path}: {req.name} is not pinned in constraints.txt"
            assert req.specifier.contains(pins[name], prereleases=True), (
                f"{path}: constraints.txt pins {req.name}=={pins[name]}, outside {req.specifier}")
