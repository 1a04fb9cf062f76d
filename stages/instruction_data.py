"""Instruction-tuning data mixtures: FLAN / T0 / NIv2 (Tk-Instruct).

Pure functions, no torch. See the seed-systems spec (spec/seed_systems.md) section 4:
- FLAN 2021 (google-research/FLAN): examples-proportional mixing with seqio's rate rule
  (30k examples per dataset, cap K = 3000), round-robin templates, the options suffix;
- T0 (promptsource seqio tasks): a per-(dataset, prompt) cap;
- Tk-Instruct (src/ni_collator.py): the NIv2 source text under a token budget.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

T = TypeVar("T")
Template = str | Callable[[Mapping[str, object]], str]


def examples_proportional_rates(
    sizes: Mapping[str, int],
    cap: int | None = 3000,
    per_dataset_max: int | None = 30000,
    temperature: float = 1.0,
    scale: float = 1.0,
) -> dict[str, float]:
    """Mixing probabilities by seqio's `mixing_rate_num_examples`, as FLAN uses it.

    N_i is first truncated to `per_dataset_max` (FLAN's NUM_TRAIN_EXAMPLES = 30000), then
    r_i = min(scale * N_i, cap) ** (1 / temperature) and p_i = r_i / sum_j r_j.
    `cap=None` or `per_dataset_max=None` means no cap / no truncation.
    """
    if not sizes:
        raise ValueError("examples_proportional_rates: no datasets given")
    if cap is not None and cap <= 0:
        raise ValueError(f"examples_proportional_rates: cap must be positive, got {cap}")
    if temperature <= 0:
        raise ValueError(f"examples_proportional_rates: temperature must be positive, got {temperature}")
    if scale <= 0:
        raise ValueError(f"examples_proportional_rates: scale must be positive, got {scale}")
    if per_dataset_max is not None and per_dataset_max <= 0:
        raise ValueError(f"examples_proportional_rates: per_dataset_max must be positive, got {per_dataset_max}")
    negative = sorted(name for name, n in sizes.items() if n < 0)
    if negative:
        raise ValueError(f"examples_proportional_rates: negative dataset sizes for {negative}")

    rates = {}
    for name, n in sizes.items():
        if per_dataset_max is not None:
            n = min(n, per_dataset_max)
        rate = scale * n
        if cap is not None:
            rate = min(rate, cap)
        rates[name] = rate ** (1.0 / temperature)
    total = sum(rates.values())
    if total <= 0:
        raise ValueError("examples_proportional_rates: every dataset is empty")
    return {name: rate / total for name, rate in rates.items()}


def t0_rates(sizes: Mapping[str, int], templates: Mapping[str, int], threshold: int = 500_000) -> dict[str, int]:
    """T0's per-(dataset, prompt) cap (promptsource seqio tasks): N if N <= threshold,
    else threshold // num_templates. Returns, per dataset, the cap of each of its prompts."""
    if set(sizes) != set(templates):
        raise ValueError(
            f"t0_rates: sizes and templates name different datasets: {sorted(set(sizes) ^ set(templates))}"
        )
    caps = {}
    for name, n in sizes.items():
        num_templates = templates[name]
        if num_templates < 1:
            raise ValueError(f"t0_rates: dataset {name!r} has {num_templates} templates; needs at least 1")
        caps[name] = n if n <= threshold else threshold // num_templates
    return caps


def sample_mixture(
    datasets: Mapping[str, Sequence[T]], rates: Mapping[str, float], n: int, seed: int
) -> list[tuple[str, T]]:
    """Draw n (dataset name, example) pairs from a mixture, deterministic by seed.

    Each draw picks a dataset with probability rates[name] / sum(rates), then takes that
    dataset's next example in its own shuffled order, cycling through the same order when
    exhausted (examples-proportional mixing as in seqio, without replacement per epoch).
    Datasets absent from `rates` or with rate 0 are never drawn.
    """
    if n < 0:
        raise ValueError(f"sample_mixture: n must be non-negative, got {n}")
    if any(rate < 0 for rate in rates.values()):
        raise ValueError(f"sample_mixture: negative rates in {dict(rates)}")
    names = [name for name, rate in rates.items() if rate > 0]
    if not names:
        raise ValueError("sample_mixture: no dataset has a positive rate")
    for name in names:
        if name not in datasets:
            raise ValueError(f"sample_mixture: rate given for unknown dataset {name!r}")
        if not datasets[name]:
            raise ValueError(f"sample_mixture: dataset {name!r} has a positive rate but no examples")

    rng = random.Random(seed)
    orders = {}
    for name in names:
        order = list(range(len(datasets[name])))
        # A stream per dataset, so its order does not depend on which other datasets are mixed in.
        random.Random(f"{seed}:{name}").shuffle(order)
        orders[name] = order
    cursors = dict.fromkeys(names, 0)

    drawn = []
    for name in rng.choices(names, weights=[rates[name] for name in names], k=n):
        order = orders[name]
        drawn.append((name, datasets[name][order[cursors[name] % len(order)]]))
        cursors[name] += 1
    return drawn


def apply_templates(examples: Sequence[Mapping[str, object]], templates: Sequence[Template]) -> list[str]:
    """FLAN's batch_apply_template rule: in every run of len(templates) consecutive examples,
    the i-th uses template i, so every template is used equally often.

    A template is a format string over the example's fields ("{question}") or a callable
    taking the example and returning text.
    """
    if not templates:
        raise ValueError("apply_templates: no templates given")
    texts = []
    for i, example in enumerate(examples):
        template = templates[i % len(templates)]
        texts.append(template(example) if callable(template) else template.format(**example))
    return texts


def format_options(options: Sequence[str]) -> str:
    """FLAN's options suffix (preprocessors.format_options): "OPTIONS:\\n- " + "\\n- ".join(options)."""
    if not options:
        raise ValueError("format_options: no options given")
    return "OPTIONS:\n- " + "\n- ".join(options)


def _with_period(text: str) -> str:
    """Tk-Instruct's rule: add a period unless the field already ends in punctuation."""
    return text if text and text[-1] in string.punctuation else text + "."


def _demonstration(kind: str, i: int, example: tuple[str, str]) -> str:
    x, y = example
    return f" {kind} Example {i} -\nInput: {_with_period(x)}\n Output: {_with_period(y)}\n\n"


def tk_instruct_prompt(
    definition: str,
    positives: Sequence[tuple[str, str]],
    input_text: str,
    count_tokens: Callable[[str], int],
    max_tokens: int = 1024,
    negatives: Sequence[tuple[str, str]] = (),
) -> str:
    """Tk-Instruct's NIv2 source text (src/ni_collator.py):

        "Definition: {def}.\\n\\n"
        + " Positive Example i -\\nInput: {x}.\\n Output: {y}.\\n\\n" for each positive
        + " Negative Example i -\\nInput: {x}.\\n Output: {y}.\\n\\n" for each negative
        + "Now complete the following example -\\nInput: {x}.\\nOutput: "

    A period is added to a field only when it does not end in punctuation. Positives are
    added in order while the whole text stays <= max_tokens by count_tokens; the first that
    does not fit and all later positives are dropped; then negatives likewise. The definition
    and the final input are always kept, even over budget. An empty definition omits its
    section (Tk-Instruct's "examples only" encoding).
    """
    head = f"Definition: {_with_period(definition)}\n\n" if definition else ""
    tail = f"Now complete the following example -\nInput: {_with_period(input_text)}\nOutput: "
    demos = ""
    for kind, examples in (("Positive", positives), ("Negative", negatives)):
        for i, example in enumerate(examples, start=1):
            demo = _demonstration(kind, i, example)
            if count_tokens(head + demos + demo + tail) > max_tokens:
                break
            demos += demo
    return head + demos + tail
