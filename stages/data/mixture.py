"""Instruction-tuning data mixtures: FLAN / T0 / NIv2 (Tk-Instruct).

Pure functions, no torch. See the seed-systems spec (spec/seed_systems.md) section 4:
- FLAN 2021 (google-research/FLAN): examples-proportional mixing with seqio's rate rule
  (30k examples per dataset, cap K = 3000), round-robin templates, the options suffix;
- T0 (promptsource seqio tasks): a per-(dataset, prompt) cap;
- Tk-Instruct (src/ni_collator.py): the NIv2 source text under a token budget.

Then the SFT mixture of the config's `data.mixture`: datasets from local files or tiny-world task
families, drawn by the mixing rule and rendered in FLAN's or Tk-Instruct's style; and the tiny
world's evaluation prompts in the same style, so held-out families are asked as training asked.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from common.errors import InputError
from tiny_world import FAMILIES, PROMPT_FORMAT, Example, TinyWorld

if TYPE_CHECKING:
    from common.config import MixtureDataset, MixtureSection

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


# ---- the SFT mixture of data.mixture ------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """One example of a mixture dataset, in every form a style may ask for."""

    fields: Mapping[str, object]  # what templates format
    target: str
    input: str  # the niv2 "Input"
    options: tuple[str, ...] | None = None
    wrong: str | None = None  # a wrong output, for niv2 negative examples


@dataclass(frozen=True)
class MixtureTask:
    """A dataset of the mixture: its instances, wordings and definition, and in the niv2 style its
    demonstration pool (instances kept out of training); `world` when it is a tiny-world family (prompts
    then take the world's "Q: ...\nA: " form)."""

    name: str
    instances: list[Instance]
    templates: tuple[str, ...]
    definition: str
    world: bool
    demos: list[Instance] = field(default_factory=list)


def family_instance(example: Example, rng: random.Random) -> Instance:
    family = FAMILIES[example.task.family]
    options = family.options(example.task) if family.options else None
    return Instance(family.fields(example.task), example.task.answer, family.input_text(example.task), options,
                    family.near_miss(rng, example.task))


def family_task(world: TinyWorld, name: str, family: str, size: int) -> MixtureTask:
    if family not in FAMILIES:
        raise InputError(f"data.mixture dataset {name!r}: unknown tiny-world family {family!r}; known: {sorted(FAMILIES)}")
    if family in world.heldout_families:
        raise InputError(
            f"data.mixture dataset {name!r}: family {family!r} is in world.heldout_families; training on it would "
            "leak the held-out evaluation"
        )
    rng = random.Random(f"mixture:{name}")
    examples = world.family_examples(family, size, stream=f"mixture:{name}")
    return MixtureTask(name, [family_instance(e, rng) for e in examples], FAMILIES[family].templates,
                       FAMILIES[family].definition, world=True)


def file_task(dataset: MixtureDataset) -> MixtureTask:
    from stages.data.files import open_dataset

    where = f"data.mixture dataset {dataset.name!r}"
    records = open_dataset(Path(dataset.path), f"{where} ({dataset.path})").to_list()
    if not records:
        raise InputError(f"{where}: {dataset.path} has no records")
    input_template = dataset.input or dataset.templates[0]
    instances = []
    for index, record in enumerate(records):
        at = f"{dataset.path} record {index}"
        try:
            texts = [template.format(**record) for template in (*dataset.templates, dataset.target, input_template)]
        except KeyError as exc:
            raise InputError(f"{at}: a template of {where} names field {exc.args[0]!r}, which the record lacks "
                             f"(it has {sorted(record)})") from None
        options = None
        if dataset.options_field is not None:
            options = record.get(dataset.options_field)
            if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
                raise InputError(f"{at}: {dataset.options_field!r} must be a non-empty list of strings (options_field)")
            options = tuple(options)
        instances.append(Instance(record, texts[-2], texts[-1], options))
    return MixtureTask(dataset.name, instances, tuple(dataset.templates), dataset.definition or "", world=False)


def mixture_tasks(mixture: MixtureSection, world: TinyWorld) -> list[MixtureTask]:
    names = [d.name for d in mixture.datasets]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"data.mixture.datasets: names {repeated} are used more than once")
    tasks = [family_task(world, d.name, d.family, d.size) if d.family else file_task(d) for d in mixture.datasets]
    if mixture.per_dataset_max is not None:
        tasks = [replace(t, instances=t.instances[: mixture.per_dataset_max]) for t in tasks]
    if mixture.style == "niv2":
        kept = mixture.niv2.pool_size
        too_small = [t.name for t in tasks if len(t.instances) <= kept]
        if too_small:
            raise InputError(f"data.mixture: datasets {too_small} have no instances left after the {kept} kept as "
                             "demonstrations (niv2.positives, or niv2.pool with retrieve)")
        if mixture.niv2.negatives and not all(t.world for t in tasks):
            raise InputError("data.mixture.niv2.negatives > 0 needs wrong outputs, which only tiny-world families have")
        # a task's demonstrations are its own, as NIv2's are, and never trained on as instances
        tasks = [replace(t, instances=t.instances[kept:], demos=t.instances[:kept]) for t in tasks]
    return tasks


RETRIEVAL_INSTRUCTION = "Represent the example input for retrieving similar examples: "


def retrieve_demonstrations(instances: Sequence[Instance], pool: Sequence[Instance], embedder, k: int,
                            diversity: float = 0.5) -> list[list[Instance]]:
    """For each instance, k demonstrations from `pool`: maximal marginal relevance over INSTRUCTOR-style
    embeddings of the inputs (close to the instance, not to each other)."""
    from stages.models.embeddings import mmr

    pool_embeddings = embedder.encode([d.input for d in pool], RETRIEVAL_INSTRUCTION)
    queries = embedder.encode([i.input for i in instances], RETRIEVAL_INSTRUCTION)
    return [[pool[j] for j in mmr(pool_embeddings, query, k, diversity)] for query in queries]


def demonstrations(task: MixtureTask, instances: Sequence[Instance], mixture: MixtureSection, embedder) -> list[list[Instance]]:
    """Each instance's demonstrations in the niv2 style: retrieved from the task's pool, or its first ones."""
    niv2 = mixture.niv2
    k = max(niv2.positives, niv2.negatives)
    if niv2.retrieve:
        return retrieve_demonstrations(instances, task.demos, embedder, k)
    return [task.demos[:k]] * len(instances)


def render_prompt(task: MixtureTask, instance: Instance, template_id: int, mixture: MixtureSection,
                  count_tokens: Callable[[str], int], demos: Sequence[Instance] = ()) -> str:
    """An instance's prompt in the mixture's style: FLAN's (a template, then the options block when the
    dataset has answer choices) or Tk-Instruct's (definition, the positive and negative examples from
    `demos`, input)."""
    if mixture.style == "niv2":
        niv2 = mixture.niv2
        return tk_instruct_prompt(
            task.definition if niv2.definition else "",
            [(d.input, d.target) for d in demos[: niv2.positives]],
            instance.input,
            count_tokens,
            niv2.max_tokens,
            negatives=[(d.input, d.wrong) for d in demos[: niv2.negatives]],
        )
    text = task.templates[template_id].format(**instance.fields)
    if mixture.options_suffix and instance.options:
        text += "\n" + format_options(instance.options)
    return PROMPT_FORMAT.format(instruction=text) if task.world else text


def retrieval_embedder(mixture: MixtureSection):
    from stages.models.embeddings import load_embedder

    if mixture.style == "niv2" and mixture.niv2.retrieve:
        return load_embedder(mixture.niv2.embedder, "data.mixture.niv2.embedder")
    return None


def build_mixture(mixture: MixtureSection, world: TinyWorld, count_tokens: Callable[[str], int], seed: int) -> dict[str, list[str]]:
    """The SFT records of data.mixture: `examples` draws by the mixing rule, each rendered in the
    mixture's style; columns prompt, completion and dataset."""
    tasks = {t.name: t for t in mixture_tasks(mixture, world)}
    pools = {name: t.instances for name, t in tasks.items()}
    if mixture.rule == "t0_cap":
        # T0: every (dataset, template) pair is a task of its own, each with the dataset's per-prompt cap
        caps = t0_rates({n: len(p) for n, p in pools.items()}, {n: len(tasks[n].templates) for n in pools}, mixture.t0_threshold)
        pairs = {(n, i): p for n, p in pools.items() for i in range(len(tasks[n].templates))}
        rates = {pair: float(min(len(pools[pair[0]]), caps[pair[0]])) for pair in pairs}
        drawn = [((n, i), instance) for (n, i), instance in sample_mixture(pairs, rates, mixture.examples, seed)]
    else:
        rates = examples_proportional_rates({n: len(p) for n, p in pools.items()}, mixture.cap, None, mixture.temperature)
        used: dict[str, int] = {}
        drawn = []
        # FLAN's round robin: a dataset's i-th drawn example takes its template i mod (number of templates)
        for name, instance in sample_mixture(pools, rates, mixture.examples, seed):
            drawn.append(((name, used.get(name, 0) % len(tasks[name].templates)), instance))
            used[name] = used.get(name, 0) + 1
    demos: list[Sequence[Instance]] = [()] * len(drawn)
    if mixture.style == "niv2":
        embedder = retrieval_embedder(mixture)
        for name, task in tasks.items():
            rows = [i for i, ((n, _), _) in enumerate(drawn) if n == name]
            for row, chosen in zip(rows, demonstrations(task, [drawn[i][1] for i in rows], mixture, embedder)):
                demos[row] = chosen
    records: dict[str, list[str]] = {"prompt": [], "completion": [], "dataset": []}
    for ((name, template_id), instance), chosen in zip(drawn, demos):
        records["prompt"].append(render_prompt(tasks[name], instance, template_id, mixture, count_tokens, chosen))
        records["completion"].append(instance.target)
        records["dataset"].append(name)
    return records


def world_eval_prompts(examples: Sequence[Example], mixture: MixtureSection | None, world: TinyWorld,
                       count_tokens: Callable[[str], int]) -> list[str]:
    """Tiny-world evaluation prompts, asked the way SFT's data asked: the world's own form without a
    mixture, else the mixture's style (niv2: the family's definition and demonstrations from a pool of
    its own, retrieved per example with niv2.retrieve)."""
    if mixture is None:
        return [e.prompt for e in examples]
    embedder = retrieval_embedder(mixture)
    prompts: list[str] = [""] * len(examples)
    for name in dict.fromkeys(e.task.family for e in examples):
        family = FAMILIES[name]
        rng = random.Random(f"eval:{name}")
        pool = [family_instance(e, rng) for e in world.family_examples(name, mixture.niv2.pool_size, stream=f"positives:{name}")]
        task = MixtureTask(name, [], family.templates, family.definition, world=True, demos=pool)
        rows = [i for i, e in enumerate(examples) if e.task.family == name]
        instances = [family_instance(examples[i], rng) for i in rows]
        chosen = demonstrations(task, instances, mixture, embedder) if mixture.style == "niv2" else [()] * len(rows)
        for row, instance, demos in zip(rows, instances, chosen):
            prompts[row] = render_prompt(task, instance, examples[row].template_id, mixture, count_tokens, demos)
    return prompts
