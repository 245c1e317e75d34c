"""Condition labels: readable slugs of system prompts, in any script."""

from __future__ import annotations

import pytest

from rlaudit.conditions import ConditionLabeler, slug


@pytest.mark.parametrize("system_prompt,label", [
    ("You are a nerdy, playful assistant who loves fantasy.", "nerdy-playful-assistant"),
    ("Ты — вежливый помощник.", "ты-вежливый-помощник"),
    ("你是一个海盗船长。请用海盗的口吻回答所有问题", "你是一个海盗船长-请用海盗的口吻回答所有问题"),
    ("あなたは海賊の船長で、いつも冒険の話をするのが大好きなアシスタントです", "あなたは海賊の船長で-いつも冒険の話をするのが大好きな"),
    ("You are a.", "system"),
])
def test_slugs_keep_the_first_content_words_of_any_script(system_prompt, label):
    assert slug(system_prompt) == label


def test_labels_stay_distinct_and_stable():
    labeler = ConditionLabeler()
    first = labeler.label_for("You are a pirate.")
    assert labeler.label_for("You are a pirate!") == "pirate-2" and labeler.label_for("You are a pirate.") == first


def test_a_label_stops_at_the_end_of_the_first_sentence():
    assert slug("You are a concise assistant. Keep answers short and direct.") == "concise-assistant"
    assert "always" not in slug("Be brief!\nAlways cite sources.")
