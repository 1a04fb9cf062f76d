"""End to end: pretrain, SFT, sampling and the reward model on real Ray (2 workers, gloo) with real
DeepSpeed engines.

Each `rlhf run` or `python -m stages.X` below joins one Ray head that this test process shares (RAY_ADDRESS), as
stages on a cluster do.
"""

import json
import math
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from common.files import read_jsonl
from stages.data.datasets import make_world
from stages.models.loading import load_tokenizer
from stages.models.reward_model import reward_text, score_texts
from stages.registry import GRAPH
from stages.scoring.evaluation import generate
from tiny_world import TinyWorld
from tiny_world.tasks import WORDS

from .conftest import QUICK, QUICK_CONFIG, REPO, run_python

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_ray_cluster")]
run = run_python


def test_zero3_sft_model_loads_generates_and_beats_base(zero3_run):
    run_dir, stdout = zero3_run
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert manifest["pretrain"]["status"] == manifest["sft"]["status"] == "done"
    model_dir = run_dir / "sft" / "model"
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    tokenizer = load_tokenizer(model_dir)
    [response] = generate(model, tokenizer, [TinyWorld().heldout_examples(1)[0].prompt])
    assert isinstance(response, str) and response
    sft = manifest["sft"]["metrics"]
    assert sft["heldout_exact_match"] > sft["base/heldout_exact_match"] + 0.05
    assert "held-out exact match (tiny world): base" in stdout and str(model_dir) in stdout


def test_stage_outputs_follow_the_run_directory_contract(zero3_run):
    run_dir, _ = zero3_run
    expected = {"pretrain": ("train/loss", "train_runtime"), "sft": ("train/loss", "train_runtime"),
                "rm": ("train/loss", "train_runtime"), "ppo": ("ppo/score", "ppo: 100%")}
    for stage, (metric, log_line) in expected.items():
        checkpoints = run_dir / stage / "checkpoints"
        latest = (checkpoints / "latest").read_text().strip()
        assert (checkpoints / latest / ("trainer-rank1.pt" if stage == "ppo" else "trainer_state.json")).exists()
        records = read_jsonl(run_dir / stage / "metrics.jsonl")
        assert records and all("step" in r for r in records) and any(metric in r for r in records)
        assert list((run_dir / stage / "tensorboard").glob("events.out.tfevents.*"))
        assert log_line in (run_dir / "logs" / f"{stage}.log").read_text()  # the workers' output
    assert (run_dir / "config.yaml").exists()


def test_resume_of_a_finished_run_reruns_nothing_and_status_shows_it(zero3_run):
    run_dir, _ = zero3_run
    before = (run_dir / "sft" / "model" / "model.safetensors").stat().st_mtime_ns
    again = run(["-m", "pipeline", "run", "--run-dir", str(run_dir), "--resume", "--set", "deepspeed.zero_stage=3", *sum((["--set", s] for s in QUICK), [])])
    for stage in GRAPH.enabled(QUICK_CONFIG):
        assert f"{stage.name}: done with this config, skipped" in again.stdout
    assert (run_dir / "sft" / "model" / "model.safetensors").stat().st_mtime_ns == before
    refused = run(["-m", "pipeline", "run", "--run-dir", str(run_dir)], check=False)
    assert refused.returncode == 2 and "already holds a run; pass --resume" in refused.stderr
    status = run(["-m", "pipeline", "status", str(run_dir)]).stdout
    assert status.splitlines()[0].split() == ["stage", "state", "fingerprint", "job", "id", "duration", "headline"]
    assert "sft" in status and "done" in status and "heldout_exact_match" in status


def test_zero3_reward_model_loads_with_auto_class_and_scores_normalised(zero3_run):
    run_dir, stdout = zero3_run
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    label, rm = manifest["label"]["metrics"], manifest["rm"]["metrics"]
    # simulated annotators through the ranking database: 10% of the prompts ranked twice
    assert abs(label["label/pairwise_agreement"] - 0.726) < 0.06 and label["label/overlap_prompts"] > 30
    assert 0.0 < label["label/krippendorff_alpha"] < 1.0 and 0.0 < label["label/kendall_tau_b"] < 1.0
    sampled = manifest["sample"]["metrics"]["sample/prompts"]
    assert sampled - label["label/skipped"] <= label["label/prompts"] <= sampled  # all-identical candidates are skipped
    assert rm["rm/heldout_prompts"] + rm["rm/train_prompts"] == label["label/prompts"] > 350
    assert rm["rm/heldout_prompts"] == round(0.1 * label["label/prompts"])
    assert rm["rm/heldout_rankings"] + rm["rm/train_rankings"] == label["label/rankings"] > label["label/prompts"]
    assert rm["rm/heldout_accuracy"] > 0.55 and rm["rm/true_order_accuracy"] > 0.6  # a short run, still learning
    for name in ("rm/heldout_ceiling_accuracy", "rm/true_order_accuracy/style_pairs", "rm/true_order_accuracy/correctness_pairs"):
        assert 0.0 <= rm[name] <= 1.0
    assert "reward model held-out accuracy" in stdout

    model_dir = run_dir / "rm" / "model"
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True).eval()
    tokenizer = load_tokenizer(model_dir)
    assert model.config.num_labels == 1 and model.config.reward_bias == pytest.approx(rm["rm/bias"])
    world = make_world(QUICK_CONFIG.world)  # the run's demonstrator, whose answers set the bias
    demos = [reward_text(e.prompt, r, tokenizer.eos_token) for e, r in world.demonstrations(512)]
    with torch.no_grad():
        logits = torch.cat([model(**tokenizer(demos[i : i + 64], return_tensors="pt", padding=True)).logits[:, 0] for i in range(0, 512, 64)])
    normalised = logits + model.config.reward_bias
    assert abs(normalised.mean().item()) < 1e-3 and normalised.std().item() > 0.05  # centred, not constant
    assert score_texts(model, tokenizer, demos[:8], 128) == pytest.approx(logits[:8].tolist(), abs=1e-4)


def test_lora_reward_model_learns_a_trivial_preference_from_a_rankings_file(zero3_run, tmp_path):
    """A K-way export with ties (two responses ending with a period, tied, over two without), LoRA on
    the reward model, and rank 0 killed at step 15 (Ray restarts the group from checkpoint 10):
    held-out accuracy near 1, and the merged model carries the bias."""
    import random
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(zero3_run[0], run_dir, ignore=shutil.ignore_patterns("rm", "ray"))
    rng = random.Random(0)
    with open(tmp_path / "period.jsonl", "w") as f:
        for i, example in enumerate(TinyWorld().train_examples(600, "synthetic")):
            texts = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) + ("." if j < 2 else "") for j in range(4)]
            candidates = [{"id": f"c{j}", "text": t} for j, t in enumerate(texts)]
            f.write(json.dumps({"prompt_id": f"s{i}", "prompt": example.prompt, "candidates": candidates,
                                "ranking": [["c0", "c1"], ["c2", "c3"]], "annotator_id": "a"}) + "\n")
    overrides = [*QUICK, "deepspeed.zero_stage=3", f"data.rankings.path={tmp_path / 'period.jsonl'}", "rm.lora.r=8",
                 "rm.lr=2e-3", "ray.max_failures=1"]
    run(["-m", "stages.rm", "--run-dir", str(run_dir), *sum((["--set", s] for s in overrides), [])], env={"RLHF_FAULT_AT_STEP": "15"})
    assert (run_dir / "rm" / "fault_injected").exists()
    rm = json.loads((run_dir / "manifest.json").read_text())["stages"]["rm"]
    assert rm["status"] == "done" and rm["outputs"] == {"model": "rm/model", "adapter": "rm/adapter"}
    assert rm["metrics"]["rm/heldout_accuracy"] >= 0.95
    assert "rm/true_order_accuracy" not in rm["metrics"]  # no tiny-world task behind a user's file
    merged = AutoModelForSequenceClassification.from_pretrained(run_dir / "rm" / "model", local_files_only=True)
    assert merged.config.reward_bias == pytest.approx(rm["metrics"]["rm/bias"])


def test_zero3_ppo_policy_loads_generates_and_reports(zero3_run):
    run_dir, _ = zero3_run
    ppo = json.loads((run_dir / "manifest.json").read_text())["stages"]["ppo"]
    assert ppo["status"] == "done" and ppo["metrics"]["ppo/iterations"] == 4
    records = [r for r in read_jsonl(run_dir / "ppo" / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for name in ("ppo/score", "ppo/kl", "ppo/beta", "ppo/policy_loss", "ppo/value_loss", "ppo/clipfrac", "ppo/approx_kl",
                 "ppo/entropy", "ppo/response_length", "ppo/ptx_loss", "time/generate", "time/score", "time/train",
                 "ppo/episodes_per_second"):
        assert all(name in r for r in records), name
    assert "ppo/validation_score" in records[1] and "ppo/validation_score" in records[3]
    assert ppo["metrics"]["ppo/best_validation_score"] == max(r["ppo/validation_score"] for r in records if "ppo/validation_score" in r)
    model = AutoModelForCausalLM.from_pretrained(run_dir / "ppo" / "model", local_files_only=True)
    [response] = generate(model, load_tokenizer(run_dir / "ppo" / "model"), [TinyWorld().heldout_examples(1)[0].prompt])
    assert isinstance(response, str)


def test_eval_stage_reports_every_policy_with_tables_and_plots(zero3_run):
    run_dir, stdout = zero3_run
    policies = json.loads((run_dir / "eval" / "policies.json").read_text())
    assert sorted(policies) == ["base", "ppo", "ppo_no_ptx", "sft"]
    assert policies["sft"]["win_rate_vs_sft"] == 0.5 and policies["sft"]["kl_to_sft"] == pytest.approx(0.0, abs=1e-4)
    for policy in policies.values():
        assert 0.0 <= policy["true_score"] <= 1.5 and 0.0 <= policy["rouge_l"] <= 1.0
        assert policy["win_rate_low"] <= policy["win_rate_vs_sft"] <= policy["win_rate_high"]
    summary = json.loads((run_dir / "eval" / "summary.json").read_text())
    report = (run_dir / "eval" / "report.md").read_text()
    for name in ("ppo_curves", "rm_vs_true_score", "policies", "rm_calibration", "stage_times"):
        assert summary["plots"][name] in report and (run_dir / "eval" / summary["plots"][name]).stat().st_size > 1000
    assert policies["ppo"]["rm_win_rate_low"] <= policies["ppo"]["rm_win_rate_vs_sft"] <= policies["ppo"]["rm_win_rate_high"]
    responses = read_jsonl(run_dir / "eval" / "responses.jsonl")
    world = QUICK_CONFIG.world
    assert len(responses) == len(policies["sft"]["scores"]) + world.eval_per_family * len(world.heldout_families)
    assert set(responses[0]) == {"prompt", "base", "sft", "ppo", "ppo_no_ptx"} and "rm_score" in responses[0]["ppo"]
    assert "PPO-ptx beats SFT on" in stdout and "by the reward model" in stdout
    assert f"report: {run_dir / 'eval' / 'report.md'}" in stdout


def test_eval_of_models_on_disk_on_a_prompt_file_judged_by_two_reward_models(zero3_run, tmp_path):
    """The real-model path: policies, judges and prompts given as files; nothing of the tiny world."""
    run_dir, _ = zero3_run
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": e.prompt}) + "\n" for e in TinyWorld(seed=7).heldout_examples(6)))
    text = tmp_path / "text.jsonl"
    text.write_text("".join(json.dumps({"text": t}) + "\n" for t in TinyWorld(seed=7).corpus(20, split="heldout")))
    out = tmp_path / "eval-run"
    run(["-m", "stages.eval", "--run-dir", str(out), "--set", f"eval.prompts.path={prompts}", "--set", "eval.max_prompts=20",
         "--set", f"eval.heldout_text.path={text}", "--set", f"eval.policies={{sft: {run_dir / 'sft' / 'model'}, "
         f"ppo: {run_dir / 'ppo' / 'model'}}}", "--set", f"eval.reward_model={run_dir / 'rm' / 'model'}",
         "--set", f"eval.heldout_reward_model={run_dir / 'rm' / 'model'}"])
    policies = json.loads((out / "eval" / "policies.json").read_text())
    assert sorted(policies) == ["ppo", "sft"] and "true_score" not in policies["ppo"]
    assert len(policies["ppo"]["scores"]) == 20 and policies["sft"]["rm_win_rate_vs_sft"] == 0.5
    # the same reward model twice is the same judge
    assert policies["ppo"]["heldout_rm_win_rate_vs_sft"] == policies["ppo"]["rm_win_rate_vs_sft"]
    # the KL is estimated from one sampled response per prompt, so a policy this close to SFT (4 PPO
    # iterations) can get a small negative estimate; what must hold is that it was computed
    assert policies["ppo"]["lm_loss"] > 0 and math.isfinite(policies["ppo"]["kl_to_sft"]) and policies["ppo"]["kl_to_sft"] != 0
    report = (out / "eval" / "report.md").read_text()
    assert "heldout_rm_win_rate_vs_sft" in report and "| ppo |" in report
    assert (out / "eval" / "policies.png").stat().st_size > 1000


def test_bitune_and_cmlm_train_under_zero3_on_a_mixture_and_evaluate_beside_sft(zero3_run, tmp_path):
    """The seed systems' SFT methods on FLAN-style data (data.mixture) with ZeRO-3 on 2 workers, each
    surviving a killed worker, then evaluated from disk beside the SFT model, timed."""
    run_dir, _ = zero3_run
    out = tmp_path / "methods"
    overrides = [f"model.name_or_path={run_dir / 'pretrain' / 'model'}", "deepspeed.zero_stage=3", "sft.max_steps=30",
                 "sft.checkpoint_every=10", "sft.log_every=10", "ray.max_failures=1", "eval.compare_sft_methods=[bitune,cmlm]",
                 "world.eval_per_family=5",
                 "data.mixture={datasets: [{name: add, family: add, size: 300}, {name: count, family: count, size: 300}], "
                 "examples: 400}"]
    # a worker of each stage dies at step 15; Ray restarts the group, which resumes from step 10's checkpoint
    # (to the same weights as a run never interrupted, checked by hand: the masks depend on the batch alone)
    run(["-m", "pipeline", "run", "--run-dir", str(out), "--stages", "sft_bitune,sft_cmlm", *sum((["--set", s] for s in overrides), [])],
        env={"RLHF_FAULT_AT_STEP": "15"})
    stages = json.loads((out / "manifest.json").read_text())["stages"]
    for method, marker in (("bitune", "bitune.json"), ("cmlm", "cmlm.json")):
        assert stages[f"sft_{method}"]["status"] == "done" and (out / f"sft_{method}" / "model" / marker).exists()
        assert (out / f"sft_{method}" / "fault_injected").exists()
        assert [r["step"] for r in read_jsonl(out / f"sft_{method}" / "metrics.jsonl") if "train/loss" in r] == [10, 20, 30]
        metrics = stages[f"sft_{method}"]["metrics"]
        assert 0.0 <= metrics["heldout_exact_match"] <= 1.0 and 0.0 <= metrics["heldout_family_rouge_l"] <= 1.0
    evaluated = tmp_path / "eval-run"
    policies = f"eval.policies={{sft: {run_dir / 'sft' / 'model'}, bitune: {out / 'sft_bitune' / 'model'}, " \
               f"cmlm: {out / 'sft_cmlm' / 'model'}}}"
    run(["-m", "stages.eval", "--run-dir", str(evaluated), "--set", policies, "--set", f"eval.reward_model={run_dir / 'rm' / 'model'}",
         "--set", "world.eval_per_family=5", "--set", "eval.corpus_docs=8"])
    policies = json.loads((evaluated / "eval" / "policies.json").read_text())
    assert sorted(policies) == ["bitune", "cmlm", "sft"]
    assert policies["sft"]["kl_to_sft"] == pytest.approx(0.0, abs=1e-4) and policies["sft"]["lm_loss"] > 0
    for name in ("bitune", "cmlm"):
        assert policies[name]["lm_loss"] is None and policies[name]["decode_ms"] > 0
        assert 0.0 <= policies[name]["true_score"] <= 1.5 and 0.0 <= policies[name]["rm_win_rate_vs_sft"] <= 1.0
    # Bitune decodes causally, so its sampled responses have a likelihood to compare with SFT's; cmlm's do not
    assert policies["bitune"]["kl_to_sft"] is not None and 0.0 <= policies["bitune"]["sampled_true_score"] <= 1.5
    assert policies["cmlm"]["kl_to_sft"] is None and "sampled_true_score" not in policies["cmlm"]
    assert "decode_ms" in (evaluated / "eval" / "report.md").read_text()


def test_grpo_and_dpo_train_from_the_same_sft_policy_and_survive_a_killed_worker(zero3_run, tmp_path):
    """eval.compare_methods' stages on a copy of the finished run: GRPO (no critic) on the same reward model and DPO
    on the same rankings, each from its SFT policy under ZeRO-3 on 2 workers, each losing a worker once."""
    run_dir, _ = zero3_run
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("ray", ".lock"))
    overrides = ["deepspeed.zero_stage=3", *QUICK, "eval.compare_methods=[grpo,dpo]", "dpo.max_steps=6", "dpo.checkpoint_every=2",
                 "dpo.log_every=2", "ray.max_failures=1"]
    result = run(["-m", "pipeline", "run", "--run-dir", str(copy), "--resume", "--stages", "ppo_grpo,dpo",
                  *sum((["--set", s] for s in overrides), [])], env={"RLHF_FAULT_AT_STEP": "4"})
    stages = json.loads((copy / "manifest.json").read_text())["stages"]
    assert stages["ppo_grpo"]["status"] == stages["dpo"]["status"] == "done"
    assert stages["sft"] == json.loads((run_dir / "manifest.json").read_text())["stages"]["sft"]  # nothing before reran
    # GRPO: groups of 4 from the same reward model, no critic trained or checkpointed
    records = read_jsonl(copy / "ppo_grpo" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4] and (copy / "ppo_grpo" / "fault_injected").exists()
    assert all("value_loss" not in r and 0.0 <= r["ppo/zero_std_groups"] <= 1.0 for r in records)
    latest = copy / "ppo_grpo" / "checkpoints" / (copy / "ppo_grpo" / "checkpoints" / "latest").read_text().strip()
    assert (latest / "actor").is_dir() and not (latest / "critic").exists()
    # DPO: the reference's log-probs computed once, a worker lost at step 4, resumed from step 2's checkpoint
    assert (copy / "dpo" / "fault_injected").exists() and (copy / "dpo" / "reference_logprobs.json").exists()
    assert [r["step"] for r in read_jsonl(copy / "dpo" / "metrics.jsonl") if "train/loss" in r] == [2, 4, 6]
    dpo = stages["dpo"]["metrics"]
    assert 0.0 <= dpo["dpo/heldout_accuracy"] <= 1.0 and dpo["dpo/train_rankings"] > dpo["dpo/heldout_rankings"] > 0
    assert "DPO implicit reward, held-out ranking accuracy" in result.stdout
    for stage in ("ppo_grpo", "dpo"):
        model = AutoModelForCausalLM.from_pretrained(copy / stage / "model", local_files_only=True)
        [response] = generate(model, load_tokenizer(copy / stage / "model"), [TinyWorld().heldout_examples(1)[0].prompt])
        assert isinstance(response, str)


def test_lora_sft_on_local_files_survives_a_killed_worker(zero3_run, shared_ray, tmp_path):
    """A 'real' base model from a local directory, conversational JSONL data, LoRA through peft,
    and rank 0 killed at step 20: Ray restarts the group, which resumes from checkpoint 15. The cluster
    is named by ray.address, RAY_ADDRESS unset."""
    base = zero3_run[0] / "pretrain" / "model"
    data = tmp_path / "demos.jsonl"
    with open(data, "w") as f:
        for example, response in TinyWorld(seed=1).demonstrations(300):
            messages = [{"role": "user", "content": example.instruction}, {"role": "assistant", "content": response}]
            f.write(json.dumps({"messages": messages}) + "\n")
    run_dir = tmp_path / "lora"
    overrides = [  # relative paths, as users type them: the Ray workers run elsewhere
        f"model.name_or_path={os.path.relpath(base, REPO)}",
        f"data.sft.path={data}",
        "model.lora.r=4",
        "sft.max_steps=30",
        "sft.checkpoint_every=15",
        "sft.lr=5e-3",
        "ray.max_failures=1",
        f"ray.address={shared_ray}",
    ]
    run_args = ["-m", "stages.sft", "--run-dir", os.path.relpath(run_dir, REPO), *sum((["--set", s] for s in overrides), [])]
    result = run(run_args, env={"RLHF_FAULT_AT_STEP": "20", "RAY_ADDRESS": ""})
    assert "Connecting to existing Ray cluster" in result.stdout + result.stderr  # not a Ray of its own
    assert (run_dir / "sft" / "fault_injected").exists()
    steps = [r["step"] for r in read_jsonl(run_dir / "sft" / "metrics.jsonl") if "train/loss" in r]
    assert steps == sorted(steps) and steps[-1] == 30  # resumed records replaced, not duplicated
    manifest = json.loads((run_dir / "manifest.json").read_text())["stages"]
    assert list(manifest) == ["sft"] and manifest["sft"]["status"] == "done"

    from peft import AutoPeftModelForCausalLM

    adapter = AutoPeftModelForCausalLM.from_pretrained(run_dir / "sft" / "adapter", local_files_only=True)
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "sft" / "model", local_files_only=True)
    base_model = AutoModelForCausalLM.from_pretrained(base, local_files_only=True)
    ids = load_tokenizer(run_dir / "sft" / "model")(["Q: Add 3 and 4.\nA: "], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        merged_logits, adapter_logits, base_logits = (m(ids).logits for m in (merged, adapter, base_model))
    assert torch.allclose(merged_logits, adapter_logits, atol=1e-4)
    assert not torch.allclose(merged_logits, base_logits, atol=1e-3)  # the adapters learned something


def test_human_labeling_pauses_the_run_until_enough_rankings_are_in(zero3_run, tmp_path):
    """labeling.mode human: the run stops at label (awaiting_labels, progress in `rlhf status`);
    annotators rank in the real app; `rlhf run --resume` then exports their rankings."""
    import shutil
    import uuid

    from gradio_client import Client

    from labeling_ui.cli import run_store
    from labeling_ui.testing import ServerProcess

    source, _ = zero3_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir, ignore=shutil.ignore_patterns("labels.db*", "ppo*", "eval", "rm", "label", "labeling"))
    policies = f"sample.policies={{sft: {run_dir / 'sft' / 'model'}, base: {run_dir / 'pretrain' / 'model'}}}"
    human = ["--set", "deepspeed.zero_stage=3", *sum((["--set", s] for s in QUICK), []), "--set", "sample.prompts=12",
             "--set", policies, "--set", "labeling.mode=human", "--set", "labeling.min_rankings=5"]
    paused = run(["-m", "pipeline", "run", "--run-dir", str(run_dir), "--resume", "--stages", "sample,label", *human], check=False)
    assert paused.returncode == 3 and "label: awaiting labels, 0 of 5 rankings in (0 of 12 prompts ranked)" in paused.stdout
    candidates = read_jsonl(run_dir / "sample" / "candidates.jsonl")
    assert len(candidates) == 12 and all([c["policy"] for c in r["candidates"]] == ["sft", "base"] * 2 for r in candidates)
    assert candidates[0]["candidates"][1]["sampling"]["checkpoint"] == str(run_dir / "pretrain" / "model")
    status = run(["-m", "pipeline", "status", str(run_dir)]).stdout
    assert "awaiting_labels" in status and "0 of 5 rankings in" in status

    store, _ = run_store(str(run_dir))
    store.add_user("ann", "annotator", "correct horse battery")
    server = ServerProcess(run_dir).start()
    try:
        api = Client(server.url, auth=("ann", "correct horse battery"), verbose=False, analytics_enabled=False)
        for _ in range(5):
            task = api.predict(api_name="/next_task")
            labels = [c["label"] for c in task["candidates"]]
            api.predict(task["assignment_id"], [labels[:1], labels[1:]], {label: 4 for label in labels}, {}, 6, "",
                        str(uuid.uuid4()), api_name="/submit_ranking")
    finally:
        server.kill()
    resumed = run(["-m", "pipeline", "run", "--run-dir", str(run_dir), "--resume", "--stages", "sample,label", *human])
    assert "sample: done with this config, skipped" in resumed.stdout
    label = json.loads((run_dir / "manifest.json").read_text())["stages"]["label"]
    assert label["status"] == "done" and label["metrics"]["label/rankings"] == 5
    exported = read_jsonl(run_dir / "label" / "rankings.jsonl")
    assert len(exported) == 5 and {r["annotator_id"] for r in exported} == {"ann"}
    assert all(len(r["ranking"]) == 2 and r["confidence"] == 6 for r in exported)


@pytest.mark.parametrize(
    "overrides, expected, status",
    [
        # a path the config names is refused before the stage starts: no manifest entry at all
        (["model.name_or_path=/nonexistent/model"], "error: model.name_or_path: model directory /nonexistent/model does not exist",
         None),
        (["model.name_or_path={base}", "data.sft.path=/nonexistent/d.jsonl"], "error: data.sft.path: /nonexistent/d.jsonl does not exist",
         None),
        # what needs the file read is refused when the stage loads it, before training
        (["model.name_or_path={base}", "model.tokenizer={nopad}"], "has no pad token", "failed"),
    ],
)
def test_bad_inputs_exit_2_before_training_and_nothing_is_marked_done(zero3_run, tmp_path, overrides, expected, status):
    base = zero3_run[0] / "pretrain" / "model"
    tokenizer = load_tokenizer(base)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path / "nopad")
    overrides = [o.format(base=base, nopad=tmp_path / "nopad") for o in overrides]
    run_dir = tmp_path / "bad"
    result = run(["-m", "stages.sft", "--run-dir", str(run_dir), *sum((["--set", s] for s in overrides), [])], check=False)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and expected in result.stderr
    manifest = run_dir / "manifest.json"
    recorded = json.loads(manifest.read_text())["stages"] if manifest.exists() else {}
    assert recorded.get("sft", {}).get("status") == status
    assert not (run_dir / "sft" / "model").exists()


def test_sft_needs_its_inputs_done(tmp_path):
    result = run(["-m", "stages.sft", "--run-dir", str(tmp_path / "empty")], check=False)
    assert result.returncode == 2
    assert "stage sft needs stage pretrain done with this config" in result.stderr
