import random

from labeling_ui.agreement import pair_orders, pairwise_agreement
from labeling_ui.simulated import SimulatedAnnotator, agreement_at, calibrate_noise
from tiny_world import TinyWorld, true_score
from tiny_world.tasks import Task


def candidate_sets(n_prompts=600, k=4):
    world = TinyWorld(seed=0)
    rng = random.Random(0)
    return [(e.task, [world.demonstrate(e, rng) for _ in range(k)]) for e in world.train_examples(n_prompts, "rm")]


def test_two_annotators_agree_about_as_often_as_instructgpt_labelers():
    sets = candidate_sets()
    a, b = SimulatedAnnotator("a"), SimulatedAnnotator("b")
    rankings_a, rankings_b = [a.rank(t, c) for t, c in sets], [b.rank(t, c) for t, c in sets]
    agreement = pairwise_agreement(zip(rankings_a, rankings_b, strict=True))
    assert 0.70 <= agreement <= 0.76  # InstructGPT: 72.6 +- 1.5%


def test_noise_free_annotator_follows_the_true_score_and_ties_identical_responses():
    task = Task("add", ("7", "5"), "12")
    candidates = ["The answer is 12", "12.", "13", "12.", "The answer is 13."]
    tiers = SimulatedAnnotator("oracle", noise=0.0).rank(task, candidates)
    assert tiers[0] == [1, 3]  # identical responses share a tier
    scores = [true_score(task, candidates[tier[0]]) for tier in tiers]
    assert scores == sorted(scores, reverse=True)
    assert (1, 3) not in pair_orders(tiers)


def test_annotators_are_deterministic_by_seed():
    task, candidates = candidate_sets(1, 6)[0]
    assert SimulatedAnnotator("a", seed=1).rank(task, candidates) == SimulatedAnnotator("a", seed=1).rank(task, candidates)


def test_a_ranking_does_not_depend_on_the_order_candidates_and_tasks_are_shown_in():
    """The store shows candidates in an order drawn from its batch name, which every config key upstream of
    the label stage changes: the same candidates must still get the same rankings."""
    sets = candidate_sets(50, 4)
    shuffled = random.Random(1)

    def ranked_texts(annotator, task, candidates):
        return [sorted({candidates[i] for i in tier}) for tier in annotator.rank(task, candidates)]

    straight = [ranked_texts(SimulatedAnnotator("a"), t, c) for t, c in sets]
    annotator = SimulatedAnnotator("a")  # one annotator, tasks in reverse order, candidates reshuffled
    reordered = [ranked_texts(annotator, t, shuffled.sample(c, len(c))) for t, c in reversed(sets)][::-1]
    assert reordered == straight
    assert any(len(tiers) > 1 for tiers in straight)
    other = [ranked_texts(SimulatedAnnotator("b"), t, c) for t, c in sets]
    assert other != straight  # another annotator misjudges other responses


def test_pairwise_agreement_by_hand():
    # a: 0 > 1 > 2; b: 1 > 0 = 2  -> shared ordered pairs (0,1) disagree, (1,2) agree; (0,2) tied in b
    assert pairwise_agreement(zip([[[0], [1], [2]]], [[[1], [0, 2]]], strict=True)) == 0.5


def test_calibrated_noise_reaches_the_target_agreement_on_other_candidates():
    # candidates that are all wrong differ only in style: less room to agree, so less noise is needed
    world = TinyWorld(seed=0)
    lazy = [(e.task, [f"{e.task.args[0]}", f"The answer is {e.task.args[0]}.", "no", "Here it is: x"])
            for e in world.train_examples(300, "rm")]
    noise = calibrate_noise(lazy, target=0.73)
    assert 0.0 < noise < 0.38
    assert abs(agreement_at(noise, lazy, seed=7) - 0.73) < 0.04  # other annotators, same noise
