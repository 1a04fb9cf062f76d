"""The GPU check (`make gpu-check`): every stage of the pipeline on a small model built from config, on the
GPU(s) of this machine, in a few minutes (set-up excluded).

  G1  the PPO trainer in this process (an NCCL group of one, ZeRO-2, bf16): one rollout, make_experience and
      learn; every tensor of the experience on the GPU, the frozen reference and reward model too
  G2  the whole pipeline (`python -m pipeline run`, one Ray worker with a GPU, ZeRO-2, bf16); the run is
      shared by the tests below
  G3  PPO again on that run's SFT policy and reward model, rollouts from a vLLM engine (on one GPU colocated
      with the training worker, else on a GPU of its own)
  G4  PPO on the GPU resumed after its worker dies (Ray restarts the group from the latest checkpoint)
  G5  sft and ppo on 2 workers under ZeRO-3 (where 2 GPUs are present)
  G6  the sample stage on a vLLM engine, into the ranking database
  G7  the critic-free trainer in this process (GRPO, the KL as a loss), then the compared methods' stages on
      G2's run: ppo_grpo and dpo (eval.compare_methods)

Without CUDA every test is skipped, and reported so. RLHF_GPU_CHECK_ON_CPU=1 runs the same test bodies on
the CPU as a dry run of the commands and assertions: ray.use_gpu false, gloo instead of NCCL, fp32 instead
of bf16, the CPU as the expected device, and the ZeRO-3 test on 2 CPU workers.
"""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from common.config import load_config
from common.files import read_jsonl
from tiny_world import TinyWorld

ON_CPU = os.environ.get("RLHF_GPU_CHECK_ON_CPU") == "1"

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not ON_CPU and not torch.cuda.is_available(),
                       reason="no CUDA device: the GPU check needs one (RLHF_GPU_CHECK_ON_CPU=1 dry-runs it on the CPU)"),
]

REPO = Path(__file__).resolve().parents[2]

# what the tests expect, decided once: the device every tensor and model must be on, and its precision
DEVICE = torch.device("cpu") if ON_CPU else torch.device("cuda", 0)
PRECISION = "fp32" if ON_CPU else "bf16"
DTYPE = torch.float32 if ON_CPU else torch.bfloat16
BACKEND = "gloo" if ON_CPU else "nccl"
GPUS = 0 if ON_CPU else torch.cuda.device_count()
# a hang (a worker that cannot be placed, a stuck collective) fails the command instead of the session
COMMAND_TIMEOUT_S = 3600 if ON_CPU else 900

# one Ray worker, on its GPU (or CPU), ZeRO-2, the run's precision
PLACEMENT = [
    f"ray.use_gpu={str(not ON_CPU).lower()}",
    "ray.num_workers=1",
    "deepspeed.zero_stage=2",
    f"deepspeed.precision={PRECISION}",
]
# every stage runs a few steps on the tiny model of configs/tiny.yaml (built from model.init)
SMALL = [
    "world.corpus_docs=1000",
    "world.demonstrations=400",
    "world.eval_per_family=4",
    "pretrain.max_steps=20",
    "pretrain.checkpoint_every=10",
    "pretrain.log_every=5",
    "sft.max_steps=20",
    "sft.checkpoint_every=10",
    "sft.log_every=5",
    "sample.prompts=48",
    "rm.checkpoint_every=2",
    "rm.log_every=1",
    "rm.normalise_on=64",
    "ppo.iterations=2",
    "ppo.episodes_per_iteration=16",
    "ppo.prompt_pool=64",
    "ppo.validation_prompts=8",
    "ppo.max_new_tokens=16",
    "ppo.eval_every=1",
    "ppo.checkpoint_every=1",
    "eval.corpus_docs=16",
    "eval.compare_sft_methods=[]",
    "eval.compare_without_ptx=false",
]
PIPELINE_STAGES = ["pretrain", "sft", "sample", "label", "rm", "ppo", "eval"]
# vLLM engines are Ray actors beside the training workers. On one GPU the engine shares the worker's
# (rollout.placement colocated: the engine takes the half of the GPU that the worker leaves in Ray's
# accounting and 30% of its memory, and sleeps while the worker learns); with 2 or more GPUs it has a GPU
# of its own (placement separate, the default). The dry run has no GPU to share: separate, on the CPU.
ENGINE_PLACEMENT = ["rollout.gpu_memory_utilization=0.3"]
if GPUS == 1:
    ENGINE_PLACEMENT += ["rollout.placement=colocated", "ray.resources_per_worker={CPU: 1, GPU: 0.5}"]
# ppo/logp_diff: the mean |pi_old - the sampler's log-prob| per token, pi_old from the trainer's forward and the
# other from vLLM's. In fp32 the two agree to rounding (about 2e-7 on the CPU). In bf16 (8 significant bits)
# two different sets of kernels round differently at every layer: 6e-4 to 9e-4 with vLLM's CPU build, and GPU
# kernels (fused attention, other reduction orders) can differ more. 0.05 is a loose bound that still fails on
# a gross disagreement (other weights, another tokenisation or dtype); stale weights the trainer's version
# check refuses on its own
LOGP_DIFF_BOUND = 1e-3 if PRECISION == "fp32" else 0.05


def run_python(args, env=None, check=True) -> subprocess.CompletedProcess:
    """`python ARGS` from the repository root (as tests/e2e/conftest.py), bounded by COMMAND_TIMEOUT_S."""
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, **(env or {})}, timeout=COMMAND_TIMEOUT_S)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def sets(*groups: list[str]) -> list[str]:
    """--set KEY=VALUE for every override, in order (a later one wins)."""
    return [arg for group in groups for override in group for arg in ("--set", override)]


def stage_records(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())["stages"]


def assert_finite(metrics: dict, where: str) -> None:
    bad = {name: value for name, value in metrics.items() if isinstance(value, float) and not math.isfinite(value)}
    assert not bad, f"{where}: {bad}"


def assert_hf_model(directory: Path) -> None:
    assert (directory / "config.json").exists() and (directory / "model.safetensors").exists(), directory
    assert (directory / "tokenizer_config.json").exists(), directory


# ---- G1: the PPO trainer in this process ------------------------------------------------------------


@pytest.fixture
def process_group():
    """A process group of one (NCCL on the GPU, gloo in the dry run), with LOCAL_RANK=0 as a launcher sets it
    for DeepSpeed; the GPU made current first, as the Ray workers do (NCCL and DeepSpeed take it). Torn down
    through DeepSpeed, as tests/conftest.py's, since it caches the groups it saw."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    if not ON_CPU:
        torch.cuda.set_device(0)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("LOCAL_RANK", "0")
        dist.init_process_group(BACKEND, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
        yield
        import deepspeed.comm.comm as deepspeed_comm

        if deepspeed_comm.cdb is not None:
            deepspeed_comm.destroy_process_group()
        else:
            dist.destroy_process_group()
    if not ON_CPU:
        torch.cuda.empty_cache()  # leave the GPU's memory to the stages and vLLM engines that follow


def make_trainer(ppo_models, run_dir, *overrides):
    from stages.ppo.trainer import PPOTrainer, PPOTrainingSpec

    config = load_config(None, [
        *PLACEMENT, "ppo.episodes_per_iteration=8", "ppo.minibatches=2", "ppo.ppo_epochs=1", "ppo.max_new_tokens=12",
        "ppo.actor_lr=1e-3", "ppo.warmup_iterations=0", "ppo.ptx_max_length=64", *overrides,
    ])
    world = TinyWorld()
    prompts = [e.prompt for e in world.train_examples(16, "ppo")]
    spec = PPOTrainingSpec(config=config, run_dir=str(run_dir), stage="ppo", actor=str(ppo_models / "actor"),
                           reference=str(ppo_models / "actor"), reward_model=str(ppo_models / "rm"), critic=str(ppo_models / "rm"),
                           tokenizer=str(ppo_models / "actor"), prompts=prompts, validation_prompts=[],
                           pretraining=world.corpus(50), tasks=None)
    return PPOTrainer(spec)


def test_g1_ppo_trainer_iterates_with_every_tensor_on_the_device(process_group, ppo_models, tmp_path):
    from transformers import AutoModelForCausalLM

    trainer = make_trainer(ppo_models, tmp_path)
    assert trainer.device == DEVICE
    for name in ("actor", "critic", "reference", "reward_model"):  # the frozen ones too: stage-0 engines
        parameters = list(getattr(trainer, name).module.parameters())
        assert {p.device for p in parameters} == {DEVICE}, name
        assert {p.dtype for p in parameters} == {DTYPE}, name

    prompts = trainer.iteration_prompts(0)
    batch = trainer.generate(trainer.rollout, prompts, 0)
    experience, rollout_metrics = trainer.make_experience(batch, prompts)
    tensors = {**{f"batch.{k}": v for k, v in experience.batch.tensors().items()},
               "values": experience.values, "returns": experience.returns, "advantages": experience.advantages}
    # (with pi_old from the trainer's forward, as in bf16, the sampler's log-probs are among them too)
    assert {name: t.device for name, t in tensors.items() if t.device != DEVICE} == {}
    assert_finite(rollout_metrics, "make_experience")

    learn_metrics = trainer.learn(experience, iteration=0)
    assert_finite(learn_metrics, "learn")
    assert learn_metrics["ptx_loss"] > 0 and trainer.actor.global_steps == 2  # one actor step per minibatch
    assert all(torch.isfinite(p.detach().float()).all() for p in trainer.actor.module.parameters())

    trainer.save_model(tmp_path / "policy")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "policy", local_files_only=True)
    assert all(torch.isfinite(p.float()).all() for p in saved.parameters())


# ---- G2: the whole pipeline, shared by the tests below --------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """`python -m pipeline run`: pretrain -> sft -> sample -> label -> rm -> ppo -> eval on one worker."""
    run_dir = tmp_path_factory.mktemp("gpu-check") / "run"
    result = run_python(["-m", "pipeline", "run", "--run-dir", str(run_dir), *sets(PLACEMENT, SMALL)])
    return run_dir, result.stdout


def test_g2_every_stage_runs_a_few_steps_and_writes_its_outputs(pipeline_run):
    from stages.registry import GRAPH

    run_dir, stdout = pipeline_run
    assert [stage.name for stage in GRAPH.enabled(load_config(None, [*PLACEMENT, *SMALL]))] == PIPELINE_STAGES
    records = stage_records(run_dir)
    assert {name: record["status"] for name, record in records.items()} == {name: "done" for name in PIPELINE_STAGES}
    for name in PIPELINE_STAGES:
        assert_finite(records[name].get("metrics", {}), name)
    status = run_python(["-m", "pipeline", "status", str(run_dir)]).stdout.splitlines()
    assert {line.split()[0]: line.split()[1] for line in status[1:]} == {name: "done" for name in PIPELINE_STAGES}

    for stage in ("pretrain", "sft", "rm"):
        assert_hf_model(run_dir / stage / "model")
        logged = read_jsonl(run_dir / stage / "metrics.jsonl")
        assert any("train/loss" in r and math.isfinite(r["train/loss"]) for r in logged), stage
    assert 0.0 <= records["sft"]["metrics"]["heldout_exact_match"] <= 1.0

    candidates = read_jsonl(run_dir / "sample" / "candidates.jsonl")
    k = load_config(None, SMALL).sample.k
    assert len(candidates) == 48 and all(len(r["candidates"]) == k for r in candidates)
    assert read_jsonl(run_dir / "label" / "rankings.jsonl")
    assert records["rm"]["metrics"]["rm/train_prompts"] > 0

    assert_hf_model(run_dir / "ppo" / "model")
    assert_hf_model(run_dir / "ppo" / "final")
    ppo = read_jsonl(run_dir / "ppo" / "metrics.jsonl")
    assert [r["step"] for r in ppo] == [1, 2]
    for record in ppo:
        assert_finite(record, "ppo/metrics.jsonl")
    assert records["ppo"]["metrics"]["ppo/iterations"] == 2

    policies = json.loads((run_dir / "eval" / "policies.json").read_text())
    assert sorted(policies) == ["base", "ppo", "sft"]
    assert (run_dir / "eval" / "report.md").exists() and (run_dir / "eval" / "summary.json").exists()
    assert f"report: {run_dir / 'eval' / 'report.md'}" in stdout


# ---- G3, G4: PPO again on the run's SFT policy and reward model -----------------------------------------


def ppo_on(pipeline_run, out: Path, *overrides: str, env=None) -> list[dict]:
    """`python -m stages.ppo` into a fresh run directory, from the shared run's models; its metrics records."""
    run_dir, _ = pipeline_run
    models = [f"ppo.actor={run_dir / 'sft' / 'model'}", f"ppo.reward_model={run_dir / 'rm' / 'model'}"]
    run_python(["-m", "stages.ppo", "--run-dir", str(out), *sets(PLACEMENT, SMALL, models, list(overrides))], env=env)
    ppo = stage_records(out)["ppo"]
    assert ppo["status"] == "done" and ppo["metrics"]["ppo/iterations"] == 2
    assert_hf_model(out / "ppo" / "model")
    return read_jsonl(out / "ppo" / "metrics.jsonl")


@pytest.mark.vllm
def test_g3_ppo_samples_on_a_vllm_engine_synced_after_every_update(pipeline_run, tmp_path):
    pytest.importorskip("vllm")
    records = ppo_on(pipeline_run, tmp_path / "vllm", "rollout.engine=vllm", *ENGINE_PLACEMENT)
    assert [r["step"] for r in records] == [1, 2]
    assert all(r["rollout/engine_restarts"] == 0 for r in records)
    # the update reached the engine (with ppo.eval_every=1 the sync happens in the validation rollout, after the
    # iteration's timings are taken: weight_sync_mib shows it, time/weight_sync may not)
    assert records[-1]["rollout/weight_sync_mib"] > 0
    # every reply came from the actor's current weights (the trainer checks its version); the sampler's
    # log-probs and the trainer's agree to the precision's rounding
    assert max(r["ppo/logp_diff"] for r in records) < LOGP_DIFF_BOUND, [r["ppo/logp_diff"] for r in records]
    for record in records:
        assert_finite(record, "ppo on vLLM")


def test_g4_ppo_resumes_on_the_device_after_its_worker_dies(pipeline_run, tmp_path):
    """Rank 0 dies right after iteration 1's checkpoint; Ray restarts the group, which goes on from it."""
    out = tmp_path / "resumed"
    records = ppo_on(pipeline_run, out, "ray.max_failures=1", "ppo.checkpoint_every=1", env={"RLHF_FAULT_AT_STEP": "1"})
    assert (out / "ppo" / "fault_injected").exists(), "no worker died: the test did not test a resume"
    assert json.loads((out / "ppo" / "training.json").read_text())["iterations"] == 2
    assert [r["step"] for r in records] == [1, 2]  # the resumed run's records replace, not repeat
    assert (out / "ppo" / "checkpoints" / "latest").read_text().strip() == "iteration-2"


# ---- G5: 2 workers under ZeRO-3 ----------------------------------------------------------------------


@pytest.mark.skipif(0 < GPUS < 2, reason="needs 2 GPUs (2 workers under ZeRO-3)")
def test_g5_sft_and_ppo_on_two_workers_under_zero3(pipeline_run, tmp_path):
    run_dir, _ = pipeline_run
    out = tmp_path / "zero3"
    zero3 = ["ray.num_workers=2", "deepspeed.zero_stage=3", f"model.name_or_path={run_dir / 'pretrain' / 'model'}",
             f"ppo.reward_model={run_dir / 'rm' / 'model'}"]
    run_python(["-m", "pipeline", "run", "--run-dir", str(out), "--stages", "sft,ppo", *sets(PLACEMENT, SMALL, zero3)])
    records = stage_records(out)
    assert records["sft"]["status"] == records["ppo"]["status"] == "done"
    assert_hf_model(out / "sft" / "model")
    assert_hf_model(out / "ppo" / "final")
    assert [r["step"] for r in read_jsonl(out / "ppo" / "metrics.jsonl")] == [1, 2]
    latest = (out / "ppo" / "checkpoints" / "latest").read_text().strip()
    assert (out / "ppo" / "checkpoints" / latest / "trainer-rank1.pt").exists()  # both ranks checkpointed


# ---- G6: the sample stage on a vLLM engine --------------------------------------------------------------


@pytest.mark.vllm
def test_g6_sample_stage_on_a_vllm_engine_fills_the_ranking_database(pipeline_run, tmp_path):
    pytest.importorskip("vllm")
    run_dir, _ = pipeline_run
    out = tmp_path / "sampled"
    overrides = [f"sample.policies={{sft: {run_dir / 'sft' / 'model'}}}", "sample.prompts=16", "rollout.engine=vllm",
                 "rollout.gpu_memory_utilization=0.3"]
    run_python(["-m", "stages.sample", "--run-dir", str(out), *sets(PLACEMENT, overrides)])
    k = load_config(None, overrides).sample.k
    records = read_jsonl(out / "sample" / "candidates.jsonl")
    assert len(records) == 16 and all(len(r["candidates"]) == k for r in records)
    assert all(c["sampling"]["engine"] == "vllm" for r in records for c in r["candidates"])
    texts = [c["text"] for r in records for c in r["candidates"]]
    assert len(set(texts)) > len(records)  # sampled, not one answer per prompt
    sample = stage_records(out)["sample"]
    assert sample["status"] == "done" and sample["metrics"]["sample/imported"] == 16


# ---- G7: the critic-free estimators and DPO -------------------------------------------------------------


def test_g7_critic_free_trainer_iterates_on_the_device(process_group, ppo_models, tmp_path):
    trainer = make_trainer(ppo_models, tmp_path, "ppo.estimator=grpo", "ppo.group_size=4", "ppo.kl_mode=loss",
                           "ppo.kl_estimator=k3")
    assert trainer.critic is None and trainer.device == DEVICE
    prompts = trainer.iteration_prompts(0)
    experience, rollout_metrics = trainer.make_experience(trainer.generate(trainer.rollout, prompts, 0), prompts)
    assert experience.advantages.device == DEVICE and experience.ref_logprobs.device == DEVICE
    learn_metrics = trainer.learn(experience, iteration=0)
    assert_finite({**rollout_metrics, **learn_metrics}, "grpo")
    assert "kl_loss" in learn_metrics and "value_loss" not in learn_metrics and trainer.actor.global_steps == 2


def test_g7_grpo_and_dpo_stages_from_the_run_s_sft_policy(pipeline_run):
    run_dir, _ = pipeline_run
    compared = ["eval.compare_methods=[grpo,dpo]", "dpo.max_steps=4", "dpo.checkpoint_every=2", "dpo.log_every=1"]
    run_python(["-m", "pipeline", "run", "--run-dir", str(run_dir), "--resume", "--stages", "ppo_grpo,dpo",
                *sets(PLACEMENT, SMALL, compared)])
    records = stage_records(run_dir)
    assert records["ppo_grpo"]["status"] == records["dpo"]["status"] == "done"
    for stage in ("ppo_grpo", "dpo"):
        assert_finite(records[stage].get("metrics", {}), stage)
        assert_hf_model(run_dir / stage / "model")
    assert [r["step"] for r in read_jsonl(run_dir / "ppo_grpo" / "metrics.jsonl")] == [1, 2]
    assert any("train/loss" in r and math.isfinite(r["train/loss"]) for r in read_jsonl(run_dir / "dpo" / "metrics.jsonl"))
    assert 0.0 <= records["dpo"]["metrics"]["dpo/heldout_accuracy"] <= 1.0
