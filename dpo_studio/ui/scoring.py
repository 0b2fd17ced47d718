"""The Studio's Score tab and /score: DPO's implicit rewards of two replies, per family (`generation.score_pair`)."""

from typing import Any

from dpo_studio.inference.generation import ContextTooLong
from dpo_studio.ui.engine import Engine
from dpo_studio.ui.input_checks import InputChecks, user_error
from dpo_studio.ui.render import md_text


class Scoring:
    """Implicit-reward scoring, over the checks and the engine it is given."""

    def __init__(self, checks: InputChecks, engine: Engine) -> None:
        self.checks = checks
        self.engine = engine

    def score_one(self, family: str, prompt: str, reply_a: str, reply_b: str) -> dict[str, Any]:
        """`score_pair` for one family; an input longer than the model reads is a one-line refusal."""
        try:
            return self.engine.score(family, prompt, reply_a, reply_b)
        except ContextTooLong as exc:
            message = str(exc)
            raise user_error(f"{self.engine.label(family)}: {message[0].upper()}{message[1:]}.") from None

    def score_all(self, prompt: Any, reply_a: Any, reply_b: Any, family: Any) -> dict[str, dict[str, Any]]:
        """/score: per selected family, `score_pair` of the checked prompt and replies."""
        text = self.checks.check_prompt(prompt)
        replies = (self.checks.check_prompt(reply_a, "reply A"), self.checks.check_prompt(reply_b, "reply B"))
        return {name: self.score_one(name, text, *replies) for name in self.checks.families_for(family)}

    def score(self, prompt: str, reply_a: str, reply_b: str, family: str) -> tuple[list[list[Any]], str]:
        """Implicit rewards of two replies under each selected family: table rows and a verdict line per family."""
        rows: list[list[Any]] = []
        verdicts: list[str] = []
        for name, result in self.score_all(prompt, reply_a, reply_b, family).items():
            label = self.engine.label(name)
            for side in ("a", "b"):
                rows.append([label, side.upper(), round(result[f"logp_base_{side}"], 4),
                             round(result[f"logp_dpo_{side}"], 4), round(result[f"reward_{side}"], 5)])
            preferred = result["preferred"]
            choice = "neither (tie)" if preferred == "tie" else f"reply {preferred.upper()}"
            verdicts.append(f"**{md_text(label)}**: DPO prefers {choice} (reward margin A − B = "
                            f"{result['margin']:+.5f}, β = {result['beta']:g}).")
        return rows, "\n\n".join(verdicts)
