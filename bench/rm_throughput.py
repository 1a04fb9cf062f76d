"""Reward-model training throughput, in comparisons per second: InstructGPT's grouping (one prompt's
K candidates form one batch element, all C(K,2) pairs scored from K forward passes) against the naive
expansion into independent pairs (2 forward passes per comparison), at K = 4 and K = 9.

Same model (the tiny world's GPT-2), same sequences per optimizer step, same loss code
(stages.reward_model.sequence_scores + stages.rm_math.ranking_loss), one process.

    python -m bench.rm_throughput [--steps 20] [--sequences-per-step 36] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import time
from itertools import combinations

import torch
from transformers import AutoModelForSequenceClassification, GPT2Config

from bench import record
from common.config import TINY_GPT2
from stages.core.ranking import ranking_loss
from stages.models.loading import train_char_tokenizer
from stages.models.reward_model import encode, reward_text, sequence_scores
from tiny_world import TinyWorld


def make_groups(world: TinyWorld, k: int, n: int) -> list[tuple[list[str], list[list[int]]]]:
    """n prompts, each with k demonstrator responses ranked in k tiers (order does not affect speed)."""
    rng = random.Random(0)
    groups = []
    for example in world.train_examples(n, "bench"):
        texts = [reward_text(example.prompt, world.demonstrate(example, rng), "<eos>") for _ in range(k)]
        groups.append((texts, [[i] for i in range(k)]))
    return groups


def batches(groups, k: int, sequences_per_step: int, grouped: bool):
    """(texts, tiers, comparisons) per optimizer step."""
    if grouped:
        per_step = max(1, sequences_per_step // k)
        for start in range(0, len(groups), per_step):
            chunk = groups[start : start + per_step]
            yield [t for texts, _ in chunk for t in texts], [tiers for _, tiers in chunk], len(chunk) * k * (k - 1) // 2
    else:
        pairs = [([texts[w], texts[l]], [[0], [1]]) for texts, _ in groups for w, l in combinations(range(k), 2)]
        per_step = max(1, sequences_per_step // 2)
        for start in range(0, len(pairs), per_step):
            chunk = pairs[start : start + per_step]
            yield [t for texts, _ in chunk for t in texts], [tiers for _, tiers in chunk], len(chunk)


def measure(model, tokenizer, groups, k: int, sequences_per_step: int, grouped: bool, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    done, started = 0, None
    for step, (texts, tiers, comparisons) in enumerate(batches(groups, k, sequences_per_step, grouped)):
        if step == 2:  # two warm-up steps
            started, done = time.perf_counter(), 0
        if step == steps + 2:
            break
        batch = encode(tokenizer, texts, 128)
        scores = sequence_scores(model, batch["input_ids"], batch["attention_mask"])
        sizes = [sum(len(tier) for tier in ranking) for ranking in tiers]
        loss = ranking_loss(list(torch.split(scores, sizes)), tiers).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        done += comparisons
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sequences-per-step", type=int, default=36)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    world = TinyWorld()
    tokenizer = train_char_tokenizer([world.alphabet(), *world.corpus(100)])
    init = {k: v for k, v in TINY_GPT2.items() if k != "model_type"}
    print(f"{'K':>3} {'grouped cmp/s':>14} {'naive pairs cmp/s':>18} {'speed-up':>9}")
    for k in (4, 9):
        groups = make_groups(world, k, n=200)
        rates = []
        for grouped in (True, False):
            torch.manual_seed(0)
            config = GPT2Config(vocab_size=len(tokenizer), num_labels=1, pad_token_id=tokenizer.pad_token_id,
                                bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, **init)
            model = AutoModelForSequenceClassification.from_config(config)
            rates.append(measure(model, tokenizer, groups, k, args.sequences_per_step, grouped, args.steps))
        print(f"{k:>3} {rates[0]:>14.1f} {rates[1]:>18.1f} {rates[0] / rates[1]:>8.1f}x")
        record("rm_throughput", f"K={k}: grouped comparisons/s", rates[0], "comparisons/s")
        record("rm_throughput", f"K={k}: speed-up over independent pairs", rates[0] / rates[1], "x", ">= 4" if k == 9 else "")


if __name__ == "__main__":
    main()
