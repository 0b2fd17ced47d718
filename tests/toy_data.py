"""A small, clearly styled preference set generated for tests (warm chosen vs formal rejected replies)."""

import json
from pathlib import Path

TOPICS = ["running", "basil", "rain", "tea", "cats", "guitar", "paris", "exams", "coffee", "sleep", "books",
          "cooking", "bikes", "dogs", "jazz", "chess", "yoga", "moving", "gardening", "movies"]


def toy_rows(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        topic, variant = TOPICS[i % len(TOPICS)], i // len(TOPICS)
        rows.append({
            "prompt": f"Any tips about {topic}? (#{variant})",
            "chosen": f"Oh, I love {topic}! Honestly, just start small and have fun. What got you into {topic}?",
            "rejected": f"Certainly. Regarding {topic}, it is recommended that one follows established guidelines.",
        })
    return rows


def write_toy_pairs(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in toy_rows(n)), encoding="utf-8")
    return path
