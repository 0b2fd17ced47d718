"""Owner-only actions: what a visitor may never do with the server's credentials.

An action that writes to the Hub or spends the server's compute (exporting votes, training a new round, pushing it)
runs only when the server was started with it enabled (`--owner-actions export,train,push`, or
`$DPO_STUDIO_OWNER_ACTIONS`), and, when an owner secret is set (`$DPO_STUDIO_OWNER_SECRET`, required on a server
reachable by others), only for a request that supplies that secret. The repo an action writes to is the server's
configuration, never a value from the request.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass

OWNER_ACTIONS = ("export", "train", "push")
OWNER_ACTIONS_ENV = "DPO_STUDIO_OWNER_ACTIONS"
OWNER_SECRET_ENV = "DPO_STUDIO_OWNER_SECRET"


class OwnerOnly(PermissionError):
    """A visitor asked for an owner-only action that is off, or supplied no / the wrong owner secret."""


def parse_actions(value: str | Iterable[str] | None) -> frozenset[str]:
    """`"export,train"` (or a list) -> the set of enabled actions; an unknown name is an error naming it."""
    if value is None:
        return frozenset()
    names = [part.strip() for part in (value.split(",") if isinstance(value, str) else value)]
    names = [name for name in names if name]
    unknown = sorted(set(names) - set(OWNER_ACTIONS))
    if unknown:
        raise ValueError(f"unknown owner action {unknown[0]!r}; choose from {', '.join(OWNER_ACTIONS)}")
    return frozenset(names)


@dataclass(frozen=True)
class OwnerPolicy:
    """Which owner-only actions this server allows, and the secret a request must carry for them (if any)."""

    actions: frozenset[str] = frozenset()
    secret: str | None = None

    @classmethod
    def from_env(cls, actions: str | Iterable[str] | None = None) -> OwnerPolicy:
        """The policy from `actions` (else `$DPO_STUDIO_OWNER_ACTIONS`) and `$DPO_STUDIO_OWNER_SECRET`."""
        chosen = actions if actions is not None else os.environ.get(OWNER_ACTIONS_ENV)
        secret = os.environ.get(OWNER_SECRET_ENV) or None
        return cls(actions=parse_actions(chosen), secret=secret)

    def enabled(self, action: str) -> bool:
        """Whether the server was started with `action` on (the UI hides what is off)."""
        return action in self.actions

    def check(self, action: str, supplied_secret: str | None = None) -> None:
        """Raise `OwnerOnly` (one line) unless `action` is enabled and, when a secret is set, `supplied_secret`
        matches it (compared in constant time)."""
        if action not in OWNER_ACTIONS:
            raise ValueError(f"unknown owner action {action!r}")
        if action not in self.actions:
            raise OwnerOnly(f"{action} is an owner-only action and is off on this server "
                            f"(start it with --owner-actions {action})")
        if self.secret is not None and not hmac.compare_digest(
                (supplied_secret or "").encode(), self.secret.encode()):
            raise OwnerOnly(f"{action} needs the owner secret (${OWNER_SECRET_ENV} of this server)")
