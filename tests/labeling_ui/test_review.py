"""The reviewers' queue and decisions (labeling spec 4.7) on a real database: what goes to review and
why, and what accept, reject and adjudicate do to the exports, the pool and the annotator's edits."""

import json

import pytest

from common.config import load_config
from labeling_ui.export import export_snapshot
from labeling_ui.review import (
    describe,
    disagreement_reasons,
    flag_reason,
    format_tiers,
    gold_reason,
    parse_tiers,
)
from labeling_ui.schema import LabelingError
from labeling_ui.store import LabelStore, open_run_store

IN_ORDER = [["c1"], ["c2"], ["c3"], ["c4"]]
REVERSED = [["c4"], ["c3"], ["c2"], ["c1"]]


def records(n, k=4):
    return [{"prompt_id": f"p{i:03d}", "prompt": f"Q: prompt {i}\nA:",
             "candidates": [{"id": f"c{j + 1}", "text": f"answer {i}.{j}", "policy": "sft"} for j in range(k)]}
            for i in range(n)]


def rank(store, user, tiers, flags=None) -> str:
    """`user`'s next task ranked as `tiers` (every candidate rated 4); its assignment id."""
    task = store.next_task(user)
    store.submit(user, task.assignment_id, tiers, {c: 4 for c, _ in task.candidates}, flags)
    return task.assignment_id


@pytest.fixture
def store(db_url):
    """Every prompt ranked by two annotators, a gold item every third task, three annotators, a reviewer
    and an admin."""
    store = LabelStore(db_url, overlap_fraction=1.0, gold_every=3, review_tau=0.3, review_gold_below=0.75)
    gold = {**records(1)[0], "prompt_id": "gold-1", "prompt": "gold prompt", "gold": IN_ORDER}
    store.import_records(records(4) + [gold])
    store.users = {name: store.add_user(name, role, "password1") for name, role in
                   (("ann", "annotator"), ("bob", "annotator"), ("carol", "annotator"), ("rita", "reviewer"), ("boss", "admin"))}
    return store


@pytest.fixture
def queued(store):
    """ann and bob rank p000 in opposite orders (tau-b -1), p001 alike with a harm flag from ann, then
    the gold item (bob agrees on 4 of its 6 pairs); carol skips p002 as offensive, boss as a duplicate."""
    ann, bob = store.users["ann"], store.users["bob"]
    aids = {"ann p000": rank(store, ann, IN_ORDER), "bob p000": rank(store, bob, REVERSED),
            "ann p001": rank(store, ann, IN_ORDER, {"c2": ["violent"], "c3": ["hallucination"]}),
            "bob p001": rank(store, bob, IN_ORDER),
            "ann gold": rank(store, ann, IN_ORDER), "bob gold": rank(store, bob, [["c2"], ["c1"], ["c4"], ["c3"]])}
    for name, prompt, reason in (("carol", "p002", "offensive content"), ("boss", "p002", "duplicate")):
        task = store.next_task(store.users[name])
        assert task.prompt == f"Q: prompt {int(prompt[1:])}\nA:"
        store.skip(store.users[name], task.assignment_id, reason)
        aids[f"{name} {prompt}"] = task.assignment_id
    return aids


def test_the_queue_holds_disagreements_failed_golds_and_flagged_content_oldest_first(store, queued):
    queue = store.review_queue(store.users["rita"])
    assert [(item.annotator, item.prompt_id, [r["reason"] for r in item.reasons]) for item in queue] == [
        ("ann", "p000", ["disagreement"]), ("bob", "p000", ["disagreement"]), ("ann", "p001", ["flagged"]),
        ("bob", "gold-1", ["failed_gold"]), ("carol", "p002", ["flagged"])]
    ann_p000, bob_p000, ann_p001, bob_gold, carol_p002 = queue
    assert ann_p000.assignment_id == queued["ann p000"] and ann_p000.ranking == IN_ORDER
    assert ann_p000.reasons == [{"reason": "disagreement", "kendall_tau_b": -1.0, "with_assignment": queued["bob p000"],
                                 "with_annotator": "bob"}]
    assert ann_p000.others == [(queued["bob p000"], "bob", REVERSED)]  # the reviewer sees both, under names
    assert ann_p000.candidates == [(f"c{j + 1}", f"answer 0.{j}") for j in range(4)]
    assert ann_p001.reasons == [{"reason": "flagged", "flags": {"c2": ["violent"]}}]  # hallucination is no harm flag
    [failed] = bob_gold.reasons
    assert failed["agreement"] == pytest.approx(4 / 6) and failed["gold"] == IN_ORDER and bob_gold.others == []
    assert carol_p002.ranking is None and carol_p002.reasons == [{"reason": "flagged", "skip_reason": "offensive content"}]
    assert [describe(r) for item in queue for r in item.reasons] == [
        "disagreement: Kendall tau-b -1.00 with bob's ranking", "disagreement: Kendall tau-b -1.00 with ann's ranking",
        "flagged: c2 violent", "failed gold: pairwise agreement 0.67 with the gold tiers c1 > c2 > c3 > c4",
        "flagged: skipped as offensive content"]
    assert store.review_queue() == queue  # the whole queue, for scripts


def test_only_reviewers_and_admins_review_and_nobody_reviews_themselves(store, queued):
    for name in ("ann", "carol"):
        with pytest.raises(LabelingError, match="only a reviewer or an admin can review"):
            store.review_queue(store.users[name])
        with pytest.raises(LabelingError, match="only a reviewer or an admin can review"):
            store.review(store.users[name], queued["bob p000"], "accept")
    rita, boss = store.users["rita"], store.users["boss"]
    rita_p002 = rank(store, rita, [["c1", "c2"], ["c3", "c4"]], {"c1": ["harmful_advice"]})  # a reviewer ranks too
    assert rita_p002 not in {item.assignment_id for item in store.review_queue(rita)}  # not her own work ...
    with pytest.raises(LabelingError, match="nobody reviews their own work"):
        store.review(rita, rita_p002, "accept")
    assert rita_p002 in {item.assignment_id for item in store.review_queue(boss)}  # ... but an admin's
    store.review(boss, rita_p002, "accept", "advice checked: harmless")
    assert [r.action for r in store.reviews(rita_p002)] == ["accept"]


def test_a_rejected_ranking_leaves_every_export_its_prompt_goes_to_another_annotator_and_it_is_locked(store, queued, tmp_path):
    rita, ann, carol = store.users["rita"], store.users["ann"], store.users["carol"]
    before = export_snapshot(store, tmp_path / "exports")
    with pytest.raises(LabelingError, match="a rejection needs a comment"):
        store.review(rita, queued["ann p000"], "reject", "  ")
    store.review(rita, queued["ann p000"], "reject", "c1 is the worst answer; read the guidelines on ties")

    assert ("ann", "p000") not in {(r["annotator_id"], r["prompt_id"]) for r in store.rankings(include_gold=True)}
    after = export_snapshot(store, tmp_path / "exports")
    exported = [json.loads(line) for line in (after / "rankings.jsonl").read_text().splitlines()]
    exported_before = [json.loads(line) for line in (before / "rankings.jsonl").read_text().splitlines()]
    assert ("ann", "p000") in {(r["annotator_id"], r["prompt_id"]) for r in exported_before}
    assert ("ann", "p000") not in {(r["annotator_id"], r["prompt_id"]) for r in exported}
    assert len(exported) == len(exported_before) - 1

    # bob's ranking disagreed only with the rejected one: it leaves the queue with it
    assert {(i.annotator, i.prompt_id) for i in store.review_queue(rita)} == {("ann", "p001"), ("bob", "gold-1"), ("carol", "p002")}
    with pytest.raises(LabelingError, match="assignment is rejected"):
        store.submit(ann, queued["ann p000"], IN_ORDER, {f"c{j + 1}": 5 for j in range(4)})
    assert queued["ann p000"] not in {aid for aid, _ in store.submitted(ann)}
    with pytest.raises(LabelingError, match="the assignment is rejected"):
        store.review(rita, queued["ann p000"], "accept")

    # the prompt's coverage is open again: the next annotator who never had it gets it, never ann
    assert store.next_task(carol).prompt == "Q: prompt 0\nA:"
    assert store.next_task(ann).prompt != "Q: prompt 0\nA:"
    [event] = [e for e in store.events(queued["ann p000"]) if e.type.startswith("review")]
    assert (event.type, event.annotator_id, event.payload["comment"]) == (
        "review_reject", rita, "c1 is the worst answer; read the guidelines on ties")


def test_an_accepted_ranking_leaves_the_queue_is_still_exported_and_can_no_longer_be_edited(store, queued):
    rita, ann = store.users["rita"], store.users["ann"]
    store.review(rita, queued["ann p001"], "accept", "the violence is in the prompt's story")
    assert queued["ann p001"] not in {item.assignment_id for item in store.review_queue(rita)}
    with pytest.raises(LabelingError, match=r"was reviewed \(accept\) and can no longer be edited"):
        store.submit(ann, queued["ann p001"], REVERSED, {f"c{j + 1}": 4 for j in range(4)})
    assert queued["ann p001"] not in {aid for aid, _ in store.submitted(ann)}
    record = next(r for r in store.rankings() if r["assignment_id"] == queued["ann p001"])
    assert (record["ranking"], record["version"], record["adjudicated_by"]) == (IN_ORDER, 1, None)
    with pytest.raises(LabelingError, match=r"already reviewed \(accept, .*\): a decision is final"):
        store.review(store.users["boss"], queued["ann p001"], "reject", "second thoughts")
    assert [(e.type, e.payload["comment"]) for e in store.events(queued["ann p001"]) if e.type.startswith("review")] == [
        ("review_accept", "the violence is in the prompt's story")]


def test_an_adjudicated_ranking_is_exported_in_the_annotators_place_with_the_reviewer_named(store, queued, tmp_path):
    rita = store.users["rita"]
    for tiers, message in (([["c1"], ["c2", "c3"]], "every candidate must be ranked exactly once"),
                           ([["c1"], [], ["c2", "c3", "c4"]], "a tier is empty"),
                           ("c1 > c2", "tiers must be a list of lists"),
                           (None, "tiers come with adjudicate")):
        with pytest.raises(LabelingError, match=message):
            store.review(rita, queued["bob p000"], "adjudicate", "", tiers)
    with pytest.raises(LabelingError, match="tiers come with adjudicate, and only with it"):
        store.review(rita, queued["bob p000"], "accept", "", IN_ORDER)
    with pytest.raises(LabelingError, match="only a submitted ranking can be adjudicated"):
        store.review(rita, queued["carol p002"], "adjudicate", "", IN_ORDER)

    adjudicated = [["c1"], ["c2", "c3"], ["c4"]]
    store.review(rita, queued["bob p000"], "adjudicate", "c1 is best: it answers the question", adjudicated)
    records = [r for r in store.rankings() if r["prompt_id"] == "p000"]
    assert [(r["annotator_id"], r["ranking"], r["adjudicated_by"], r["version"]) for r in records] == [
        ("ann", IN_ORDER, None, 1), ("bob", adjudicated, "rita", 2)]
    assert records[1]["likert"] == {f"c{j + 1}": 4 for j in range(4)}  # bob's ratings stay
    snapshot = export_snapshot(store, tmp_path / "exports")
    exported = [json.loads(line) for line in (snapshot / "rankings.jsonl").read_text().splitlines()]
    assert {(r["annotator_id"], r["adjudicated_by"]) for r in exported if r["prompt_id"] == "p000"} == {("ann", None), ("bob", "rita")}
    [decision] = store.reviews(queued["bob p000"])
    assert (decision.action, decision.tiers, decision.reviewer_id) == ("adjudicate", adjudicated, rita)
    [event] = [e for e in store.events(queued["bob p000"]) if e.type.startswith("review")]
    assert event.type == "review_adjudicate" and event.payload["tiers"] == adjudicated and event.payload["version"] == 2
    # ann's ranking now agrees with the adjudicated one (tau-b 0.91): the disagreement is settled
    assert "p000" not in {item.prompt_id for item in store.review_queue(rita)}


def test_the_thresholds_come_from_the_config(tmp_path):
    labeling = load_config(None, ["labeling.review_tau=0.5", "labeling.review_gold_below=0.9"]).labeling
    store = open_run_store(labeling, tmp_path, batch="b")
    assert (store.review_tau, store.review_gold_below) == (0.5, 0.9)


# ---- the pure reasons and the tiers notation ----------------------------------------------------

def test_an_undefined_tau_is_no_disagreement_and_equal_rankings_agree():
    rankings = {"a1": ("ann", IN_ORDER), "a2": ("bob", [["c1", "c2", "c3", "c4"]]), "a3": ("cid", IN_ORDER)}
    assert disagreement_reasons(rankings, review_tau=0.3) == {}  # a2 ties everything: tau-b is 0/0
    assert disagreement_reasons(rankings, review_tau=1.01).keys() == {"a1", "a3"}


def test_gold_and_flag_reasons():
    assert gold_reason(IN_ORDER, IN_ORDER, 0.75) is None
    assert gold_reason([["c1", "c2", "c3", "c4"]], IN_ORDER, 0.75) == {"reason": "failed_gold", "agreement": None, "gold": IN_ORDER}
    assert flag_reason({"c1": ["hallucination"], "c3": ["moral_judgment"]}) is None
    assert flag_reason({"c3": ["sexual", "expresses_opinion"]}) == {"reason": "flagged", "flags": {"c3": ["sexual"]}}


def test_tiers_notation_round_trips():
    assert parse_tiers(" c2 > c1 = c3>c4 ") == [["c2"], ["c1", "c3"], ["c4"]]
    assert format_tiers([["c2"], ["c1", "c3"], ["c4"]]) == "c2 > c1 = c3 > c4"
    assert parse_tiers("  ") == []
