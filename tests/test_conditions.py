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


def _every_pattern(prompts):
    """`extract_system_prompts` as it was: every pattern run on every prompt, the first non-empty find kept."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from rlaudit.conditions import SYSTEM_PROMPT_PATTERNS

    prompts = pc.fill_null(prompts.cast(pa.string()), "")
    out = pa.nulls(len(prompts), pa.string())
    for pattern in SYSTEM_PROMPT_PATTERNS:
        text = pc.utf8_trim_whitespace(pc.struct_field(pc.extract_regex(prompts, pattern), "sys"))
        out = pc.coalesce(out, pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text))
    return out


def test_system_prompts_equal_every_pattern_run_on_every_prompt():
    """The patterns skipped after a literal test (no prompt holds what they need) or once every prompt has a
    system prompt give what running all of them gives, on prompts built from the templates' pieces."""
    import pyarrow as pa
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from rlaudit.conditions import extract_system_prompts

    pieces = ["<|im_start|>system\n", "<|im_end|>", "<|start_header_id|>system<|end_header_id|>", "<|eot_id|>",
              "<<SYS>>", "<</SYS>>", "system", "System", "SYSTEM", ":", " ", "\n", "\n\n", "user", "human",
              "assistant", "Cutting Knowledge Date: Dec 2023\n", "Today Date: 1 Jan\n", "You are a pirate.", "x",
              "é"]
    prompt = st.lists(st.sampled_from(pieces), max_size=12).map("".join)

    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.one_of(st.none(), prompt), max_size=8))
    def check(prompts):
        array = pa.array(prompts, pa.string())
        assert extract_system_prompts(array).equals(_every_pattern(array))

    check()
