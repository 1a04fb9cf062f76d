"""PPO iteration cost against its floor, in one process (a gloo group of one, real DeepSpeed engines).

The floor is what any PPO implementation must spend on the same tokens: pure generation, one no-grad
forward each of the reference, the reward model and the critic, and the training steps' forward,
backward and optimizer step (actor with its ptx batch, critic). The ratio of the real iteration to
the floor shows the overhead the trainer adds (goal: at most 1.1); it stays near 1 because the old
log-probs come from the generation pass rather than one more forward, and nothing like a forced
garbage collection sits on the hot path.

    python -m bench.ppo_iteration [--iterations 5] [--episodes 64] [--new-tokens 24] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import AutoModelForSequenceClassification

from bench import record
from common.config import TINY_GPT2, load_config
from stages.core.functional import token_logprobs
from stages.models.forward import lm_loss, response_logits
from stages.models.loading import build_model, train_char_tokenizer
from stages.models.reward_model import sequence_scores, token_scores
from stages.ppo.trainer import PPOTrainer, PPOTrainingSpec
from tiny_world import TinyWorld


def start_group(backend: str = "gloo") -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("LOCAL_RANK", "0")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def make_models(root: Path, world: TinyWorld):
    tokenizer = train_char_tokenizer([world.alphabet(), *world.corpus(200)])
    torch.manual_seed(0)
    build_model(TINY_GPT2, tokenizer).save_pretrained(root / "actor")
    AutoModelForSequenceClassification.from_pretrained(root / "actor", num_labels=1, pad_token_id=tokenizer.pad_token_id).save_pretrained(root / "rm")
    for name in ("actor", "rm"):
        tokenizer.save_pretrained(root / name)
    return tokenizer


def floor_seconds(trainer: PPOTrainer, prompts: list[str]) -> float:
    """The same tokens through the unavoidable work only."""
    ppo, tokenizer = trainer.ppo, trainer.tokenizer
    started = time.perf_counter()
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    with torch.no_grad():
        sequences = trainer.actor.module.generate(**encoded, do_sample=True, top_k=0, max_new_tokens=ppo.max_new_tokens,
                                                  min_new_tokens=ppo.max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        mask = torch.ones_like(sequences)
        T = ppo.max_new_tokens
        response_logits(trainer.reference, sequences, mask, T)
        sequence_scores(trainer.reward_model, sequences, mask)
        token_scores(trainer.critic, sequences, mask)
    for _ in range(ppo.ppo_epochs):
        for index in torch.arange(len(prompts)).split(trainer.minibatch_size):
            logits = response_logits(trainer.actor, sequences[index], mask[index], T)
            loss = token_logprobs(logits, sequences[index, -T:]).mean()
            if trainer.ptx_per_step:
                loss = loss + lm_loss(trainer.actor, **trainer.pretraining_batch(0))
            trainer.actor.backward(loss)
            trainer.actor.step()
            trainer.critic.backward(token_scores(trainer.critic, sequences[index], mask[index]).mean())
            trainer.critic.step()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--episodes", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start_group()
    world = TinyWorld()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_models(root, world)
        config = load_config(None, [
            f"ppo.episodes_per_iteration={args.episodes}", f"ppo.max_new_tokens={args.new_tokens}", "ppo.fixed_length=true",
            "ppo.minibatches=2", "ppo.ppo_epochs=2", "deepspeed.zero_stage=2",
        ])
        spec = PPOTrainingSpec(config=config, run_dir=str(root / "run"), stage="ppo", actor=str(root / "actor"), reference=str(root / "actor"),
                     reward_model=str(root / "rm"), critic=str(root / "rm"), tokenizer=str(root / "actor"),
                     prompts=[e.prompt for e in world.train_examples(1000, "bench")], validation_prompts=[],
                     pretraining=world.corpus(2000), tasks=None)
        trainer = PPOTrainer(spec)
        splits = {"generate": 0.0, "score": 0.0, "train": 0.0}
        real = floor = 0.0
        for iteration in range(args.iterations + 1):  # the first of each is a warm-up
            prompts = trainer.iteration_prompts(iteration)
            t0 = time.perf_counter()
            batch = trainer.rollout.generate(prompts)
            t1 = time.perf_counter()
            experience, _ = trainer.make_experience(batch, prompts)
            t2 = time.perf_counter()
            trainer.learn(experience, iteration)
            t3 = time.perf_counter()
            floor_time = floor_seconds(trainer, prompts)
            if iteration == 0:
                continue
            real += t3 - t0
            floor += floor_time
            for name, seconds in zip(splits, (t1 - t0, t2 - t1, t3 - t2)):
                splits[name] += seconds
    n = args.iterations
    print(f"workload: {args.episodes} episodes x {args.new_tokens} new tokens, tiny GPT-2 (0.8M), "
          f"2 epochs x 2 minibatches, ptx 1 sequence per episode, {args.threads} thread(s), ZeRO-2, {n} iterations")
    print(f"episodes per second      {args.episodes * n / real:8.1f}")
    print(f"iteration                {real / n:8.3f} s  (generate {splits['generate'] / real:.0%}, "
          f"score {splits['score'] / real:.0%}, train {splits['train'] / real:.0%})")
    print(f"floor (same tokens)      {floor / n:8.3f} s")
    print(f"iteration / floor        {real / floor:8.3f}")
    print(f"peak memory (RSS)        {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:8.0f} MiB")
    record("ppo_iteration", "episodes per second", args.episodes * n / real, "episodes/s")
    record("ppo_iteration", "iteration / floor (same tokens)", real / floor, "ratio", "<= 1.1")
    record("ppo_iteration", "peak memory (RSS)", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "MiB")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
