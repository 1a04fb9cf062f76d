"""What holds the reward model back on correctness, from a finished run of the tiny world.

On the reward model's own held-out prompts (the stage's split: rm.heldout_fraction, run.seed), over the
candidate pairs that differ in correctness (one answer right, one wrong), how often each of these orders
them right (a tie counts half; the reward model's `rm/true_order_accuracy/correctness_pairs`):
- the annotators' labels (what the reward model is taught);
- the run's reward model (DIR/rm/model);
- the SFT policy's log-likelihood of each response, log pi_SFT(y | x) summed over its tokens (EOS
  included): the quantity DPO's implicit reward compares, from a model no ranking has trained.

With `--train`, reward models trained here in one process from the SFT policy on the stage's training
rankings (InstructGPT's K-way loss, the run's `rm` settings: AdamW with its beta2, warmup and cosine
decay, one epoch, a step of as many prompts as all the stage's workers take), judged on the same held-out
prompts' correctness pairs and style-only pairs against the world's true order:
- `eos`: the pipeline's reward model, a scalar head read at the EOS token;
- `eos+loglik`: the same head plus a learnt scale (starting at 1) times the trunk's own LM
  log-likelihood of the response, so the score starts from what the policy already knows.
`--seed` seeds the head's initialisation and the order of the training rankings.

    python -m bench.rm_correctness --from runs/tiny [--train] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch

from bench import record
from common.config import Config, load_config
from common.errors import InputError
from common.run_dir import RunDir
from stages.core.functional import last_token_index, token_logprobs
from stages.core.ranking import ranking_loss
from stages.data.datasets import world_tasks
from stages.data.rankings import RankingGroup, TrainingRankings, training_rankings
from stages.dpo.training import encode_completions, logprobs_of
from stages.models.loading import load_tokenizer
from stages.models.reward_model import load_reward_model, reward_text, score_texts
from stages.rm.evaluation import world_metrics

VARIANTS = ("eos", "eos+loglik")
CORRECTNESS, STYLE = "rm/true_order_accuracy/correctness_pairs", "rm/true_order_accuracy/style_pairs"


def encode_group(tokenizer, group: RankingGroup, max_length: int) -> dict[str, torch.Tensor]:
    """One prompt's candidates as DPO encodes completions: prompt + response + EOS rows and the response's mask."""
    return encode_completions(tokenizer, [group.prompt] * len(group.responses), list(group.responses), max_length)


def label_scores(group: RankingGroup) -> list[float]:
    """The labels as scores: minus each candidate's tier, so a better tier scores higher and a tier's candidates tie."""
    scores = [0.0] * len(group.responses)
    for tier, members in enumerate(group.tiers):
        for i in members:
            scores[i] = -float(tier)
    return scores


class LogLikelihoodRewardModel(torch.nn.Module):
    """A causal LM with a scalar head at the EOS token; `loglik_scale` None is the pipeline's reward model,
    a number adds that learnt scale times log pi(y | x) of the LM's own head."""

    def __init__(self, lm, loglik_scale: float | None):
        super().__init__()
        self.lm = lm
        self.score = torch.nn.Linear(lm.config.hidden_size, 1, bias=False)
        torch.nn.init.normal_(self.score.weight, std=lm.config.initializer_range)
        self.loglik_scale = None if loglik_scale is None else torch.nn.Parameter(torch.tensor(float(loglik_scale)))

    def forward(self, input_ids, attention_mask, completion_mask):
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        head = self.score(out.hidden_states[-1]).squeeze(-1)
        scores = head.gather(1, last_token_index(attention_mask.bool()).unsqueeze(1)).squeeze(1)
        if self.loglik_scale is not None:
            logprobs = token_logprobs(out.logits[:, :-1].float(), input_ids[:, 1:])
            scores = scores + self.loglik_scale * torch.where(completion_mask[:, 1:], logprobs, 0.0).sum(-1)
        return scores


def diagnose(source: Path, rankings: TrainingRankings, config: Config, tokenizer) -> dict[str, float]:
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(source / "sft" / "model", local_files_only=True).eval()
    reward_model = load_reward_model(source / "rm" / "model")
    heldout, max_length = rankings.heldout, config.rm.max_length
    scores = {"labels": [label_scores(g) for g in heldout], "reward model": [], "SFT log-likelihood": []}
    for group in heldout:
        texts = [reward_text(group.prompt, r, tokenizer.eos_token) for r in group.responses]
        scores["reward model"].append(score_texts(reward_model, tokenizer, texts, max_length))
        scores["SFT log-likelihood"].append(logprobs_of(policy, tokenizer, [(group.prompt, r) for r in group.responses],
                                                        max_length, batch_size=len(group.responses)))
    tasks = world_tasks(rankings.path)
    return {name: world_metrics(heldout, judged, tasks)[CORRECTNESS] for name, judged in scores.items()}


def train_and_judge(source: Path, rankings: TrainingRankings, config: Config, tokenizer, variant: str, seed: int) -> dict[str, float]:
    from transformers import AutoModelForCausalLM, get_cosine_with_min_lr_schedule_with_warmup

    section = config.rm
    torch.manual_seed(seed)
    lm = AutoModelForCausalLM.from_pretrained(source / "sft" / "model", local_files_only=True)
    model = LogLikelihoodRewardModel(lm, loglik_scale=1.0 if variant == "eos+loglik" else None)
    train = list(rankings.train)
    random.Random(seed).shuffle(train)
    prompts_per_step = section.batch_size * section.grad_accum * config.ray.num_workers  # the stage's step
    steps = -(-len(train) // prompts_per_step)
    optimizer = torch.optim.AdamW(model.parameters(), lr=section.lr, betas=(0.9, section.adam_beta2), weight_decay=section.weight_decay)
    schedule = get_cosine_with_min_lr_schedule_with_warmup(optimizer, int(section.warmup_ratio * steps), steps,
                                                           min_lr_rate=section.min_lr_ratio)
    model.train()
    for start in range(0, len(train), prompts_per_step):
        groups = train[start : start + prompts_per_step]
        rewards = [model(**encode_group(tokenizer, g, section.max_length)) for g in groups]
        loss = ranking_loss(rewards, [g.tiers for g in groups]).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), section.max_grad_norm)
        optimizer.step()
        schedule.step()
    model.eval()
    with torch.no_grad():
        scores = [model(**encode_group(tokenizer, g, section.max_length)).tolist() for g in rankings.heldout]
    metrics = world_metrics(rankings.heldout, scores, world_tasks(rankings.path))
    return {"correctness": metrics[CORRECTNESS], "style": metrics[STYLE]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rm_correctness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", required=True, help="a finished run directory (e.g. runs/tiny)")
    parser.add_argument("--train", action="store_true", help="also train the reward-model variants here (about 30 s each)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    source = Path(args.source)
    # checked before any model loads: a finished tiny-world run with the label stage's rankings
    missing = [str(source / p) for p in ("config.yaml", "sft/model", "rm/model") if not (source / p).exists()]
    if missing:
        raise SystemExit(f"bench.rm_correctness: {source} is not a finished run: missing {', '.join(missing)}")
    config = load_config(source / "config.yaml")
    if config.data.rankings is not None:
        raise SystemExit(f"bench.rm_correctness: {source} trained its reward model on data.rankings "
                         f"({config.data.rankings.path}); correctness is known only for the tiny world's own rankings")
    tokenizer = load_tokenizer(source / "sft" / "model")
    try:
        rankings = training_rankings(config, RunDir(source), tokenizer, "rm_correctness")
    except InputError as error:
        raise SystemExit(f"bench.rm_correctness: {error}") from None
    if not rankings.heldout:
        raise SystemExit(f"bench.rm_correctness: {source}'s reward model held out no prompt (rm.heldout_fraction is 0)")
    for name, value in diagnose(source, rankings, config, tokenizer).items():
        print(f"held-out correctness pairs ordered right by the {name}: {value:.3f}")
        record("rm_correctness", f"correctness pairs: {name}", value, "accuracy", ">= 0.85" if name == "reward model" else "")
    if args.train:
        for variant in VARIANTS:
            accuracy = train_and_judge(source, rankings, config, tokenizer, variant, args.seed)
            print(f"trained here, {variant}: held-out correctness pairs {accuracy['correctness']:.3f}, style-only pairs {accuracy['style']:.3f}")
            for kind, value in accuracy.items():
                record("rm_correctness", f"{variant}: held-out {kind} pairs", value, "accuracy")


if __name__ == "__main__":
    main()
