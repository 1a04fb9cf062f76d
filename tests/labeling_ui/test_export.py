"""Export snapshots: immutable, with a manifest, and read back by the reward stage's loader."""

import json

import pytest

from labeling_ui.export import export_snapshot
from labeling_ui.store import LabelStore, sqlite_url
from stages.data.rankings import load_rankings


@pytest.fixture
def ranked_store(db_url):
    store = LabelStore(db_url, overlap_fraction=1.0)
    store.import_records([{"prompt_id": f"p{i}", "prompt": f"Q: {i}?\nA: ",
                           "candidates": [{"id": f"c{j + 1}", "text": f"answer {j}", "policy": "sft"} for j in range(4)]}
                          for i in range(3)])
    for name, tiers in (("ann", [["c1"], ["c2", "c3"], ["c4"]]), ("bob", [["c2"], ["c1"], ["c3"], ["c4"]])):
        user = store.add_user(name, "annotator", "password1")
        while (task := store.next_task(user)) is not None:
            store.submit(user, task.assignment_id, tiers, {c: 4 for c, _ in task.candidates})
    return store


def test_a_snapshot_has_both_formats_a_manifest_and_is_read_by_the_reward_stage(ranked_store, tmp_path, tokenizer):
    snapshot = export_snapshot(ranked_store, tmp_path / "exports")
    manifest = json.loads((snapshot / "manifest.json").read_text())
    # ann orders 5 strict pairs (c2-c3 tied), bob 6: 11 pairs per prompt, 3 prompts
    assert manifest["counts"] == {"rankings": 6, "prompts": 3, "annotators": 2, "pairs": 33}
    # on every prompt the two agree on 4 of the 5 pairs both order (they differ on c1 vs c2)
    assert manifest["agreement"]["pairwise_agreement"] == pytest.approx(4 / 5) and manifest["agreement"]["overlap_prompts"] == 3
    groups = load_rankings(str(snapshot / "rankings.jsonl"), tokenizer).groups
    assert len(groups) == 6 and {g.group_id for g in groups} == {f"p{i}:{n}" for i in range(3) for n in ("ann", "bob")}
    ann = next(g for g in groups if g.group_id == "p0:ann")
    assert [[ann.responses[i] for i in tier] for tier in ann.tiers] == [["answer 0"], ["answer 1", "answer 2"], ["answer 3"]]
    pairs = [json.loads(line) for line in (snapshot / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 33 and {"prompt", "chosen", "rejected", "group_id"} <= set(pairs[0])
    pair_groups = load_rankings(str(snapshot / "pairs.jsonl"), tokenizer).groups
    assert len(pair_groups) == 33 and {g.group_id for g in pair_groups} == {g.group_id for g in groups}


def test_snapshots_are_immutable_and_a_new_one_appears_only_when_the_data_change(ranked_store, tmp_path):
    first = export_snapshot(ranked_store, tmp_path / "exports")
    assert export_snapshot(ranked_store, tmp_path / "exports") == first
    assert all(path.stat().st_mode & 0o222 == 0 for path in first.iterdir())  # read-only files
    user = ranked_store.add_user("cid", "annotator", "password1")
    ranked_store.import_records([{"prompt_id": "p9", "prompt": "Q: 9?\nA: ",
                                  "candidates": [{"id": f"c{j + 1}", "text": f"answer {j}"} for j in range(4)]}])
    task = ranked_store.next_task(user)
    ranked_store.submit(user, task.assignment_id, [["c4"], ["c3"], ["c2"], ["c1"]], {f"c{j + 1}": 3 for j in range(4)})
    second = export_snapshot(ranked_store, tmp_path / "exports")
    assert second != first and json.loads((second / "manifest.json").read_text())["counts"]["rankings"] == 7
    assert json.loads((first / "manifest.json").read_text())["counts"]["rankings"] == 6


def test_the_same_rankings_submitted_in_another_order_export_the_same_files(tmp_path):
    """Concurrent annotators submit in a different order in every run, under random assignment ids and at
    other times; the exported files may follow none of it, or two identical pipeline runs train
    different reward models."""
    records = [{"prompt_id": f"p{i}", "prompt": f"Q: {i}?\nA: ",
                "candidates": [{"id": f"c{j + 1}", "text": f"answer {i}.{j} é", "policy": "sft"} for j in range(3)]}
               for i in range(4)]

    def tiers(name: str, prompt: str) -> list[list[str]]:
        ids = ["c1", "c2", "c3"]
        shift = (int(prompt[-1]) + len(name)) % 3
        return [[c] for c in ids[shift:] + ids[:shift]]

    def export(folder: str, names: list[str], turns: list[str]) -> tuple[str, str, dict]:
        store = LabelStore(sqlite_url(tmp_path / f"{folder}.db"), overlap_fraction=1.0)
        store.import_records(records)
        users = {name: store.add_user(name, "annotator", "password1") for name in names}
        for name in turns:  # one submission per turn, in this order
            task = store.next_task(users[name])
            prompt = next(r["prompt_id"] for r in records if r["prompt"] == task.prompt)
            store.submit(users[name], task.assignment_id, tiers(name, prompt), {c: 4 for c, _ in task.candidates})
        snapshot = export_snapshot(store, tmp_path / folder)
        manifest = json.loads((snapshot / "manifest.json").read_text())
        del manifest["created_at"]
        return (snapshot / "rankings.jsonl").read_text(), (snapshot / "pairs.jsonl").read_text(), manifest

    one_after_the_other = export("a", ["ann", "bob"], ["ann"] * 4 + ["bob"] * 4)
    interleaved = export("b", ["bob", "ann"], ["bob", "ann"] * 4)
    assert one_after_the_other == interleaved
