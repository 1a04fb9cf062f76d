"""Demonstrations (annotators write the response, InstructGPT's SFT data) in the ranking database:
import, reservation, drafts, submission and its versions, skips, export, and the SFT loader reading
the export as data.sft."""

import json
import time

import pytest

from common.config import load_config
from labeling_ui.export import export_snapshot
from labeling_ui.schema import MAX_COMPLETION, LabelingError
from labeling_ui.store import LabelStore
from stages.data.datasets import sft_dataset

from .conftest import run_concurrently


def demonstration_records(n):
    return [{"prompt_id": f"d{i:03d}", "prompt": f"Write a haiku about the number {i}.", "kind": "demonstration"}
            for i in range(n)]


def ranking_records(n):
    return [{"prompt_id": f"p{i:03d}", "prompt": f"Q: prompt {i}\nA:",
             "candidates": [{"id": f"c{j + 1}", "text": f"answer {i}.{j}"} for j in range(4)]} for i in range(n)]


@pytest.fixture
def store(db_url):
    store = LabelStore(db_url, overlap_fraction=1.0)  # overlap is for rankings: a demonstration is written once
    store.import_records(demonstration_records(3) + ranking_records(2))
    return store


def test_import_takes_demonstration_prompts_without_candidates_and_names_the_bad_record(store):
    assert store.import_records(demonstration_records(4)) == 1  # three were there
    with pytest.raises(LabelingError, match="demos.jsonl record 2: a demonstration prompt has no candidates"):
        store.import_records([demonstration_records(1)[0], ranking_records(1)[0] | {"kind": "demonstration"}], "demos.jsonl")
    with pytest.raises(LabelingError, match=r"demos.jsonl record 1: 'kind' must be one of \('ranking', 'demonstration'\), got 'essay'"):
        store.import_records([{"prompt_id": "x", "prompt": "q", "kind": "essay"}], "demos.jsonl")
    with pytest.raises(LabelingError, match="record 1: the prompt is empty"):
        store.import_records([{"prompt_id": "x", "prompt": "  ", "kind": "demonstration"}])
    with pytest.raises(LabelingError, match="record 1: expected 2 to 9 candidates"):  # a ranking prompt still needs them
        store.import_records([{"prompt_id": "x", "prompt": "q"}])


def test_the_cli_imports_a_file_of_prompts_as_demonstration_tasks(tmp_path, capsys):
    from labeling_ui.cli import run_store
    from pipeline.cli import main

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt_id": f"q{i}", "prompt": f"Explain {i}."}) + "\n" for i in range(3)))
    run = tmp_path / "run"
    main(["label", "import", "--run-dir", str(run), "--demonstrations", str(prompts)])
    assert "imported 3 new prompts" in capsys.readouterr().out
    store, _ = run_store(str(run))
    ann = store.add_user("ann", "annotator", "password1")
    assert store.next_demonstration(ann).prompt == "Explain 0." and store.next_task(ann) is None
    with pytest.raises(SystemExit):  # without the flag these are ranking prompts, which need candidates
        main(["label", "import", "--run-dir", str(run), str(prompts)])
    assert f"error: {prompts} record 1: expected 2 to 9 candidates, got 0" in capsys.readouterr().err


def test_the_write_and_rank_queues_are_apart_and_a_prompt_is_written_once(store):
    ann, bob = (store.add_user(name, "annotator", "password1") for name in ("ann", "bob"))
    demo, ranking = store.next_demonstration(ann), store.next_task(ann)
    assert demo.prompt == "Write a haiku about the number 0." and len(ranking.candidates) == 4
    assert store.next_demonstration(ann) == demo and store.next_task(ann) == ranking  # each tab resumes its own
    with pytest.raises(LabelingError, match="this is a ranking task"):
        store.demonstration_task(ann, ranking.assignment_id)
    with pytest.raises(LabelingError, match="takes a ranking, not a written response"):
        store.submit_demonstration(ann, ranking.assignment_id, "a response")
    with pytest.raises(LabelingError, match="takes a written response, not a ranking"):
        store.submit(ann, demo.assignment_id, [], {})
    assert store.next_demonstration(bob).prompt.endswith("number 1.")  # ann holds d000: one writer per prompt
    store.submit_demonstration(ann, demo.assignment_id, "Zero: an empty bowl.")
    assert store.next_demonstration(ann).prompt.endswith("number 2.")
    assert store.next_demonstration(bob).prompt.endswith("number 1.")  # bob's reservation, resumed
    assert store.progress(ann, "demonstration") == {"submitted": 1, "skipped": 0, "reserved": 1, "remaining": 0}
    assert store.progress(ann) == {"submitted": 0, "skipped": 0, "reserved": 1, "remaining": 1}  # the Rank tab's, unchanged
    assert [text for _, text in store.submitted(ann, "demonstration")] == ["Write a haiku about the number 0."]
    assert store.submitted(ann) == []


def test_twenty_concurrent_writers_write_each_prompt_exactly_once(db_url):
    store = LabelStore(db_url)
    store.import_records(demonstration_records(200))
    writers = [store.add_user(f"w{i}", "annotator", "password1") for i in range(20)]

    def work(writer):
        while (task := store.next_demonstration(writer)) is not None:
            store.submit_demonstration(writer, task.assignment_id, f"written by {writer}")

    assert run_concurrently(work, writers) == []
    written = store.demonstrations()
    assert len(written) == 200 and len({d["prompt_id"] for d in written}) == 200


def test_a_draft_is_kept_a_retried_submit_stored_once_and_an_edit_is_a_new_version(store):
    ann = store.add_user("ann", "annotator", "password1")
    task = store.next_demonstration(ann)
    store.save_draft(ann, task.assignment_id, {"completion": "Zero: an emp"})
    assert store.draft(ann, task.assignment_id) == {"completion": "Zero: an emp"}
    for bad, message in (("", "empty"), (" \n", "empty"), ("x" * (MAX_COMPLETION + 1), f"at most {MAX_COMPLETION}")):
        with pytest.raises(LabelingError, match=message):
            store.submit_demonstration(ann, task.assignment_id, bad)
    first = store.submit_demonstration(ann, task.assignment_id, "Zero: an empty bowl.", idempotency_key="k1")
    assert store.submit_demonstration(ann, task.assignment_id, "Zero: an empty bowl.", idempotency_key="k1") == first
    store.submit_demonstration(ann, task.assignment_id, "Zero: an empty bowl, full.", idempotency_key="k2")
    assert store.latest_submission(ann, task.assignment_id)["completion"] == "Zero: an empty bowl, full."
    [record] = store.demonstrations()
    assert (record["completion"], record["version"], record["annotator_id"]) == ("Zero: an empty bowl, full.", 2, "ann")
    assert [e.type for e in store.events(task.assignment_id)] == ["open", "draft_save", "submit", "edit"]
    bob = store.add_user("bob", "annotator", "password1")
    with pytest.raises(LabelingError, match="no such assignment"):
        store.submit_demonstration(bob, task.assignment_id, "not mine")


def test_a_skip_needs_a_reason_that_fits_a_demonstration_and_gives_the_prompt_back(store):
    ann, bob = (store.add_user(name, "annotator", "password1") for name in ("ann", "bob"))
    task = store.next_demonstration(ann)
    with pytest.raises(LabelingError, match="a demonstration's skip reason must be one of"):
        store.skip(ann, task.assignment_id, "broken candidates")  # there are none
    store.skip(ann, task.assignment_id, "needs expertise")
    assert store.next_demonstration(ann).prompt.endswith("number 1.")  # never the skipped prompt again
    assert store.next_demonstration(bob).prompt.endswith("number 0.")  # ann's skip gave it back to the pool


def test_an_expired_reservation_goes_back_to_the_pool(db_url):
    store = LabelStore(db_url, ttl_minutes=0.001)
    store.import_records(demonstration_records(1))
    ann, bob = (store.add_user(name, "annotator", "password1") for name in ("ann", "bob"))
    first = store.next_demonstration(ann)
    time.sleep(0.2)
    second = store.next_demonstration(bob)
    assert second is not None and second.prompt == first.prompt and store.next_demonstration(ann) is None  # never twice to ann


def test_the_snapshot_holds_the_latest_demonstrations_not_rejected_ones_and_sft_reads_it(store, tmp_path):
    names = ("ann", "bob", "cat")
    users = {name: store.add_user(name, "annotator", "password1") for name in names}
    written = {}
    for name, user in users.items():
        task = store.next_demonstration(user)
        store.submit_demonstration(user, task.assignment_id, f"{name} wrote this.\nTwo lines.")
        written[name] = task.assignment_id
    reviewer = store.add_user("rev", "reviewer", "password1")
    store.review(reviewer, written["bob"], "reject", "copied from a web page")
    store.review(reviewer, written["cat"], "accept")
    with pytest.raises(LabelingError, match="assignment is rejected"):
        store.submit_demonstration(users["bob"], written["bob"], "bob wrote this again.")
    with pytest.raises(LabelingError, match=r"reviewed \(accept\) and can no longer be edited"):
        store.submit_demonstration(users["cat"], written["cat"], "cat wrote this again.")
    dan = store.add_user("dan", "annotator", "password1")
    assert store.next_demonstration(dan).prompt.endswith("number 1.")  # bob's prompt, open again
    snapshot = export_snapshot(store, tmp_path / "exports")
    rows = [json.loads(line) for line in (snapshot / "demonstrations.jsonl").read_text().splitlines()]
    assert [(r["prompt_id"], r["annotator_id"], r["completion"]) for r in rows] == [
        ("d000", "ann", "ann wrote this.\nTwo lines."), ("d002", "cat", "cat wrote this.\nTwo lines.")]
    assert not {"assignment_id", "submitted_at"} & set(rows[0])  # nothing that differs between identical runs
    manifest = json.loads((snapshot / "manifest.json").read_text())
    assert manifest["demonstrations"]["count"] == 2 and manifest["counts"]["rankings"] == 0
    assert set(manifest["sha256"]) == {"rankings.jsonl", "pairs.jsonl", "demonstrations.jsonl"}
    assert export_snapshot(store, tmp_path / "exports") == snapshot  # unchanged data, the same snapshot
    # --set data.sft.path=<the snapshot's file>: the SFT stage's dataset builder reads it as it is
    config = load_config(None, [f"data.sft.path={snapshot / 'demonstrations.jsonl'}"])
    sft = sft_dataset(config.data, config.world, tokenizer=None)
    assert list(zip(sft["prompt"], sft["completion"])) == [("Write a haiku about the number 0.", "ann wrote this.\nTwo lines."),
                                                          ("Write a haiku about the number 2.", "cat wrote this.\nTwo lines.")]


def test_only_an_annotator_past_the_qualification_writes_demonstrations(db_url):
    store = LabelStore(db_url, qualification_items=1)
    store.import_records(demonstration_records(2))
    ann, boss = store.add_user("ann", "annotator", "password1"), store.add_user("boss", "admin", "password1")
    assert store.next_demonstration(ann) is None  # pending: the qualification's gold rankings come first
    assert store.next_demonstration(boss).prompt.endswith("number 0.")  # an admin takes no qualification
