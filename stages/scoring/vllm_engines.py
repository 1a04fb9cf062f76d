"""vLLM engines as Ray actors, behind the same rollout interface as HF generate (rollout.py).

The driver of a stage starts the engines (`start_engines`) and hands their Ray handles to whoever
generates: PPO's training workers, the sample stage, the eval stage. Each engine is one `vllm.LLM` in
its own Ray actor on its own resources (a GPU each, or a CPU on machines without one), with the engine
core in the actor's process, so that a weight update is a plain method call there.

Weights after a PPO update (`push_weights`): the trainer's rank 0 sends the actor's parameters, in HF
names and in buckets of `rollout.sync_bucket_mb`, to every engine; each engine stages them in its host
memory and loads them in one pass with vLLM's `reload_weights` (which re-runs the post-load processing,
such as the CPU kernels' weight repacking, that a bare `load_weights` would miss), resets its prefix
cache and takes the new version. Every generate reply carries the engine's version, and the trainer
checks it against its own: the cheapest guard against sampling from stale weights.

An engine that dies is restarted by Ray (`max_restarts`) from its model directory, so it comes back at
version 0; the trainer sees the version and pushes the current weights before it retries.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from common.config import RaySection, RolloutSection
from common.ray_env import forwarded_env
from stages.core.functional import response_mask_through_eos
from stages.runtime.testing import maybe_kill_engine
from stages.scoring.rollout import RolloutBatch


@dataclass(frozen=True)
class EngineSpec:
    """What an engine needs to start, and to start again after a crash (pickled to its actor)."""

    model_dir: str  # a causal LM saved with its tokenizer (vLLM reads both from one directory)
    seed: int
    dtype: str  # float32 | bfloat16 | float16
    max_model_len: int | None
    tensor_parallel_size: int
    gpu_memory_utilization: float
    enable_prefix_caching: bool
    cpu_kv_cache_gib: float
    use_gpu: bool
    sleep_mode: bool = False  # colocated engines release their GPU memory while the trainer learns


def engine_dtype(rollout: RolloutSection, precision: str) -> str:
    if rollout.dtype != "auto":
        return rollout.dtype
    return {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")


def engine_specs(rollout: RolloutSection, model_dir: str, seed: int, precision: str, use_gpu: bool) -> list[EngineSpec]:
    """One spec per engine; engine i is seeded seed * 1000 + i."""
    return [
        EngineSpec(model_dir=str(model_dir), seed=seed * 1000 + i, dtype=engine_dtype(rollout, precision),
                   max_model_len=rollout.max_model_len, tensor_parallel_size=rollout.tensor_parallel_size,
                   gpu_memory_utilization=rollout.gpu_memory_utilization,
                   enable_prefix_caching=rollout.enable_prefix_caching, cpu_kv_cache_gib=rollout.cpu_kv_cache_gib,
                   use_gpu=use_gpu, sleep_mode=rollout.placement == "colocated")
        for i in range(rollout.num_engines)
    ]


class VLLMEngine:
    """One vLLM engine; the class of a Ray actor (start_engines)."""

    def __init__(self, spec: EngineSpec):
        from vllm import LLM

        self.spec = spec
        self.llm = LLM(
            model=spec.model_dir,
            tokenizer=spec.model_dir,
            dtype=spec.dtype,
            seed=spec.seed,
            max_model_len=spec.max_model_len,
            tensor_parallel_size=spec.tensor_parallel_size,
            distributed_executor_backend="uni" if spec.tensor_parallel_size == 1 else "ray",
            gpu_memory_utilization=spec.gpu_memory_utilization,
            enable_prefix_caching=spec.enable_prefix_caching,
            enforce_eager=not spec.use_gpu,  # CUDA graphs pay on GPUs only
            # log-probs of the distribution actually sampled from (temperature applied): PPO's
            # rollout/logp_diff and the importance weights compare like with like
            logprobs_mode="processed_logprobs",
            enable_sleep_mode=spec.sleep_mode,
        )
        self.version = 0  # the weights on disk; push_weights sets the trainer's version
        self.staged: list[tuple[str, torch.Tensor]] = []
        self.generate_calls = 0

    def ready(self) -> int:
        return self.version

    def generate(self, prompt_token_ids: list[list[int]], sampling: dict[str, Any], seeds: list[int] | None
                 ) -> tuple[int, list[tuple[list[int], list[float], bool]]]:
        """(version, [(response token ids, their log-probs, ended by a stop token)]) per prompt, each
        prompt sampled with its own seed (so that a retried request asks for the same sample)."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self.generate_calls += 1
        maybe_kill_engine(self.generate_calls)
        params = [SamplingParams(**sampling, logprobs=0, seed=seed) for seed in (seeds or [None] * len(prompt_token_ids))]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in prompt_token_ids], params, use_tqdm=False)
        results = []
        for output in outputs:
            completion = output.outputs[0]
            tokens = list(completion.token_ids)
            logprobs = [step[token].logprob for step, token in zip(completion.logprobs, tokens)]
            results.append((tokens, logprobs, completion.finish_reason == "stop"))
        return self.version, results

    def score(self, sequences: list[list[int]]) -> tuple[int, list[list[float]]]:
        """(version, log-probs of tokens 1..n of each sequence given the ones before), from the prompt pass.
        The prefix cache is bypassed: cached blocks carry no logits."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, skip_reading_prefix_cache=True)
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in sequences], params, use_tqdm=False)
        return self.version, [[step[token].logprob for step, token in zip(out.prompt_logprobs[1:], ids[1:])]
                              for out, ids in zip(outputs, sequences)]

    def stage_weights(self, named_tensors: list[tuple[str, torch.Tensor]]) -> int:
        self.staged.extend(named_tensors)
        return len(self.staged)

    def commit_weights(self, version: int, expected: int) -> int:
        """Load the staged weights in one pass, drop the prefix cache (its KV came from the old weights),
        take the new version."""
        staged, self.staged = self.staged, []
        if len(staged) != expected:
            raise RuntimeError(f"engine received {len(staged)} weights of {expected}: a bucket was lost")
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(staged), "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
        self.version = version
        return version

    def sleep(self) -> None:
        """Level 2: weights and KV cache released (a colocated engine while the trainer learns). The weights
        are gone, so the version is too: the next sync must resend them all, even unchanged (waking without
        a resync gives gibberish)."""
        self.llm.sleep(level=2)
        self.version = SLEEPING

    def wake_up(self, tags: list[str]) -> None:
        self.llm.wake_up(tags)


SLEEPING = -1  # the version of an engine whose weights were released

ENGINE_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",  # the engine core in the actor's process: weights load by method call
    "TOKENIZERS_PARALLELISM": "false",
}


def start_engines(ray_config: RaySection, rollout: RolloutSection, specs: list[EngineSpec]) -> list[Any]:
    """Start one Ray actor per spec and wait until each has loaded its model. Ray restarts a dead engine up
    to rollout.max_engine_restarts times (from its model directory, at version 0)."""
    import ray

    from stages.runtime.ray_workers import ensure_ray

    ensure_ray(ray_config, extra_cpus=len(specs))
    env = {**ENGINE_ENV, "VLLM_CPU_KVCACHE_SPACE": str(max(1, round(rollout.cpu_kv_cache_gib)))}
    env.update(forwarded_env())
    if not ray_config.use_gpu or rollout.tensor_parallel_size > 1:
        gpus = 0.0  # TP > 1: vLLM places its own workers
    elif rollout.placement == "colocated":
        gpus = 1.0 - ray_config.resources_per_worker.get("GPU", 1.0)  # the part of each GPU the worker leaves
    else:
        gpus = 1.0
    actor = ray.remote(VLLMEngine).options(num_cpus=1, num_gpus=gpus, max_restarts=rollout.max_engine_restarts,
                                           max_task_retries=0, runtime_env={"env_vars": env})
    engines = [actor.remote(spec) for spec in specs]
    ray.get([engine.ready.remote() for engine in engines], timeout=rollout.request_timeout_s)
    return engines


def stop_engines(engines: list[Any]) -> None:
    import ray

    for engine in engines:
        ray.kill(engine, no_restart=True)


def sampling_params(max_new_tokens: int, temperature: float, greedy: bool, stop_at_eos: bool) -> dict[str, Any]:
    """vLLM's sampling for our rollouts: the full vocabulary (no top-k/top-p: vLLM would renormalise the
    log-probs over the truncated support, the trainer never does); fixed length as ignore_eos."""
    return {
        "max_tokens": max_new_tokens,
        "temperature": 0.0 if greedy else temperature,
        "top_k": 0,  # 0: every token
        "top_p": 1.0,
        "ignore_eos": not stop_at_eos,
        "min_tokens": 0 if stop_at_eos else max_new_tokens,
    }


class VLLMRollout:
    """Rollouts on a vLLM engine, re-padded to HFRollout's layout: prompts left-padded to P, responses
    right-padded to T, the mask through the first EOS. `logprobs` are the sampler's; PPO replaces them
    with the actor's own forward (rollout.old_logprobs trainer) and keeps these as rollout_logprobs."""

    def __init__(self, engine, tokenizer, max_new_tokens: int, temperature: float = 1.0, stop_at_eos: bool = True,
                 greedy: bool = False, timeout_s: float = 600.0):
        self.engine, self.tokenizer, self.timeout_s = engine, tokenizer, timeout_s
        self.stop_at_eos = stop_at_eos
        self.sampling = sampling_params(max_new_tokens, temperature, greedy, stop_at_eos)

    def generate(self, prompts: list[str], seeds: list[int] | None = None) -> RolloutBatch:
        import ray

        prompt_ids = self.tokenizer(prompts)["input_ids"]  # as HFRollout tokenises them (special tokens and all)
        version, results = ray.get(self.engine.generate.remote(prompt_ids, self.sampling, seeds), timeout=self.timeout_s)
        return pad_rollout(prompt_ids, results, self.tokenizer.pad_token_id,
                           self.tokenizer.eos_token_id if self.stop_at_eos else None, version)


def pad_rollout(prompt_ids: list[list[int]], results: list[tuple[list[int], list[float], bool]], pad_id: int,
                eos_id: int | None, version: int) -> RolloutBatch:
    """An engine's (response ids, log-probs, ended) per prompt as a RolloutBatch in HFRollout's layout, built
    on the CPU where the replies arrive; the trainer moves it to the actor's device (RolloutBatch.to)."""
    P = max(len(ids) for ids in prompt_ids)
    T = max(1, max(len(tokens) for tokens, _, _ in results))
    sequences = torch.full((len(prompt_ids), P + T), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(prompt_ids), P), dtype=torch.bool)
    logprobs = torch.zeros((len(prompt_ids), T))
    for row, (ids, (tokens, token_logprobs, _)) in enumerate(zip(prompt_ids, results)):
        sequences[row, P - len(ids) : P] = torch.tensor(ids)
        prompt_mask[row, P - len(ids) :] = True
        sequences[row, P : P + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        logprobs[row, : len(tokens)] = torch.tensor(token_logprobs)
    responses = sequences[:, P:]
    lengths = torch.tensor([len(tokens) for tokens, _, _ in results])
    written = torch.arange(T)[None, :] < lengths[:, None]
    response_mask, ended = response_mask_through_eos(responses, eos_id)
    response_mask &= written  # a response shorter than T and ended by EOS: nothing after it is real
    return RolloutBatch(
        sequences=sequences,
        attention_mask=torch.cat([prompt_mask, response_mask], dim=1).long(),
        response_mask=response_mask,
        logprobs=torch.where(response_mask, logprobs, 0.0),
        ended=ended,
        rollout_logprobs=torch.where(response_mask, logprobs, 0.0),
        weight_version=version,
    )


def push_weights(engines: list[Any], named_tensors: Iterable[tuple[str, torch.Tensor]], version: int, dtype: torch.dtype,
                 bucket_mb: float, timeout_s: float, asleep: bool = False) -> float:
    """Send every (name, tensor) to every engine in buckets of `bucket_mb`, then commit `version` on all of
    them; returns the MiB sent per engine. Every wait is bounded: a sync that does not finish is an error.
    Sleeping (colocated) engines wake in two steps around it: their weights' memory first, the KV cache
    after the new weights are in (both at once, beside the trainer's copy, is vLLM's known OOM)."""
    import ray

    if asleep:
        ray.get([engine.wake_up.remote(["weights"]) for engine in engines], timeout=timeout_s)
    bucket: list[tuple[str, torch.Tensor]] = []
    size = sent = count = 0

    def flush() -> None:
        nonlocal bucket, size
        if bucket:
            ray.get([engine.stage_weights.remote(bucket) for engine in engines], timeout=timeout_s)
        bucket, size = [], 0

    try:
        for name, tensor in named_tensors:
            tensor = tensor.detach().to("cpu", dtype)
            bucket.append((name, tensor))
            count += 1
            size += tensor.numel() * tensor.element_size()
            sent += tensor.numel() * tensor.element_size()
            if size >= bucket_mb * 2**20:
                flush()
        flush()
        ray.get([engine.commit_weights.remote(version, count) for engine in engines], timeout=timeout_s)
        if asleep:
            ray.get([engine.wake_up.remote(["kv_cache"]) for engine in engines], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        raise TimeoutError(f"weight sync to the vLLM engines did not finish within rollout.sync_timeout_s ({timeout_s} s)") from None
    return sent / 2**20
