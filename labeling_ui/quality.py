"""Annotator quality (labeling spec sections 4-5): the figures that find a miscalibrated annotator.

Per annotator:
  gold accuracy       pairwise agreement with the gold tiers over their latest `gold_window` gold items,
                      an alert below `gold_alert` (spec 5: 70%)
  agreement           with the other annotators on the prompts they share: pairwise agreement and mean
                      Kendall tau-b (agreement.agreement_report)
  Likert consistency  the share of strictly ordered candidate pairs whose Likert scores do not
                      contradict the ranking (equal scores do not contradict it)
  time per item       the median seconds per ranking (all its versions), and the rankings submitted in
                      under `too_fast_seconds` per candidate
  flag frequency      the share of rated candidates given at least one flag

Humans agree on 63-77% of pairs (Anthropic HH, InstructGPT): these figures single out outliers; they
are no pass bar near 100%. Pure functions of the store's records (LabelStore.quality_records), put
together by `quality_report`; `write_quality_plot` draws the report.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from statistics import median
from typing import Any

from labeling_ui.agreement import (
    Tiers,
    agreement_report,
    pair_orders,
    pairwise_agreement,
    tier_index,
)


def likert_contradictions(ranks: dict[str, int], likert: dict[str, int]) -> list[tuple[str, str]]:
    """Pairs (a, b) where a is ranked above b (a smaller rank number) but rated lower: worth a second look."""
    rated = [c for c in ranks if c in likert]
    return [(a, b) for a in rated for b in rated if ranks[a] < ranks[b] and likert[a] < likert[b]]


def likert_consistency(rated_rankings: Iterable[tuple[Tiers, dict[str, int]]]) -> float | None:
    """1 - contradicting pairs / strictly ordered pairs, pooled over (tiers, Likert by candidate) of every
    ranking; tied pairs are not counted. None when no pair is strictly ordered."""
    strict = contradicting = 0
    for tiers, likert in rated_rankings:
        strict += len(pair_orders(tiers))
        contradicting += len(likert_contradictions(tier_index(tiers), likert))
    return 1 - contradicting / strict if strict else None


def gold_accuracy(gold_rankings: list[tuple[Tiers, Tiers]], window: int) -> float | None:
    """Pairwise agreement of the latest `window` (ranking, gold tiers) pairs, given oldest first; None when
    no pair is strictly ordered by both."""
    return pairwise_agreement(gold_rankings[-window:])


def is_too_fast(seconds: float, candidates: int, too_fast_seconds: float) -> bool:
    """A ranking of `candidates` submitted in under `too_fast_seconds` per candidate: reading, rating and
    ranking take longer the more candidates there are."""
    return seconds < candidates * too_fast_seconds


def share(count: int, total: int) -> float | None:
    return count / total if total else None


def annotator_quality(rankings: list[dict[str, Any]], with_others: dict[str, Any], *, gold_window: int, gold_alert: float,
                      too_fast_seconds: float) -> dict[str, Any]:
    """One annotator's figures from their rankings (LabelStore.quality_records' submissions, oldest first)
    and their entry of agreement_report's per_annotator ({} when they share no prompt)."""
    gold = [(r["tiers"], r["gold"]) for r in rankings if r["gold"] is not None]
    timed = [(r["seconds"], len(r["likert"])) for r in rankings if r["seconds"] is not None]
    too_fast = sum(is_too_fast(seconds, k, too_fast_seconds) for seconds, k in timed)
    accuracy = gold_accuracy(gold, gold_window)
    rated = sum(len(r["likert"]) for r in rankings)
    flagged = sum(bool(flags) for r in rankings for flags in r["flags"].values())
    return {
        "rankings": len(rankings) - len(gold),
        "gold_rankings": len(gold),
        "gold_accuracy": accuracy,
        "gold_alert": accuracy is not None and accuracy < gold_alert,
        "pairwise_agreement": with_others.get("pairwise_agreement"),
        "kendall_tau_b": with_others.get("kendall_tau_b"),
        "likert_consistency": likert_consistency((r["tiers"], r["likert"]) for r in rankings),
        "median_seconds": median(seconds for seconds, _ in timed) if timed else None,
        "median_seconds_per_candidate": median(seconds / k for seconds, k in timed) if timed else None,
        "too_fast": too_fast,
        "too_fast_share": share(too_fast, len(timed)),
        "flagged_share": share(flagged, rated),
    }


def quality_report(records: dict[str, list[dict[str, Any]]], *, gold_window: int, gold_alert: float, too_fast_seconds: float,
                   qualification_threshold: float) -> dict[str, Any]:
    """Every annotator's qualification and figures from LabelStore.quality_records (annotators; the latest
    version of every submitted ranking, oldest first). Agreement with the others counts real prompts
    only: a gold item is measured against its reference instead. Users who are not annotators appear
    only if they ranked something."""
    rankings = records["submissions"]
    with_others = agreement_report([(r["prompt_id"], r["annotator"], r["tiers"]) for r in rankings if r["gold"] is None])
    per_annotator = {}
    for annotator in records["annotators"]:
        mine = [r for r in rankings if r["annotator"] == annotator["name"]]
        if not mine and annotator["role"] != "annotator":
            continue
        per_annotator[annotator["name"]] = {
            "qualification": annotator["qualification"],
            "qualification_score": annotator["qualification_score"],
            **annotator_quality(mine, with_others["per_annotator"].get(annotator["name"], {}), gold_window=gold_window,
                                gold_alert=gold_alert, too_fast_seconds=too_fast_seconds),
        }
    return {
        "thresholds": {"qualification_threshold": qualification_threshold, "gold_window": gold_window, "gold_alert": gold_alert,
                       "too_fast_seconds_per_candidate": too_fast_seconds},
        "per_annotator": per_annotator,
    }


def store_quality(store) -> dict[str, Any]:
    """quality_report over a LabelStore's records, with the thresholds it was opened with (the config's)."""
    return quality_report(store.quality_records(), gold_window=store.gold_window, gold_alert=store.gold_alert,
                          too_fast_seconds=store.too_fast_seconds, qualification_threshold=store.qualification_threshold)


def write_quality_plot(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """One row per annotator in four panels (gold accuracy, tau-b with the others, Likert consistency,
    median seconds per candidate), each threshold a dashed line; written to a temporary file, then
    renamed over `path`. A missing figure (n/a) has no bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = sorted(report["per_annotator"])[::-1]  # barh draws bottom-up: the first name on top
    thresholds = report["thresholds"]
    # (figure, title, its range (None: from the data), threshold lines)
    panels = [
        ("gold_accuracy", "gold accuracy (latest gold items)", (0.0, 1.0),
         [(thresholds["gold_alert"], "alert"), (thresholds["qualification_threshold"], "qualification")]),
        ("kendall_tau_b", "Kendall tau-b with the others", (-1.0, 1.0), [(0.0, "chance")]),
        ("likert_consistency", "Likert-rank consistency", (0.0, 1.0), []),
        ("median_seconds_per_candidate", "median seconds per candidate", None,
         [(thresholds["too_fast_seconds_per_candidate"], "too fast")]),
    ]
    figure, axes = plt.subplots(1, len(panels), figsize=(14, 1.5 + 0.35 * max(len(names), 1)), sharey=True, squeeze=False)
    for axis, (key, title, limits, lines) in zip(axes[0], panels):
        values = [report["per_annotator"][name][key] for name in names]
        axis.barh(names, [0.0 if v is None else v for v in values])
        for y, value in enumerate(values):
            if value is None:
                axis.annotate("n/a", (0.0, y), va="center", fontsize=7)
        for (x, label), style in zip(lines, ("--", ":")):
            axis.axvline(x, linestyle=style, color="red" if label != "chance" else "grey", label=f"{label} {x:g}")
        if lines:
            axis.legend(fontsize=7, loc="lower right")
        if limits:
            axis.set_xlim(*limits)
        axis.set_title(title, fontsize=9)
        axis.tick_params(labelsize=7)
    figure.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)
    return path
