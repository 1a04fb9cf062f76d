"""Generation and the tiny world's held-out metrics, shared by the stages that report them."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from common.config import MixtureSection, WorldSection
from stages.data.datasets import make_world
from tiny_world import Example, TinyWorld, exact_match, true_score

MAX_NEW_TOKENS = 32


def first_line(text: str) -> str:
    """A tiny-world answer: the response up to its first newline."""
    return text.split("\n", 1)[0].strip()


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = MAX_NEW_TOKENS, do_sample: bool = False,
             batch_size: int = 64, temperature: float = 1.0, one_line: bool = True) -> list[str]:
    """Responses to `prompts` (greedy, or sampled at `temperature`), cut at EOS, and with `one_line`
    at the first newline (a tiny-world answer is one line)."""
    model.eval()
    responses = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                          padding_side="left").to(model.device)
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_k=0 if do_sample else None,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        texts = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        responses.extend(first_line(text) if one_line else text.strip() for text in texts)
    return responses


def world_prompts(examples: list[Example], world: TinyWorld, mixture: MixtureSection | None, tokenizer) -> list[str]:
    """The tiny world's evaluation prompts, asked in the style SFT trained on (data.mixture)."""
    from stages.data.datasets import token_counter
    from stages.data.mixture import world_eval_prompts

    return world_eval_prompts(examples, mixture, world, token_counter(tokenizer))


def heldout_report(model_dir: str | Path, world_section: WorldSection, tokenizer_dir: str | Path | None = None,
                   mixture: MixtureSection | None = None, device: torch.device | str = "cpu") -> dict[str, float]:
    """Greedy held-out exact match and true score of a model on the tiny world: over held-out
    instances of the training families (the headline), per family, and over held-out families
    (with the Natural-Instructions EM and ROUGE-L there)."""
    from stages.models.loading import load_policy, load_tokenizer

    world = make_world(world_section)
    examples: list[Example] = world.heldout_examples(world_section.eval_per_family)
    model = load_policy(model_dir).to(device)
    tokenizer = load_tokenizer(tokenizer_dir or model_dir)
    scores = world_scores(examples, {"greedy": generate(model, tokenizer, world_prompts(examples, world, mixture, tokenizer))})

    def mean(families, key: str) -> float:
        return _mean([value for family, value in zip(scores["family"], scores[key]) if family in families])

    report = {
        "heldout_exact_match": mean(world.train_families, "exact_match"),
        "heldout_true_score": mean(world.train_families, "true_score"),
        "heldout_family_exact_match": mean(world.heldout_families, "exact_match"),
        "heldout_family_ni_exact_match": mean(world.heldout_families, "ni_exact_match"),
        "heldout_family_rouge_l": mean(world.heldout_families, "rouge_l"),
    }
    report.update({f"exact_match/{family}": mean([family], "exact_match") for family in dict.fromkeys(scores["family"])})
    return report


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


@torch.no_grad()
def respond(policy, reference, tokenizer, prompts: list[str], seed: int, max_new_tokens: int = MAX_NEW_TOKENS,
            one_line: bool = False, batch_size: int = 64, rollout_for=None) -> dict[str, list]:
    """A policy's responses to `prompts`: the greedy one (what the report scores) and one sampled at
    temperature 1 (seeded), with the sampled sequence's KL to `reference`: the sum over its tokens of
    log pi(y_t) - log pi_ref(y_t). `rollout_for(greedy)` gives what generates (default: HF generate on
    the policy; vLLM engines serving it with rollout.engine vllm, whose log-probs are then recomputed by
    the policy's own forward)."""
    from stages.core.functional import token_logprobs
    from stages.models.forward import response_logits
    from stages.scoring.rollout import HFRollout

    rollout_for = rollout_for or (lambda greedy: HFRollout(policy, tokenizer, max_new_tokens, greedy=greedy))
    rollouts = {True: rollout_for(True), False: rollout_for(False)}
    result: dict[str, list] = {"greedy": [], "sampled": [], "kl_to_reference": []}
    torch.manual_seed(seed)
    greedy_seconds = 0.0
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        for key, greedy in (("greedy", True), ("sampled", False)):
            started = time.perf_counter()
            batch = rollouts[greedy].generate(chunk).to(reference.device)
            greedy_seconds += (time.perf_counter() - started) if greedy else 0.0
            tokens = torch.where(batch.response_mask, batch.sequences[:, batch.prompt_length :], tokenizer.pad_token_id)
            texts = tokenizer.batch_decode(tokens, skip_special_tokens=True)
            result[key].extend(first_line(t) if one_line else t.strip() for t in texts)
        T = tokens.shape[1]
        logprobs = batch.logprobs
        if batch.rollout_logprobs is not None:  # another sampler's numerics: the policy's own log-probs
            logprobs = token_logprobs(response_logits(policy, batch.sequences, batch.attention_mask, T), tokens)
        reference_logprobs = token_logprobs(response_logits(reference, batch.sequences, batch.attention_mask, T), tokens)
        kl = torch.where(batch.response_mask, logprobs - reference_logprobs, 0.0).sum(-1)
        result["kl_to_reference"].extend(kl.tolist())
    result["length"] = [len(r.split()) for r in result["greedy"]]
    result["decode_ms"] = 1000 * greedy_seconds / max(1, len(prompts))
    return result


def respond_greedy(policy, tokenizer, prompts: list[str], max_new_tokens: int = MAX_NEW_TOKENS,
                   one_line: bool = False) -> dict:
    """The greedy responses alone, for a policy without an autoregressive likelihood to compare with SFT's
    (cmlm), or against a reference that is no plain causal LM; with the decoding time per response."""
    started = time.perf_counter()
    greedy = generate(policy, tokenizer, prompts, max_new_tokens, one_line=one_line)
    return {"greedy": greedy, "length": [len(r.split()) for r in greedy],
            "decode_ms": 1000 * (time.perf_counter() - started) / max(1, len(prompts))}


def world_scores(examples: list[Example], responses: dict[str, list]) -> dict[str, list]:
    """Per example, against the tiny world's task: the greedy response's true score, exact match,
    Natural-Instructions EM and ROUGE-L against the answer, and the sampled response's true score
    (when there is one)."""
    from stages.scoring.metrics import ni_exact_match, rouge_l

    greedy = responses["greedy"]
    scores = {
        "family": [e.task.family for e in examples],
        "true_score": [true_score(e.task, r) for e, r in zip(examples, greedy)],
        "exact_match": [float(exact_match(e.task, r)) for e, r in zip(examples, greedy)],
        "ni_exact_match": [ni_exact_match(r, [e.task.answer]) for e, r in zip(examples, greedy)],
        "rouge_l": [rouge_l(r, [e.task.answer]) if r.strip() else 0.0 for e, r in zip(examples, greedy)],
    }
    if "sampled" in responses:
        scores["sampled_true_score"] = [true_score(e.task, r) for e, r in zip(examples, responses["sampled"])]
    return scores


@torch.no_grad()
def judge(reward_model_dir: str | Path, prompts: list[str], responses_by_policy: dict[str, list[str]],
          max_length: int, device: torch.device | str = "cpu") -> dict[str, list[float]]:
    """Each policy's responses scored by a reward model (with its own tokenizer, reward_bias added), on `device`."""
    from stages.models.loading import load_tokenizer
    from stages.models.reward_model import (
        BIAS_KEY,
        load_reward_model,
        reward_text,
        score_texts,
    )

    model = load_reward_model(reward_model_dir).to(device)
    tokenizer = load_tokenizer(reward_model_dir, "reward model")
    bias = getattr(model.config, BIAS_KEY, None) or 0.0
    scores = {}
    for name, responses in responses_by_policy.items():
        texts = [reward_text(p, r, tokenizer.eos_token) for p, r in zip(prompts, responses)]
        scores[name] = [s + bias for s in score_texts(model, tokenizer, texts, max_length)]
    return scores


@torch.no_grad()
def evaluate_lm_loss(model, tokenizer, corpus: list[str]) -> float:
    from stages.models.forward import lm_loss

    batches = [tokenizer(corpus[i : i + 64], return_tensors="pt", padding=True, padding_side="right", truncation=True,
                         max_length=128)
               for i in range(0, len(corpus), 64)]
    return sum(lm_loss(model, b["input_ids"], b["attention_mask"]).item() for b in batches) / len(batches)
