"""Task families of the tiny world: how an instance is drawn, asked, answered, stated as a fact, and got wrong.

Every answer is a single word without spaces, so a response's answer is its last word
(`extract_answer`), whatever polite prefix the responder put before it.
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable

WORDS = (
    "cat dog sun map cup pen box hat bus car fox owl bee ant cow pig hen egg ice sky "
    "tree bird fish frog lion bear wolf duck goat seal crab moon star rain snow wind fire "
    "rock sand leaf rose corn milk salt rice cake door lamp desk book song ship boat king "
    "gold iron wool silk coin ring bell drum kite nest road park farm hill lake pond river "
    "apple grape lemon melon peach plum bread honey sugar water stone cloud storm light night "
    "mouse horse tiger zebra camel sheep snake eagle whale shark chair table clock glass plate "
    "spoon knife brush paper train plane truck wheel tower house bridge garden forest castle "
    "window pencil rabbit monkey turtle spider candle button basket bottle carpet dragon"
).split()


@dataclass(frozen=True)
class Task:
    """One instance of a family: its arguments and its correct answer."""

    family: str
    args: tuple[str, ...]
    answer: str

    @property
    def key(self) -> str:
        return f"{self.family}:{'|'.join(self.args)}"


@dataclass(frozen=True)
class Family:
    name: str
    templates: tuple[str, ...]  # instruction wordings, FLAN-style; fields are the args' names
    arg_names: tuple[str, ...]
    fact: str  # the same knowledge in pretraining-corpus wording
    sample_args: Callable[[random.Random], tuple[str, ...]]
    solve: Callable[..., str]
    near_miss: Callable[[random.Random, Task], str]  # a plausible wrong answer
    lazy: Callable[[Task], str]  # the lazy error: echo the input
    definition: str  # the task stated once, Natural-Instructions style (Tk-Instruct's "Definition")
    input_format: str  # the instance's input without an instruction (Tk-Instruct's "Input")
    options: Callable[[Task], tuple[str, ...]] | None = None  # answer choices, for FLAN's options suffix

    def task(self, args: tuple[str, ...]) -> Task:
        return Task(self.name, args, self.solve(*args))

    def fields(self, task: Task) -> dict[str, str]:
        return {**dict(zip(self.arg_names, task.args)), "answer": task.answer}

    def instruction(self, task: Task, template_id: int) -> str:
        return self.templates[template_id].format(**self.fields(task))

    def input_text(self, task: Task) -> str:
        return self.input_format.format(**self.fields(task))

    def fact_text(self, task: Task) -> str:
        return self.fact.format(**self.fields(task))


def _word(rng: random.Random) -> str:
    return rng.choice(WORDS)


def _swap_two(rng: random.Random, text: str) -> str:
    """Swap two adjacent characters that differ (a near miss); text unchanged if all equal."""
    spots = [i for i in range(len(text) - 1) if text[i] != text[i + 1]]
    if not spots:
        return text + text[-1]
    i = rng.choice(spots)
    return text[:i] + text[i + 1] + text[i] + text[i + 2 :]


def _off_by_one(rng: random.Random, task: Task) -> str:
    return str(max(0, int(task.answer) + rng.choice((-1, 1))))


def _sample_count(rng: random.Random) -> tuple[str, str]:
    word = _word(rng)
    letter = rng.choice(word) if rng.random() < 0.8 else rng.choice(string.ascii_lowercase)
    return (word, letter)


def _sample_digits(rng: random.Random) -> tuple[str]:
    return ("".join(rng.choice(string.digits) for _ in range(rng.choice((3, 4)))),)


def _lower_one(rng: random.Random, task: Task) -> str:
    i = rng.randrange(len(task.answer))
    return task.answer[:i] + task.answer[i].lower() + task.answer[i + 1 :]


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            name="add",
            templates=("What is {a} + {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}."),
            arg_names=("a", "b"),
            fact="{a} plus {b} is {answer}.",
            sample_args=lambda rng: (str(rng.randrange(10)), str(rng.randrange(10))),
            solve=lambda a, b: str(int(a) + int(b)),
            near_miss=_off_by_one,
            lazy=lambda task: task.args[0],
            definition="Add the two numbers",
            input_format="{a} and {b}",
        ),
        Family(
            name="sort",
            templates=(
                "Sort the digits {d}.",
                "Put the digits of {d} in ascending order.",
                "Arrange {d} from smallest to largest digit.",
            ),
            arg_names=("d",),
            fact="the digits of {d} in order are {answer}.",
            sample_args=_sample_digits,
            solve=lambda d: "".join(sorted(d)),
            near_miss=lambda rng, task: _swap_two(rng, task.answer),
            lazy=lambda task: task.args[0],
            definition="Sort the digits of the number in ascending order",
            input_format="{d}",
        ),
        Family(
            name="reverse",
            templates=("Reverse the word {w}.", "Spell {w} backwards.", "What is {w} written backwards?"),
            arg_names=("w",),
            fact="{w} backwards is {answer}.",
            sample_args=lambda rng: (_word(rng),),
            solve=lambda w: w[::-1],
            near_miss=lambda rng, task: _swap_two(rng, task.answer),
            lazy=lambda task: task.args[0],
            definition="Write the word backwards",
            input_format="{w}",
        ),
        Family(
            name="upper",
            templates=("Write {w} in capital letters.", "Uppercase the word {w}.", "Convert {w} to upper case."),
            arg_names=("w",),
            fact="{w} in capitals is {answer}.",
            sample_args=lambda rng: (_word(rng),),
            solve=lambda w: w.upper(),
            near_miss=_lower_one,
            lazy=lambda task: task.args[0],
            definition="Write the word in capital letters",
            input_format="{w}",
        ),
        Family(
            name="count",
            templates=(
                "How many times does {l} appear in {w}?",
                "Count the letter {l} in {w}.",
                "In the word {w}, count the {l}s.",
            ),
            arg_names=("w", "l"),
            fact="{w} has {answer} {l}.",
            sample_args=_sample_count,
            solve=lambda w, l: str(w.count(l)),
            near_miss=_off_by_one,
            lazy=lambda task: task.args[1],
            definition="Count how many times the letter appears in the word",
            input_format="{w}, {l}",
            options=lambda task: tuple(str(i) for i in range(len(task.args[0]) + 1)),
        ),
        Family(
            name="length",
            templates=("How many letters are in {w}?", "Count the letters of {w}.", "What is the length of the word {w}?"),
            arg_names=("w",),
            fact="{w} has {answer} letters.",
            sample_args=lambda rng: (_word(rng),),
            solve=lambda w: str(len(w)),
            near_miss=_off_by_one,
            lazy=lambda task: task.args[0],
            definition="Count the letters of the word",
            input_format="{w}",
        ),
        Family(
            name="last",
            templates=("What is the last letter of {w}?", "Name the final letter of {w}.", "Which letter ends the word {w}?"),
            arg_names=("w",),
            fact="{w} ends with {answer}.",
            sample_args=lambda rng: (_word(rng),),
            solve=lambda w: w[-1],
            near_miss=lambda rng, task: task.args[0][-2],
            lazy=lambda task: task.args[0],
            definition="Name the last letter of the word",
            input_format="{w}",
            options=lambda task: tuple(sorted(set(task.args[0]))),
        ),
    )
}


def extract_answer(response: str) -> str:
    """The answer a response gives: its last word, without a final period."""
    words = response.split()
    return words[-1].removesuffix(".") if words else ""
