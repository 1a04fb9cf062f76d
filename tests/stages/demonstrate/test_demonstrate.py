"""The demonstrate stage on its own (no model trained): in labeling.mode human with
labeling.min_demonstrations, the run waits for people's demonstrations before SFT, and SFT's data is
then exactly what they wrote; with the defaults nothing about the pipeline changes."""

import subprocess
import sys
from pathlib import Path

import pytest

from common.config import load_config
from common.errors import InputError
from common.files import read_jsonl
from common.run_dir import AWAITING_LABELS, DONE, RunDir
from labeling_ui.store import open_run_store
from stages.data.datasets import demonstrations, make_world
from stages.demonstrate.stage import world_prompts
from stages.registry import GRAPH

REPO = Path(__file__).resolve().parents[3]
PEOPLE = ["labeling.mode=human", "labeling.min_demonstrations=2", "labeling.demonstration_prompts=5"]


def demonstrate(run: RunDir) -> subprocess.CompletedProcess:
    args = [arg for o in PEOPLE for arg in ("--set", o)]
    return subprocess.run([sys.executable, "-m", "stages.demonstrate", "--run-dir", str(run.root), *args],
                          capture_output=True, text=True, cwd=REPO, check=False)


def test_the_run_waits_for_two_demonstrations_and_sft_trains_on_exactly_those(tmp_path):
    run = RunDir(tmp_path / "run")
    config = load_config(None, PEOPLE)
    # 1. none written: the run stops awaiting labels, the tiny world's first 5 SFT prompts in the Write tab
    waiting = demonstrate(run)
    assert waiting.returncode == 3, waiting.stderr
    record = run.stage_record("demonstrate")
    assert record["status"] == AWAITING_LABELS
    assert record["progress"] == "0 of 2 demonstrations in (written in the Write tab)"
    store = open_run_store(config.labeling, run.root, batch="any batch of candidates")
    ann, bob = store.add_user("ann", "annotator", "a long password"), store.add_user("bob", "annotator", "a long password")
    first = store.next_demonstration(ann)
    served = {first.prompt}
    while (task := store.next_demonstration(bob)) is not None:  # bob takes every other prompt of the pool
        served.add(task.prompt)
        store.skip(bob, task.assignment_id, "needs expertise")
    assert served == {e.prompt for e, _ in make_world(config.world).demonstrations(5)}
    # 2. one written: still waiting, the progress counts it
    store.submit_demonstration(ann, first.assignment_id, "The answer is 7")
    assert demonstrate(run).returncode == 3
    assert run.stage_record("demonstrate")["progress"] == "1 of 2 demonstrations in (written in the Write tab)"
    # 3. two written (the first one edited: its latest version counts): the resumed stage writes them out
    second = store.next_demonstration(ann)
    store.submit_demonstration(ann, second.assignment_id, "blue.")
    store.submit_demonstration(ann, first.assignment_id, "7.")
    done = demonstrate(run)
    assert done.returncode == 0, done.stderr
    record = run.stage_record("demonstrate")
    assert record["status"] == DONE
    assert GRAPH["demonstrate"].summary(record["metrics"]) == [
        "SFT on 2 demonstrations people wrote (annotators: 1), not the tiny world's demonstrator"]
    written = read_jsonl(run.root / record["outputs"]["demonstrations"])
    assert sorted((d["prompt"], d["completion"], d["annotator_id"]) for d in written) == sorted(
        [(first.prompt, "7.", "ann"), (second.prompt, "blue.", "ann")])
    # 4. SFT's data: exactly those, not the tiny world's demonstrator
    sft_data = demonstrations(config, run, tokenizer=None, stage="sft")
    assert sorted(zip(sft_data["prompt"], sft_data["completion"])) == sorted([(first.prompt, "7."), (second.prompt, "blue.")])
    assert GRAPH.inputs_of("sft", config) == ["pretrain", "demonstrate"]
    assert "demonstrate" in GRAPH.inputs_of("rm", config)  # the reward's normalisation takes them too


def test_the_tiny_worlds_prompts_keep_their_ids_and_another_worlds_get_new_ones():
    world = load_config(None).world
    records = world_prompts(world, 20)
    assert [r["prompt"] for r in records] == [e.prompt for e, _ in make_world(world).demonstrations(20)]
    assert len({r["prompt_id"] for r in records}) == 20 and all(r["kind"] == "demonstration" for r in records)
    assert world_prompts(world, 30)[:20] == records  # more prompts later: the first ones stay as they were
    other = world_prompts(world.model_copy(update={"seed": 1}), 20)
    assert not {r["prompt_id"] for r in other} & {r["prompt_id"] for r in records}


def test_without_people_demonstrating_the_pipeline_is_as_it_was():
    default = load_config(None)
    assert "demonstrate" not in GRAPH.fingerprints(default)
    # min_demonstrations is for human mode only: in simulated mode it changes no stage
    assert GRAPH.fingerprints(load_config(None, ["labeling.min_demonstrations=5"])) == GRAPH.fingerprints(default)
    human = GRAPH.fingerprints(load_config(None, ["labeling.mode=human"]))
    assert GRAPH.fingerprints(load_config(None, ["labeling.mode=human", "labeling.demonstration_prompts=9"])) == human
    people = GRAPH.fingerprints(load_config(None, ["labeling.mode=human", "labeling.min_demonstrations=2"]))
    assert list(people)[:3] == ["pretrain", "demonstrate", "sft"]
    assert people["pretrain"] == human["pretrain"] and people["sft"] != human["sft"]


def test_the_demonstrate_stage_reruns_on_the_prompts_and_counts_it_reads_only():
    def fingerprint(*overrides):
        return GRAPH.fingerprints(load_config(None, ["labeling.mode=human", "labeling.min_demonstrations=2", *overrides]))["demonstrate"]

    base = fingerprint()
    assert fingerprint("world.demo_accuracy=0.9") == base  # the demonstrator's answers are not used
    assert fingerprint("labeling.min_rankings=7") == base
    assert fingerprint("world.demonstrations=100") != base  # which prompts go in the Write tab
    assert fingerprint("labeling.demonstration_prompts=50", "world.demonstrations=100") == fingerprint("labeling.demonstration_prompts=50")
    assert fingerprint("labeling.min_demonstrations=3") != base


@pytest.mark.parametrize("overrides, message", [
    (["labeling.min_demonstrations=-1"], "labeling.min_demonstrations: Input should be greater than or equal to 0 (got -1)"),
    (["labeling.mode=human", "labeling.min_demonstrations=2", "data.sft.path=demos.jsonl"],
     ("labeling.min_demonstrations 2 (human mode): SFT trains on people's demonstrations, so data.sft would go unused; remove it, "
      "or set labeling.min_demonstrations 0")),
    (["labeling.mode=human", "labeling.min_demonstrations=6", "labeling.demonstration_prompts=5"],
     ("labeling.min_demonstrations (6) is more than the 5 prompts put in the Write tab (labeling.demonstration_prompts, or "
      "world.demonstrations when null): each prompt gets one demonstration")),
])
def test_bad_demonstration_settings_are_refused_naming_the_key(overrides, message):
    with pytest.raises(InputError) as refused:
        load_config(None, overrides)
    assert str(refused.value).endswith(message)


def test_prompts_imported_by_hand_alone_and_a_file_in_simulated_mode_are_accepted():
    only_imported = load_config(None, ["labeling.mode=human", "labeling.min_demonstrations=500", "labeling.demonstration_prompts=0"])
    assert only_imported.labeling.people_demonstrate and only_imported.labeling.world_prompts_to_write(only_imported.world) == 0
    simulated = load_config(None, ["labeling.min_demonstrations=2", "data.sft.path=demos.jsonl"])
    assert not simulated.labeling.people_demonstrate
