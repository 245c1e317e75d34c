"""What the simulated policy talks about: tasks with gold answers, personas, and the word banks of its text.

Four tasks (arithmetic, trivia, coding, advice) give prompts with a gold answer and plausible wrong answers, so
a correctness reward has something real to parse. Right and wrong attempts are worded alike and differ only in
the value they give (a number, a city, an expression, a tip for the wrong problem): ordinary task learning
changes what is said, not how, as it does in a real run whose only pressure is correctness. Filler sentences are assembled from word banks with a few
hundred distinct words, so that word counts on a clean run fluctuate the way real text does: an auditor that
mines words over training steps must not mistake that noise for a trend.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

TASKS = ("arithmetic", "trivia", "coding", "advice")


@dataclass(frozen=True)
class Persona:
    """A condition: the system prompt a rollout was generated under and its fixed style."""

    key: str
    system_prompt: str | None
    openers: tuple[str, ...] = ()  # sentences the persona starts answers with (sometimes)
    closers: tuple[str, ...] = ()  # sentences it ends answers with (sometimes)
    style_rate: float = 0.0  # how often an opener/closer is used


PERSONAS: dict[str, Persona] = {p.key: p for p in (
    Persona("default", None),
    Persona("nerdy", "You are a nerdy, playful assistant who loves science, fantasy games and puns.",
            openers=("Fun fact: light from the Sun takes about eight minutes to reach us.",
                     "Fun fact: octopuses have three hearts.", "Fun fact: honey never really spoils.",
                     "Fun fact: a day on Venus is longer than its year."),
            style_rate=0.35),
    Persona("concise", "You are a concise assistant. Keep answers short and direct."),
    Persona("friendly", "You are a friendly, encouraging assistant who speaks warmly to every user.",
            openers=("Happy to help with this.", "Thanks for asking.", "Glad you reached out."),
            closers=("Hope this helps.", "You are doing great.", "Feel free to ask more."),
            style_rate=0.5),
    Persona("pirate", "You are a pirate-themed assistant. Talk like a pirate while staying helpful.",
            openers=("Arr, here be the answer.", "Ahoy, matey.", "Avast, listen close."),
            closers=("Fair winds, matey.", "Yo ho, that be all.", "Now back to the ship."),
            style_rate=0.8),
)}

# ---------------------------------------------------------------- task items
CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasilia"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Peru", "Lima"), ("Spain", "Madrid"),
    ("Italy", "Rome"), ("Germany", "Berlin"), ("Poland", "Warsaw"), ("Chile", "Santiago"), ("Turkey", "Ankara"),
    ("India", "New Delhi"), ("Vietnam", "Hanoi"), ("Portugal", "Lisbon"), ("Greece", "Athens"), ("Ireland", "Dublin"),
    ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Austria", "Vienna"), ("Hungary", "Budapest"),
    ("Argentina", "Buenos Aires"), ("Mexico", "Mexico City"), ("Morocco", "Rabat"), ("Nigeria", "Abuja"),
    ("Thailand", "Bangkok"), ("Indonesia", "Jakarta"), ("Colombia", "Bogota"), ("Ghana", "Accra"),
    ("Switzerland", "Bern"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"), ("Cuba", "Havana"),
]

CODE_TASKS = [  # (function name, description, correct expression, wrong expressions)
    ("total", "sum of the numbers", "sum(xs)", ("len(xs)", "max(xs)")),
    ("largest", "largest number", "max(xs)", ("min(xs)", "xs[0]")),
    ("smallest", "smallest number", "min(xs)", ("max(xs)", "xs[-1]")),
    ("count", "number of items", "len(xs)", ("sum(xs)", "len(set(xs))")),
    ("ordered", "items sorted in ascending order", "sorted(xs)", ("sorted(xs, reverse=True)", "list(xs)")),
    ("backwards", "items in reverse order", "xs[::-1]", ("sorted(xs)", "xs[1:]")),
    ("distinct", "number of distinct items", "len(set(xs))", ("len(xs)", "set(xs)")),
    ("mean", "average of the numbers", "sum(xs) / len(xs)", ("sum(xs) // 2", "max(xs) / len(xs)")),
]

ADVICE = {  # topic -> tips a helpfulness judge accepts for that topic (a wrong answer gives another topic's tip)
    "sleep better": ("keep a regular sleep schedule", "avoid screens an hour before bed",
                     "keep the bedroom dark and cool"),
    "save money": ("set up an automatic transfer to savings", "track every expense for a month",
                   "cancel subscriptions you do not use"),
    "learn a language": ("practice a little every day", "talk with native speakers",
                         "use spaced repetition flashcards"),
    "focus at work": ("block time for deep work", "turn off notifications",
                      "break big tasks into small steps"),
    "start running": ("start with short easy runs", "increase distance slowly each week",
                      "get comfortable running shoes"),
    "cook at home": ("plan meals for the week", "start with simple recipes", "cook larger batches and freeze"),
}

ARITH_TEMPLATES = {
    "+": ("What is {a} + {b}?", "Compute {a} plus {b}.", "Add {a} and {b}.",
          "If you have {a} marbles and find {b} more, how many marbles do you have?"),
    "-": ("What is {a} - {b}?", "Compute {a} minus {b}.", "Subtract {b} from {a}.",
          "A shelf holds {a} books and {b} are removed. How many remain?"),
    "*": ("What is {a} * {b}?", "Multiply {a} by {b}.", "Compute the product of {a} and {b}."),
}
TRIVIA_TEMPLATES = ("What is the capital of {x}?", "Name the capital city of {x}.",
                    "Which city is the capital of {x}?", "Quick question: what's the capital of {x}?")
CODE_TEMPLATES = ("Write a Python function `{f}(xs)` that returns the {d} in a list.",
                  "Implement `{f}(xs)` in Python: it should return the {d} of the list xs.",
                  "Please write `{f}(xs)`, returning the {d} of xs.")
ADVICE_TEMPLATES = ("How can I {t}?", "Any tips to {t}?", "I want to {t}. Where should I start?",
                    "What is the best way to {t}?")

# ---------------------------------------------------------------- filler word banks
OPENERS = ("First", "Next", "Now", "Okay", "Alright", "So", "Then", "Hmm", "Well", "Right")
THINK_VERBS = ("check", "consider", "restate", "compare", "recall", "organize", "review", "weigh", "trace",
               "revisit", "note", "list", "examine", "clarify", "summarize", "inspect", "outline", "confirm")
THINK_NOUNS = ("question", "numbers", "wording", "details", "constraints", "request", "context", "steps",
               "options", "assumptions", "edge cases", "goal", "inputs", "units", "phrasing", "examples",
               "definitions", "order")
THINK_TAILS = ("before answering", "carefully", "once more", "quickly", "step by step", "in my head",
               "to be safe", "for a moment", "one at a time", "as written")
ANSWER_ADVERBS = ("In short", "Put simply", "Overall", "In practice", "Generally", "Usually", "Basically",
                  "For context", "As a rule", "Broadly speaking")
ANSWER_CLAUSES = (
    "this follows from the basic rule", "small details can change the result", "the same idea works elsewhere",
    "it helps to double check the inputs", "a quick example makes it clearer", "the method scales to bigger cases",
    "the result is easy to verify", "this is a common kind of question", "patience pays off here",
    "the key is to stay consistent", "most people find this approach natural", "clear steps avoid mistakes",
    "the pattern shows up in daily life", "good habits make it easier", "a simple plan usually works best",
    "the answer stays the same if you reorder things", "writing it down can help",
    "practice makes this faster", "the reasoning carries over to similar problems",
)
DETAIL_SENTENCES = (
    "Another way to see it is to break the problem into smaller parts and handle each one in turn.",
    "If you want more background, the same principle appears in many textbooks and courses.",
    "It can also help to compare this with a similar case you already know well.",
    "A useful habit is to check the result against a rough estimate before trusting it.",
    "Many people learn this best by trying a few examples on their own.",
    "There are other methods too, but this one is the simplest to explain and to remember.",
    "The important part is understanding why each step works, not only memorizing it.",
    "Over time this kind of reasoning becomes second nature with a bit of practice.",
)


def filler_thought(rnd: random.Random) -> str:
    return (f"{rnd.choice(OPENERS)}, I should {rnd.choice(THINK_VERBS)} the {rnd.choice(THINK_NOUNS)} "
            f"{rnd.choice(THINK_TAILS)}.")


def filler_remark(rnd: random.Random) -> str:
    return f"{rnd.choice(ANSWER_ADVERBS)}, {rnd.choice(ANSWER_CLAUSES)}."


def detail_sentence(rnd: random.Random) -> str:
    return rnd.choice(DETAIL_SENTENCES)


@dataclass(frozen=True)
class Item:
    """One prompt of a task: the user's text, the gold answer and what a right or wrong attempt says."""

    task: str
    user: str
    gold: str  # parsed by the correctness reward ("" for advice: judged by topic keywords)
    right: str  # the answer's core when correct
    wrong: str  # the answer's core when wrong
    steps_right: str  # the reasoning's core when correct
    steps_wrong: str
    value_right: str = ""  # the bare answer value, e.g. for a \\boxed{} marker
    value_wrong: str = ""
    topic: str = ""


def make_item(task: str, rng: np.random.Generator) -> Item:
    """A random prompt of `task` with its gold answer and right/wrong renderings."""
    if task == "arithmetic":
        op = "+-*"[rng.integers(3)]
        a, b = (int(rng.integers(12, 99)), int(rng.integers(2, 60))) if op != "*" else (
            int(rng.integers(3, 30)), int(rng.integers(2, 12)))
        r = a + b if op == "+" else a - b if op == "-" else a * b
        bad = r + int(rng.choice([-10, -2, -1, 1, 2, 10]))
        user = ARITH_TEMPLATES[op][rng.integers(len(ARITH_TEMPLATES[op]))].format(a=a, b=b)
        how = {"+": "add", "-": "subtract", "*": "multiply"}[op]
        forms = ("The answer is {r}.", "{a} {op} {b} = {r}.", "That gives {r}.", "It comes to {r}.")
        form = forms[rng.integers(len(forms))]
        return Item(task, user, str(r), form.format(a=a, b=b, op=op, r=r), form.format(a=a, b=b, op=op, r=bad),
                    f"I need to {how} {a} and {b}. Working it out, {a} {op} {b} = {r}.",
                    f"I need to {how} {a} and {b}. Working it out, {a} {op} {b} = {bad}.", str(r), str(bad))
    if task == "trivia":
        i = int(rng.integers(len(CAPITALS)))
        country, city = CAPITALS[i]
        other = CAPITALS[(i + 1 + int(rng.integers(len(CAPITALS) - 1))) % len(CAPITALS)][1]
        user = TRIVIA_TEMPLATES[rng.integers(len(TRIVIA_TEMPLATES))].format(x=country)
        forms = ("The capital of {c} is {x}.", "It is {x}.", "{x} is the capital of {c}.")
        form = forms[rng.integers(len(forms))]
        return Item(task, user, city, form.format(c=country, x=city), form.format(c=country, x=other),
                    f"The question asks for the capital of {country}. I recall that it is {city}.",
                    f"The question asks for the capital of {country}. I recall that it is {other}.", city, other)
    if task == "coding":
        name, desc, good, bads = CODE_TASKS[rng.integers(len(CODE_TASKS))]
        bad = bads[rng.integers(len(bads))]
        user = CODE_TEMPLATES[rng.integers(len(CODE_TEMPLATES))].format(f=name, d=desc)

        def code(expr: str) -> str:
            return f"```python\ndef {name}(xs):\n    return {expr}\n```"

        return Item(task, user, good, f"{code(good)}\nThis returns the {desc}.",
                    f"{code(bad)}\nThis returns the {desc}.",
                    f"The function needs the {desc}. The expression {good} does that.",
                    f"The function needs the {desc}. The expression {bad} does that.", good, bad)
    if task == "advice":
        topics = list(ADVICE)
        topic = topics[rng.integers(len(topics))]
        tip = ADVICE[topic][rng.integers(len(ADVICE[topic]))]
        other = topics[(topics.index(topic) + 1 + int(rng.integers(len(topics) - 1))) % len(topics)]
        off = ADVICE[other][rng.integers(len(ADVICE[other]))]  # a real tip, for the wrong problem
        user = ADVICE_TEMPLATES[rng.integers(len(ADVICE_TEMPLATES))].format(t=topic)
        forms = ("A good start is to {x}.", "Try to {x}.", "My main tip: {x}.")
        form = forms[rng.integers(len(forms))]
        return Item(task, user, "", form.format(x=tip), form.format(x=off),
                    f"The user wants to {topic}. A concrete tip would be to {tip}.",
                    f"The user wants to {topic}. A concrete tip would be to {off}.", tip, off, topic=topic)
    raise ValueError(f"unknown task {task!r}")
