"""The DPO stage's pieces in one process: the prompt + completion encoding, the reference's log-probs, and HF's
Trainer with the K-way DPO loss learning a ranking from a random policy (no Ray, no DeepSpeed: the stage's
run under both is in tests/e2e)."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, TrainingArguments

from stages.core.functional import token_logprobs
from stages.dpo.training import DPOCollator, RankingDPOTrainer, encode_completions, logprobs_of, with_reference


def test_encoding_masks_the_prompt_and_keeps_the_completion_end(tokenizer):
    batch = encode_completions(tokenizer, ["ab", "abcd"], ["xyz", "q"], max_length=6)
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    ids = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert batch["input_ids"][0].tolist() == ids("abxyz") + [eos]
    assert batch["input_ids"][1].tolist() == ids("abcdq") + [eos]
    assert batch["completion_mask"][0].tolist() == [False, False, True, True, True, True]
    assert batch["completion_mask"][1].tolist() == [False] * 4 + [True, True]
    long = encode_completions(tokenizer, ["abcdefgh"], ["xy"], max_length=5)
    assert long["input_ids"][0].tolist() == ids("ghxy") + [eos] and long["completion_mask"][0].sum() == 3
    short = encode_completions(tokenizer, ["abcdefgh", "a"], ["xy", "b"], max_length=16)
    assert short["input_ids"][1].tolist()[3:] == [pad] * 8 and short["attention_mask"][1].sum() == 3


def test_reference_logprobs_are_the_completion_tokens_summed(ppo_models, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(ppo_models / "actor").eval()
    [summed] = logprobs_of(model, tokenizer, [("ab", "xyz")], max_length=32, batch_size=4)
    ids = torch.tensor([tokenizer("abxyz", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]])
    with torch.no_grad():
        per_token = token_logprobs(model(ids).logits[:, :-1], ids[:, 1:])
    assert summed == pytest.approx(per_token[0, 1:].sum().item(), abs=1e-5)  # x, y, z and the EOS


def ranked_groups(count):
    """Prompts whose three responses are ranked by a rule a policy can learn: the one with more 'z' is better."""
    groups = []
    for i in range(count):
        prompt = f"{'abc'[i % 3]}{i}:"
        groups.append({"prompt": prompt, "responses": ["zz", "yz", "yy"], "tiers": [[0], [1], [2]]})
    return groups


@pytest.mark.parametrize("loss", ["all_pairs", "plackett_luce"])
def test_dpo_learns_a_ranking_from_the_reference_up(ppo_models, tokenizer, tmp_path, loss):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(ppo_models / "actor")
    groups = ranked_groups(8)
    pairs = [(g["prompt"], r) for g in groups for r in g["responses"]]
    reference = logprobs_of(model.eval(), tokenizer, pairs, 32, 8)
    records = with_reference(groups, reference)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=30, learning_rate=1e-2,
                             use_cpu=True, report_to=[], remove_unused_columns=False, logging_steps=1, save_strategy="no",
                             lr_scheduler_type="constant")
    trainer = RankingDPOTrainer(model=model.train(), args=args, train_dataset=Dataset.from_list(records),
                                data_collator=DPOCollator(tokenizer, 32), beta=0.5, loss=loss, ptx_coef=0.0)
    first = trainer.compute_loss(model, DPOCollator(tokenizer, 32)(records[:4]))
    # at the reference every implicit reward is 0: log 2 per pair, log 3! = log 6 for Plackett-Luce's three terms
    assert first.item() == pytest.approx(math.log(2) if loss == "all_pairs" else math.log(6), abs=1e-5)
    trainer.train()
    logged = [r for r in trainer.state.log_history if "accuracy" in r]
    assert logged[-1]["accuracy"] == 1.0 and logged[-1]["loss"] < first.item() / 2
    after = logprobs_of(model.eval(), tokenizer, pairs, 32, 8)
    margins = [a - r for a, r in zip(after, reference)]
    assert all(margins[3 * i] > margins[3 * i + 1] > margins[3 * i + 2] for i in range(len(groups)))


def test_ptx_joins_the_dpo_step(ppo_models, tokenizer, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(ppo_models / "actor")
    records = [{**g, "ptx": ["the quick brown fox"]} for g in with_reference(ranked_groups(2), [0.0] * 6)]
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[], remove_unused_columns=False)
    batch = DPOCollator(tokenizer, 32)(records)
    assert batch["ptx_input_ids"].shape[0] == 2
    losses = {}
    for coef in (0.0, 2.0):
        trainer = RankingDPOTrainer(model=model, args=args, train_dataset=Dataset.from_list(records),
                                    data_collator=DPOCollator(tokenizer, 32), beta=0.1, loss="all_pairs", ptx_coef=coef)
        losses[coef] = trainer.compute_loss(model, batch).item()
    assert losses[2.0] - losses[0.0] == pytest.approx(2.0 * trainer._recorded["ptx_loss"][-1], rel=1e-5)


def test_dpo_with_lora_trains_the_adapters_only(ppo_models, tokenizer, tmp_path):
    from peft import get_peft_model

    from common.config import LoraSection
    from stages.models.loading import peft_config

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(ppo_models / "actor")
    groups = ranked_groups(4)
    reference = logprobs_of(base.eval(), tokenizer, [(g["prompt"], r) for g in groups for r in g["responses"]], 32, 8)
    model = get_peft_model(base, peft_config(LoraSection(r=4, target_modules=["c_attn"])))
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=10, learning_rate=1e-2,
                             use_cpu=True, report_to=[], remove_unused_columns=False, logging_steps=1, save_strategy="no")
    trainer = RankingDPOTrainer(model=model.train(), args=args, train_dataset=Dataset.from_list(with_reference(groups, reference)),
                                data_collator=DPOCollator(tokenizer, 32), beta=0.5, loss="all_pairs", ptx_coef=0.0)
    trainer.train()
    logged = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    assert logged[-1] < logged[0] < math.log(2) + 1e-3  # the adapters start at B = 0: the policy is its reference
    assert all(torch.equal(p, frozen[n]) for n, p in model.named_parameters() if not p.requires_grad)
