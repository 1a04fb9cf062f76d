"""PPO iteration cost against a floor in plain eager PyTorch, in one process, on two workloads.

The trainer is the real one (a gloo group of one, DeepSpeed engines at the configured ZeRO stage).
The floor does the work any PPO implementation must do on the same number of tokens, in plain
eager PyTorch, with none of our code around it: KV-cached sampling with HF `generate` on a plain
model (its log-probs are pi_old), one no-grad forward each of the reference, the reward model and
the critic, then every minibatch's actor and critic forward, backward, gradient clipping and one
fused AdamW step (`torch.optim.AdamW(fused=True)`), with the ptx batch in the actor's loss where the
workload has one. Dropout is off in the trained models of both, as the trainer sets it.

Workloads (each in a fresh process, so that the peak memory is its own):
  tiny  the embedded default's tiny GPT-2 on tiny-world prompts: 64 episodes x 24 new tokens,
        2 epochs x 2 minibatches, ptx 1 sequence per episode
  trl   the last TRL PPO trainer's own CPU workload: four GPT-2 models of 5.3M parameters (4 layers,
        width 256, 4 heads, vocabulary 8192, 128 positions), 16 prompts of 16 tokens, exactly 32
        sampled tokens, 4 epochs x 2 minibatches, no ptx, fp32

The two alternate iteration by iteration on the same prompts; the ratio (the median over iterations
of ours / the floor's; goal at most 1.1) shows what the trainer adds. Peak memory is the process's
RSS after two of the trainer's iterations, before the floor builds its models (goal on trl: at most
900 MiB; TRL's trainer took 877).

    python -m bench.ppo_iteration [--workload tiny|trl|all] [--iterations 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
)

from bench import in_fresh_processes, record
from common.config import TINY_GPT2, load_config
from stages.core.functional import token_logprobs
from stages.core.ppo import policy_loss, value_loss
from stages.models.loading import build_model, disable_dropout, train_char_tokenizer
from stages.ppo.trainer import PPOTrainer, PPOTrainingSpec
from tiny_world import TinyWorld


@dataclass(frozen=True)
class Workload:
    description: str
    episodes: int
    new_tokens: int
    epochs: int
    minibatches: int
    ptx: bool
    gpt2: dict | None = None  # GPT2Config keywords; None: the embedded default's tiny model
    prompt_tokens: int | None = None  # prompts of exactly this many tokens; None: tiny-world prompts


WORKLOADS = {
    "tiny": Workload("tiny GPT-2 (embedded default), tiny-world prompts", episodes=64, new_tokens=24, epochs=2, minibatches=2,
                     ptx=True),
    "trl": Workload("GPT-2 4 layers x 256, vocab 8192 (TRL's CPU workload), 16-token prompts", episodes=16, new_tokens=32,
                    epochs=4, minibatches=2, ptx=False,
                    gpt2=dict(n_layer=4, n_embd=256, n_head=4, vocab_size=8192, n_positions=128), prompt_tokens=16),
}


def start_group(backend: str = "gloo") -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.setdefault("LOCAL_RANK", "0")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def make_models(root: Path, world: TinyWorld, workload: Workload):
    """actor (also the reference) and rm (also the critic) under `root`, with one tokenizer."""
    tokenizer = train_char_tokenizer([world.alphabet(), *world.corpus(200)])
    torch.manual_seed(0)
    if workload.gpt2 is None:
        actor = build_model(TINY_GPT2, tokenizer)
    else:
        ids = dict(bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        actor = GPT2LMHeadModel(GPT2Config(**workload.gpt2, **ids))
    actor.save_pretrained(root / "actor")
    AutoModelForSequenceClassification.from_pretrained(root / "actor", num_labels=1, pad_token_id=tokenizer.pad_token_id).save_pretrained(root / "rm")
    for name in ("actor", "rm"):
        tokenizer.save_pretrained(root / name)
    return tokenizer


def prompt_pool(world: TinyWorld, workload: Workload, tokenizer) -> list[str]:
    if workload.prompt_tokens is None:
        return [e.prompt for e in world.train_examples(1000, "bench")]
    # one character is one token of the character tokenizer
    letters, rng = [c for c in world.alphabet() if c.isalnum()], random.Random(0)
    pool = ["".join(rng.choice(letters) for _ in range(workload.prompt_tokens)) for _ in range(256)]
    assert all(len(tokenizer(p)["input_ids"]) == workload.prompt_tokens for p in pool[:8])
    return pool


class PlainPPO:
    """The floor: the four models as plain HF modules, two fused AdamW optimizers, no engine."""

    def __init__(self, root: Path, trainer: PPOTrainer):
        self.ppo, self.tokenizer, self.minibatch_size = trainer.ppo, trainer.tokenizer, trainer.minibatch_size
        pad = self.tokenizer.pad_token_id
        self.actor = AutoModelForCausalLM.from_pretrained(root / "actor")
        self.critic = AutoModelForSequenceClassification.from_pretrained(root / "rm", num_labels=1, pad_token_id=pad)
        self.reference = AutoModelForCausalLM.from_pretrained(root / "actor").eval().requires_grad_(False)
        self.reward_model = AutoModelForSequenceClassification.from_pretrained(root / "rm", num_labels=1, pad_token_id=pad).eval()
        self.reward_model.requires_grad_(False)
        for model in (self.actor, self.critic):
            disable_dropout(model)
        self.actor_optimizer = torch.optim.AdamW(self.actor.parameters(), lr=self.ppo.actor_lr, fused=True)
        self.critic_optimizer = torch.optim.AdamW(self.critic.parameters(), lr=self.ppo.critic_lr, fused=True)

    def step(self, model, optimizer, loss) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), self.ppo.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def iteration(self, prompts: list[str], ptx_batches: list[dict]) -> None:
        ppo, T = self.ppo, self.ppo.max_new_tokens
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
        self.actor.eval()
        with torch.no_grad():
            output = self.actor.generate(**encoded, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=T, min_new_tokens=T,
                                         pad_token_id=self.tokenizer.pad_token_id, output_logits=True, return_dict_in_generate=True)
            sequences = output.sequences
            mask = torch.cat([encoded["attention_mask"], torch.ones_like(sequences[:, -T:])], dim=1)
            responses = sequences[:, -T:]
            old_logprobs = token_logprobs(torch.stack(output.logits, dim=1).float(), responses)
            ref_logprobs = token_logprobs(self.reference(input_ids=sequences, attention_mask=mask).logits[:, -T - 1 : -1].float(), responses)
            self.reward_model(input_ids=sequences, attention_mask=mask)
            old_values = self.critic(input_ids=sequences, attention_mask=mask).logits.float().expand(-1, T)
        # the advantage estimate is a few element-wise ops; any fixed tensor costs the steps the same
        advantages, returns = old_logprobs - ref_logprobs, torch.zeros_like(old_values)
        response_mask = torch.ones_like(responses, dtype=torch.bool)
        self.actor.train()
        for epoch in range(ppo.ppo_epochs):
            for m, index in enumerate(torch.randperm(len(prompts)).split(self.minibatch_size)):
                logits = self.actor(input_ids=sequences[index], attention_mask=mask[index]).logits[:, -T - 1 : -1].float()
                loss, _ = policy_loss(token_logprobs(logits, responses[index]), old_logprobs[index], advantages[index], response_mask[index])
                if ptx_batches:
                    batch = ptx_batches[epoch * ppo.minibatches + m]
                    lm = self.actor(**batch).logits[:, :-1].float()
                    targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
                    loss = loss + ppo.ptx_coef * torch.nn.functional.cross_entropy(lm.reshape(-1, lm.shape[-1]), targets.reshape(-1))
                self.step(self.actor, self.actor_optimizer, loss)
                values = self.critic(input_ids=sequences[index], attention_mask=mask[index]).logits.float().expand(-1, T)
                vf_loss, _ = value_loss(values, old_values[index], returns[index], response_mask[index])
                self.step(self.critic, self.critic_optimizer, vf_loss)


def workload_trainer(workload: Workload, root: Path, *overrides: str) -> PPOTrainer:
    """The real trainer on `workload`, its models built under `root` (in a started process group)."""
    world = TinyWorld()
    tokenizer = make_models(root, world, workload)
    config = load_config(None, [
        f"ppo.episodes_per_iteration={workload.episodes}", f"ppo.max_new_tokens={workload.new_tokens}", "ppo.fixed_length=true",
        f"ppo.minibatches={workload.minibatches}", f"ppo.ppo_epochs={workload.epochs}", *([] if workload.ptx else ["ppo.ptx_coef=0"]),
        *overrides,
    ])
    spec = PPOTrainingSpec(config=config, run_dir=str(root / "run"), stage="ppo", actor=str(root / "actor"), reference=str(root / "actor"),
                           reward_model=str(root / "rm"), critic=str(root / "rm") if config.ppo.uses_critic else None,
                           tokenizer=str(root / "actor"), prompts=prompt_pool(world, workload, tokenizer), validation_prompts=[],
                           pretraining=world.corpus(2000) if workload.ptx else [], tasks=None)
    return PPOTrainer(spec)


def run_workload(name: str, iterations: int) -> None:
    workload = WORKLOADS[name]
    start_group()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        trainer = workload_trainer(workload, root)
        config = trainer.config
        stage = trainer.actor.zero_optimization_stage()
        steps = trainer.steps_per_iteration

        def ours(iteration: int) -> tuple[float, float, float]:
            prompts = trainer.iteration_prompts(iteration)
            t0 = time.perf_counter()
            batch = trainer.generate(trainer.rollout, prompts, iteration)
            t1 = time.perf_counter()
            experience, _ = trainer.make_experience(batch, prompts)
            t2 = time.perf_counter()
            trainer.learn(experience, iteration)
            return t1 - t0, t2 - t1, time.perf_counter() - t2

        def plain(iteration: int) -> float:
            ptx = [trainer.pretraining_batch(iteration * steps + s) for s in range(steps)] if trainer.ptx_per_step else []
            started = time.perf_counter()
            floor.iteration(trainer.iteration_prompts(iteration), ptx)
            return time.perf_counter() - started

        for iteration in range(2):  # warm-up; the optimizer states exist from the first step on
            ours(iteration)
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        floor = PlainPPO(root, trainer)
        for iteration in range(2):
            plain(iteration)
        # the two alternate, iteration by iteration, so that a slower spell of the machine hits both
        phases, floor_times, ratios = {"generate": 0.0, "score": 0.0, "train": 0.0}, [], []
        for iteration in range(2, iterations + 2):
            split = ours(iteration)
            floor_times.append(plain(iteration))
            ratios.append(sum(split) / floor_times[-1])
            for phase, seconds in zip(phases, split):
                phases[phase] += seconds
        floor_seconds = sum(floor_times)
    real = sum(phases.values())
    print(f"workload {name}: {workload.description}; {workload.episodes} episodes x {workload.new_tokens} new tokens, "
          f"{workload.epochs} epochs x {workload.minibatches} minibatches, ptx {'on' if workload.ptx else 'off'}, "
          f"{torch.get_num_threads()} threads, deepspeed.zero_stage={config.deepspeed.zero_stage} (engines at stage {stage}), "
          f"{iterations} iterations")
    print(f"  iteration          {real / iterations:8.3f} s  (generate {phases['generate'] / real:.0%}, score {phases['score'] / real:.0%}, "
          f"train {phases['train'] / real:.0%})")
    print(f"  plain floor        {floor_seconds / iterations:8.3f} s")
    print(f"  iteration / floor  {statistics.median(ratios):8.3f}  (median of the {iterations} iterations' ratios; "
          f"{min(ratios):.3f} to {max(ratios):.3f})")
    print(f"  peak memory (RSS)  {peak_mib:8.0f} MiB")
    record("ppo_iteration", f"{name}: iteration", real / iterations, "s")
    record("ppo_iteration", f"{name}: iteration / plain floor", statistics.median(ratios), "ratio", "<= 1.1")
    record("ppo_iteration", f"{name}: peak memory (RSS)", peak_mib, "MiB", "<= 900" if name == "trl" else "")
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=[*WORKLOADS, "all"], default="all")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.workload == "all":
        in_fresh_processes("bench.ppo_iteration", "--workload", WORKLOADS, "--iterations", str(args.iterations),
                           "--threads", str(args.threads))
        return
    torch.set_num_threads(args.threads)
    run_workload(args.workload, args.iterations)


if __name__ == "__main__":
    main()
