"""The label stage on its own (no model needed: candidates written here, ranked by simulated annotators
or refused): a changed labeling config ranks anew, the same one ranks the same, and people's rankings
are never thrown away."""

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from common.config import dump_config, load_config
from common.files import atomic_write_jsonl, read_jsonl
from common.run_dir import DONE, RunDir
from labeling_ui.store import open_run_store
from stages.registry import GRAPH
from tiny_world import TinyWorld

REPO = Path(__file__).resolve().parents[3]
QUICK = ["sample.prompts=60"]


def candidates(n: int) -> list[dict]:
    """K = 4 candidates per tiny-world prompt whose true scores differ (right or wrong, period or not)."""
    records = []
    for i, example in enumerate(TinyWorld().train_examples(n, "label-test")):
        answer = example.task.answer
        texts = [answer + ".", answer, f"The answer is {answer}", "I do not know"]
        records.append({"prompt_id": f"p{i:05d}", "prompt": example.prompt, "world_task": asdict(example.task),
                        "candidates": [{"id": f"c{j + 1}", "text": t, "policy": "test"} for j, t in enumerate(texts)]})
    return records


@pytest.fixture
def sampled(tmp_path):
    """A run directory whose sample stage is done: its candidates on disk and in the ranking database."""
    run = RunDir(tmp_path / "run")
    config = load_config(None, QUICK)
    records = candidates(60)
    atomic_write_jsonl(run.stage_dir("sample") / "candidates.jsonl", records)
    fingerprint = GRAPH.fingerprints(config)["sample"]
    open_run_store(config.labeling, run.root, batch=fingerprint).import_records(records)
    run.update_stage("sample", status=DONE, fingerprint=fingerprint, outputs={"candidates": "sample/candidates.jsonl"})
    (run.root / "config.yaml").write_text(dump_config(config))
    return run


def label(run: RunDir, *overrides: str) -> subprocess.CompletedProcess:
    args = [arg for o in [*QUICK, *overrides] for arg in ("--set", o)]
    return subprocess.run([sys.executable, "-m", "stages.label", "--run-dir", str(run.root), *args],
                          capture_output=True, text=True, cwd=REPO)


def rankings(run: RunDir) -> list[tuple[str, str, list]]:
    return [(r["prompt_id"], r["annotator_id"], r["ranking"]) for r in read_jsonl(run.stage_dir("label") / "rankings.jsonl")]


def test_a_changed_labeling_config_ranks_anew_and_the_same_one_ranks_the_same(sampled):
    assert label(sampled, "labeling.annotator_noise=0.05").returncode == 0
    careful, careful_agreement = rankings(sampled), sampled.stage_record("label")["metrics"]["label/pairwise_agreement"]
    assert label(sampled, "labeling.annotator_noise=1.5").returncode == 0
    noisy = rankings(sampled)
    # before the fix: the database already held every ranking, so nothing was ranked again
    assert noisy != careful
    assert sampled.stage_record("label")["metrics"]["label/pairwise_agreement"] < careful_agreement
    assert label(sampled, "labeling.annotator_noise=0.05").returncode == 0
    assert rankings(sampled) == careful  # the first config's rankings, as they were


def test_a_change_only_people_would_see_does_not_rerun_simulated_labeling():
    base = GRAPH.fingerprints(load_config(None))
    assert GRAPH.fingerprints(load_config(None, ["labeling.min_rankings=7"]))["label"] == base["label"]
    assert GRAPH.fingerprints(load_config(None, ["labeling.annotator_agreement=0.9"]))["label"] != base["label"]
    human = GRAPH.fingerprints(load_config(None, ["labeling.mode=human"]))["label"]
    assert GRAPH.fingerprints(load_config(None, ["labeling.mode=human", "labeling.annotator_agreement=0.9"]))["label"] == human
    assert GRAPH.fingerprints(load_config(None, ["labeling.mode=human", "labeling.min_rankings=7"]))["label"] != human


def test_simulated_labeling_refuses_to_run_over_peoples_rankings(sampled):
    config = load_config(None, QUICK)
    store = open_run_store(config.labeling, sampled.root, batch=sampled.stage_record("sample")["fingerprint"])
    person = store.add_user("ada", "annotator", "a long password")
    task = store.next_task(person)
    ids = [c for c, _ in task.candidates]
    store.submit(person, task.assignment_id, [[i] for i in ids], {i: 4 for i in ids}, idempotency_key="ada-1")
    result = label(sampled)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: labeling.mode simulated: the ranking database holds 1 rankings by people of these candidates, which "
        "simulated rankings would replace in the export; keep labeling.mode human (people's rankings are never thrown "
        "away), or give labeling.database a new database")
    assert len(store.rankings()) == 1  # still there
    assert json.loads((sampled.root / "manifest.json").read_text())["stages"]["label"]["status"] == "failed"
