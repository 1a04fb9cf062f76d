"""Stage `sample`: K candidate responses per prompt from the SFT policy, ranked into comparisons for
the reward model (InstructGPT sections 3.4-3.5: labelers rank K = 4 to 9 outputs per prompt).

Reads:  DIR/sft/model; prompts from the tiny world's "rm" stream (distinct, none held out).
Writes: DIR/sample/candidates.jsonl  one record per prompt: prompt_id, prompt, candidates [{id, text,
                                     policy}], world_task (what the tiny world asked)
        DIR/sample/rankings.jsonl    the same, ranked by a simulated annotator, in the labeling app's
                                     K-way export format (labeling spec 6.1); what the rm stage reads
A prompt whose K candidates are all identical has nothing to rank and gets no ranking, as a human
labeler would skip it. Each prompt is ranked by one annotator of a pool, with noise calibrated on
these candidates to InstructGPT's inter-annotator agreement (72.6%) unless sample.annotator_noise is
given; a second annotator of the pool also ranks every prompt, to measure the agreement reached.
"""

from __future__ import annotations

import json
from dataclasses import asdict

from labeling_ui.agreement import pairwise_agreement
from labeling_ui.simulated import SimulatedAnnotator, calibrate_noise
from pipeline.config import Config
from pipeline.files import atomic_write_text
from pipeline.run_dir import RunDir
from stages.data import make_world
from stages.entry import StageResult, run_stage
from stages.ray_train import map_on_workers
from tiny_world import Example, Task

STAGE = "sample"


def distinct_prompts(config: Config) -> list[Example]:
    """`sample.prompts` examples of the training families with distinct prompt texts."""
    world = make_world(config.world)
    wanted = config.sample.prompts
    seen: dict[str, Example] = {}
    for example in world.train_examples(wanted * 3, "rm"):
        seen.setdefault(example.prompt, example)
        if len(seen) == wanted:
            break
    return list(seen.values())


def sample_candidates(shard: tuple[int, list[str]], model_dir: str, k: int, temperature: float, max_new_tokens: int,
                      batch_size: int, seed: int, torch_threads: int) -> list[list[str]]:
    """K sampled responses for each prompt of one shard (runs as a Ray task)."""
    import torch
    from transformers import AutoModelForCausalLM

    from stages.evaluation import generate
    from stages.modeling import load_tokenizer

    index, prompts = shard
    torch.set_num_threads(torch_threads)
    torch.manual_seed(seed * 1000 + index)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    tokenizer = load_tokenizer(model_dir)
    flat = generate(model, tokenizer, [p for p in prompts for _ in range(k)], max_new_tokens, do_sample=True,
                    batch_size=batch_size, temperature=temperature)
    return [flat[i : i + k] for i in range(0, len(flat), k)]


def sample(config: Config, run_dir: RunDir, resume: bool) -> StageResult:
    # 1. prompts, split into one shard per worker
    examples = distinct_prompts(config)
    workers = config.ray.num_workers
    shards = [(i, [e.prompt for e in examples[i::workers]]) for i in range(workers)]
    # 2. K candidates per prompt from the SFT policy
    s = config.sample
    results = map_on_workers(
        config.ray, sample_candidates, shards, model_dir=str(run_dir.model_dir("sft")), k=s.k,
        temperature=s.temperature, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
        seed=config.run.seed, torch_threads=config.run.torch_threads,
    )
    candidates: list[list[str]] = [[] for _ in examples]
    for i, shard_result in enumerate(results):
        candidates[i::workers] = shard_result
    # 3. rank them: one simulated annotator per prompt, and a second one to measure agreement
    noise = s.annotator_noise
    if noise is None:
        noise = calibrate_noise([(e.task, c) for e, c in zip(examples, candidates)], s.annotator_agreement, config.run.seed)
    annotators = [SimulatedAnnotator(f"sim-{j}", seed=config.run.seed, noise=noise) for j in range(s.annotators)]
    candidate_lines, ranking_lines, first, second = [], [], [], []
    for i, (example, texts) in enumerate(zip(examples, candidates)):
        record = {
            "prompt_id": f"p{i:05d}",
            "prompt": example.prompt,
            "candidates": [{"id": f"c{j + 1}", "text": text, "policy": "sft"} for j, text in enumerate(texts)],
            "world_task": asdict(example.task),
        }
        candidate_lines.append(json.dumps(record))
        annotator = annotators[i % len(annotators)]
        tiers = annotator.rank(example.task, texts)
        first.append(tiers)
        second.append(annotators[(i + 1) % len(annotators)].rank(example.task, texts))
        if len(tiers) < 2:
            continue
        ranking = [[f"c{j + 1}" for j in tier] for tier in tiers]
        ranking_lines.append(json.dumps({**record, "ranking": ranking, "annotator_id": annotator.annotator_id}))
    # 4. save
    stage_dir = run_dir.stage_dir(STAGE)
    atomic_write_text(stage_dir / "candidates.jsonl", "\n".join(candidate_lines) + "\n")
    atomic_write_text(stage_dir / "rankings.jsonl", "\n".join(ranking_lines) + "\n")
    agreement = pairwise_agreement(zip(first, second, strict=True))
    metrics = {
        "sample/prompts": len(examples),
        "sample/ranked_prompts": len(ranking_lines),
        "sample/annotator_noise": noise,
        "sample/annotator_agreement": float("nan") if agreement is None else agreement,
    }
    return StageResult(
        outputs={"candidates": f"{STAGE}/candidates.jsonl", "rankings": f"{STAGE}/rankings.jsonl"}, metrics=metrics
    )


def world_tasks(rankings_path) -> dict[str, Task]:
    """The tiny-world task behind each prompt of a sample-stage file, keyed by prompt text."""
    tasks = {}
    with open(rankings_path) as lines:
        for line in lines:
            record = json.loads(line)
            task = record["world_task"]
            tasks[record["prompt"]] = Task(task["family"], tuple(task["args"]), task["answer"])
    return tasks


def main(argv: list[str] | None = None) -> None:
    run_stage(STAGE, sample, argv)


if __name__ == "__main__":
    main()
