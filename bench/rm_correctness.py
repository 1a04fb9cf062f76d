"""What holds the reward model back on correctness, from a finished run of the tiny world.

Over the candidate pairs of the run's rankings that differ in correctness (one answer right, one wrong),
how often each of these orders them right (a tie counts half):
- the annotators' labels (what the reward model is taught);
- the run's reward model (DIR/rm/model; its training prompts included, so an upper estimate for it);
- the SFT policy's log-likelihood of each response, log pi_SFT(y | x) summed over its tokens (EOS
  included): the quantity DPO's implicit reward compares, from a model no ranking has trained.

With `--train`, reward models trained here in one process from the SFT policy on the same rankings (a
tenth of the prompts held out, InstructGPT's K-way loss, the run's `rm` settings: AdamW with its beta2,
warmup and cosine decay, one epoch, a step of as many prompts as all the stage's workers take), judged
on the held-out prompts' correctness pairs and style-only pairs against the world's true order:
- `eos`: the pipeline's reward model, a scalar head read at the EOS token;
- `eos+loglik`: the same head plus a learnt scale (starting at 1) times the trunk's own LM
  log-likelihood of the response, so the score starts from what the policy already knows.

    python -m bench.rm_correctness --from runs/tiny [--train] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import random
from pathlib import Path

import torch

from bench import record
from common.config import load_config
from common.files import read_jsonl
from stages.core.functional import last_token_index, token_logprobs
from stages.core.ranking import ranking_loss
from stages.models.loading import load_tokenizer
from stages.models.reward_model import encode, load_reward_model, reward_text, score_texts
from tiny_world import Task, exact_match, true_score

VARIANTS = ("eos", "eos+loglik")


def ordered_right(better: float, worse: float) -> float:
    return 1.0 if better > worse else 0.5 if better == worse else 0.0


def correctness_pairs(ranking: dict) -> list[tuple[int, int]]:
    """(right, wrong) candidate indices of one ranking, every pair whose exact match differs."""
    task = task_of(ranking)
    right = [exact_match(task, c["text"]) for c in ranking["candidates"]]
    return [(i, j) if right[i] else (j, i) for i, j in itertools.combinations(range(len(right)), 2) if right[i] != right[j]]


def task_of(ranking: dict) -> Task:
    world_task = ranking["world_task"]
    return Task(world_task["family"], tuple(world_task["args"]), world_task["answer"])


def label_tiers(ranking: dict) -> list[list[int]]:
    """The ranking's tiers as candidate indices, best first."""
    index = {c["id"]: i for i, c in enumerate(ranking["candidates"])}
    return [[index[cid] for cid in tier] for tier in ranking["ranking"]]


def encode_responses(tokenizer, prompt: str, responses: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded reward texts of one prompt with a mask of the response tokens (EOS included)."""
    texts = [reward_text(prompt, r, tokenizer.eos_token) for r in responses]
    batch = encode(tokenizer, texts, max_length)
    # counted from each row's end: `encode` drops a long text's beginning, never the response
    prompt_length = len(tokenizer(prompt)["input_ids"])
    response_lengths = torch.tensor([len(ids) - prompt_length for ids in tokenizer(texts)["input_ids"]])
    lengths = batch["attention_mask"].sum(1)
    positions = torch.arange(batch["input_ids"].shape[1])
    batch["response_mask"] = (positions < lengths[:, None]) & (positions >= (lengths - response_lengths)[:, None])
    return batch


class LogLikelihoodRewardModel(torch.nn.Module):
    """A causal LM with a scalar head at the EOS token; `loglik_scale` None is the pipeline's reward model,
    a number adds that learnt scale times log pi(y | x) of the LM's own head."""

    def __init__(self, lm, loglik_scale: float | None):
        super().__init__()
        self.lm = lm
        self.score = torch.nn.Linear(lm.config.hidden_size, 1, bias=False)
        torch.nn.init.normal_(self.score.weight, std=lm.config.initializer_range)
        self.loglik_scale = None if loglik_scale is None else torch.nn.Parameter(torch.tensor(float(loglik_scale)))

    def forward(self, input_ids, attention_mask, response_mask):
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        head = self.score(out.hidden_states[-1]).squeeze(-1)
        scores = head.gather(1, last_token_index(attention_mask.bool()).unsqueeze(1)).squeeze(1)
        if self.loglik_scale is not None:
            logprobs = token_logprobs(out.logits[:, :-1].float(), input_ids[:, 1:])
            scores = scores + self.loglik_scale * torch.where(response_mask[:, 1:], logprobs, 0.0).sum(-1)
        return scores


def diagnose(source: Path, rankings: list[dict], max_length: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(source / "sft" / "model")
    policy = AutoModelForCausalLM.from_pretrained(source / "sft" / "model", local_files_only=True).eval()
    reward_model = load_reward_model(source / "rm" / "model")
    hits = {"labels": [], "reward model": [], "SFT log-likelihood": []}
    for ranking in rankings:
        pairs = correctness_pairs(ranking)
        if not pairs:
            continue
        responses = [c["text"] for c in ranking["candidates"]]
        tier_of = {i: t for t, tier in enumerate(label_tiers(ranking)) for i in tier}
        rewards = score_texts(reward_model, tokenizer, [reward_text(ranking["prompt"], r, tokenizer.eos_token) for r in responses], max_length)
        with torch.no_grad():
            batch = encode_responses(tokenizer, ranking["prompt"], responses, max_length)
            logits = policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
            loglik = torch.where(batch["response_mask"][:, 1:], token_logprobs(logits, batch["input_ids"][:, 1:]), 0.0).sum(-1).tolist()
        for right, wrong in pairs:
            if tier_of[right] != tier_of[wrong]:
                hits["labels"].append(float(tier_of[right] < tier_of[wrong]))
            hits["reward model"].append(ordered_right(rewards[right], rewards[wrong]))
            hits["SFT log-likelihood"].append(ordered_right(loglik[right], loglik[wrong]))
    return {name: sum(h) / len(h) for name, h in hits.items()}


def train_and_judge(source: Path, rankings: list[dict], variant: str, seed: int, max_length: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, get_cosine_with_min_lr_schedule_with_warmup

    run_config = load_config(source / "config.yaml")
    config = run_config.rm
    torch.manual_seed(seed)
    tokenizer = load_tokenizer(source / "sft" / "model")
    lm = AutoModelForCausalLM.from_pretrained(source / "sft" / "model", local_files_only=True)
    model = LogLikelihoodRewardModel(lm, loglik_scale=1.0 if variant == "eos+loglik" else None)
    prompts = sorted({r["prompt"] for r in rankings})
    random.Random(seed).shuffle(prompts)
    heldout = set(prompts[: len(prompts) // 10])
    train = [r for r in rankings if r["prompt"] not in heldout]
    test = list({r["prompt"]: r for r in rankings if r["prompt"] in heldout}.values())  # one ranking a prompt
    prompts_per_step = config.batch_size * config.grad_accum * run_config.ray.num_workers  # the stage's step
    steps = -(-len(train) // prompts_per_step)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, betas=(0.9, config.adam_beta2), weight_decay=config.weight_decay)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(optimizer, int(config.warmup_ratio * steps), steps, min_lr_rate=config.min_lr_ratio)
    random.Random(seed).shuffle(train)
    model.train()
    for start in range(0, len(train), prompts_per_step):
        rewards, tiers = [], []
        for ranking in train[start : start + prompts_per_step]:
            batch = encode_responses(tokenizer, ranking["prompt"], [c["text"] for c in ranking["candidates"]], max_length)
            rewards.append(model(**batch))
            tiers.append(label_tiers(ranking))
        loss = ranking_loss(rewards, tiers).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        schedule.step()
    model.eval()
    hits = {"correctness": [], "style": []}
    with torch.no_grad():
        for ranking in test:
            task, responses = task_of(ranking), [c["text"] for c in ranking["candidates"]]
            scores = model(**encode_responses(tokenizer, ranking["prompt"], responses, max_length)).tolist()
            truth = [true_score(task, r) for r in responses]
            for i, j in itertools.combinations(range(len(responses)), 2):
                if truth[i] != truth[j]:
                    better, worse = (i, j) if truth[i] > truth[j] else (j, i)
                    kind = "style" if exact_match(task, responses[i]) == exact_match(task, responses[j]) else "correctness"
                    hits[kind].append(ordered_right(scores[better], scores[worse]))
    return {kind: sum(h) / len(h) for kind, h in hits.items()}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rm_correctness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="a finished run directory (e.g. runs/tiny)")
    parser.add_argument("--train", action="store_true", help="also train the reward-model variants here (about a minute each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = Path(args.source)
    rankings = read_jsonl(source / "label" / "rankings.jsonl")
    max_length = load_config(source / "config.yaml").rm.max_length
    for name, value in diagnose(source, rankings, max_length).items():
        print(f"correctness pairs ordered right by the {name}: {value:.3f}")
        record("rm_correctness", f"correctness pairs: {name}", value, "accuracy", ">= 0.85" if name == "reward model" else "")
    if args.train:
        for variant in VARIANTS:
            accuracy = train_and_judge(source, rankings, variant, args.seed, max_length)
            print(f"trained here, {variant}: held-out correctness pairs {accuracy['correctness']:.3f}, style-only pairs {accuracy['style']:.3f}")
            for kind, value in accuracy.items():
                record("rm_correctness", f"{variant}: held-out {kind} pairs", value, "accuracy")


if __name__ == "__main__":
    main()
