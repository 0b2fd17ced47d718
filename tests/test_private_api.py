"""The private third-party names dpo_studio uses still exist in the installed releases (one line per break)."""

from dpo_studio.speed import private_api


def test_every_private_name_still_exists():
    broken = private_api.check_private_api()
    assert not broken, "\n".join(broken)


def test_at_most_five_private_names_in_one_registry():
    packages = {package for package, *_ in private_api.PRIVATE_NAMES}
    assert packages <= {"trl", "transformers", "peft", "accelerate"}
    assert len(private_api.PRIVATE_NAMES) <= 5  # issue 18 target


def test_a_changed_name_is_reported_with_package_and_version(monkeypatch):
    monkeypatch.setattr(private_api, "PRIVATE_NAMES", (("trl", "trl.trainer.utils", None, "_NO_SUCH_NAME_X", "why"),))
    (line,) = private_api.check_private_api()
    from importlib.metadata import version

    assert line.startswith(f"trl {version('trl')} no longer has trl.trainer.utils._NO_SUCH_NAME_X")
