"""Stage `sample`: K candidate responses per prompt, imported into the ranking database for the
label stage (InstructGPT sections 3.4-3.5: labelers rank K = 4 to 9 outputs per prompt).

Reads:  DIR/sft/model, or the policies of sample.policies (the K candidates of a prompt are spread
        over them in turn); prompts from sample.prompt_file, or the tiny world's "rm" stream
        (distinct, none held out).
Writes: DIR/sample/candidates.jsonl  one record per prompt: prompt_id, prompt, candidates [{id, text,
                                     policy, sampling}], and on the tiny world world_task (what it asked)
        the ranking database (labeling.database, or DIR/labels.db): the same, as one batch named
        by this stage's fingerprint, which is what annotators are served and what is exported.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from common.config import Config
from common.files import atomic_write_jsonl
from common.inputs import require_causal_lm_for_vllm
from common.run_dir import RunDir
from labeling_ui.store import open_run_store
from stages.data.datasets import make_world
from stages.data.files import prompts_from_file
from stages.models.loading import (
    attention_implementation,
    check_model_dir,
    load_tokenizer,
)
from stages.runtime.lifecycle import StageResult
from stages.runtime.ray_workers import map_on_workers
from tiny_world import Task


def prompts_to_sample(config: Config, tokenizer) -> tuple[list[str], list[Task | None]]:
    """`sample.prompts` distinct prompts, and the tiny-world task behind each (None for a prompt file),
    chosen by labeling.select from a pool of labeling.pool_factor times as many for select: diverse."""
    wanted = config.sample.prompts
    pool = wanted * config.labeling.pool_factor if config.labeling.select == "diverse" else wanted
    if config.sample.prompt_file is not None:
        prompts = list(dict.fromkeys(prompts_from_file(config.sample.prompt_file, tokenizer, "sample.prompt_file")))[:pool]
        tasks: list[Task | None] = [None] * len(prompts)
    else:
        seen: dict[str, Task] = {}
        for example in make_world(config.world).train_examples(pool * 3, "rm"):
            seen.setdefault(example.prompt, example.task)
            if len(seen) == pool:
                break
        prompts, tasks = list(seen), list(seen.values())
    if config.labeling.select == "diverse":
        chosen = diverse_prompts(prompts, wanted, config.labeling, config.run.seed)
        prompts, tasks = [prompts[i] for i in chosen], [tasks[i] for i in chosen]
    return prompts, tasks


CLUSTERING_INSTRUCTION = "Represent the user instruction for clustering: "


def diverse_prompts(prompts: list[str], n: int, labeling, seed: int) -> list[int]:
    """Indices of up to n prompts to label: INSTRUCTOR-style embeddings (the instruction attended to,
    not pooled), near-duplicates (cosine >= labeling.dedup_threshold to one kept) dropped, then
    greedy k-center, so the labeling budget covers the prompt space instead of its dense regions."""
    from stages.models.embeddings import deduplicate, k_center, load_embedder

    embeddings = load_embedder(labeling.embedder, "labeling.embedder").encode(prompts, CLUSTERING_INSTRUCTION)
    kept = deduplicate(embeddings, labeling.dedup_threshold)
    return [kept[i] for i in k_center(embeddings[kept], n, seed)]


def sampling_policies(config: Config, run_dir: RunDir) -> dict[str, Path]:
    if config.sample.policies is None:
        return {"sft": run_dir.model_dir("sft")}
    return {name: check_model_dir(path, f"sample.policies.{name}") for name, path in config.sample.policies.items()}


def sample_candidates(shard: tuple[int, list[str]], model_dir: str, k: int, temperature: float, max_new_tokens: int,
                      batch_size: int, seed: int, torch_threads: int, one_line: bool, use_gpu: bool = False,
                      attn_implementation: str = "sdpa") -> list[list[str]]:
    """K sampled responses for each prompt of one shard (runs as a Ray task, on its GPU under ray.use_gpu)."""
    import torch

    from stages.models.loading import inference_device, load_policy, load_tokenizer
    from stages.scoring.evaluation import generate

    index, prompts = shard
    torch.set_num_threads(torch_threads)
    torch.manual_seed(seed * 1000 + index)
    # a causal LM, or a Bitune or cmlm model (cmlm decodes deterministically)
    model = load_policy(model_dir, attn_implementation).to(inference_device(use_gpu))
    tokenizer = load_tokenizer(model_dir)
    flat = generate(model, tokenizer, [p for p in prompts for _ in range(k)], max_new_tokens, do_sample=True,
                    batch_size=batch_size, temperature=temperature, one_line=one_line)
    return [flat[i : i + k] for i in range(0, len(flat), k)]


def sample_on_engines(config: Config, model_dir: Path, shards: list[tuple[int, list[str]]], k: int, seed: int,
                      one_line: bool) -> list[list[list[str]]]:
    """The same as sample_candidates over every shard, on vLLM engines (rollout.engine vllm) started for this
    policy and stopped after: shard i on engine i mod rollout.num_engines, each request seeded."""
    import ray

    from stages.scoring.evaluation import first_line
    from stages.scoring.vllm_engines import (
        engine_specs,
        sampling_params,
        start_engines,
        stop_engines,
    )

    require_causal_lm_for_vllm(model_dir, "sample policy (rollout.engine vllm)")  # e.g. a Bitune SFT model
    s, tokenizer = config.sample, load_tokenizer(model_dir)
    sampling = sampling_params(s.max_new_tokens, s.temperature, greedy=False, stop_at_eos=True)
    specs = engine_specs(config.rollout, str(model_dir), seed, config.deepspeed.precision, config.ray.use_gpu)
    engines = start_engines(config.ray, config.rollout, specs)
    try:
        pending = []  # every shard's request at once, so that the engines work in parallel
        for index, prompts in shards:
            flat = [p for p in prompts for _ in range(k)]
            seeds = [hash((seed, index, i)) % 2**31 for i in range(len(flat))]
            engine = engines[index % len(engines)]
            pending.append(engine.generate.remote(tokenizer(flat)["input_ids"], sampling, seeds))
        results = []
        for _, replies in ray.get(pending, timeout=config.rollout.request_timeout_s):
            texts = tokenizer.batch_decode([tokens for tokens, _, _ in replies], skip_special_tokens=True)
            texts = [first_line(t) if one_line else t.strip() for t in texts]
            results.append([texts[i : i + k] for i in range(0, len(texts), k)])
        return results
    finally:
        stop_engines(engines)


def sample(config: Config, run_dir: RunDir, resume: bool, stage: str) -> StageResult:
    s = config.sample
    # 1. prompts, split into one shard per worker; the policies
    policies = sampling_policies(config, run_dir)
    prompts, tasks = prompts_to_sample(config, load_tokenizer(next(iter(policies.values()))))
    workers = config.ray.num_workers
    shards = [(i, prompts[i::workers]) for i in range(workers)]
    # 2. K candidates per prompt: candidate j from policy j mod P, each policy's share sampled on the workers
    names = list(policies)
    candidates: list[list[dict]] = [[] for _ in prompts]
    for p, name in enumerate(names):
        slots = [j for j in range(s.k) if j % len(names) == p]
        sampling = {"temperature": s.temperature, "max_new_tokens": s.max_new_tokens, "seed": config.run.seed,
                    "checkpoint": str(policies[name])}
        one_line = config.sample.prompt_file is None
        if config.rollout.engine == "vllm":
            sampling["engine"] = "vllm"
            results = sample_on_engines(config, policies[name], shards, len(slots), config.run.seed + p, one_line)
        else:
            results = map_on_workers(
                config.ray, sample_candidates, shards, model_dir=str(policies[name]), k=len(slots), temperature=s.temperature,
                max_new_tokens=s.max_new_tokens, batch_size=s.batch_size, seed=config.run.seed + p,
                torch_threads=config.run.torch_threads, one_line=one_line, use_gpu=config.ray.use_gpu,
                attn_implementation=attention_implementation(config.model.attn_implementation, config.deepspeed.precision),
            )
        for shard, shard_texts in enumerate(results):
            for offset, texts in enumerate(shard_texts):
                candidates[shard + offset * workers] += [{"id": f"c{j + 1}", "text": text, "policy": name, "sampling": sampling}
                                                         for j, text in zip(slots, texts)]
    # 3. save, and import into the ranking database as this run's batch
    records = []
    for i, (prompt, task) in enumerate(zip(prompts, tasks)):
        record = {"prompt_id": f"p{i:05d}", "prompt": prompt, "candidates": sorted(candidates[i], key=lambda c: int(c["id"][1:]))}
        if task is not None:
            record["world_task"] = asdict(task)
        records.append(record)
    atomic_write_jsonl(run_dir.stage_dir(stage) / "candidates.jsonl", records)
    store = open_run_store(config.labeling, run_dir.root, batch=run_dir.stage_record(stage)["fingerprint"])
    imported = store.import_records(records, "candidates.jsonl")
    metrics = {"sample/prompts": len(records), "sample/imported": imported, "sample/k": s.k}
    return StageResult(outputs={"candidates": f"{stage}/candidates.jsonl"}, metrics=metrics)


