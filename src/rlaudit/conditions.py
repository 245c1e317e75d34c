"""Conditions: which system prompt (persona, setting) a rollout was generated under.

The goblin incident was only visible per condition (one persona paid for the tic, all personas learned it), so
every rollout carries a readable condition label. Labels come from user rules (`--condition NAME=REGEX`, matched
against the whole prompt, first match wins) or, failing those, from the system prompt found in the prompt text:

- ChatML:          `<|im_start|>system\\n...<|im_end|>`
- Llama 3:         `<|start_header_id|>system<|end_header_id|>...<|eot_id|>`
- Llama 2/Mistral: `<<SYS>>...<</SYS>>`
- plain text and rendered message lists: a leading `system: ...` block up to the next `user:`/`assistant:` line.
- the same templates decoded with `skip_special_tokens=True` (what TRL and verl log): `system\n...\nuser\n...`.

An automatic label is a short slug of the system prompt's first content words ("You are a nerdy, playful
assistant" -> `nerdy-playful-assistant`); rollouts without a system prompt get `none`. A `ConditionLabeler`
keeps the prompt -> label map so that labels stay stable across files and ingests (the store persists it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from .errors import RlauditError
from .schema import NO_CONDITION

SYSTEM_PROMPT_PATTERNS = [
    r"(?s)<\|im_start\|>system\s*\n(?P<sys>.*?)<\|im_end\|>",
    r"(?s)<\|start_header_id\|>system<\|end_header_id\|>\s*(?P<sys>.*?)<\|eot_id\|>",
    r"(?s)<<SYS>>\s*(?P<sys>.*?)\s*<</SYS>>",
    r"(?is)^\s*system\s*:\s*(?P<sys>.*?)\s*(?:\n\s*(?:user|human|assistant)\s*:|$)",
    # Prompts decoded with skip_special_tokens=True (TRL >= 0.26, verl) lose the template's special tokens:
    # ChatML becomes "system\n...\nuser\n...", Llama 3 becomes "system\n\n...user\n\n...".
    r"(?s)^system\n(?P<sys>.*?)\n(?:user|human)\n",
    r"(?s)^system\n\n(?:Cutting Knowledge Date:[^\n]*\n(?:Today Date:[^\n]*\n)?\n?)?(?P<sys>.*?)user\n\n",
]

#: Where a chat template starts an assistant (generated) turn: the generation prompt. NeMo RL logs a sample's
#: templated conversation, and the text after the last of these headers is what the policy generated.
ASSISTANT_HEADER_PATTERNS = [
    r"<\|im_start\|>assistant[ \t]*\n",  # ChatML (Qwen, ...)
    r"<\|start_header_id\|>assistant<\|end_header_id\|>\n*",  # Llama 3
    r"<start_of_turn>model\n",  # Gemma
    r"<\|assistant\|>\n?",  # Phi-3, Zephyr
    r"\[/INST\]\s*",  # Llama 2 / Mistral
]
ASSISTANT_HEADER = re.compile("|".join(f"(?:{p})" for p in ASSISTANT_HEADER_PATTERNS))
#: A turn header of any role, and the tokens that end a turn or a sequence, in the same templates.
TURN_HEADER = re.compile(r"<\|im_start\|>[a-z_]+[ \t]*\n|<\|start_header_id\|>[a-z_]+<\|end_header_id\|>\n*"
                         r"|<start_of_turn>[a-z_]+\n|<\|(?:system|user|assistant|tool)\|>\n?|\[/?INST\]|<<SYS>>|<</SYS>>")
END_OF_TURN = re.compile(r"<\|im_end\|>\n?|<\|eot_id\|>|<end_of_turn>\n?|<\|end\|>\n?|<\|endoftext\|>|</s>"
                         r"|<\|begin_of_text\|>|<s>")


def has_template_markup(text: str) -> bool:
    """True when `text` holds a chat-template turn header (it was rendered by a template, not raw content)."""
    return TURN_HEADER.search(text) is not None


def strip_template(text: str) -> str:
    """The message text inside a templated chunk: headers and end-of-turn tokens removed."""
    return END_OF_TURN.sub("", TURN_HEADER.sub("", text)).strip()


_STOP = {
    "you", "are", "a", "an", "the", "and", "or", "of", "to", "in", "with", "who", "that", "is", "your", "you're",
    "youre", "as", "for", "be", "always", "very", "i", "am", "will", "should", "this", "please",
}
_MAX_WORDS = 3
_MAX_CHARS = 16  # per word: a script written without spaces makes one long 'word'


#: What a prompt must hold for each of `SYSTEM_PROMPT_PATTERNS` to match it: (substring, prefix), each None when
#: the pattern needs none. Arrow compiles a pattern on every call (~30-90 us each, six a file), and most runs use
#: one template: a pattern no prompt can match is skipped after a literal test (~5-20 us), with the same result.
_PATTERN_NEEDS = [
    ("<|im_start|>system", None),
    ("<|start_header_id|>system<|end_header_id|>", None),
    ("<<SYS>>", None),
    (":", None),
    (None, "system\n"),
    (None, "system\n\n"),
]


def _may_match(prompts: pa.Array, needs: tuple[str | None, str | None]) -> bool:
    """Whether some prompt holds what a pattern needs (`_PATTERN_NEEDS`): false only where it cannot match."""
    substring, prefix = needs
    if substring is not None:
        return pc.any(pc.match_substring(prompts, substring)).as_py() is True
    return pc.any(pc.starts_with(prompts, prefix)).as_py() is True


def extract_system_prompts(prompts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The system prompt of each prompt text (null where none of the known templates match): the first pattern
    that finds a non-empty one wins, so once every prompt has one the later patterns are not tried."""
    if isinstance(prompts, pa.ChunkedArray):
        prompts = prompts.combine_chunks()
    prompts = pc.fill_null(prompts.cast(pa.string()), "")
    out = pa.nulls(len(prompts), pa.string())
    for pattern, needs in zip(SYSTEM_PROMPT_PATTERNS, _PATTERN_NEEDS, strict=True):
        if out.null_count == 0:
            break
        if not _may_match(prompts, needs):
            continue
        found = pc.extract_regex(prompts, pattern)
        text = pc.utf8_trim_whitespace(pc.struct_field(found, "sys"))
        text = pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)
        out = pc.coalesce(out, text)
    return out


def slug(system_prompt: str) -> str:
    """A short readable label for a system prompt."""
    # the first sentence only ("You are a concise assistant. Keep answers short." -> concise-assistant): a
    # label must not take a word from the next instruction
    first = re.split(r"(?<=[.!?])\s+|\n", system_prompt.strip(), maxsplit=1)[0] if system_prompt.strip() else ""
    words = [w for w in re.findall(r"[^\W_]+(?:'[^\W_]+)?", first.lower()) if w not in _STOP]
    if not words:  # a first sentence of stop words only: fall back to the whole prompt
        words = [w for w in re.findall(r"[^\W_]+(?:'[^\W_]+)?", system_prompt.lower()) if w not in _STOP]
    return "-".join(w[:_MAX_CHARS] for w in words[:_MAX_WORDS]) or "system"


@dataclass
class ConditionRule:
    name: str
    pattern: str

    @classmethod
    def parse(cls, spec: str) -> ConditionRule:
        name, sep, pattern = spec.partition("=")
        if not sep or not name.strip() or not pattern:
            raise RlauditError(f"--condition expects NAME=REGEX, got {spec!r}")
        try:  # validated with the engine that will run it (RE2: no look-arounds or back-references)
            pc.match_substring_regex(pa.array([""]), pattern)
        except pa.ArrowInvalid as exc:
            raise RlauditError(f"--condition {name}: invalid regex {pattern!r}: {exc}") from None
        return cls(name.strip(), pattern)


@dataclass
class ConditionLabeler:
    """Assigns condition labels to batches of prompts, keeping labels stable across batches."""

    rules: list[ConditionRule] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)  # system prompt -> label

    def label_for(self, system_prompt: str) -> str:
        label = self.labels.get(system_prompt)
        if label is None:
            base = slug(system_prompt)
            taken = set(self.labels.values()) | {r.name for r in self.rules} | {NO_CONDITION}
            label, n = base, 2
            while label in taken:
                label, n = f"{base}-{n}", n + 1
            self.labels[system_prompt] = label
        return label

    def assign(self, prompts: pa.Array, system_prompts: pa.Array | None = None) -> tuple[pa.Array, pa.Array]:
        """Return (condition, system_prompt) arrays for a batch.

        `system_prompts` may be given by readers whose format keeps the system message separately; nulls in it
        are filled from the prompt text.
        """
        found = extract_system_prompts(prompts)
        if system_prompts is not None:
            found = pc.coalesce(system_prompts.cast(pa.string()), found)
        uniques = pc.unique(pc.drop_null(found)).to_pylist()
        mapping = pa.array([self.label_for(s) for s in uniques], pa.string())
        index = pc.index_in(found, value_set=pa.array(uniques, pa.string()))
        condition = pc.fill_null(pc.take(mapping, index), NO_CONDITION) if uniques else pa.array(
            [NO_CONDITION] * len(found), pa.string())
        if self.rules:
            text = pc.fill_null(prompts.cast(pa.string()), "")
            ruled = pa.nulls(len(text), pa.string())
            for rule in self.rules:
                hit = pc.match_substring_regex(text, rule.pattern)
                ruled = pc.if_else(pc.and_(pc.is_null(ruled), hit), pa.scalar(rule.name), ruled)
            condition = pc.coalesce(ruled, condition)
        return condition, found
