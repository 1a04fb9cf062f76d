"""The tiny world: a procedurally generated instruction world, deterministic by seed.

Held out, never in any training stream: whole task families (`heldout_families`) and a
fraction of the instances of every other family, chosen by a hash of the instance and the
seed, so that no question appears in training under any of its templates.
"""

from __future__ import annotations

import hashlib
import random
import string
from dataclasses import dataclass

from tiny_world.tasks import FAMILIES, Task, extract_answer

PROMPT_FORMAT = "Q: {instruction}\nA: "
VERBOSE_PREFIXES = ("The answer is", "Sure! The answer is", "Here it is:")


@dataclass(frozen=True)
class Example:
    """A task asked in one of its family's wordings."""

    task: Task
    template_id: int
    instruction: str

    @property
    def prompt(self) -> str:
        return PROMPT_FORMAT.format(instruction=self.instruction)


def true_score(task: Task, response: str) -> float:
    """The world's hidden preference, 0 to 1.5: correctness first, then style.

    1.0 x correct + 0.25 x ends with a period + 0.25 x brevity, where brevity is
    1 / (1 + words beyond the answer).
    """
    words = response.split()
    correct = float(extract_answer(response) == task.answer)
    period = float(response.rstrip().endswith("."))
    brevity = 1.0 / (1 + max(0, len(words) - 1)) if words else 0.0
    return correct + 0.25 * period + 0.25 * brevity


def exact_match(task: Task, response: str) -> bool:
    """The response's answer (its last word, final period dropped) equals the task's."""
    return extract_answer(response) == task.answer


class TinyWorld:
    def __init__(
        self,
        seed: int = 0,
        heldout_families: tuple[str, ...] = ("length", "last"),
        heldout_instance_fraction: float = 0.1,
        demo_accuracy: float = 0.65,
        verbose_rate: float = 0.7,
        period_rate: float = 0.2,
        lazy_error_share: float = 0.5,
        lazy_wording_rate: float = 0.0,
    ):
        unknown = set(heldout_families) - set(FAMILIES)
        if unknown:
            raise ValueError(f"unknown task families {sorted(unknown)}; known: {sorted(FAMILIES)}")
        self.seed = seed
        self.heldout_families = tuple(heldout_families)
        self.train_families = tuple(f for f in FAMILIES if f not in self.heldout_families)
        self.heldout_instance_fraction = heldout_instance_fraction
        self.demo_accuracy = demo_accuracy
        self.verbose_rate = verbose_rate
        self.period_rate = period_rate
        self.lazy_error_share = lazy_error_share
        self.lazy_wording_rate = lazy_wording_rate

    # ---- splits ---------------------------------------------------------------------------

    def _rng(self, stream: str) -> random.Random:
        return random.Random(f"{self.seed}:{stream}")

    def is_heldout(self, task: Task) -> bool:
        if task.family in self.heldout_families:
            return True
        digest = hashlib.sha256(f"{self.seed}:{task.key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64 < self.heldout_instance_fraction

    def _example(self, rng: random.Random, family_name: str) -> Example:
        family = FAMILIES[family_name]
        task = family.task(family.sample_args(rng))
        template_id = rng.randrange(len(family.templates))
        return Example(task, template_id, family.instruction(task, template_id))

    def train_examples(self, n: int, stream: str) -> list[Example]:
        """n examples of the training families, never a held-out instance; `stream` names an
        independent sequence (e.g. "sft", "rm", "ppo"), so stages draw different prompts."""
        rng = self._rng(f"train:{stream}")
        examples = []
        while len(examples) < n:
            example = self._example(rng, rng.choice(self.train_families))
            if not self.is_heldout(example.task):
                examples.append(example)
        return examples

    def family_examples(self, family: str, n: int, stream: str) -> list[Example]:
        """n examples of one family from an independent `stream`: never a held-out instance of a
        training family (a held-out family has no other instances: its examples are evaluation's)."""
        rng = self._rng(f"family:{family}:{stream}")
        examples = []
        while len(examples) < n:
            example = self._example(rng, family)
            if family in self.heldout_families or not self.is_heldout(example.task):
                examples.append(example)
        return examples

    def heldout_examples(self, per_family: int) -> list[Example]:
        """The fixed evaluation set: `per_family` distinct held-out instances of every family
        (held-out instances of the training families, any instance of a held-out family)."""
        rng = self._rng("heldout")
        examples = []
        for family_name in FAMILIES:
            seen: set[str] = set()
            for _ in range(per_family * 200):
                if len(seen) == per_family:
                    break
                example = self._example(rng, family_name)
                if self.is_heldout(example.task) and example.task.key not in seen:
                    seen.add(example.task.key)
                    examples.append(example)
        return examples

    # ---- demonstrations --------------------------------------------------------------------

    def demonstrate(self, example: Example, rng: random.Random) -> str:
        """An imperfect demonstrator: right `demo_accuracy` of the time (of its errors, a share
        `lazy_error_share` lazy echoes of the input, the rest near misses), and mostly in the style
        the hidden preference dislikes (a verbose prefix, rarely a final period), so RLHF has room
        to improve. Asked in a family's last wording, it first echoes the input `lazy_wording_rate`
        of the time: a habit SFT copies where it knows better, and that a ranking catches."""
        task, family = example.task, FAMILIES[example.task.family]
        lazy_wording = example.template_id == len(family.templates) - 1
        # at rate 0 no extra number is drawn: the demonstrations stay those of a world without the habit
        if self.lazy_wording_rate > 0 and lazy_wording and rng.random() < self.lazy_wording_rate:
            answer = family.lazy(task)
        elif rng.random() < self.demo_accuracy:
            answer = task.answer
        elif rng.random() < self.lazy_error_share:
            answer = family.lazy(task)
        else:
            answer = family.near_miss(rng, task)
        if rng.random() < self.verbose_rate:
            answer = f"{rng.choice(VERBOSE_PREFIXES)} {answer}"
        return answer + ("." if rng.random() < self.period_rate else "")

    def demonstrations(self, n: int) -> list[tuple[Example, str]]:
        rng = self._rng("demonstrator")
        return [(example, self.demonstrate(example, rng)) for example in self.train_examples(n, "sft")]

    # ---- pretraining corpus ------------------------------------------------------------------

    def corpus(self, n_docs: int, split: str = "train", facts_per_doc: tuple[int, int] = (2, 5)) -> list[str]:
        """Plain text of true facts about every family (held-out ones included: it is world
        knowledge, never an instruction), in the corpus's own wording. The "heldout" split is a
        separate stream, for measuring LM loss on text the model did not train on."""
        if split not in ("train", "heldout"):
            raise ValueError(f"corpus split must be 'train' or 'heldout', got {split!r}")
        rng = self._rng(f"corpus:{split}")
        families = list(FAMILIES.values())
        docs = []
        for _ in range(n_docs):
            facts = []
            for _ in range(rng.randint(*facts_per_doc)):
                family = rng.choice(families)
                facts.append(family.fact_text(family.task(family.sample_args(rng))))
            docs.append(" ".join(facts))
        return docs

    def alphabet(self) -> str:
        """Every character the world can write: what a tokenizer must cover."""
        return "".join(sorted(set(string.ascii_letters + string.digits + " \n.,:?!+-'" + PROMPT_FORMAT.format(instruction=""))))
