import pytest

from tiny_world import FAMILIES, TinyWorld, exact_match, extract_answer, true_score
from tiny_world.tasks import Task


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = TinyWorld(seed=3), TinyWorld(seed=3), TinyWorld(seed=4)
    assert a.demonstrations(50) == b.demonstrations(50)
    assert a.corpus(20) == b.corpus(20)
    assert a.heldout_examples(5) == b.heldout_examples(5)
    assert a.demonstrations(50) != c.demonstrations(50)
    assert [e.task for e in a.heldout_examples(5)] != [e.task for e in c.heldout_examples(5)]


def test_no_heldout_prompt_or_family_leaks_into_training_streams():
    world = TinyWorld(seed=0)
    heldout = world.heldout_examples(40)
    heldout_keys = {e.task.key for e in heldout}
    heldout_prompts = {e.prompt for e in heldout}
    assert {e.task.family for e in heldout} == set(FAMILIES)
    training = [e for e, _ in world.demonstrations(3000)] + world.train_examples(3000, "rm") + world.train_examples(3000, "ppo")
    for example in training:
        assert example.task.family not in world.heldout_families
        assert example.task.key not in heldout_keys  # no held-out question under any template
        assert example.prompt not in heldout_prompts
    corpus = "\n".join(world.corpus(2000))
    assert not any(e.instruction in corpus for e in heldout)  # the corpus states facts, never instructions


def test_heldout_split_is_by_instance_and_stable():
    world = TinyWorld(seed=0, heldout_instance_fraction=0.1)
    add = FAMILIES["add"]
    tasks = [add.task((str(a), str(b))) for a in range(50) for b in range(10)]
    share = sum(world.is_heldout(t) for t in tasks) / len(tasks)
    assert 0.05 < share < 0.15
    assert [world.is_heldout(t) for t in tasks] == [TinyWorld(seed=0).is_heldout(t) for t in tasks]


def test_true_score_prefers_correct_then_period_then_brevity():
    task = Task("add", ("7", "5"), "12")
    assert true_score(task, "12.") == 1.5
    assert true_score(task, "12") == 1.25
    assert true_score(task, "The answer is 12.") == 1.0 + 0.25 + 0.25 / 4
    assert true_score(task, "The answer is 13.") == 0.25 + 0.25 / 4
    assert true_score(task, "") == 0.0
    assert exact_match(task, "Sure! The answer is 12.") and not exact_match(task, "12 is wrong")
    assert extract_answer("Here it is: riahc.") == "riahc"


def test_demonstrator_is_imperfect_and_verbose_as_configured():
    world = TinyWorld(seed=0, demo_accuracy=0.65, verbose_rate=0.7, period_rate=0.2)
    demos = world.demonstrations(2000)
    accuracy = sum(exact_match(e.task, r) for e, r in demos) / len(demos)
    verbose = sum(len(r.split()) > 1 for _, r in demos) / len(demos)
    period = sum(r.endswith(".") for _, r in demos) / len(demos)
    assert 0.60 < accuracy < 0.70  # near misses sometimes hit the answer by chance: at most a few points
    assert 0.65 < verbose < 0.75
    assert 0.16 < period < 0.24


@pytest.mark.parametrize("lazy_error_share", [0.0, 1.0])
def test_the_demonstrator_errs_lazily_or_by_a_near_miss_as_configured(lazy_error_share):
    world = TinyWorld(seed=0, lazy_error_share=lazy_error_share)
    wrong = [(e.task, extract_answer(r)) for e, r in world.demonstrations(1000) if not exact_match(e.task, r)]
    lazy = sum(answer == FAMILIES[task.family].lazy(task) for task, answer in wrong) / len(wrong)
    assert len(wrong) > 250
    assert lazy == 1.0 if lazy_error_share == 1.0 else lazy < 0.1  # a near miss can equal the echo by chance


def test_the_demonstrator_echoes_in_each_family_s_last_wording_as_configured():
    world = TinyWorld(seed=0, demo_accuracy=1.0, lazy_wording_rate=0.6)
    demos = world.demonstrations(3000)
    in_last_wording = [e.template_id == len(FAMILIES[e.task.family].templates) - 1 for e, _ in demos]
    last = [demo for demo, is_last in zip(demos, in_last_wording) if is_last]
    others = [demo for demo, is_last in zip(demos, in_last_wording) if not is_last]
    echoes = sum(extract_answer(r) == FAMILIES[e.task.family].lazy(e.task) for e, r in last) / len(last)
    assert 0.55 < echoes < 0.65
    assert all(exact_match(e.task, r) for e, r in others)  # the other wordings keep demo_accuracy


def test_every_family_templates_render_and_solutions_are_single_words():
    import random

    rng = random.Random(0)
    for family in FAMILIES.values():
        assert len(family.templates) >= 3
        for _ in range(20):
            task = family.task(family.sample_args(rng))
            assert " " not in task.answer and task.answer
            for template_id in range(len(family.templates)):
                assert "{" not in family.instruction(task, template_id)
            assert task.answer in family.fact_text(task)
