"""Why a submission goes to the reviewers' queue (labeling spec 4.7), as pure functions of rankings.

Three reasons, each a dict with a "reason" key that the queue, the app and the API show as they are:
  disagreement  two rankings of one prompt whose Kendall tau-b is below labeling.review_tau
                ({"kendall_tau_b", "with_assignment", "with_annotator"}: the other ranking)
  failed_gold   a ranking of a gold item whose pairwise agreement with the gold tiers is below
                labeling.review_gold_below, or undefined (no pair ordered by both) ({"agreement", "gold"})
  flagged       harmful content: a candidate given one of REVIEW_FLAGS ({"flags": candidate -> flags}),
                or a task skipped as REVIEW_SKIP_REASON ({"skip_reason"})
Disagreement and gold apply to rankings only; a demonstration (no tiers) can only be flagged.
"""

from __future__ import annotations

from collections import defaultdict
from itertools import combinations
from typing import Any

from labeling_ui.agreement import Tiers, kendall_tau_b, pairwise_agreement

# InstructGPT's harm flags (Table 3): content a person should look at before it trains a model. The
# quality flags (fails instruction, hallucination, opinion, ...) are ordinary ranking evidence.
REVIEW_FLAGS = ("sexual", "violent", "encourages_violence_selfharm", "denigrates_protected_class", "harmful_advice")
REVIEW_SKIP_REASON = "offensive content"
REVIEW_ACTIONS = ("accept", "reject", "adjudicate")
REVIEWER_ROLES = ("reviewer", "admin")

Reason = dict[str, Any]


def disagreement_reasons(rankings: dict[str, tuple[str, Tiers]], review_tau: float) -> dict[str, list[Reason]]:
    """For the rankings of one prompt (assignment id -> (annotator, tiers)), each assignment's
    disagreements: every other ranking whose tau-b with it is below `review_tau`. A pair whose tau-b
    is undefined (a ranking that ties everything) is no disagreement: there is no order to dispute."""
    reasons: dict[str, list[Reason]] = defaultdict(list)
    for (first, (first_annotator, first_tiers)), (second, (second_annotator, second_tiers)) in combinations(sorted(rankings.items()), 2):
        tau = kendall_tau_b(first_tiers, second_tiers)
        if tau is not None and tau < review_tau:
            reasons[first].append({"reason": "disagreement", "kendall_tau_b": tau, "with_assignment": second,
                                   "with_annotator": second_annotator})
            reasons[second].append({"reason": "disagreement", "kendall_tau_b": tau, "with_assignment": first,
                                    "with_annotator": first_annotator})
    return dict(reasons)


def gold_reason(tiers: Tiers, gold: Tiers, review_gold_below: float) -> Reason | None:
    """A failed gold item: agreement with the gold tiers below `review_gold_below`, or none to measure
    (the annotator tied every pair the gold tiers order, which checks nothing)."""
    agreement = pairwise_agreement([(tiers, gold)])
    if agreement is None or agreement < review_gold_below:
        return {"reason": "failed_gold", "agreement": agreement, "gold": gold}
    return None


def flag_reason(flags: dict[str, list[str]]) -> Reason | None:
    """The candidates given a harm flag (REVIEW_FLAGS), with those flags; None when there are none."""
    harmful = {candidate: [name for name in names if name in REVIEW_FLAGS] for candidate, names in sorted(flags.items())}
    harmful = {candidate: names for candidate, names in harmful.items() if names}
    return {"reason": "flagged", "flags": harmful} if harmful else None


def skip_reason(reason: str | None) -> Reason | None:
    return {"reason": "flagged", "skip_reason": reason} if reason == REVIEW_SKIP_REASON else None


def describe(reason: Reason) -> str:
    """One line for the reviewer."""
    if reason["reason"] == "disagreement":
        return f"disagreement: Kendall tau-b {reason['kendall_tau_b']:.2f} with {reason['with_annotator']}'s ranking"
    if reason["reason"] == "failed_gold":
        agreement = "no pair ordered by both" if reason["agreement"] is None else f"pairwise agreement {reason['agreement']:.2f}"
        return f"failed gold: {agreement} with the gold tiers {format_tiers(reason['gold'])}"
    if "skip_reason" in reason:
        return f"flagged: skipped as {reason['skip_reason']}"
    return "flagged: " + "; ".join(f"{candidate} {', '.join(names)}" for candidate, names in reason["flags"].items())


def format_tiers(tiers: Tiers) -> str:
    """Tiers as the reviewer reads and writes them: best first, '>' between tiers, '=' inside one."""
    return " > ".join(" = ".join(str(c) for c in tier) for tier in tiers)


def parse_tiers(text: str) -> list[list[str]]:
    """The inverse of format_tiers: 'c2 > c1 = c3 > c4' -> [['c2'], ['c1', 'c3'], ['c4']]. Whether the
    ids are the prompt's candidates, each once, is the store's check."""
    return [[c.strip() for c in tier.split("=")] for tier in text.split(">")] if text.strip() else []
