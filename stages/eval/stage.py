"""Stage `eval`: what each stage bought, for the base model, SFT, PPO-ptx and PPO without ptx, the other
SFT methods of eval.compare_sft_methods (plain LoRA, Bitune, cmlm) with their decoding speed, and the
methods of eval.compare_methods (critic-free estimators, DPO) trained from the same SFT policy.

On the tiny world (the default), on its held-out prompts (held-out instances of the training
families, and the held-out families): true score, exact match, Natural-Instructions EM and ROUGE-L,
win rate against SFT by true score (with a 95% interval), sequence KL to SFT, response length, and LM
loss on held-out pretraining text (the alignment tax). On a prompt file (eval.prompts, any model) the
same without the figures that need a task's answer. Either way, win rates against SFT judged by the
trained reward model and, when eval.heldout_reward_model is given, by one that PPO never optimised
against (where the two judges part, the policy games the first).

Reads:  DIR/{pretrain,sft,ppo,ppo_no_ptx,sft_<method>,ppo_<estimator>,dpo}/model (those the config has) or
        eval.policies, the reward model (DIR/rm/model, ppo.reward_model or eval.reward_model), the reward
        model's metrics.
Writes: DIR/eval/policies.json (per policy: the figures, per family, and the per-prompt scores),
        DIR/eval/responses.jsonl (per prompt: every policy's greedy response and its scores),
        then the report (report.py): DIR/eval/summary.json, DIR/eval/report.md and its plots.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from common.config import Config, method_stage
from common.files import atomic_write_json, atomic_write_jsonl
from common.run_dir import RunDir
from stages.data.datasets import make_world
from stages.data.files import prompts_from_file, text_dataset_from_file
from stages.eval.report import build_report
from stages.models.loading import (
    attention_implementation,
    check_model_dir,
    inference_device,
    load_policy,
    load_tokenizer,
    sft_method_of,
)
from stages.runtime.lifecycle import StageResult
from stages.scoring.evaluation import (
    evaluate_lm_loss,
    judge,
    respond,
    respond_greedy,
    world_prompts,
    world_scores,
)
from stages.scoring.metrics import win_rate

STAGE = "eval"
JUDGES = ("rm", "heldout_rm")  # figure prefixes of the trained and the held-out reward model


def evaluated_policies(config: Config, run_dir: RunDir) -> dict[str, Path]:
    """name -> model directory of every policy to evaluate; 'sft' is the baseline."""
    if config.eval.policies is not None:
        return {name: check_model_dir(path, f"eval.policies.{name}") for name, path in config.eval.policies.items()}
    base = run_dir.model_dir("pretrain") if config.model.name_or_path is None else Path(config.model.name_or_path)
    dirs = {"base": base, "sft": run_dir.model_dir("sft"), "ppo": run_dir.model_dir("ppo")}
    compared = (["ppo_no_ptx"] if config.eval.compare_without_ptx else []) + [f"sft_{m}" for m in config.eval.compare_sft_methods] \
        + [method_stage(m) for m in config.eval.compare_methods]
    dirs.update({name: run_dir.model_dir(name) for name in compared})
    return dirs


def judge_dirs(config: Config, run_dir: RunDir) -> dict[str, Path]:
    """The reward models that judge win rates: the trained one ('rm') and an optional held-out one."""
    trained = config.eval.reward_model or config.ppo.reward_model
    judges = {"rm": check_model_dir(trained, "eval.reward_model") if trained else run_dir.model_dir("rm")}
    if config.eval.heldout_reward_model:
        judges["heldout_rm"] = check_model_dir(config.eval.heldout_reward_model, "eval.heldout_reward_model")
    return judges


def summarise(result: dict, baseline: dict) -> dict:
    """Aggregates of one policy's per-prompt results, against the baseline's (SFT) on the same prompts.
    The headline figures are over held-out instances of the training families; the held-out families
    are reported apart."""
    def mean(values):
        return sum(values) / len(values) if values else None

    def over(key, rows):
        return [result[key][i] for i in rows]

    rows = [i for i, held in enumerate(result["heldout_family"]) if not held]
    held = [i for i, h in enumerate(result["heldout_family"]) if h]
    summary = {
        "kl_to_sft": mean(result.get("kl_to_reference", [])),
        "response_length": mean(result["length"]),
        "decode_ms": result["decode_ms"],
        "lm_loss": result.get("lm_loss"),
    }
    scores = ["true_score", "exact_match", "ni_exact_match", "rouge_l", "sampled_true_score"]
    summary.update({key: mean(over(key, rows)) for key in scores if key in result})
    judged = {"true_score": "win_rate"} if "true_score" in result else {}
    judged.update({f"{judge}_score": f"{judge}_win_rate" for judge in JUDGES if f"{judge}_score" in result})
    for key, name in judged.items():
        wins = win_rate(over(key, rows), [baseline[key][i] for i in rows])
        summary.update({key: mean(over(key, rows)), f"{name}_vs_sft": wins.rate, f"{name}_low": wins.low, f"{name}_high": wins.high})
    if "family" in result:
        summary["heldout_family_true_score"] = mean(over("true_score", held))
        summary["heldout_family_exact_match"] = mean(over("exact_match", held))
        summary["heldout_family_ni_exact_match"] = mean(over("ni_exact_match", held))
        summary["heldout_family_rouge_l"] = mean(over("rouge_l", held))
        summary["per_family"] = {
            f: {k: mean([result[k][i] for i, fam in enumerate(result["family"]) if fam == f]) for k in ("true_score", "exact_match")}
            for f in sorted(set(result["family"]))
        }
    # the distribution plotted per policy: the true score where there is one, else the judge's score
    summary["scores"] = over("true_score" if "true_score" in result else "rm_score", rows)
    return summary


@contextlib.contextmanager
def rollouts_for(config: Config, model_dir: Path, tokenizer):
    """What generates a policy's responses: None (HF generate on the policy), or with rollout.engine vllm
    a vLLM engine started for this policy (stopped after). A Bitune policy, which vLLM cannot serve, keeps HF."""
    if config.rollout.engine != "vllm" or sft_method_of(model_dir) != "causal_lm":
        yield None
        return
    from stages.scoring.vllm_engines import (
        VLLMRollout,
        engine_specs,
        start_engines,
        stop_engines,
    )

    specs = engine_specs(config.rollout.model_copy(update={"num_engines": 1}), str(model_dir), config.run.seed,
                         config.deepspeed.precision, config.ray.use_gpu)
    engines = start_engines(config.ray, config.rollout, specs)
    try:
        yield lambda greedy: VLLMRollout(engines[0], tokenizer, config.eval.max_new_tokens, greedy=greedy,
                                         timeout_s=config.rollout.request_timeout_s)
    finally:
        stop_engines(engines)


def evaluate(config: Config, run_dir: RunDir, resume: bool, stage: str) -> StageResult:
    from transformers import PreTrainedModel

    # 1. setup: the prompts (and their tiny-world tasks), the held-out text, the policies and judges
    dirs, judges = evaluated_policies(config, run_dir), judge_dirs(config, run_dir)
    tokenizer = load_tokenizer(dirs["sft"])
    if config.eval.prompts is None:
        world = make_world(config.world)
        examples = world.heldout_examples(config.world.eval_per_family)
        prompts = world_prompts(examples, world, config.data.mixture, tokenizer)
        corpus = world.corpus(config.eval.corpus_docs, split="heldout")
    else:
        examples = None
        prompts = prompts_from_file(config.eval.prompts, tokenizer, "eval.prompts")[: config.eval.max_prompts]
        heldout_text = config.eval.heldout_text
        corpus = text_dataset_from_file(heldout_text)["text"][: config.eval.corpus_docs] if heldout_text else []
    device = inference_device(config.ray.use_gpu)
    attention = attention_implementation(config.model.attn_implementation, config.deepspeed.precision)

    def load(directory):
        return load_policy(directory, attention).to(device).eval()

    sft = load(dirs["sft"])

    # 2. every policy on the same prompts with the same sampling seed; SFT is the KL reference. A masked
    # LM (sft.method cmlm) has no likelihood of a sampled response, and a reference that is no plain
    # causal LM scores none: those give their greedy responses alone
    results, responses = {}, {}
    one_line = examples is not None
    for name, directory in dirs.items():
        policy = sft if name == "sft" else load(directory)
        if isinstance(sft, PreTrainedModel) and sft_method_of(directory) != "cmlm":
            with rollouts_for(config, directory, tokenizer) as rollout_for:
                out = respond(policy, sft, tokenizer, prompts, config.run.seed, config.eval.max_new_tokens, one_line=one_line,
                              rollout_for=rollout_for)
        else:
            out = respond_greedy(policy, load_tokenizer(directory), prompts, config.eval.max_new_tokens, one_line)
        responses[name] = out["greedy"]
        results[name] = {k: out[k] for k in ("kl_to_reference", "length", "decode_ms") if k in out}
        if examples is not None:
            results[name].update(world_scores(examples, out))
        results[name]["heldout_family"] = [e.task.family in world.heldout_families for e in examples] if examples else [False] * len(prompts)
        if corpus and isinstance(policy, PreTrainedModel):
            results[name]["lm_loss"] = evaluate_lm_loss(policy, tokenizer, corpus)

    # 3. the reward models judge every policy's greedy responses
    for judge_name, judge_dir in judges.items():
        for name, scores in judge(judge_dir, prompts, responses, config.rm.max_length, device).items():
            results[name][f"{judge_name}_score"] = scores

    # 4. figures against SFT, the per-prompt record, the report
    policies = {name: summarise(result, results["sft"]) for name, result in results.items()}
    out_dir = run_dir.stage_dir(STAGE)
    atomic_write_json(out_dir / "policies.json", policies)
    atomic_write_jsonl(out_dir / "responses.jsonl", [
        {"prompt": prompt, **{name: {"response": responses[name][i],
                                     **{k: results[name][k][i] for k in ("true_score", "rm_score", "heldout_rm_score") if k in results[name]}}
                               for name in dirs}}
        for i, prompt in enumerate(prompts)
    ])
    report = build_report(run_dir.root)
    metrics = {f"{name}/{k}": v for name, p in policies.items() for k, v in p.items() if isinstance(v, float)}
    onset = json.loads((out_dir / "summary.json").read_text())["overoptimisation"]  # the report's, as it found it
    if onset is not None:  # the report says why; the run's summary says where
        metrics.update({"ppo/overoptimisation_peak_step": float(onset["peak_step"]), "ppo/overoptimisation_began": float(onset["began"])})
    outputs = {"report": str(report.relative_to(run_dir.root)), "policies": f"{STAGE}/policies.json",
               "responses": f"{STAGE}/responses.jsonl"}
    return StageResult(outputs=outputs, metrics=metrics)

