"""Tests for dpo_studio.evaluation (texts, style judge, evidence): health metrics, style judge, comparison, warnings and card rows.

Expected numbers are computed by hand in comments next to each assertion.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dpo_studio.evaluation import evidence, style_judge, texts
from dpo_studio.evaluation.style_judge import StyleJudge

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Out:
    """Stand-in for the generation engine's output record."""

    text: str
    num_tokens: int
    ended_with_eos: bool


# ---------------------------------------------------------------- tokenization and metrics


def test_tokenization_rules():
    assert texts.words("Hello, World! It's 2 p.m.") == ["hello", "world", "it's", "2", "p", "m"]
    assert texts.words("  \n ...!!") == []
    assert texts.words("Don\u2019t stop") == ["don't", "stop"]  # typographic apostrophe normalized
    # the judge also keeps each punctuation mark / emoji as its own token
    assert texts.judge_tokens("Wow!! Great 😊") == ["wow", "!", "!", "great", "😊"]


FIXED = [
    Out("The cat sat. The cat ran!", 8, True),  # words: the cat sat the cat ran
    Out("a b c a b c", 6, False),  # words: a b c a b c
    Out("   ", 0, True),  # no words, empty
    Out("Hi there", 2, True),  # words: hi there
]


def test_health_metrics_hand_computed():
    m = texts.health_metrics(FIXED)
    assert set(m) == set(texts.HEALTH_METRICS)
    # (8 + 6 + 0 + 2) / 4 = 4.0
    assert m["mean_length_tokens"] == pytest.approx(4.0)
    # 3 of 4 ended with EOS
    assert m["eos_rate"] == pytest.approx(0.75)
    # words: 6 + 6 + 0 + 2 = 14; unique {the, cat, sat, ran, a, b, c, hi, there} = 9 -> 9/14
    assert m["distinct_1"] == pytest.approx(9 / 14)
    # bigrams: A = the-cat, cat-sat, sat-the, the-cat, cat-ran (5, 4 unique); B = ab, bc, ca, ab, bc (5, 3 unique);
    # D = hi-there (1). 8 unique / 11 total.
    assert m["distinct_2"] == pytest.approx(8 / 11)
    # trigrams: A = 4, none repeated -> 0; B = abc, bca, cab, abc -> 1/4; C, D have < 3 words -> 0.
    # mean over 4 outputs: (0 + 0.25 + 0 + 0) / 4 = 0.0625
    assert m["repeated_trigram_rate"] == pytest.approx(0.0625)
    # 1 of 4 is whitespace only
    assert m["empty_rate"] == pytest.approx(0.25)


def test_health_metrics_accepts_dicts_and_matches_objects():
    as_dicts = [{"text": o.text, "num_tokens": o.num_tokens, "ended_with_eos": o.ended_with_eos} for o in FIXED]
    assert texts.health_metrics(as_dicts) == texts.health_metrics(FIXED)


def test_repeated_trigram_share_and_distinct_edge_cases():
    # "the the the the": trigrams (the the the) x2, the second is a repeat -> 1/2
    assert texts.repeated_trigram_share("the the the the") == pytest.approx(0.5)
    # 10 x "the": 8 trigrams, 7 repeats -> 7/8
    assert texts.repeated_trigram_share(" ".join(["the"] * 10)) == pytest.approx(7 / 8)
    assert texts.repeated_trigram_share("two words") == 0.0
    # n-grams never span texts: "a b" + "c d" has bigrams a-b, c-d only -> 2/2
    assert texts.distinct_n(["a b", "c d"], 2) == 1.0
    assert texts.distinct_n(["", "x"], 2) == 0.0  # no bigrams at all


def test_bad_outputs_raise_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        texts.health_metrics([])
    with pytest.raises(ValueError, match=r"#1: missing field 'ended_with_eos'"):
        texts.health_metrics([{"text": "a", "num_tokens": 1, "ended_with_eos": True}, {"text": "b", "num_tokens": 1}])
    with pytest.raises(ValueError, match=r"#0: field 'num_tokens'"):
        texts.health_metrics([Out("a", -1, True)])


# ---------------------------------------------------------------- style judge

WARM = [
    "Oh wow, I love that! Pizza nights are the best, honestly 😊",
    "Haha, totally get you! Mondays are rough, hang in there!",
    "Aw, that's so sweet! Your dog sounds like a total sweetheart!",
    "Hey! I'm doing great, thanks for asking! How about you?",
    "Oh man, I totally love rainy days too! So cozy!",
    "Haha yes! Coffee first, everything else later, right?",
    "Aw, I'm so sorry you had a rough day! Sending hugs!",
    "Ooh, road trips are so much fun! Where are you headed?",
    "Honestly? I love a good mystery novel! Got any favorites?",
    "Yay! Congrats on the new job, that's so awesome!",
    "Hey, no worries at all! We all forget stuff sometimes, haha!",
    "Oh, I totally get that! Cooking can be so relaxing!",
    "Haha, cats are hilarious! Mine knocks everything off the table!",
    "Aw, summer is the best! Beach days are so much fun!",
    "Oh wow, hiking sounds amazing! I love being outdoors!",
    "Hey, that's awesome! Learning guitar is so much fun!",
    "Haha, I love that question! Pancakes, obviously!",
    "Oh man, movies with friends are the best! So fun!",
    "Aw, thanks so much! You totally made my day!",
    "Hey! Honestly, I love chatting about music! What are you into?",
    "Oh wow, baking bread? That's so cool! I love it!",
    "Haha, I totally get it, naps are the best!",
    "Aw, that sounds so cozy! Hot cocoa and a blanket, yes!",
    "Hey, good luck on your exam! You totally got this!",
    "Oh, I love gardening too! Tomatoes are so fun to grow!",
    "Haha, dancing in the kitchen? I love that so much!",
    "Aw, your weekend sounds amazing! So jealous, haha!",
    "Hey! Oh wow, a new puppy? That's so awesome!",
    "Honestly, I love sunsets! They're so pretty, right?",
    "Haha, pizza for breakfast? Totally fine by me!",
]

FORMAL = [
    "Certainly. Pizza is a dish of Italian origin consisting of a flatbread with various toppings.",
    "I understand your concern regarding Mondays. It is advisable to plan the week in advance.",
    "Dogs are domesticated mammals. Please consult a veterinarian regarding specific behavior.",
    "As an AI language model, I do not have feelings. However, I am able to provide assistance.",
    "Rainy weather is caused by the condensation of atmospheric water vapor into droplets.",
    "Coffee contains caffeine, a stimulant that may affect sleep. Please consume it in moderation.",
    "I apologize for any inconvenience. Please provide additional information regarding your situation.",
    "Road trips require careful planning. It is recommended to verify the vehicle condition beforehand.",
    "Mystery novels constitute a genre of fiction. I can provide a list of notable authors upon request.",
    "Congratulations on your new position. It is advisable to review the employment terms carefully.",
    "It is common to forget information. Various memory techniques may be of assistance.",
    "Cooking involves the preparation of food through the application of heat. Please follow safety guidelines.",
    "Cats are domesticated felines. Their behavior may be influenced by environmental factors.",
    "Summer is one of the four seasons. Please apply sunscreen to prevent skin damage.",
    "Hiking is a form of physical activity. It is recommended to carry sufficient water and a map.",
    "Learning a musical instrument requires consistent practice. I can provide resources upon request.",
    "Pancakes are a type of flat cake prepared from a batter. Recipes vary by region.",
    "Watching films is a common leisure activity. Please refer to local listings for information.",
    "Thank you for your feedback. I am here to provide assistance with any further inquiries.",
    "Music preferences vary among individuals. Please specify a genre for relevant information.",
    "Baking bread involves fermentation of dough by yeast. Please follow the recipe precisely.",
    "Sleep is essential for health. It is recommended that adults obtain seven to nine hours.",
    "Hot beverages may provide comfort. Please exercise caution to avoid burns.",
    "Examinations require adequate preparation. It is advisable to review the material systematically.",
    "Gardening requires knowledge of soil, water and sunlight. Please consult a local guide for information.",
    "Dancing is a form of physical exercise. It may provide various health benefits.",
    "Weekend activities vary by individual. I am unable to experience leisure time myself.",
    "Puppies require vaccination and training. Please consult a veterinarian regarding a schedule.",
    "Sunsets occur due to the scattering of sunlight in the atmosphere. This phenomenon is well documented.",
    "Consuming pizza for breakfast is not typical. It is advisable to maintain a balanced diet.",
]


@pytest.fixture(scope="module")
def toy_judge() -> StyleJudge:
    # train on the first 2/3 of each style
    return StyleJudge.fit(WARM[:20], FORMAL[:20])


def test_judge_separates_held_out_toy_styles(toy_judge):
    # held-out 1/3: 10 warm + 10 formal replies never seen in training
    assert toy_judge.accuracy(WARM[20:], FORMAL[20:]) > 0.9
    p_warm = toy_judge.predict_proba(WARM[20:])
    p_formal = toy_judge.predict_proba(FORMAL[20:])
    assert p_warm.shape == (10,) and p_formal.shape == (10,)
    assert p_warm.mean() > p_formal.mean()


def test_judge_top_features_name_the_style_cues(toy_judge):
    top = toy_judge.top_features(15)
    preferred = {f for f, _ in top["preferred"]}
    rejected = {f for f, _ in top["rejected"]}
    assert len(top["preferred"]) == 15 and len(top["rejected"]) == 15
    assert {"!", "haha", "so"} & preferred, preferred
    assert {"please", "regarding", "advisable", "it is"} & rejected, rejected
    assert all(w > 0 for _, w in top["preferred"]) and all(w < 0 for _, w in top["rejected"])
    # sorted strongest first
    assert [w for _, w in top["preferred"]] == sorted((w for _, w in top["preferred"]), reverse=True)
    assert [w for _, w in top["rejected"]] == sorted(w for _, w in top["rejected"])


def test_judge_weights_match_hand_computed_naive_bayes():
    judge = StyleJudge.fit(["good fun"], ["bad"])
    # features: chosen {good, fun, "good fun"}, rejected {bad}; vocabulary sorted alphabetically
    assert judge.vocabulary == ["bad", "fun", "good", "good fun"]
    # alpha = 1: chosen counts+1 = [1, 2, 2, 2] (sum 7); rejected counts+1 = [2, 1, 1, 1] (sum 5)
    # weight = log(pos/7) - log(neg/5): bad = log(5/14), others = log(10/7)
    expected = [math.log(5 / 14), math.log(10 / 7), math.log(10 / 7), math.log(10 / 7)]
    np.testing.assert_allclose(judge.weights, expected)
    assert judge.bias == 0.0  # 1 chosen vs 1 rejected -> log(1) = 0
    # p("fun") = sigmoid(log(10/7)) = (10/7) / (1 + 10/7) = 10/17; an unknown word gets the prior 0.5
    np.testing.assert_allclose(judge.predict_proba(["fun", "zebra"]), [10 / 17, 0.5])
    # binarized: repeating a word does not add evidence
    assert judge.predict_proba(["fun fun fun"])[0] == pytest.approx(
        1 / (1 + math.exp(-(math.log(10 / 7) + 0.0))))  # "fun fun" bigram is not in the vocabulary


def test_judge_round_trip_and_determinism(toy_judge, tmp_path):
    texts = WARM[20:] + FORMAL[20:] + ["", "the the the"]
    restored = StyleJudge.from_dict(json.loads(json.dumps(toy_judge.to_dict())))
    assert np.array_equal(restored.predict_proba(texts), toy_judge.predict_proba(texts))
    loaded = StyleJudge.load(toy_judge.save(tmp_path / "judge.json"))
    assert np.array_equal(loaded.predict_proba(texts), toy_judge.predict_proba(texts))
    # refitting, even on shuffled training order, gives the identical model
    again = StyleJudge.fit(list(reversed(WARM[:20])), list(reversed(FORMAL[:20])))
    assert again.to_dict() == toy_judge.to_dict()
    with pytest.raises(ValueError, match="format"):
        StyleJudge.from_dict({"format": "something else"})


def test_judge_max_features_keeps_most_frequent():
    judge = StyleJudge.fit(["a b", "a c"], ["a d"], max_features=1)
    # document frequency: "a" is in all 3 texts, everything else in 1 -> only "a" survives
    assert judge.vocabulary == ["a"]


def test_judge_scores_win_rate_with_ties():
    judge = StyleJudge(["good", "bad"], np.array([1.0, -1.0]), 0.0)
    s1, s0 = 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))  # sigmoid(1), sigmoid(-1)
    base = ["good", "bad", "hello", "good"]  # p = s1, s0, 0.5, s1
    dpo = ["good good", "good", "bad", "bad"]  # p = s1, s1, s0, s0  ("good good" bigram unknown)
    scores = style_judge.judge_scores(judge, base, dpo)
    # prompt 1 tie (0.5), prompt 2 win (1), prompt 3 loss, prompt 4 loss -> 1.5 / 4
    assert scores["dpo_win_rate"] == pytest.approx(0.375)
    # p > 0.5: base s1, s1 (0.5 is not > 0.5) -> 2/4; dpo s1, s1 -> 2/4
    assert scores["base_preferred_style_rate"] == pytest.approx(0.5)
    assert scores["dpo_preferred_style_rate"] == pytest.approx(0.5)
    # means: base (2*s1 + s0 + 0.5)/4, dpo (2*s1 + 2*s0)/4 = 0.5 since s1 + s0 = 1
    assert scores["base_mean_p_preferred"] == pytest.approx((2 * s1 + s0 + 0.5) / 4)
    assert scores["dpo_mean_p_preferred"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="same prompts"):
        style_judge.judge_scores(judge, ["a"], ["a", "b"])


# ---------------------------------------------------------------- warnings and evaluation

HEALTHY_BASE = [Out(t, len(texts.words(t)) + 2, True) for t in FORMAL[20:]]
HEALTHY_DPO = [Out(t, len(texts.words(t)) + 2, True) for t in WARM[20:]]
DEGENERATE_DPO = [Out(" ".join(["the"] * 64), 64, False) for _ in FORMAL[20:]]


def test_degenerate_dpo_triggers_repetition_and_eos_warnings(toy_judge):
    result = evidence.evaluate_generations(HEALTHY_BASE, DEGENERATE_DPO, toy_judge)
    warnings = result["warnings"]
    assert any(w.startswith("repeated_trigram_rate") for w in warnings), warnings
    assert any(w.startswith("eos_rate") for w in warnings), warnings
    for w in warnings:
        assert "\n" not in w and "(base)" in w and "(DPO)" in w and "likely causes" in w
    rep = next(w for w in warnings if w.startswith("repeated_trigram_rate"))
    # base 0.000 -> DPO 61/62 (64 "the": 62 trigrams, 61 repeats)
    assert "0.000 (base)" in rep and f"{61 / 62:.3f} (DPO)" in rep
    assert "learning rate too high, beta too low, or too many epochs" in rep
    eos = next(w for w in warnings if w.startswith("eos_rate"))
    assert "1.000 (base)" in eos and "0.000 (DPO)" in eos


def test_healthy_dpo_triggers_no_warnings(toy_judge):
    result = evidence.evaluate_generations(HEALTHY_BASE, HEALTHY_DPO, toy_judge)
    assert result["warnings"] == []
    assert set(result) == {"generation_before", "generation_after", "comparison", "warnings"}
    before, after, comp = result["generation_before"], result["generation_after"], result["comparison"]
    # the health part equals health_metrics on each side
    assert {k: before[k] for k in texts.HEALTH_METRICS} == texts.health_metrics(HEALTHY_BASE)
    assert {k: after[k] for k in texts.HEALTH_METRICS} == texts.health_metrics(HEALTHY_DPO)
    # the style part equals judge_scores on the texts
    s = style_judge.judge_scores(toy_judge, [o.text for o in HEALTHY_BASE], [o.text for o in HEALTHY_DPO])
    assert before["preferred_style_rate"] == s["base_preferred_style_rate"]
    assert after["mean_p_preferred"] == s["dpo_mean_p_preferred"]
    assert comp["dpo_win_rate"] == s["dpo_win_rate"] == 1.0  # warm DPO beats formal base on every prompt
    assert comp["eos_rate_delta"] == 0.0
    json.dumps(result)  # metrics.json must be able to hold it


def test_warning_thresholds_at_their_boundaries():
    def keys(before, after):
        return [w.split()[0] for w in texts.health_warnings(before, after)]

    # repetition: +0.10 exactly is allowed, +0.11 is not; above 0.25 warns only if worse than base
    assert keys({"repeated_trigram_rate": 0.0}, {"repeated_trigram_rate": 0.10}) == []
    assert keys({"repeated_trigram_rate": 0.0}, {"repeated_trigram_rate": 0.11}) == ["repeated_trigram_rate"]
    assert keys({"repeated_trigram_rate": 0.2}, {"repeated_trigram_rate": 0.26}) == ["repeated_trigram_rate"]
    assert keys({"repeated_trigram_rate": 0.3}, {"repeated_trigram_rate": 0.3}) == []
    # length: 100 -> 150 is exactly +50% (allowed); 151 and 49 drift too far
    assert keys({"mean_length_tokens": 100.0}, {"mean_length_tokens": 150.0}) == []
    assert keys({"mean_length_tokens": 100.0}, {"mean_length_tokens": 151.0}) == ["mean_length_tokens"]
    assert keys({"mean_length_tokens": 100.0}, {"mean_length_tokens": 49.0}) == ["mean_length_tokens"]
    # eos: 1.0 -> 0.75 is a drop of exactly 0.25 (allowed); 1.0 -> 0.5 is not
    assert keys({"eos_rate": 1.0}, {"eos_rate": 0.75}) == []
    assert keys({"eos_rate": 1.0}, {"eos_rate": 0.5}) == ["eos_rate"]
    # distinct_2: 30% relative drop of 0.5 is 0.35
    assert keys({"distinct_2": 0.5}, {"distinct_2": 0.36}) == []
    assert keys({"distinct_2": 0.5}, {"distinct_2": 0.34}) == ["distinct_2"]
    # empty replies and style drift
    assert keys({"empty_rate": 0.0}, {"empty_rate": 0.2}) == ["empty_rate"]
    assert keys({"preferred_style_rate": 0.8}, {"preferred_style_rate": 0.5}) == ["preferred_style_rate"]
    # improvements never warn
    assert keys({"eos_rate": 0.2, "distinct_2": 0.1}, {"eos_rate": 0.9, "distinct_2": 0.9}) == []


def test_summarize_for_card_rows(toy_judge):
    result = evidence.evaluate_generations(HEALTHY_BASE, DEGENERATE_DPO, toy_judge)
    rows = evidence.summarize_for_card(result)
    by_metric = {r["metric"]: r for r in rows}
    assert by_metric["Ended with EOS"]["base"] == 1.0 and by_metric["Ended with EOS"]["dpo"] == 0.0
    assert by_metric["Mean length (tokens)"]["dpo"] == 64.0
    assert rows[-1]["base"] is None and rows[-1]["dpo"] == result["comparison"]["dpo_win_rate"]
    table = evidence.card_table_markdown(result)
    assert table.count("\n") == len(rows) + 1  # header + separator + one line per row
    assert "| Ended with EOS | 1.000 | 0.000 |" in table
    # without a judge the style rows are left out
    no_judge = evidence.summarize_for_card(evidence.evaluate_generations(HEALTHY_BASE, HEALTHY_DPO, None))
    assert len(no_judge) == len(texts.HEALTH_METRICS)


# ---------------------------------------------------------------- bundled data


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_judge_on_bundled_data_generalizes_to_heldout():
    train_path, heldout_path = REPO / "examples/data/train.jsonl", REPO / "examples/data/heldout.jsonl"
    if not (train_path.exists() and heldout_path.exists()):
        pytest.skip("examples/data/train.jsonl and/or heldout.jsonl are not in the repo (bundled demo data missing)")
    train, heldout = _read_jsonl(train_path), _read_jsonl(heldout_path)
    judge = StyleJudge.fit([r["chosen"] for r in train], [r["rejected"] for r in train])
    acc = judge.accuracy([r["chosen"] for r in heldout], [r["rejected"] for r in heldout])
    assert acc > 0.9, f"style judge accuracy on heldout.jsonl is {acc:.3f}"
