"""Tests for stages/instruction_data.py: the CPU checks of the seed-systems spec
(spec/seed_systems.md) section 4, FLAN / T0 / NIv2 (Tk-Instruct), with hand-derived values."""

import json
import re
from collections import Counter, defaultdict

import pytest
from pydantic import ValidationError

from common.config import DataSection, MixtureSection
from common.errors import InputError
from stages.data.mixture import (
    Instance,
    apply_templates,
    build_mixture,
    examples_proportional_rates,
    format_options,
    mixture_tasks,
    retrieve_demonstrations,
    sample_mixture,
    t0_rates,
    tk_instruct_prompt,
    world_eval_prompts,
)
from tiny_world import TinyWorld
from tiny_world.tasks import FAMILIES

ABS = 1e-9
SPEC_SIZES = {"a": 100, "b": 3000, "c": 50000}


def words(text: str) -> int:
    """Whitespace-word counter, standing in for a tokenizer."""
    return len(text.split())


# ---- examples-proportional rates (seqio / FLAN) ------------------------------------------------


def test_spec_closed_form_rates():
    # per_dataset_max 30000: N = [100, 3000, 50000] -> [100, 3000, 30000];
    # cap K = 3000: r = [100, 3000, 3000]; sum 6100 -> p = [100, 3000, 3000] / 6100
    p = examples_proportional_rates(SPEC_SIZES)
    assert p == pytest.approx({"a": 100 / 6100, "b": 3000 / 6100, "c": 3000 / 6100}, abs=ABS)


def test_truncation_is_applied_before_cap_and_scale():
    # No cap: the 30k truncation alone turns 50000 into 30000: r = [100, 3000, 30000], sum 33100
    # (untruncated it would be 50000 / 53100).
    p = examples_proportional_rates(SPEC_SIZES, cap=None)
    assert p == pytest.approx({"a": 100 / 33100, "b": 3000 / 33100, "c": 30000 / 33100}, abs=ABS)
    # scale 0.05 shows the order: truncate first -> 0.05 * 30000 = 1500 (< K = 3000), while
    # scaling the untruncated 50000 would give 2500. r = [5, 150, 1500], sum 1655.
    p = examples_proportional_rates(SPEC_SIZES, scale=0.05)
    assert p == pytest.approx({"a": 5 / 1655, "b": 150 / 1655, "c": 1500 / 1655}, abs=ABS)


def test_per_dataset_max_binding_below_cap():
    # per_dataset_max 1000 < K 3000: N -> [100, 1000, 1000]; the cap never binds; sum 2100
    p = examples_proportional_rates(SPEC_SIZES, cap=3000, per_dataset_max=1000)
    assert p == pytest.approx({"a": 100 / 2100, "b": 1000 / 2100, "c": 1000 / 2100}, abs=ABS)


def test_temperature():
    # K = 900: N = [100, 400, 5000] -> [100, 400, 900].
    # T = 2: r = sqrt -> [10, 20, 30], sum 60 -> [1/6, 1/3, 1/2]
    sizes = {"a": 100, "b": 400, "c": 5000}
    p = examples_proportional_rates(sizes, cap=900, temperature=2.0)
    assert p == pytest.approx({"a": 1 / 6, "b": 1 / 3, "c": 1 / 2}, abs=ABS)
    # T = 0.5: r = square -> [10000, 160000, 810000], sum 980000 -> [1, 16, 81] / 98
    p = examples_proportional_rates(sizes, cap=900, temperature=0.5)
    assert p == pytest.approx({"a": 1 / 98, "b": 16 / 98, "c": 81 / 98}, abs=ABS)


@pytest.mark.parametrize(
    "sizes, kwargs, message",
    [
        ({}, {}, "no datasets"),
        (SPEC_SIZES, {"cap": 0}, "cap must be positive"),
        (SPEC_SIZES, {"cap": -5}, "cap must be positive"),
        (SPEC_SIZES, {"temperature": 0.0}, "temperature must be positive"),
        (SPEC_SIZES, {"temperature": -1.0}, "temperature must be positive"),
        ({"a": 0, "b": 0}, {}, "every dataset is empty"),
    ],
)
def test_rates_reject_bad_input(sizes, kwargs, message):
    with pytest.raises(ValueError, match=message):
        examples_proportional_rates(sizes, **kwargs)


# ---- sampling -----------------------------------------------------------------------------------


def test_sampling_frequencies_match_rates():
    # 10^5 draws: the standard error of a frequency is at most sqrt(0.25 / 1e5) = 0.0016,
    # so 0.01 absolute is > 6 standard errors.
    p = examples_proportional_rates(SPEC_SIZES)
    datasets = {name: [f"{name}{i}" for i in range(n)] for name, n in SPEC_SIZES.items()}
    draws = sample_mixture(datasets, p, n=100_000, seed=0)
    assert len(draws) == 100_000
    counts = Counter(name for name, _ in draws)
    for name in SPEC_SIZES:
        assert counts[name] / 100_000 == pytest.approx(p[name], abs=0.01)
    assert all(example.startswith(name) for name, example in draws)


def test_sampling_is_deterministic_and_cycles_a_shuffled_order():
    datasets = {"small": list(range(5)), "big": list(range(1000))}
    rates = {"small": 0.5, "big": 0.5}
    draws = sample_mixture(datasets, rates, n=200, seed=3)
    assert draws == sample_mixture(datasets, rates, n=200, seed=3)
    assert draws != sample_mixture(datasets, rates, n=200, seed=4)
    small = [x for name, x in draws if name == "small"]
    # Each epoch of 5 is a permutation of the dataset, and later epochs repeat the first.
    assert sorted(small[:5]) == [0, 1, 2, 3, 4]
    assert small[5:10] == small[:5]
    big = [x for name, x in draws if name == "big"]
    assert len(set(big)) == len(big)  # fewer than 1000 draws: no repeats


def test_sampling_rejects_bad_input():
    with pytest.raises(ValueError, match="no examples"):
        sample_mixture({"a": []}, {"a": 1.0}, n=3, seed=0)
    with pytest.raises(ValueError, match="unknown dataset"):
        sample_mixture({"a": [1]}, {"b": 1.0}, n=3, seed=0)
    with pytest.raises(ValueError, match="no dataset has a positive rate"):
        sample_mixture({"a": [1]}, {"a": 0.0}, n=3, seed=0)


# ---- T0 caps --------------------------------------------------------------------------------------


def test_t0_cap():
    # 600k > 500k: 500_000 // 12 = 41666 (12 * 41666 = 499992); 400k <= 500k: kept whole;
    # exactly 500k is not over the threshold, so kept whole too.
    caps = t0_rates({"big": 600_000, "mid": 400_000, "edge": 500_000}, {"big": 12, "mid": 12, "edge": 7})
    assert caps == {"big": 41_666, "mid": 400_000, "edge": 500_000}


def test_t0_cap_rejects_mismatch_and_zero_templates():
    with pytest.raises(ValueError, match="different datasets"):
        t0_rates({"a": 1}, {"b": 1})
    with pytest.raises(ValueError, match="at least 1"):
        t0_rates({"a": 600_000}, {"a": 0})


# ---- FLAN templates and options ---------------------------------------------------------------------


def test_templates_round_robin_and_equal_use():
    templates = ["A: {q}", "B: {q}", lambda ex: f"C: {ex['q']}"]
    examples = [{"q": str(i)} for i in range(9)]  # 9 = 3 runs of 3 templates
    texts = apply_templates(examples, templates)
    # i-th example of every run of 3 uses template i
    assert texts == ["A: 0", "B: 1", "C: 2", "A: 3", "B: 4", "C: 5", "A: 6", "B: 7", "C: 8"]
    assert Counter(t[0] for t in texts) == {"A": 3, "B": 3, "C": 3}
    with pytest.raises(ValueError):
        apply_templates(examples, [])


def test_options_block_renders_exactly():
    assert format_options(["yes", "no", "it is not possible to tell"]) == (
        "OPTIONS:\n- yes\n- no\n- it is not possible to tell"
    )
    assert format_options(["only"]) == "OPTIONS:\n- only"


# ---- Tk-Instruct source text ------------------------------------------------------------------------

DEFINITION = "Given a word, write it backwards"
POSITIVES = [("cat", "tac"), ("Reverse dog?", "god.")]
GOLDEN = (
    "Definition: Given a word, write it backwards.\n\n"
    " Positive Example 1 -\nInput: cat.\n Output: tac.\n\n"
    " Positive Example 2 -\nInput: Reverse dog?\n Output: god.\n\n"
    "Now complete the following example -\nInput: owl.\nOutput: "
)
# Whitespace words: definition block 7 (Definition: Given a word, write it backwards.),
# positive 1: 8 (Positive Example 1 - Input: cat. Output: tac.), positive 2: 9 (... Reverse dog? ...),
# final block 9 (Now complete the following example - Input: owl. Output:).
# Totals: none 7 + 9 = 16; one positive 24; both 33.


def test_tk_instruct_golden():
    assert words(GOLDEN) == 33
    assert tk_instruct_prompt(DEFINITION, POSITIVES, "owl", count_tokens=words) == GOLDEN


def test_tk_instruct_golden_with_negative():
    prompt = tk_instruct_prompt(
        "Reverse the word.", [("cat", "tac")], "Spell owl backwards?", count_tokens=words, negatives=[("dog", "dog")]
    )
    assert prompt == (
        "Definition: Reverse the word.\n\n"
        " Positive Example 1 -\nInput: cat.\n Output: tac.\n\n"
        " Negative Example 1 -\nInput: dog.\n Output: dog.\n\n"
        "Now complete the following example -\nInput: Spell owl backwards?\nOutput: "
    )


@pytest.mark.parametrize(
    "max_tokens, kept",
    [
        (33, 2),  # 33 <= 33: both positives
        (32, 1),  # second would make 33 > 32
        (24, 1),  # exactly at budget is kept
        (23, 0),  # first would make 24 > 23
        (5, 0),  # definition + input (16) are kept even over budget
    ],
)
def test_tk_instruct_drops_demonstrations_over_budget(max_tokens, kept):
    prompt = tk_instruct_prompt(DEFINITION, POSITIVES, "owl", count_tokens=words, max_tokens=max_tokens)
    expected = GOLDEN
    if kept < 2:
        expected = expected.replace(" Positive Example 2 -\nInput: Reverse dog?\n Output: god.\n\n", "")
    if kept < 1:
        expected = expected.replace(" Positive Example 1 -\nInput: cat.\n Output: tac.\n\n", "")
    assert prompt == expected
    assert prompt.count("Positive Example") == kept


def test_tk_instruct_stops_positives_at_first_overflow_then_tries_negatives():
    # Long positive: 4 + 1 + 10 + 1 + 1 = 17 words; 16 + 17 = 33 > 24, so positives stop there
    # (the short second positive, which alone would fit at 24, is dropped too).
    # Negative (dog, dog): 8 words; 16 + 8 = 24 <= 24, kept as "Negative Example 1".
    long_positive = ("a b c d e f g h i j", "x")
    prompt = tk_instruct_prompt(
        DEFINITION, [long_positive, ("cat", "tac")], "owl", count_tokens=words, max_tokens=24, negatives=[("dog", "dog")]
    )
    assert prompt == (
        "Definition: Given a word, write it backwards.\n\n"
        " Negative Example 1 -\nInput: dog.\n Output: dog.\n\n"
        "Now complete the following example -\nInput: owl.\nOutput: "
    )
    assert words(prompt) == 24


@pytest.mark.parametrize(
    "field, rendered",
    [("plain", "plain."), ("Is it?", "Is it?"), ("Done.", "Done."), ("Wow!", "Wow!"), ("a, b;", "a, b;")],
)
def test_period_rule(field, rendered):
    # A period is added only when the field does not already end in punctuation, in every field.
    prompt = tk_instruct_prompt(field, [(field, field)], field, count_tokens=words)
    assert prompt == (
        f"Definition: {rendered}\n\n"
        f" Positive Example 1 -\nInput: {rendered}\n Output: {rendered}\n\n"
        f"Now complete the following example -\nInput: {rendered}\nOutput: "
    )


# ---- the tiny world as a mixture of task families ---------------------------------------------------


def test_tiny_world_family_mixture():
    world = TinyWorld(seed=0)
    groups = defaultdict(list)
    for example in world.train_examples(3000, "instruction_mix"):
        groups[example.task.family].append(example)
    assert set(groups) == set(world.train_families)
    # Uneven sizes: add 40, sort 120, reverse 300, upper 500, count all of its (~600) examples.
    # Cap K = 200: r = [40, 120, 200, 200, 200], sum 760.
    keep = {"add": 40, "sort": 120, "reverse": 300, "upper": 500}
    datasets = {family: examples[: keep.get(family, len(examples))] for family, examples in groups.items()}
    assert len(datasets["count"]) > 200
    p = examples_proportional_rates({family: len(examples) for family, examples in datasets.items()}, cap=200)
    expected = {"add": 40 / 760, "sort": 120 / 760, "reverse": 200 / 760, "upper": 200 / 760, "count": 200 / 760}
    assert p == pytest.approx(expected, abs=ABS)

    draws = sample_mixture(datasets, p, n=100_000, seed=1)
    counts = Counter(family for family, _ in draws)
    for family, rate in expected.items():
        assert counts[family] / 100_000 == pytest.approx(rate, abs=0.01)
    assert all(example.task.family == family for family, example in draws)
    # "add" (40 examples, ~5263 draws) cycles: every one of its examples is drawn.
    assert {example for family, example in draws if family == "add"} == set(datasets["add"])

    # FLAN-style wordings over the sampled "add" examples: the family's 3 templates round-robin.
    family = FAMILIES["add"]
    sampled = [example for name, example in draws if name == "add"][:30]
    texts = apply_templates([family.fields(example.task) for example in sampled], family.templates)
    assert texts == [family.instruction(example.task, i % 3) for i, example in enumerate(sampled)]


# ---- data.mixture: the SFT mixture of the config -------------------------------------------------


def mixture(**kwargs) -> MixtureSection:
    datasets = kwargs.pop("datasets", [{"name": "add", "family": "add", "size": kwargs.pop("add_size", 50)},
                                       {"name": "count", "family": "count", "size": 400},
                                       {"name": "reverse", "family": "reverse", "size": 4000}])
    return MixtureSection(datasets=datasets, **kwargs)


def test_mixture_draws_by_the_capped_rule_with_round_robin_templates():
    # N = [50, 400, 4000], cap 400: r = [50, 400, 400], so p = [50, 400, 400] / 850
    records = build_mixture(mixture(cap=400, examples=20_000), TinyWorld(), words, seed=0)
    counts = Counter(records["dataset"])
    for name, rate in {"add": 50 / 850, "count": 400 / 850, "reverse": 400 / 850}.items():
        assert counts[name] / 20_000 == pytest.approx(rate, abs=0.01)
    # a dataset's i-th draw takes template i mod 3: the first three "add" prompts use the three wordings
    add = [(p, c) for p, c, d in zip(records["prompt"], records["completion"], records["dataset"]) if d == "add"]
    wordings = ["What is", "Add ", "Compute the sum"]
    assert [next(w for w in wordings if p.startswith("Q: " + w)) for p, _ in add[:6]] == wordings * 2
    assert all(int(p.split()[p.split().index("+") - 1]) + int(p.split()[p.split().index("+") + 1].rstrip("?")) == int(c)
               for p, c in add if "+" in p)


def test_mixture_per_dataset_max_truncates_before_the_rates():
    records = build_mixture(mixture(cap=None, per_dataset_max=50, examples=6000, add_size=4000), TinyWorld(), words, seed=0)
    counts = Counter(records["dataset"])
    assert all(counts[name] / 6000 == pytest.approx(1 / 3, abs=0.03) for name in ("add", "count", "reverse"))
    # "add" drew its 50 kept instances only: at most 50 distinct (a, b) pairs, out of 500 possible
    questions = {tuple(re.findall(r"\d+", p)) for p, d in zip(records["prompt"], records["dataset"]) if d == "add"}
    assert 20 < len(questions) <= 50


def test_mixture_options_suffix_on_classification_families_only():
    records = build_mixture(mixture(examples=300), TinyWorld(), words, seed=0)
    for prompt, completion, name in zip(records["prompt"], records["completion"], records["dataset"]):
        if name == "count":
            word = prompt.split("OPTIONS:")[0]
            assert "\nOPTIONS:\n- 0\n- 1\n" in prompt and prompt.endswith("\nA: ") and f"- {completion}\n" in prompt + "\n"
            assert word
        else:
            assert "OPTIONS" not in prompt
    plain = build_mixture(mixture(examples=300, options_suffix=False), TinyWorld(), words, seed=0)
    assert not any("OPTIONS" in p for p in plain["prompt"])


def test_mixture_t0_rule_makes_every_template_a_task():
    # T0: (dataset, template) pairs with the per-prompt cap; N = [50, 400, 4000] are under the threshold,
    # so a pair's rate is N: each template of a dataset is drawn equally often
    records = build_mixture(mixture(rule="t0_cap", examples=9000), TinyWorld(), words, seed=0)
    reverse = [p for p, d in zip(records["prompt"], records["dataset"]) if d == "reverse"]
    by_wording = Counter(p.split()[1] for p in reverse)  # Reverse / Spell / What
    assert len(reverse) / 9000 == pytest.approx(4000 / 4450, abs=0.02)
    assert all(n / len(reverse) == pytest.approx(1 / 3, abs=0.03) for n in by_wording.values())
    # threshold 300: count and reverse get 300 // 3 = 100 per prompt, add keeps N = 50 per prompt, so over
    # the 9 pairs the rates are 3 x 50 + 3 x 100 + 3 x 100 and reverse's share is 300 / 750
    capped = build_mixture(mixture(rule="t0_cap", t0_threshold=300, examples=9000), TinyWorld(), words, seed=0)
    assert Counter(capped["dataset"])["reverse"] / 9000 == pytest.approx(300 / 750, abs=0.02)


def test_mixture_niv2_style_keeps_the_task_examples_out_of_training():
    m = mixture(style="niv2", examples=500, niv2={"positives": 2, "negatives": 1, "max_tokens": 200})
    records = build_mixture(m, TinyWorld(), words, seed=0)
    prompt = next(p for p, d in zip(records["prompt"], records["dataset"]) if d == "reverse")
    assert prompt.startswith("Definition: Write the word backwards.\n\n Positive Example 1 -\nInput: ")
    assert " Positive Example 2 -" in prompt and " Negative Example 1 -" in prompt
    assert prompt.endswith(".\nOutput: ")
    # a 3-instance dataset with 2 positive examples leaves 1 instance to train on: every draw asks it
    small = build_mixture(mixture(style="niv2", examples=30, datasets=[{"name": "add", "family": "add", "size": 3}]),
                          TinyWorld(), words, seed=0)
    assert len(set(small["prompt"])) == 1 and len(set(small["completion"])) == 1


def test_mixture_from_a_file_with_options(tmp_path):
    path = tmp_path / "nli.jsonl"
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": "yes" if i % 2 else "no", "choices": ["yes", "no"]}
            for i in range(6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = mixture(datasets=[{"name": "nli", "path": str(path), "templates": ["{premise} Does it mean {hypothesis}?"],
                           "target": "{label}", "options_field": "choices"}], examples=6)
    records = build_mixture(m, TinyWorld(), words, seed=0)
    index = records["prompt"].index("p3 Does it mean h3?\nOPTIONS:\n- yes\n- no")
    assert records["completion"][index] == "yes"


def test_mixture_errors_name_the_dataset_and_the_field(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "q"}) + "\n")
    bad_field = mixture(datasets=[{"name": "qa", "path": str(path), "templates": ["{question} {context}"]}])
    with pytest.raises(InputError, match=r"qa.jsonl record 0: .*'qa'.*'context'"):
        build_mixture(bad_field, TinyWorld(), words, seed=0)
    with pytest.raises(InputError, match="'last' is in world.heldout_families"):
        build_mixture(mixture(datasets=[{"name": "l", "family": "last", "size": 5}]), TinyWorld(), words, seed=0)
    with pytest.raises(ValidationError, match="exactly one of family"):
        mixture(datasets=[{"name": "x", "family": "add", "size": 5, "path": str(path)}])
    with pytest.raises(ValidationError, match="data.sft and data.mixture"):
        DataSection(sft={"path": str(path)}, mixture=mixture())


def test_world_eval_prompts_follow_the_training_style():
    world = TinyWorld()
    example = next(e for e in world.heldout_examples(2) if e.task.family == "last")
    assert world_eval_prompts([example], None, world, words) == [example.prompt]
    [flan] = world_eval_prompts([example], mixture(), world, words)
    assert flan.startswith(example.prompt[: -len("\nA: ")]) and "\nOPTIONS:\n- " in flan
    [niv2] = world_eval_prompts([example], mixture(style="niv2"), world, words)
    assert niv2.startswith("Definition: Name the last letter of the word.\n\n Positive Example 1 -")
    assert niv2.endswith(f"Input: {example.task.args[0]}.\nOutput: ")


def test_retrieved_demonstrations_are_the_relevant_ones(tmp_path):
    from stages.models.embeddings import InstructionEmbedder

    path = tmp_path / "topics.jsonl"
    inputs = ["The dog barked at the mailman", "A cat slept on the sofa", "Seven plus five is twelve",
              "Twelve minus three is nine", "The sky was bright blue", "She painted the fence green", "A horse ran"]
    topics = ["animal", "animal", "number", "number", "colour", "colour", "animal"]
    path.write_text("".join(json.dumps({"text": t, "topic": p}) + "\n" for t, p in zip(inputs, topics)))
    m = mixture(style="niv2", niv2={"positives": 2, "retrieve": True, "pool": 6},
                datasets=[{"name": "topic", "path": str(path), "templates": ["{text}"], "target": "{topic}"}])
    [task] = mixture_tasks(m, TinyWorld())
    queries = [Instance({}, "", "A puppy chased the kitten"), Instance({}, "", "Eight times two is sixteen")]
    chosen = retrieve_demonstrations(queries, task.demos, InstructionEmbedder.from_package(), k=2)
    assert chosen[0][0].target == "animal" and chosen[1][0].target == "number"
    [prompt] = set(build_mixture(m, TinyWorld(), words, seed=0)["prompt"])  # the one instance beyond the pool
    assert "Input: A horse ran.\nOutput: " in prompt and prompt.index("Input: The dog") < prompt.index("Input: A horse")
    # the mixture needs an instance beyond the pool to train on
    m.niv2.pool = 7
    with pytest.raises(InputError, match=r"\['topic'\] have no instances left after the 7 kept as demonstrations"):
        build_mixture(m, TinyWorld(), words, seed=0)
    with pytest.raises(ValidationError, match="pool .1. must hold the 2 examples"):
        mixture(style="niv2", niv2={"positives": 2, "retrieve": True, "pool": 1})
