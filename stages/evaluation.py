"""Generation and the tiny world's held-out metrics, shared by the stages that report them."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.config import WorldSection
from stages.data import make_world
from tiny_world import Example, exact_match, true_score

MAX_NEW_TOKENS = 32


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int = MAX_NEW_TOKENS, do_sample: bool = False,
             batch_size: int = 64, temperature: float = 1.0) -> list[str]:
    """Responses to `prompts` (greedy, or sampled at `temperature`), cut at EOS and at the first
    newline (answers are one line)."""
    tokenizer.padding_side = "left"
    model.eval()
    responses = []
    for start in range(0, len(prompts), batch_size):
        batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True)
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
        responses.extend(text.split("\n", 1)[0].strip() for text in texts)
    return responses


def heldout_report(model_dir: str | Path, world_section: WorldSection, tokenizer_dir: str | Path | None = None) -> dict[str, float]:
    """Greedy held-out exact match and true score of a model on the tiny world: over held-out
    instances of the training families (the headline), per family, and over held-out families."""
    from transformers import AutoModelForCausalLM

    from stages.modeling import load_tokenizer

    world = make_world(world_section)
    examples: list[Example] = world.heldout_examples(world_section.eval_per_family)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    responses = generate(model, load_tokenizer(tokenizer_dir or model_dir), [e.prompt for e in examples])
    by_family: dict[str, list[tuple[bool, float]]] = {}
    for example, response in zip(examples, responses):
        by_family.setdefault(example.task.family, []).append((exact_match(example.task, response), true_score(example.task, response)))

    def mean(families, index):
        values = [pair[index] for f in families for pair in by_family[f]]
        return sum(values) / len(values) if values else float("nan")

    report = {
        "heldout_exact_match": mean(world.train_families, 0),
        "heldout_true_score": mean(world.train_families, 1),
        "heldout_family_exact_match": mean(world.heldout_families, 0),
    }
    report.update({f"exact_match/{family}": mean([family], 0) for family in by_family})
    return report


@torch.no_grad()
def evaluate_policy(policy, reference, tokenizer, examples: list[Example], corpus: list[str], seed: int = 0) -> dict:
    """One policy on the tiny world's `examples`: per example, the greedy response's true score, exact
    match, Natural-Instructions EM and ROUGE-L against the answer, and length in words; over sampled
    responses, the true score and the sequence KL to `reference`; the LM loss on `corpus` (held-out
    pretraining text: the alignment tax)."""
    from stages.eval_metrics import exact_match as ni_exact_match
    from stages.eval_metrics import rouge_l
    from stages.policy import response_logits, token_logprobs
    from stages.rollout import HFRollout

    prompts = [e.prompt for e in examples]
    greedy = generate(policy, tokenizer, prompts)
    torch.manual_seed(seed)
    batch = HFRollout(policy, tokenizer, MAX_NEW_TOKENS).generate(prompts)
    T = batch.response_mask.shape[1]
    responses = torch.where(batch.response_mask, batch.sequences[:, batch.prompt_length :], tokenizer.pad_token_id)
    sampled = [t.split("\n", 1)[0].strip() for t in tokenizer.batch_decode(responses, skip_special_tokens=True)]
    ref_logprobs = token_logprobs(response_logits(reference, batch.sequences, batch.attention_mask, T), responses)
    kl = torch.where(batch.response_mask, batch.logprobs - ref_logprobs, 0.0).sum(-1)
    return {
        "family": [e.task.family for e in examples],
        "true_score": [true_score(e.task, r) for e, r in zip(examples, greedy)],
        "exact_match": [float(exact_match(e.task, r)) for e, r in zip(examples, greedy)],
        "ni_exact_match": [ni_exact_match(r, [e.task.answer]) for e, r in zip(examples, greedy)],
        "rouge_l": [rouge_l(r, [e.task.answer]) if r.strip() else 0.0 for e, r in zip(examples, greedy)],
        "length": [len(r.split()) for r in greedy],
        "sampled_true_score": [true_score(e.task, r) for e, r in zip(examples, sampled)],
        "kl_to_reference": kl.tolist(),
        "lm_loss": evaluate_lm_loss(policy, tokenizer, corpus),
    }


def _mean(values) -> float:
    return sum(values) / len(values) if values else float("nan")


@torch.no_grad()
def policy_report(model_dir: str | Path, reference_dir: str | Path, world_section: WorldSection, seed: int = 0,
                  corpus_docs: int = 256) -> dict[str, float]:
    """What RLHF did to a policy, on the tiny world's held-out prompts of the training families (never
    trained on): greedy exact match and true score (heldout_report), sampled true score, the sequence
    KL to the reference, and the LM loss on held-out pretraining text of the policy and the reference."""
    from transformers import AutoModelForCausalLM

    from stages.modeling import load_tokenizer

    world = make_world(world_section)
    examples = [e for e in world.heldout_examples(world_section.eval_per_family) if e.task.family in world.train_families]
    tokenizer = load_tokenizer(model_dir)
    policy = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()
    reference = AutoModelForCausalLM.from_pretrained(str(reference_dir), local_files_only=True).eval()
    corpus = world.corpus(corpus_docs, split="heldout")
    result = evaluate_policy(policy, reference, tokenizer, examples, corpus, seed)
    report = heldout_report(model_dir, world_section)
    report.update({
        "heldout_sampled_true_score": _mean(result["sampled_true_score"]),
        "heldout_kl_to_reference": _mean(result["kl_to_reference"]),
        "pretrain_heldout_lm_loss": result["lm_loss"],
        "reference/pretrain_heldout_lm_loss": evaluate_lm_loss(reference, tokenizer, corpus),
    })
    return report


@torch.no_grad()
def evaluate_lm_loss(model, tokenizer, corpus: list[str]) -> float:
    from stages.policy import lm_loss

    tokenizer.padding_side = "right"
    batches = [tokenizer(corpus[i : i + 64], return_tensors="pt", padding=True, truncation=True, max_length=128)
               for i in range(0, len(corpus), 64)]
    return sum(lm_loss(model, b["input_ids"], b["attention_mask"]).item() for b in batches) / len(batches)
