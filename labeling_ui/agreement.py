"""Inter-annotator agreement on rankings with ties.

A ranking is tiers: a list of lists of candidate ids, best tier first; candidates in one tier are
tied. Three measures, as the literature reports them: InstructGPT's pairwise agreement (the number
the simulated annotators are calibrated to), Kendall's tau-b per pair of rankings, and Krippendorff's
ordinal alpha over all annotators at once (it corrects for chance and copes with missing rankings).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Hashable, Iterable
from itertools import combinations
from statistics import fmean

import krippendorff

Tiers = list[list[Hashable]]


def tier_index(tiers: Tiers) -> dict[Hashable, int]:
    """Each candidate's tier, 0 = best."""
    return {candidate: index for index, tier in enumerate(tiers) for candidate in tier}


def tiers_from_ranks(ranks: dict[str, int]) -> Tiers:
    """Tiers best first from rank numbers (lower is better; equal ranks tie), each tier in the order
    its candidates come in `ranks`."""
    return [[c for c, r in ranks.items() if r == rank] for rank in sorted(set(ranks.values()))]


def ranks_from_tiers(tiers: Tiers) -> dict[str, int]:
    """Rank 1 for the best tier, 2 for the next, ...: the candidates of one tier share a rank."""
    return {candidate: index + 1 for candidate, index in tier_index(tiers).items()}


def pair_orders(tiers: Tiers) -> dict[tuple, int]:
    """For each strictly ordered pair (i, j), i < j: +1 if i is preferred, -1 if j is; ties left out."""
    tier_of = tier_index(tiers)
    return {
        (i, j): (1 if tier_of[i] < tier_of[j] else -1)
        for i, j in combinations(sorted(tier_of), 2)
        if tier_of[i] != tier_of[j]
    }


def pairwise_agreement(pairs: Iterable[tuple[Tiers, Tiers]]) -> float | None:
    """InstructGPT's agreement: agreeing pairs / pairs both annotators order strictly, pooled over all
    ranking pairs (a pair either annotator ties is skipped). None when no pair is ordered by both."""
    agree = total = 0
    for tiers_a, tiers_b in pairs:
        orders_a, orders_b = pair_orders(tiers_a), pair_orders(tiers_b)
        for pair in orders_a.keys() & orders_b.keys():
            total += 1
            agree += orders_a[pair] == orders_b[pair]
    return agree / total if total else None


def kendall_tau_b(a: Tiers, b: Tiers) -> float | None:
    """Kendall's tau-b over the candidates both rank: (C - D) / sqrt((n0 - n1)(n0 - n2)), n0 = n(n-1)/2,
    n1 and n2 the pairs tied in a and in b. None when either ranking ties every pair (denominator 0)."""
    tier_a, tier_b = tier_index(a), tier_index(b)
    common = sorted(tier_a.keys() & tier_b.keys())
    concordant = discordant = tied_a = tied_b = 0
    for i, j in combinations(common, 2):
        order_a = tier_a[j] - tier_a[i]
        order_b = tier_b[j] - tier_b[i]
        tied_a += order_a == 0
        tied_b += order_b == 0
        concordant += order_a * order_b > 0
        discordant += order_a * order_b < 0
    n0 = len(common) * (len(common) - 1) // 2
    denominator = math.sqrt((n0 - tied_a) * (n0 - tied_b))
    return (concordant - discordant) / denominator if denominator else None


def krippendorff_alpha_ordinal(units: list[dict[str, int]]) -> float | None:
    """Krippendorff's alpha, ordinal metric: 1 - D_observed / D_expected. Each unit maps annotator id to
    an ordinal value (e.g. tier index); units with fewer than 2 values are not pairable and are ignored.
    None with fewer than 2 pairable units or no variation among their values."""
    pairable = [unit for unit in units if len(unit) >= 2]
    # the package raises on a single value in the domain: alpha is 0/0 there, not a number
    if len(pairable) < 2 or len({value for unit in pairable for value in unit.values()}) < 2:
        return None
    annotators = list(dict.fromkeys(annotator for unit in pairable for annotator in unit))
    reliability_data = [[unit.get(annotator, math.nan) for unit in pairable] for annotator in annotators]
    return float(krippendorff.alpha(reliability_data=reliability_data, level_of_measurement="ordinal"))


def mean_tau_b(ranking_pairs: list[tuple[Tiers, Tiers]]) -> float | None:
    """Mean tau-b over the ranking pairs where it is defined; None where it is nowhere."""
    taus = [tau for a, b in ranking_pairs if (tau := kendall_tau_b(a, b)) is not None]
    return fmean(taus) if taus else None


def alpha_units(by_prompt: dict[str, dict[str, Tiers]]) -> list[dict[str, int]]:
    """One unit per (prompt, candidate): annotator id -> the candidate's tier index in their ranking."""
    units = []
    for by_annotator in by_prompt.values():
        tier_indices = {annotator: tier_index(tiers) for annotator, tiers in by_annotator.items()}
        candidates = dict.fromkeys(candidate for tier_of in tier_indices.values() for candidate in tier_of)
        units += [
            {annotator: tier_of[candidate] for annotator, tier_of in tier_indices.items() if candidate in tier_of}
            for candidate in candidates
        ]
    return units


def agreement_report(rankings: list[tuple[str, str, Tiers]]) -> dict:
    """Agreement over every (prompt_id, annotator_id, tiers) submitted, overall and per annotator.

    Ranking pairs are all pairs of annotators on each prompt ranked by two or more; alpha's units are
    (prompt, candidate) with tier index as the value. A later ranking of the same prompt by the same
    annotator replaces the earlier one, as a resubmission would."""
    by_prompt: dict[str, dict[str, Tiers]] = defaultdict(dict)
    for prompt_id, annotator_id, tiers in rankings:
        by_prompt[prompt_id][annotator_id] = tiers
    # (first annotator, second annotator, (first's ranking, second's ranking)) on each shared prompt
    shared = [
        (first, second, (by_annotator[first], by_annotator[second]))
        for by_annotator in by_prompt.values()
        for first, second in combinations(by_annotator, 2)
    ]
    ranking_pairs = [pair for _, _, pair in shared]
    rankings_by_annotator = Counter(annotator for by_annotator in by_prompt.values() for annotator in by_annotator)
    per_annotator = {}
    for annotator, count in rankings_by_annotator.items():
        with_others = [pair for first, second, pair in shared if annotator in (first, second)]
        per_annotator[annotator] = {
            "rankings": count,
            "pairwise_agreement": pairwise_agreement(with_others),
            "kendall_tau_b": mean_tau_b(with_others),
        }
    return {
        "overlap_prompts": sum(len(by_annotator) >= 2 for by_annotator in by_prompt.values()),
        "pairwise_agreement": pairwise_agreement(ranking_pairs),
        "kendall_tau_b": mean_tau_b(ranking_pairs),
        "krippendorff_alpha": krippendorff_alpha_ordinal(alpha_units(by_prompt)),
        "per_annotator": per_annotator,
    }
