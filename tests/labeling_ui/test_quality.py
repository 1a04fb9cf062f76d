"""Annotator quality: the pure figures on worked examples, the qualification gate in the store (on
every database of `db_url`), and `rlhf label stats` with its plot."""

import json

import matplotlib.image
import pytest

from labeling_ui.quality import (
    gold_accuracy,
    is_too_fast,
    likert_consistency,
    quality_report,
)
from labeling_ui.schema import LabelingError
from labeling_ui.store import LabelStore

from .conftest import PASSWORD

GOLD = [["c1"], ["c2"], ["c3"], ["c4"]]
REVERSED = GOLD[::-1]
SAME_LIKERT = {"c1": 4, "c2": 4, "c3": 4, "c4": 4}


# ---- the pure figures ---------------------------------------------------------------------------

def test_likert_consistency_counts_contradicting_strict_pairs_and_skips_ties():
    # a > {b, c} > d: strict pairs ab, ac, ad, bd, cd (bc tied, not counted); b ranked above d but rated 4 < 5
    # contradicts; c above d with equal ratings (5, 5) does not
    first = ([["a"], ["b", "c"], ["d"]], {"a": 6, "b": 4, "c": 5, "d": 5})
    assert likert_consistency([first]) == pytest.approx(4 / 5)
    # x > y rated 1 < 7: its one strict pair contradicts; pooled over both rankings (5 - 1 + 1 - 1) / 6
    second = ([["x"], ["y"]], {"x": 1, "y": 7})
    assert likert_consistency([first, second]) == pytest.approx(4 / 6)
    assert likert_consistency([([["x", "y"]], {"x": 1, "y": 7})]) is None  # all tied: no strict pair


def test_gold_accuracy_is_pairwise_agreement_over_the_latest_window():
    # oldest first: a reversed ranking (0 of 6 pairs agree), then two exact ones (6 of 6 each)
    rankings = [(REVERSED, GOLD), (GOLD, GOLD), (GOLD, GOLD)]
    assert gold_accuracy(rankings, window=2) == 1.0
    assert gold_accuracy(rankings, window=3) == pytest.approx(12 / 18)
    # ties are skipped: c1 = c2 leaves 5 pairs, of which c3 > c4 disagrees with the gold
    assert gold_accuracy([([["c1", "c2"], ["c4"], ["c3"]], GOLD)], window=20) == pytest.approx(4 / 5)
    assert gold_accuracy([], window=20) is None


def test_too_fast_scales_with_the_number_of_candidates():
    assert is_too_fast(11.9, 4, 3.0) and not is_too_fast(12.0, 4, 3.0)  # K = 4: under 4 x 3 s
    assert is_too_fast(20.0, 9, 3.0)  # K = 9: under 27 s
    assert not is_too_fast(0.5, 4, 0.0)  # 0: never flagged


def ranking(annotator, prompt_id, tiers, gold=None, seconds=30.0, likert=None, flags=None):
    return {"annotator": annotator, "prompt_id": prompt_id, "tiers": tiers, "gold": gold, "likert": likert or SAME_LIKERT,
            "flags": flags or {}, "seconds": seconds}


def test_quality_report_per_annotator():
    annotators = [{"name": "ann", "role": "annotator", "qualification": "passed", "qualification_score": 1.0},
                  {"name": "bob", "role": "annotator", "qualification": "passed", "qualification_score": 0.8},
                  {"name": "boss", "role": "admin", "qualification": "passed", "qualification_score": None},
                  {"name": "new", "role": "annotator", "qualification": "pending", "qualification_score": None}]
    ann_ties = [["c1", "c2"], ["c3"], ["c4"]]
    submissions = [
        ranking("ann", "g1", REVERSED, gold=GOLD, seconds=5.0),  # 0/6 with the gold, too fast (5 s < 4 x 3 s)
        ranking("ann", "g2", GOLD, gold=GOLD, seconds=40.0, likert={"c1": 7, "c2": 6, "c3": 2, "c4": 1}),
        ranking("ann", "p1", ann_ties, seconds=10.0, flags={"c4": ["hallucination"]}),
        ranking("bob", "p1", GOLD, seconds=None),  # no time measured (an API client)
        ranking("bob", "p2", GOLD, seconds=60.0),
    ]
    report = quality_report({"annotators": annotators, "submissions": submissions}, gold_window=1, gold_alert=0.7,
                            too_fast_seconds=3.0, qualification_threshold=0.75)
    assert set(report["per_annotator"]) == {"ann", "bob", "new"}  # an admin who ranked nothing is left out
    ann, bob = report["per_annotator"]["ann"], report["per_annotator"]["bob"]
    assert (ann["rankings"], ann["gold_rankings"]) == (1, 2)
    assert ann["gold_accuracy"] == 1.0 and not ann["gold_alert"]  # window 1: only the latest gold item
    # on p1 ann ties c1 = c2: 5 pairs ordered by both, all as bob orders them; tau-b = 5 / sqrt(5 x 6)
    assert ann["pairwise_agreement"] == bob["pairwise_agreement"] == 1.0
    assert ann["kendall_tau_b"] == pytest.approx(5 / 30 ** 0.5)
    # every Likert is 4 except on g2, which agrees with its ranking: no strict pair contradicts
    assert ann["likert_consistency"] == 1.0
    assert ann["median_seconds"] == 10.0 and ann["median_seconds_per_candidate"] == 2.5
    assert (ann["too_fast"], ann["too_fast_share"]) == (2, pytest.approx(2 / 3))  # 5 s and 10 s, both under 12 s
    assert ann["flagged_share"] == pytest.approx(1 / 12)  # one of 3 x 4 rated candidates
    assert (bob["too_fast"], bob["too_fast_share"], bob["median_seconds"]) == (0, 0.0, 60.0)
    assert bob["gold_accuracy"] is None and not bob["gold_alert"]
    assert report["per_annotator"]["new"]["rankings"] == 0 and report["per_annotator"]["new"]["median_seconds"] is None
    alerted = quality_report({"annotators": annotators, "submissions": submissions}, gold_window=2, gold_alert=0.7,
                             too_fast_seconds=3.0, qualification_threshold=0.75)["per_annotator"]["ann"]
    assert alerted["gold_accuracy"] == 0.5 and alerted["gold_alert"]  # (0 + 6) / 12 below 0.7


def test_the_quality_keys_are_checked_when_the_config_loads():
    from common.config import load_config
    from common.errors import InputError

    for key, value, expected in (("qualification_threshold", 1.5, "less than or equal to 1"), ("gold_window", 0, "greater than or equal to 1"),
                                 ("qualification_items", -1, "greater than or equal to 0"), ("too_fast_seconds", -2, "greater than or equal to 0")):
        with pytest.raises(InputError, match=f"labeling.{key}: Input should be {expected}"):
            load_config(None, [f"labeling.{key}={value}"])


# ---- the qualification in the store --------------------------------------------------------------

def records(prefix, n, gold=None):
    return [{"prompt_id": f"{prefix}{i}", "prompt": f"{prefix} prompt {i}", "gold": gold,
             "candidates": [{"id": f"c{j}", "text": f"answer {i}.{j}"} for j in range(1, 5)]} for i in range(1, n + 1)]


@pytest.fixture
def store(db_url):
    """Real prompts imported before the gold ones (so the gate, not the order, serves gold first)."""
    store = LabelStore(db_url, overlap_fraction=0.0, qualification_items=2, qualification_threshold=0.75)
    store.import_records([{k: v for k, v in r.items() if k != "gold"} for r in records("real", 4)] + records("gold", 3, GOLD))
    return store


def rank(store, annotator_id, tiers, seconds=30):
    task = store.next_task(annotator_id)
    store.submit(annotator_id, task.assignment_id, tiers, SAME_LIKERT, time_spent_ms=seconds * 1000)
    return task.prompt


def test_a_pending_annotator_gets_the_gold_items_in_order_then_passes_and_gets_real_work(store):
    ann = store.add_user("ann", "annotator", PASSWORD)
    assert store.qualification(ann).state == "pending" and store.qualification(ann).done == 0
    assert store.next_task(ann).prompt == "gold prompt 1"
    with pytest.raises(LabelingError, match="qualification item cannot be skipped"):
        store.skip(ann, store.next_task(ann).assignment_id, "duplicate")
    assert rank(store, ann, GOLD) == "gold prompt 1"
    assert store.qualification(ann).done == 1
    # c1 = c2 tied: 5 pairs ordered by both, c3 > c4 reversed: 4 / 5; pooled with the first, (6 + 4) / 11
    assert rank(store, ann, [["c1", "c2"], ["c4"], ["c3"]]) == "gold prompt 2"
    standing = store.qualification(ann)
    assert standing.state == "passed" and standing.score == pytest.approx(10 / 11)
    assert store.next_task(ann).prompt == "real prompt 1"
    [decided] = [e for e in store.events() if e.type == "qualification"]
    assert decided.payload["state"] == "passed" and decided.annotator_id == ann
    assert store.rankings() == [] and len(store.rankings(include_gold=True)) == 2  # qualification rankings are gold


def test_a_failed_annotator_gets_nothing_until_re_admitted_and_is_then_judged_on_new_gold_items(store):
    bob = store.add_user("bob", "annotator", PASSWORD)
    rank(store, bob, REVERSED)
    rank(store, bob, [["c1"], ["c4"], ["c3"], ["c2"]])  # 3 of 6 pairs: pooled 3 / 12
    standing = store.qualification(bob)
    assert standing.state == "failed" and standing.score == pytest.approx(3 / 12)
    assert store.next_task(bob) is None and store.next_task(bob) is None
    assert store.progress(bob)["reserved"] == 0  # no real prompt reserved either

    store.requalify("bob")
    assert store.qualification(bob).state == "pending" and store.qualification(bob).done == 0
    assert rank(store, bob, GOLD) == "gold prompt 3"  # the one gold item he has not had
    with pytest.raises(LabelingError, match=r"takes 2 gold items \(labeling.qualification_items\).*import more gold items"):
        store.next_task(bob)
    store.import_records(records("more-gold", 1, GOLD))
    assert rank(store, bob, GOLD) == "more-gold prompt 1"
    standing = store.qualification(bob)  # judged on the two since the reset: 12 / 12
    assert standing.state == "passed" and standing.score == 1.0
    assert store.next_task(bob).prompt == "real prompt 1"
    assert [e.payload["state"] for e in store.events() if e.type == "qualification"] == ["failed", "pending", "passed"]
    with pytest.raises(LabelingError, match="no user named 'nobody'"):
        store.requalify("nobody")


def test_admins_take_no_qualification_and_none_is_taken_when_it_is_off(store, db_url):
    boss = store.add_user("boss", "admin", PASSWORD)
    assert store.qualification(boss).state == "passed" and store.next_task(boss).prompt == "real prompt 1"
    with pytest.raises(LabelingError, match="only annotators take the qualification"):
        store.requalify("boss")
    unscreened = LabelStore(db_url, overlap_fraction=0.0)  # qualification_items = 0: today's behaviour
    ann = unscreened.add_user("ann", "annotator", PASSWORD)
    assert unscreened.qualification(ann).state == "passed"
    assert unscreened.next_task(ann).prompt == "real prompt 2"  # boss holds the first


def test_quality_records_hold_each_annotators_own_latest_ranking(store, db_url):
    store = LabelStore(db_url, overlap_fraction=0.0, qualification_items=1)  # the fixture's prompts, one gold item to pass
    ann = store.add_user("ann", "annotator", PASSWORD)
    rank(store, ann, GOLD, seconds=8)
    task = store.next_task(ann)
    store.submit(ann, task.assignment_id, REVERSED, SAME_LIKERT, {"c2": ["hallucination"]}, time_spent_ms=20000)
    store.submit(ann, task.assignment_id, GOLD, SAME_LIKERT, time_spent_ms=5000)  # an edit: a new version
    data = store.quality_records()
    assert [(a["name"], a["qualification"]) for a in data["annotators"]] == [("ann", "passed")]
    first, second = data["submissions"]
    assert (first["prompt_id"], first["gold"], first["seconds"]) == ("gold1", GOLD, 8.0)
    # the latest version's tiers and flags; the time of both versions
    assert (second["prompt_id"], second["gold"]) == ("real1", None)
    assert (second["tiers"], second["flags"], second["seconds"]) == (GOLD, {}, 25.0)
    assert second["likert"] == SAME_LIKERT and second["annotator"] == "ann"


# ---- rlhf label stats ---------------------------------------------------------------------------

def test_stats_prints_the_quality_report_and_writes_the_plot(tmp_path, capsys):
    from common.config import dump_config, load_config
    from labeling_ui.cli import run_store
    from pipeline.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(dump_config(load_config(None, ["labeling.qualification_items=1",
                                                                    "labeling.overlap_fraction=1.0"])))
    store, _ = run_store(str(run))
    store.import_records([{k: v for k, v in r.items() if k != "gold"} for r in records("real", 2)] + records("gold", 1, GOLD))
    ids = {name: store.add_user(name, "annotator", PASSWORD) for name in ("ann", "bob", "cat")}
    rank(store, ids["ann"], GOLD, seconds=20)
    rank(store, ids["ann"], GOLD, seconds=4)  # real prompt 1, too fast
    rank(store, ids["bob"], [["c1"], ["c2"], ["c4"], ["c3"]], seconds=30)  # 5 of 6: passes
    rank(store, ids["bob"], REVERSED, seconds=30)  # real prompt 1 again (overlap), against ann's
    rank(store, ids["cat"], REVERSED)  # fails

    main(["label", "stats", "--run-dir", str(run)])
    out = json.loads(capsys.readouterr().out)
    quality = out["quality"]["per_annotator"]
    assert {name: q["qualification"] for name, q in quality.items()} == {"ann": "passed", "bob": "passed", "cat": "failed"}
    assert quality["ann"]["gold_accuracy"] == 1.0 and quality["bob"]["gold_accuracy"] == pytest.approx(5 / 6)
    assert quality["ann"]["kendall_tau_b"] == -1.0 and quality["bob"]["pairwise_agreement"] == 0.0
    assert quality["cat"]["gold_alert"] and quality["ann"]["too_fast"] == 1
    assert out["quality"]["thresholds"]["qualification_threshold"] == 0.75
    assert out["coverage"]["ranked_prompts"] == 1 and out["agreement"]["overlap_prompts"] == 1
    plot = run / "labeling" / "quality.png"
    assert out["quality_plot"] == str(plot)
    image = matplotlib.image.imread(plot)
    assert image[..., :3].std() > 0.01  # something is drawn
    assert [p.name for p in plot.parent.iterdir()] == ["quality.png"]  # no temporary file left
