"""Moving rankings to and from Argilla and Label Studio: files written the way each tool writes them
(from their documented record and export schemas), round trips through a fresh store that keep every
ranking, tie and annotator, bad records refused with the file and record named, and the CLI."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import InputError
from labeling_ui.interchange import (
    from_argilla,
    from_label_studio,
    label_studio_config,
    label_studio_pairwise_config,
    read_export,
    to_argilla,
    to_label_studio,
    to_label_studio_pairwise,
)
from labeling_ui.schema import LabelingError
from labeling_ui.store import LabelStore, sqlite_url

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "password1"
# ann ties c3 with c2 (a tier keeps the order it was given in); bob orders all four
TIERS = {"ann": [["c1"], ["c3", "c2"], ["c4"]], "bob": [["c2"], ["c1"], ["c3"], ["c4"]]}


def ranked_store(path: Path, k: int = 4, tiers: dict = TIERS) -> LabelStore:
    """A store (SQLite, the source of an export) where both annotators of `tiers` ranked three prompts."""
    store = LabelStore(sqlite_url(path), overlap_fraction=1.0)
    store.import_records([{"prompt_id": f"p{i}", "prompt": f"Q: {i}?\nA: ", "split": "valid" if i == 2 else "train",
                           "candidates": [{"id": f"c{j + 1}", "text": f"answer {i}.{j}", "policy": f"policy-{j % 2}"}
                                          for j in range(k)]} for i in range(3)])
    for name, ranking in tiers.items():
        user = store.add_user(name, "annotator", PASSWORD)
        for _ in range(3):
            task = store.next_task(user)
            store.submit(user, task.assignment_id, ranking, {c: 1 + (len(name) + int(c[1:])) % 7 for c, _ in task.candidates})
    return store


def comparable(rankings: list[dict], likert: bool = True) -> list[tuple]:
    """What a round trip must keep: prompt, candidates (ids, texts, policies), annotator, tiers (ties), split."""
    return [(r["prompt_id"], r["prompt"], r["split"], r["annotator_id"], r["ranking"],
             [(c["id"], c["text"], c["policy"]) for c in r["candidates"]], r["likert"] if likert else None) for r in rankings]


def written(path: Path, records) -> Path:
    path.write_text(json.dumps(records))
    return path


# ---- round trips --------------------------------------------------------------------------------


def test_argilla_round_trip_keeps_rankings_ties_annotators_and_likert(db_url, tmp_path):
    source = ranked_store(tmp_path / "source.db").rankings()
    assert len(source) == 6 and any(len(tier) > 1 for r in source for tier in r["ranking"])
    exported = written(tmp_path / "argilla.json", to_argilla(source))

    store = LabelStore(db_url)
    added = store.import_rankings(from_argilla(read_export(exported)), str(exported))
    assert added == {"prompts": 3, "annotators": 2, "rankings": 6}
    assert comparable(store.rankings()) == comparable(source)
    # the imported annotators are accounts that cannot sign in, not even with their old password
    assert store.authenticate("ann", PASSWORD) is None and not store.user("ann").active
    imports = [e for e in store.events() if e.type == "import"]
    assert len(imports) == 6 and imports[0].payload["source"] == str(exported)

    # importing the same file again adds nothing
    assert store.import_rankings(from_argilla(read_export(exported)), str(exported)) == {"prompts": 0, "annotators": 0, "rankings": 0}
    assert len([e for e in store.events() if e.type == "import"]) == 6 and comparable(store.rankings()) == comparable(source)


def test_label_studio_round_trip_keeps_rankings_ties_and_annotators(db_url, tmp_path):
    source = ranked_store(tmp_path / "source.db").rankings()
    tasks = to_label_studio(source)
    assert len(tasks) == 3 and all(len(t["annotations"]) == 2 for t in tasks)
    exported = written(tmp_path / "label-studio.json", tasks)

    store = LabelStore(db_url)
    assert store.import_rankings(from_label_studio(read_export(exported)), str(exported))["rankings"] == 6
    # Label Studio carries no Likert scores
    assert comparable(store.rankings(), likert=False) == comparable(source, likert=False)
    assert all(r["likert"] == {} for r in store.rankings())
    assert store.import_rankings(from_label_studio(read_export(exported)), str(exported))["rankings"] == 0

    # an annotator who changed their ranking in Label Studio: a new version, the old one kept
    bob = next(a for a in tasks[0]["annotations"] if a["completed_by"]["email"] == "bob")
    bob["result"][0]["value"]["ranker"] = {"tier_1": ["c4"], "tier_2": ["c1", "c2", "c3"]}
    store.import_rankings(from_label_studio(read_export(written(exported, tasks))), str(exported))
    changed = next(r for r in store.rankings() if r["prompt_id"] == "p0" and r["annotator_id"] == "bob")
    assert changed["ranking"] == [["c4"], ["c1", "c2", "c3"]] and changed["version"] == 2


def test_label_studio_pairwise_round_trip_keeps_ties(db_url, tmp_path):
    tiers = {"ann": [["c2"], ["c1"]], "bob": [["c1", "c2"]]}  # bob calls it a tie
    source = ranked_store(tmp_path / "source.db", k=2, tiers=tiers).rankings()
    tasks = to_label_studio_pairwise(source)
    results = [a["result"][0] for a in tasks[0]["annotations"]]
    assert [(r["type"], r["value"]) for r in results] == [("pairwise", {"selected": "right"}), ("choices", {"choices": ["Equally good"]})]

    store = LabelStore(db_url)
    store.import_rankings(from_label_studio(read_export(written(tmp_path / "pairwise.json", tasks))), "pairwise.json")
    assert comparable(store.rankings(), likert=False) == comparable(source, likert=False)
    with pytest.raises(LabelingError, match=r"prompt p0 has 4 candidates: Label Studio's Pairwise takes exactly 2"):
        to_label_studio_pairwise(ranked_store(tmp_path / "four.db").rankings())


def test_the_labeling_configs_name_what_the_tasks_hold():
    config = label_studio_config(4)
    assert '<List name="candidates" value="$candidates"' in config and '<Ranker name="rank" toName="candidates">' in config
    assert [f'<Bucket name="tier_{n}"' in config for n in range(1, 6)] == [True] * 4 + [False]
    pairwise = label_studio_pairwise_config()
    assert '<Pairwise name="preference" toName="left,right" />' in pairwise and '<Choice value="Equally good" />' in pairwise


# ---- files as the tools write them ----------------------------------------------------------------

ANN, BOB = "7d3f4a5e-0f5b-4c2e-9b1a-2f6c1d9e8a01", "0c1e2d3f-4a5b-4c6d-8e7f-901a2b3c4d5e"  # Argilla user ids


def test_argilla_2_records_as_to_json_writes_them(tmp_path):
    # dataset.records.to_json(path): rg.Record.to_dict() of each record, nested; a dataset made in
    # Argilla itself has no metadata of ours, so the record id names the prompt and field names the candidates
    record = {
        "id": "q-17", "_server_id": "b8e4c0a2-6f1d-4e3b-9a7c-5d2e1f0a9b8c", "vectors": {}, "suggestions": {},
        "fields": {"prompt": "Name a prime.", "response_1": "4", "response_2": "7", "response_3": "11"},
        "metadata": {},
        "responses": {
            "ranking": [
                # the server's value: ranks, response_2 and response_3 tied
                {"value": [{"value": "response_2", "rank": 1}, {"value": "response_3", "rank": 1}, {"value": "response_1", "rank": 2}],
                 "user_id": ANN, "status": "submitted"},
                # the 2.x SDK's value: the names best first (a strict order), no status
                {"value": ["response_3", "response_2", "response_1"], "user_id": BOB},
                {"value": [{"value": "response_1", "rank": 1}], "user_id": "someone", "status": "draft"},  # not a ranking
            ],
            "likert_2": [{"value": 6, "user_id": ANN, "status": "submitted"}],
        },
    }
    records = [r for _, r in from_argilla(read_export(written(tmp_path / "records.json", [record])))]
    candidates = [{"id": "response_1", "text": "4", "policy": ""}, {"id": "response_2", "text": "7", "policy": ""},
                  {"id": "response_3", "text": "11", "policy": ""}]
    base = {"prompt_id": "q-17", "prompt": "Name a prime.", "candidates": candidates}
    assert records == [
        {**base, "ranking": [["response_2", "response_3"], ["response_1"]], "annotator_id": ANN, "likert": {"response_2": 6}},
        {**base, "ranking": [["response_3"], ["response_2"], ["response_1"]], "annotator_id": BOB, "likert": {}},
    ]


def test_argilla_flattened_records_and_argilla_1_feedback_records(tmp_path):
    # dataset.records.to_datasets().to_json(path): to_list(flatten=True), one JSON object per line
    flat = {"id": "q-1", "_server_id": None, "prompt": "2 + 2?", "response_1": "4", "response_2": "5",
            "ranking.responses": [[{"value": "response_1", "rank": 1}, {"value": "response_2", "rank": 2}],
                                  [{"value": "response_1", "rank": 1}, {"value": "response_2", "rank": 1}]],
            "ranking.responses.users": [ANN, BOB], "ranking.responses.status": ["submitted", "submitted"]}
    path = tmp_path / "flat.jsonl"
    path.write_text(json.dumps(flat) + "\n")
    assert [(r["prompt_id"], r["annotator_id"], r["ranking"]) for _, r in from_argilla(read_export(path))] == [
        ("q-1", ANN, [["response_1"], ["response_2"]]), ("q-1", BOB, [["response_1", "response_2"]])]

    # Argilla 1.x: FeedbackDataset records, responses a list of {user_id, values, status}
    feedback = {"external_id": "q-2", "fields": {"prompt": "3 + 3?", "response_1": "6", "response_2": "7"}, "metadata": {},
                "responses": [{"user_id": ANN, "status": "submitted", "values": {
                    "ranking": {"value": [{"value": "response_2", "rank": 2}, {"value": "response_1", "rank": 1}]}}},
                    {"user_id": BOB, "status": "discarded", "values": {}}],
                "suggestions": []}
    ((where, record),) = from_argilla(read_export(written(tmp_path / "v1.json", [feedback])))
    assert where.endswith(f"v1.json record 0, user {ANN}")
    assert (record["prompt_id"], record["ranking"]) == ("q-2", [["response_1"], ["response_2"]])


def test_label_studio_export_as_the_project_export_writes_it(tmp_path, db_url):
    # the JSON export of a project with List + Ranker + Buckets: completed_by is the user's id; an
    # unused bucket is an empty list, a skipped task a cancelled annotation, an unlabeled one has none
    items = [{"id": "a", "title": "A", "body": "Paris."}, {"id": "b", "title": "B", "body": "Lyon."},
             {"id": "c", "title": "C", "body": "Paris, France."}]
    tasks = [
        {"id": 101, "data": {"prompt": "Capital of France?", "candidates": items}, "meta": {}, "predictions": [],
         "created_at": "2024-05-02T10:00:00.000000Z", "project": 3,
         "annotations": [
             {"id": 11, "completed_by": 2, "was_cancelled": False, "ground_truth": False, "lead_time": 12.5, "task": 101,
              "result": [{"id": "x1", "from_name": "rank", "to_name": "candidates", "type": "ranker", "origin": "manual",
                          "value": {"ranker": {"tier_1": ["a", "c"], "tier_2": [], "tier_3": ["b"]}}}]},
             {"id": 12, "completed_by": 3, "was_cancelled": True, "result": [], "task": 101},
             {"id": 13, "completed_by": {"id": 4, "email": "eve@example.org", "first_name": "Eve", "last_name": ""},
              "was_cancelled": False, "task": 101,
              "result": [{"id": "x2", "from_name": "rank", "to_name": "candidates", "type": "ranker",
                          "value": {"ranker": ["c", "a", "b"]}}]},  # a Ranker without buckets: a strict order
         ]},
        {"id": 102, "data": {"prompt": "Capital of Italy?", "items": items}, "annotations": [], "predictions": []},
    ]
    located = from_label_studio(read_export(written(tmp_path / "project-3.json", tasks)))
    assert [(where.rsplit("/", 1)[1], r.get("annotator_id"), r.get("ranking")) for where, r in located] == [
        ("project-3.json record 0, annotation 11", "label-studio-user-2", [["a", "c"], ["b"]]),
        ("project-3.json record 0, annotation 13", "eve@example.org", [["c"], ["a"], ["b"]]),
        ("project-3.json record 1", None, None),  # its prompt only
    ]
    store = LabelStore(db_url)
    assert store.import_rankings(located, "project-3.json") == {"prompts": 2, "annotators": 2, "rankings": 2}
    assert [(r["prompt_id"], r["annotator_id"]) for r in store.rankings()] == [
        ("label-studio-task-101", "eve@example.org"), ("label-studio-task-101", "label-studio-user-2")]
    assert store.coverage()["prompts"] == 2  # the unlabeled task is a prompt to rank


# ---- bad input ------------------------------------------------------------------------------------

GOOD_ARGILLA = {"id": "q", "fields": {"prompt": "p", "response_1": "a", "response_2": "b"}, "metadata": {},
                "responses": {"ranking": [{"value": ["response_1", "response_2"], "user_id": "u", "status": "submitted"}]}}


def argilla_with(**changes):
    return {**GOOD_ARGILLA, **changes}


def ranking_value(value):
    return argilla_with(responses={"ranking": [{"value": value, "user_id": "u", "status": "submitted"}]})


GOOD_TASK = {"id": 5, "data": {"prompt": "p", "candidates": [{"id": "a", "body": "x"}, {"id": "b", "body": "y"}]},
             "annotations": [{"id": 9, "completed_by": 1, "result": [{"type": "ranker", "value": {"ranker": {"tier_1": ["a"], "tier_2": ["b"]}}}]}]}


def task_with(ranker=None, **changes):
    task = {**GOOD_TASK, **changes}
    if ranker is not None:
        task["annotations"] = [{"id": 9, "completed_by": 1, "result": [{"type": "ranker", "value": {"ranker": ranker}}]}]
    return task


@pytest.mark.parametrize("convert, bad, expected", [
    (from_argilla, argilla_with(fields={"prompt": "p", "response_1": "a"}),
     r"export.json record 1: expected text fields 'prompt' and response_1 ... response_K \(K >= 2\), got fields \['prompt', 'response_1'\]"),
    (from_argilla, argilla_with(fields={"response_1": "a", "response_2": "b"}), r"record 1: expected the text field 'prompt' as a non-empty string"),
    (from_argilla, ranking_value(["response_1"]), r"record 1, user u: the ranking leaves out response_2; rank every response"),
    (from_argilla, ranking_value(["response_1", "response_9"]), r"record 1, user u: the ranking names 'response_9', which is not a response field"),
    (from_argilla, ranking_value([{"value": "response_1"}, {"value": "response_2"}]), r"record 1, user u: expected the 'ranking' value as a list of \{value, rank\}"),
    (from_argilla, ranking_value(["response_1", "response_1"]), r"record 1, user u: the ranking names response_1 twice"),
    (from_argilla, argilla_with(responses={"ranking": [{"value": ["response_1", "response_2"], "status": "submitted"}]}), r"record 1: a 'ranking' response has no user_id"),
    (from_argilla, argilla_with(responses={**GOOD_ARGILLA["responses"], "likert_1": [{"value": 9, "user_id": "u"}]}),
     r"record 1: likert of response_1 by u must be an integer from 1 to 7, got 9"),
    (from_argilla, {"question": "x"}, r"record 1: expected an Argilla record: 'fields' \(to_list, to_json\) or a flattened record"),
    (from_label_studio, task_with(ranker={"tier_1": ["a"], "_": ["b"]}), r"export.json record 1, annotation 9: candidates \['b'\] were left in the list"),
    (from_label_studio, task_with(ranker={"best": ["a"], "worst": ["b"]}), r"record 1, annotation 9: unknown bucket 'best': expected buckets tier_1 ... tier_9"),
    (from_label_studio, task_with(ranker={"tier_1": ["a", "b", "z"]}), r"record 1, annotation 9: every candidate must be in exactly one tier: expected \['a', 'b'\]"),
    (from_label_studio, task_with(annotations=[{"id": 9, "completed_by": 1, "result": []}]), r"record 1, annotation 9: expected one result of type 'ranker'"),
    (from_label_studio, task_with(annotations=[{"id": 9, "completed_by": None, "result": GOOD_TASK["annotations"][0]["result"]}]),
     r"record 1, annotation 9: expected completed_by as a user id or \{id, email\}, got None"),
    (from_label_studio, task_with(data={"prompt": "p", "left": "x", "right": "y"}), r"record 1, annotation 9: expected one pairwise choice \(left or right\) or the 'Equally good' choice"),
    (from_label_studio, task_with(data={"prompt": "p"}), r"record 1: expected data.candidates \(the List's items: \[\{id, title, body\}\]\) or data.left and data.right"),
    (from_label_studio, {"annotations": []}, r"record 1: expected a Label Studio task with 'data' and 'annotations'"),
])
def test_bad_records_are_refused_naming_the_file_and_record(tmp_path, convert, bad, expected):
    good = GOOD_ARGILLA if convert is from_argilla else GOOD_TASK
    path = written(tmp_path / "export.json", [good, bad])
    with pytest.raises(LabelingError, match=expected):
        convert(read_export(path))


def test_bad_files_and_rankings_the_store_refuses(tmp_path, db_url):
    (tmp_path / "broken.json").write_text('{"id": 1}\n{')
    with pytest.raises(InputError, match=r"broken.json line 2: not valid JSON"):
        read_export(tmp_path / "broken.json")
    with pytest.raises(LabelingError, match=r"list.json record 0: expected a JSON object, got list"):
        read_export(written(tmp_path / "list.json", [[1]]))

    store = LabelStore(db_url)
    store.import_records([{"prompt_id": "q", "prompt": "p", "candidates": [{"id": "c1", "text": "a"}, {"id": "c2", "text": "b"}]}])
    records = from_argilla(read_export(written(tmp_path / "export.json", [GOOD_ARGILLA])))
    with pytest.raises(LabelingError, match=r"export.json record 0, user u: prompt q is in the store with candidates \['c1', 'c2'\], "
                                            r"not \['response_1', 'response_2'\]"):
        store.import_rankings(records, "export.json")
    tied_twice = [("x.json record 3", {"prompt_id": "r", "prompt": "p", "annotator_id": "u", "ranking": [["a", "b"], ["b"]],
                                       "candidates": [{"id": "a", "text": "a"}, {"id": "b", "text": "b"}]})]
    with pytest.raises(LabelingError, match=r"x.json record 3 \(u on prompt r\): every candidate must be ranked exactly once"):
        store.import_rankings(tied_twice, "x.json")
    assert store.rankings() == [] and store.coverage()["prompts"] == 1  # one transaction: nothing of a refused file stays


# ---- the CLI ----------------------------------------------------------------------------------------


def label(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "pipeline", "label", *args], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_cli_exports_to_argilla_and_label_studio_and_imports_into_another_run(run_dir, tmp_path):
    from common.config import dump_config, load_config
    from labeling_ui.cli import run_store

    store, _ = run_store(str(run_dir))
    for name, tiers in (("ann", [["c1", "c2"], ["c3"], ["c4"]]), ("bob", [["c4"], ["c3"], ["c2"], ["c1"]])):
        user = store.user(name).id
        for _ in range(2):
            task = store.next_task(user)
            store.submit(user, task.assignment_id, tiers, {c: 4 for c, _ in task.candidates})
    source = store.rankings()

    (argilla_file,) = map(Path, label("export", "--run-dir", str(run_dir), "--format", "argilla", "--out", str(tmp_path / "out")).split())
    studio_file, config_file = map(Path, label("export", "--run-dir", str(run_dir), "--format", "label-studio").split())
    assert argilla_file.parent == tmp_path / "out" and studio_file.parent == run_dir / "labeling" / "exports"
    assert '<Bucket name="tier_4"' in config_file.read_text() and len(json.loads(studio_file.read_text())) == 2

    for tool, path in (("argilla", argilla_file), ("label-studio", studio_file)):
        other = tmp_path / f"imported-{tool}"
        other.mkdir()
        (other / "config.yaml").write_text(dump_config(load_config(None)))
        assert "4 new rankings, 2 new prompts, 2 new annotators" in label("import", str(path), "--format", tool, "--run-dir", str(other))
        if tool == "argilla":  # a second import adds nothing (each tool's case is tested on the store above)
            assert "0 new rankings, 0 new prompts, 0 new annotators" in label("import", str(path), "--format", tool, "--run-dir", str(other))
        imported, _ = run_store(str(other))
        assert comparable(imported.rankings(), likert=tool == "argilla") == comparable(source, likert=tool == "argilla")

    bad = subprocess.run([sys.executable, "-m", "pipeline", "label", "import", str(config_file), "--format", "argilla",
                          "--run-dir", str(run_dir)], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert bad.returncode != 0 and "not valid JSON" in bad.stderr
