"""Stage `eval`: what each stage bought, on the tiny world's held-out prompts (held-out instances of
the training families, and the held-out families), for the base model, SFT, PPO-ptx and PPO without
ptx: true score, exact match, Natural-Instructions EM and ROUGE-L, win rate against SFT by true score
(with a 95% interval), sequence KL to SFT, response length, and LM loss on held-out pretraining text.

Reads:  DIR/{pretrain,sft,ppo,ppo_no_ptx}/model (those the config has), the reward model's metrics.
Writes: DIR/eval/policies.json (per policy: the figures, per family, and the per-prompt true scores),
        then the report (pipeline/report.py): DIR/eval/summary.json, DIR/eval/report.md and its plots.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.config import Config
from pipeline.files import atomic_write_json
from pipeline.graph import inputs_of
from pipeline.report import build_report
from pipeline.run_dir import RunDir
from stages.data import make_world
from stages.entry import StageResult, run_stage
from stages.eval_metrics import win_rate
from stages.evaluation import evaluate_policy
from stages.modeling import load_tokenizer

STAGE = "eval"
POLICIES = ("base", "sft", "ppo", "ppo_no_ptx")


def policy_dirs(config: Config, run_dir: RunDir) -> dict[str, Path]:
    inputs = inputs_of(STAGE, config)
    base = run_dir.model_dir("pretrain") if "pretrain" in inputs else Path(config.model.name_or_path)
    dirs = {"base": base, "sft": run_dir.model_dir("sft"), "ppo": run_dir.model_dir("ppo")}
    if "ppo_no_ptx" in inputs:
        dirs["ppo_no_ptx"] = run_dir.model_dir("ppo_no_ptx")
    return dirs


def summarise(result: dict, sft_scores: list[float]) -> dict:
    """Aggregates of one policy's per-prompt results (evaluation.evaluate_policy)."""
    def mean(values):
        return sum(values) / len(values)

    train = [i for i, held in enumerate(result["heldout_family"]) if not held]
    held = [i for i, h in enumerate(result["heldout_family"]) if h]
    wins = win_rate([result["true_score"][i] for i in train], [sft_scores[i] for i in train])
    families = sorted(set(result["family"]))
    return {
        "true_score": mean([result["true_score"][i] for i in train]),
        "exact_match": mean([result["exact_match"][i] for i in train]),
        "ni_exact_match": mean([result["ni_exact_match"][i] for i in train]),
        "rouge_l": mean([result["rouge_l"][i] for i in train]),
        "sampled_true_score": mean([result["sampled_true_score"][i] for i in train]),
        "kl_to_sft": mean(result["kl_to_reference"]),
        "response_length": mean(result["length"]),
        "lm_loss": result["lm_loss"],
        "heldout_family_true_score": mean([result["true_score"][i] for i in held]) if held else None,
        "heldout_family_exact_match": mean([result["exact_match"][i] for i in held]) if held else None,
        "win_rate_vs_sft": wins.rate,
        "win_rate_low": wins.low,
        "win_rate_high": wins.high,
        "per_family": {
            f: {k: mean([result[k][i] for i, fam in enumerate(result["family"]) if fam == f]) for k in ("true_score", "exact_match")}
            for f in families
        },
        "true_scores": [result["true_score"][i] for i in train],
    }


def evaluate(config: Config, run_dir: RunDir, resume: bool) -> StageResult:
    from transformers import AutoModelForCausalLM

    # setup: the held-out prompts and text, the policies, SFT as the reference
    world = make_world(config.world)
    examples = world.heldout_examples(config.world.eval_per_family)
    corpus = world.corpus(config.eval.corpus_docs, split="heldout")
    dirs = policy_dirs(config, run_dir)
    tokenizer = load_tokenizer(dirs["sft"])
    sft = AutoModelForCausalLM.from_pretrained(str(dirs["sft"]), local_files_only=True).eval()
    # evaluate every policy on the same prompts, with the same sampling seed
    results = {}
    for name, directory in dirs.items():
        policy = sft if name == "sft" else AutoModelForCausalLM.from_pretrained(str(directory), local_files_only=True).eval()
        results[name] = evaluate_policy(policy, sft, tokenizer, examples, corpus, config.run.seed)
        results[name]["heldout_family"] = [e.task.family in world.heldout_families for e in examples]
    sft_scores = results["sft"]["true_score"]
    policies = {name: summarise(result, sft_scores) for name, result in results.items()}
    atomic_write_json(run_dir.stage_dir(STAGE) / "policies.json", policies)
    report = build_report(run_dir.root)
    metrics = {f"{name}/{k}": v for name, p in policies.items() for k, v in p.items() if isinstance(v, float)}
    return StageResult(outputs={"report": str(report.relative_to(run_dir.root)), "policies": f"{STAGE}/policies.json"},
                       metrics=metrics)


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, evaluate, argv)


if __name__ == "__main__":
    main()
