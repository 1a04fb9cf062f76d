"""The ranking database on a real SQLite file: assignment, validation, idempotency, edits, drafts,
isolation between annotators, concurrency."""

import time

import pytest

from labeling_ui.schema import LabelingError
from labeling_ui.store import LabelStore

from .conftest import run_concurrently


def records(n, k=4):
    return [{"prompt_id": f"p{i:03d}", "prompt": f"Q: prompt {i}\nA:",
             "candidates": [{"id": f"c{j + 1}", "text": f"answer {i}.{j}", "policy": "sft"} for j in range(k)]}
            for i in range(n)]


@pytest.fixture
def store(db_url):
    store = LabelStore(db_url, overlap_fraction=0.0)
    store.import_records(records(6))
    return store


def full_submission(task):
    ids = [c for c, _ in task.candidates]
    return {"tiers": [[ids[0]], [ids[1], ids[2]], [ids[3]]], "likert": {c: 4 for c in ids}}


def test_import_is_idempotent_and_checks_records(tmp_path, store):
    assert store.import_records(records(8)) == 2  # six were there
    with pytest.raises(LabelingError, match="file.jsonl record 1: expected 2 to 9 candidates, got 1"):
        store.import_records([{"prompt_id": "x", "prompt": "q", "candidates": [{"id": "c1", "text": "a"}]}], "file.jsonl")
    two = [{"id": "c1", "text": "a"}, {"id": "c1", "text": "b"}]
    with pytest.raises(LabelingError, match="file.jsonl record 1: candidate ids repeat"):
        store.import_records([{"prompt_id": "x", "prompt": "q", "candidates": two}], "file.jsonl")
    with pytest.raises(LabelingError, match="record 2: every candidate needs string fields 'id' and 'text'"):
        store.import_records([records(1)[0] | {"prompt_id": "y"}, {"prompt_id": "z", "prompt": "q", "candidates": [{"id": "c1"}] * 2}])
    assert store.import_records(records(8)) == 0  # a refused file adds nothing, not even its good records


def test_passwords_are_salted_hashes_and_checked(store):
    store.add_user("ann", "annotator", "correct horse")
    store.add_user("bob", "annotator", "correct horse")
    ann, bob = store.user("ann"), store.user("bob")
    assert ann.password_hash != bob.password_hash and "correct horse" not in ann.password_hash  # salted
    assert store.authenticate("ann", "correct horse").id == ann.id
    assert store.authenticate("ann", "wrong password") is None and store.authenticate("nobody", "correct horse") is None
    with pytest.raises(LabelingError, match="exists"):
        store.add_user("ann", "admin", "another password")


def test_a_reservation_is_resumed_and_a_prompt_never_comes_twice(store):
    ann = store.add_user("ann", "annotator", "password1")
    first = store.next_task(ann)
    assert store.next_task(ann) == first  # the open reservation comes back, same display order
    assert sorted(c for c, _ in first.candidates) == ["c1", "c2", "c3", "c4"]
    seen = []
    task = first
    while task is not None:
        seen.append(task.prompt)
        store.submit(ann, task.assignment_id, **full_submission(task))
        task = store.next_task(ann)
    assert len(seen) == len(set(seen)) == 6
    assert store.progress(ann) == {"submitted": 6, "skipped": 0, "reserved": 0, "remaining": 0}


def test_overlap_prompts_go_to_two_annotators_and_others_to_one(db_url):
    store = LabelStore(db_url, overlap_fraction=1.0)
    store.import_records(records(3))
    ann, bob, cid = (store.add_user(n, "annotator", "password1") for n in ("ann", "bob", "cid"))
    for user in (ann, bob):
        while (task := store.next_task(user)) is not None:
            store.submit(user, task.assignment_id, **full_submission(task))
    assert store.next_task(cid) is None  # every prompt has its two rankings
    assert len(store.rankings()) == 6


def test_submissions_are_validated(store):
    ann = store.add_user("ann", "annotator", "password1")
    task = store.next_task(ann)
    ids = [c for c, _ in task.candidates]
    good = full_submission(task)
    bad = [
        ({**good, "tiers": [ids[:3]]}, "ranked exactly once"),
        ({**good, "tiers": [ids, [ids[0]]]}, "ranked exactly once"),
        ({**good, "tiers": [ids[:2] + ["c99"], ids[3:]]}, "ranked exactly once"),
        ({**good, "likert": {**good["likert"], ids[0]: 8}}, "Likert score from 1 to 7"),
        ({**good, "likert": {ids[0]: 4}}, "Likert score from 1 to 7"),
        ({**good, "flags": {ids[0]: ["not_a_flag"]}}, "flag"),
        ({**good, "confidence": 10}, "confidence"),
        ({**good, "note": "x" * 2001}, "longer than"),
    ]
    for submission, message in bad:
        with pytest.raises(LabelingError, match=message):
            store.submit(ann, task.assignment_id, **submission)
    assert store.rankings() == []


def test_an_annotator_reaches_only_their_own_assignments_and_drafts(store):
    ann, bob = store.add_user("ann", "annotator", "password1"), store.add_user("bob", "annotator", "password1")
    task = store.next_task(ann)
    store.save_draft(ann, task.assignment_id, {"tiers": [["c1"]], "note": "ann's secret"})
    assert store.draft(ann, task.assignment_id)["note"] == "ann's secret"
    for call in (lambda: store.draft(bob, task.assignment_id), lambda: store.task(bob, task.assignment_id),
                 lambda: store.submit(bob, task.assignment_id, **full_submission(task)),
                 lambda: store.skip(bob, task.assignment_id, "duplicate")):
        with pytest.raises(LabelingError, match="no such assignment"):
            call()
    assert store.next_task(bob).assignment_id != task.assignment_id


def test_a_retried_submit_is_stored_once_and_an_edit_is_a_new_version(store):
    ann = store.add_user("ann", "annotator", "password1")
    task = store.next_task(ann)
    first = store.submit(ann, task.assignment_id, **full_submission(task), idempotency_key="k1")
    assert store.submit(ann, task.assignment_id, **full_submission(task), idempotency_key="k1") == first
    ids = [c for c, _ in task.candidates]
    store.submit(ann, task.assignment_id, tiers=[[c] for c in reversed(ids)], likert={c: 2 for c in ids},
                 flags={ids[0]: ["hallucination"]}, confidence=7, idempotency_key="k2")
    [record] = store.rankings()
    assert record["version"] == 2 and record["ranking"] == [[c] for c in reversed(ids)]
    assert record["flags"] == {ids[0]: ["hallucination"]} and record["confidence"] == 7
    assert [e.type for e in store.events(task.assignment_id)] == ["open", "submit", "edit"]  # both versions logged


def test_a_skip_needs_a_reason_and_frees_the_annotator(store):
    ann = store.add_user("ann", "annotator", "password1")
    task = store.next_task(ann)
    with pytest.raises(LabelingError, match="skip reason"):
        store.skip(ann, task.assignment_id, "bored")
    store.skip(ann, task.assignment_id, "unclear prompt")
    assert store.next_task(ann).assignment_id != task.assignment_id
    assert store.progress(ann)["skipped"] == 1


def test_an_expired_reservation_goes_back_to_the_pool(db_url):
    store = LabelStore(db_url, overlap_fraction=0.0, ttl_minutes=0.5 / 60)
    store.import_records(records(1))
    ann, bob = store.add_user("ann", "annotator", "password1"), store.add_user("bob", "annotator", "password1")
    task = store.next_task(ann)
    assert store.next_task(bob) is None  # reserved by ann
    time.sleep(0.6)
    assert store.next_task(bob).prompt == task.prompt  # ann went idle: no starvation


def test_gold_items_come_every_nth_task_and_are_not_exported(db_url):
    store = LabelStore(db_url, overlap_fraction=0.0, gold_every=3)
    gold = {**records(1)[0], "prompt_id": "gold-1", "prompt": "gold prompt", "gold": [["c1"], ["c2"], ["c3"], ["c4"]]}
    store.import_records(records(5) + [gold])
    ann = store.add_user("ann", "annotator", "password1")
    prompts = []
    while (task := store.next_task(ann)) is not None:
        prompts.append(task.prompt)
        store.submit(ann, task.assignment_id, **full_submission(task))
    assert prompts.index("gold prompt") == 2 and len(prompts) == 6
    assert len(store.rankings()) == 5 and len(store.rankings(include_gold=True)) == 6


def test_twenty_concurrent_annotators_store_exactly_their_rankings(db_url):
    store = LabelStore(db_url, overlap_fraction=0.0)
    store.import_records(records(200))
    users = [store.add_user(f"a{i}", "annotator", "password1") for i in range(20)]
    def work(user):
        for _ in range(10):
            task = store.next_task(user)
            store.submit(user, task.assignment_id, **full_submission(task), idempotency_key=f"{user}-{task.assignment_id}")

    errors = run_concurrently(work, users)
    assert errors == []
    stored = store.rankings()
    assert len(stored) == 200 and len({r["prompt_id"] for r in stored}) == 200


def test_a_batch_is_served_and_exported_apart_from_another(db_url):
    url = db_url
    first, second = LabelStore(url, batch="one", overlap_fraction=0.0), LabelStore(url, batch="two", overlap_fraction=0.0)
    first.import_records(records(2))
    second.import_records(records(3))  # the same prompt ids: a new sample of candidates
    ann = first.add_user("ann", "annotator", "password1")
    while (task := second.next_task(ann)) is not None:
        second.submit(ann, task.assignment_id, **full_submission(task))
    assert len(second.rankings()) == 3 and first.rankings() == []
    assert first.next_task(ann) is not None  # batch one's prompts are still open


def test_a_changed_overlap_fraction_applies_to_prompts_imported_under_the_old_one(db_url, store):
    # before, the overlap flag was fixed when the sample stage imported the candidates, so a changed
    # labeling.overlap_fraction was silently ignored
    ada, bob = store.add_user("ada", "annotator", "password-a"), store.add_user("bob", "annotator", "password-b")
    first = store.next_task(ada)
    store.submit(ada, first.assignment_id, **full_submission(first), idempotency_key="a1")
    assert store.next_task(bob).prompt != first.prompt  # no overlap: every prompt once
    wider = LabelStore(db_url, overlap_fraction=1.0)
    assert wider.apply_overlap_fraction() == 6 and wider.apply_overlap_fraction() == 0
    assert [e.payload for e in wider.events() if e.type == "overlap"] == [{"overlap_fraction": 1.0, "prompts_changed": 6}]
    assert wider.coverage()["prompts"] == 6
    carol = wider.add_user("carol", "annotator", "password-c")
    assert wider.next_task(carol).prompt == first.prompt  # a ranked prompt now wants its second ranking first
