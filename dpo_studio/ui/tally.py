"""The Studio's view of the votes file (`votes.VoteStore`): the count line, the scoreboard, the leaderboard across
rounds (`ratings`) and the Hub export."""

import logging
from typing import Any

import pandas as pd

from dpo_studio.arena.hub_store import HubVoteStore
from dpo_studio.arena.ratings import rate, rate_length_controlled
from dpo_studio.arena.visitor_text import without_paths
from dpo_studio.arena.votes import VoteStore, comparisons, export_votes, length_comparisons, mean_lengths, scoreboard
from dpo_studio.inference.model_sources import ModelRegistry, one_line
from dpo_studio.ui.owner import OwnerOnly, OwnerPolicy
from dpo_studio.ui.render import md_text

logger = logging.getLogger(__name__)

SCOREBOARD_HEADERS = ["Family", "Votes", "DPO wins", "Base wins", "Ties", "Both bad", "DPO win rate",
                      "95% interval (Wilson)", "DPO win rate, length-controlled", "95% interval (bootstrap)",
                      "Mean length base / DPO (chars)"]
LEADERBOARD_HEADERS = ["Family", "Rank", "Model", "Rating (Bradley–Terry)", "95% interval (bootstrap)",
                       "Rating, length-controlled", "95% interval (LC, bootstrap)", "Mean length (chars)", "Votes"]
HEAD_TO_HEAD_HEADERS = ["Family", "Model A", "Model B", "A wins", "B wins", "Ties", "P(B beats A)",
                        "95% interval (bootstrap)"]
OUTCOME_BARS = (("DPO wins", "dpo_wins"), ("Base wins", "base_wins"), ("Tie", "ties"), ("Both bad", "both_bad"))


def _percent_or_dash(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def _rating_cells(row: dict[str, Any]) -> list[str]:
    """A rating and its interval as table cells (dashes for a model without votes)."""
    if row["rating"] is None:
        return ["—", "—"]
    return [f"{row['rating']:.0f}", f"{row['ci_low']:.0f} – {row['ci_high']:.0f}"]


class VoteRecords:
    """Votes counted, tallied and exported: the store, the served models, the owner policy and the server's export
    repo (None: none configured) are handed in."""

    def __init__(self, votes: VoteStore, registry: ModelRegistry, owner: OwnerPolicy,
                 export_repo: str | None = None) -> None:
        self.votes = votes
        self.registry = registry
        self.owner = owner
        self.export_repo = export_repo

    def votes_status(self) -> str:
        # The file's name only: the server's directories are nobody else's business.
        duplicates = sum(1 for record in self.votes.records() if record.get("duplicate"))
        flagged = f", {duplicates} flagged as duplicates and not counted" if duplicates else ""
        return (f"Votes collected: **{self.votes.count}**{flagged} (saved on the server as "
                f"<code>{md_text(self.votes.location())}</code>).")

    def scoreboard(self) -> dict[str, dict[str, Any]]:
        """Per family tallies of the votes file (the source of truth), DPO win rate with its 95 % Wilson interval."""
        return scoreboard(self.votes.records(), families=self.registry.families)

    def scoreboard_view(self) -> tuple[list[list[Any]], pd.DataFrame]:
        """The Scoreboard tab: table rows, and the outcome counts per family for the bar chart."""
        rows, bars = [], []
        for family, entry in self.scoreboard().items():
            label = self.registry.source(family).label if family in self.registry.families else family
            interval = "—" if entry["ci_low"] is None else f"{entry['ci_low']:.1%} – {entry['ci_high']:.1%}"
            lc = ("—" if entry["lc_ci_low"] is None else f"{entry['lc_ci_low']:.1%} – {entry['lc_ci_high']:.1%}")
            lengths = " / ".join("—" if entry[k] is None else f"{entry[k]:.0f}"
                                 for k in ("mean_length_base", "mean_length_dpo"))
            rows.append([label, entry["votes"], entry["dpo_wins"], entry["base_wins"], entry["ties"],
                         entry["both_bad"], _percent_or_dash(entry["dpo_win_rate"]), interval,
                         _percent_or_dash(entry["dpo_win_rate_lc"]), lc, lengths])
            bars.extend({"family": label, "outcome": outcome, "votes": entry[key]} for outcome, key in OUTCOME_BARS)
        return rows, pd.DataFrame(bars, columns=["family", "outcome", "votes"])

    def leaderboard(self) -> dict[str, dict[str, Any]]:
        """Per family: Bradley–Terry ratings of every served model (base, dpo, later rounds) with 95 % bootstrap
        intervals and rank, and each pair's head-to-head counts (`ratings.rate`); beside them `length_controlled`,
        the same at equal reply length (`ratings.rate_length_controlled`), and `mean_length`, each model's mean
        reply length in characters; a model voted on that is no longer served is still rated."""
        records = self.votes.records()
        board = {}
        for family, source in self.registry.families.items():
            found = comparisons(records, family)
            names = list(source.model_names)
            names += sorted({m for a, b, _ in found for m in (a, b)} - set(names))
            board[family] = rate(names, found) | {
                "length_controlled": rate_length_controlled(names, length_comparisons(records, family)),
                "mean_length": mean_lengths(records, family)}
        return board

    def leaderboard_view(self) -> tuple[list[list[Any]], list[list[Any]]]:
        """The Leaderboard tab: ratings rows (by rank) and head-to-head rows."""
        ratings, pairs = [], []
        for family, entry in self.leaderboard().items():
            label = self.registry.source(family).label
            ranked = sorted(entry["models"], key=lambda r: (r["rank"] is None, r["rank"] or 0,
                                                            -(r["rating"] or 0.0)))
            controlled = {row["model"]: row for row in entry["length_controlled"]["models"]}
            for row in ranked:
                lc, length = controlled[row["model"]], entry["mean_length"].get(row["model"])
                ratings.append([label, "—" if row["rating"] is None else row["rank"], row["model"],
                                *_rating_cells(row), *_rating_cells(lc),
                                "—" if length is None else f"{length:.0f}", row["votes"]])
            for pair in entry["pairs"]:
                pairs.append([label, pair["a"], pair["b"], pair["a_wins"], pair["b_wins"], pair["ties"],
                              f"{pair['p_b_beats_a']:.1%}", f"{pair['ci_low']:.1%} – {pair['ci_high']:.1%}"])
        return ratings, pairs

    def export(self, owner_secret: str | None = None) -> str:
        """Owner only: commit the votes now to the server's votes repo (`--votes-repo`), else push them to its
        export repo (`--export-repo`). The target is the server's configuration, never a visitor's value, and the
        token is the server's own; a refusal or failure is one line (never the token)."""
        try:
            self.owner.check("export", owner_secret)
        except OwnerOnly as exc:
            logger.warning("Refused a visitor's export: %s", exc)
            return f"Export refused: {exc}"  # our own text, no visitor input in it
        try:
            if isinstance(self.votes, HubVoteStore):
                self.votes.commit_now()
                return f"Committed {self.votes.count} votes to dataset {md_text(self.votes.repo_id)}."
            if not self.export_repo:
                return "Export refused: this server has no export repo (start it with --export-repo or --votes-repo)."
            url = export_votes(self.votes, self.export_repo, private=True)
        except Exception as exc:  # network, auth, bad repo id: shown as one line, the server keeps running
            logger.warning("Export of votes failed: %s", one_line(exc))
            return f"Export failed: {md_text(without_paths(one_line(exc)))}"  # no server folder shown
        return f"Exported {self.votes.count} votes to {md_text(url)} (file `data/train.jsonl`)."
