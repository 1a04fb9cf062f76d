"""DPO on the Ray Train workers: HF's Trainer (its DeepSpeed integration, checkpoints and resume) with the K-way
grouping written by hand, as in the reward stage: a batch element is one prompt's K responses, and the loss is
DPO's over its ranking (stages.core.dpo). TRL's DPOTrainer takes independent pairs only, which would re-encode
each response K - 1 times and weigh a K = 9 prompt six times a K = 4 one.

The reference's log-probs are computed once, before training, every rank its share, and kept in the stage
directory (a resumed or restarted stage reads them back): the frozen model is never held beside the policy.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch

from common.config import Config
from common.files import atomic_write_json
from common.run_dir import RunDir
from stages.core.dpo import dpo_loss, implicit_rewards
from stages.models.forward import completion_logprobs, lm_loss
from stages.runtime.checkpoints import barrier
from stages.runtime.hf_trainer import (
    LoggedMeans,
    StageFiles,
    on_all_ranks,
    resume_point,
    save_final,
    training_arguments,
)
from stages.runtime.ray_workers import run_on_workers

STAGE = "dpo"
REFERENCE_FILE = "reference_logprobs.json"
HELDOUT_FILE = "heldout.json"
PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class DPOTrainingSpec:
    """Everything a worker needs; pickled to the Ray Train workers."""

    config: Config
    run_dir: str
    init_model: str
    reference_model: str
    tokenizer: str
    train_groups: list[dict]  # {"prompt", "responses": K texts without EOS, "tiers": best first}
    heldout_groups: list[dict]
    pretraining: list[str]  # documents for the ptx term (empty without it)


def encode_completions(tokenizer, prompts: list[str], completions: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded prompt + completion + EOS rows, tokenized as the rollout sees them (the prompt with the
    tokenizer's special tokens, the completion without), and the completion's mask. A row too long loses its
    prompt's beginning, never the completion's end."""
    prompt_ids = tokenizer(prompts)["input_ids"]
    completion_ids = tokenizer(completions, add_special_tokens=False)["input_ids"]
    rows = [(p + c + [tokenizer.eos_token_id])[-max_length:] for p, c in zip(prompt_ids, completion_ids)]
    completion_lengths = [min(len(c) + 1, max_length) for c in completion_ids]
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (row, length) in enumerate(zip(rows, completion_lengths)):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention_mask[i, : len(row)] = 1
        completion_mask[i, len(row) - length : len(row)] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "completion_mask": completion_mask}


class DPOCollator:
    """A batch of prompt groups as one padded batch of prompt + response rows, with the group sizes, tiers and
    reference log-probs, and the groups' pretraining documents (ptx) as a second batch."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, max_length

    def __call__(self, groups: list[dict]) -> dict:
        prompts = [g["prompt"] for g in groups for _ in g["responses"]]
        batch = encode_completions(self.tokenizer, prompts, [r for g in groups for r in g["responses"]], self.max_length)
        batch.update(group_sizes=[len(g["responses"]) for g in groups], tiers=[g["tiers"] for g in groups],
                     reference_logprobs=torch.tensor([x for g in groups for x in g["reference_logprobs"]]))
        documents = [d for g in groups for d in g.get("ptx", [])]
        if documents:
            encoded = self.tokenizer(documents, return_tensors="pt", padding=True, padding_side="right", truncation=True,
                                     max_length=self.max_length)
            batch.update(ptx_input_ids=encoded["input_ids"], ptx_attention_mask=encoded["attention_mask"])
        return batch


class RankingDPOTrainer(LoggedMeans):
    """HF Trainer whose loss is DPO's on K-way rankings (+ ptx_coef x the LM loss on pretraining text in the same
    step); logs the pairwise accuracy of the implicit reward and the ptx loss beside the loss."""

    def __init__(self, *args, beta: float, loss: str, ptx_coef: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta, self.loss_kind, self.ptx_coef = beta, loss, ptx_coef

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        logprobs = completion_logprobs(model, inputs["input_ids"], inputs["attention_mask"], inputs["completion_mask"])
        rewards = implicit_rewards(logprobs, inputs["reference_logprobs"].to(logprobs.device), self.beta)
        loss, accuracy = dpo_loss(list(torch.split(rewards, inputs["group_sizes"])), inputs["tiers"], self.loss_kind)
        self.record("accuracy", accuracy.item())
        self.record("implicit_reward", rewards.detach().mean().item())
        if self.ptx_coef > 0:
            ptx = lm_loss(model, inputs["ptx_input_ids"], inputs["ptx_attention_mask"])
            self.record("ptx_loss", ptx.item())
            loss = loss + self.ptx_coef * ptx
        return (loss, {"rewards": rewards}) if return_outputs else loss


def train_dpo(spec: DPOTrainingSpec) -> None:
    run_dir = RunDir(spec.run_dir)
    run_on_workers(spec.config.ray, spec.config.run.torch_threads, _worker, spec, name=STAGE, storage=run_dir.stage_dir(STAGE) / "ray")


@torch.no_grad()
def logprobs_of(model, tokenizer, pairs: list[tuple[str, str]], max_length: int, batch_size: int) -> list[float]:
    """log pi(response | prompt), summed over the response and its EOS, of each (prompt, response)."""
    result: list[float] = []
    for start in range(0, len(pairs), batch_size):
        prompts, responses = zip(*pairs[start : start + batch_size])
        batch = encode_completions(tokenizer, list(prompts), list(responses), max_length)
        result.extend(completion_logprobs(model, **batch).float().tolist())
    return result


def reference_logprobs(spec: DPOTrainingSpec, tokenizer, device: torch.device) -> list[float]:
    """The reference's log-prob of every response of the train and held-out groups, in order: computed once on
    every rank's share and kept in DIR/dpo/reference_logprobs.json, keyed by what they were computed from."""
    from transformers import AutoModelForCausalLM

    from stages.models.loading import model_kwargs

    config, section = spec.config, spec.config.dpo
    pairs = [(g["prompt"], r) for g in spec.train_groups + spec.heldout_groups for r in g["responses"]]
    key = hashlib.sha256(json.dumps([spec.reference_model, section.max_length, config.deepspeed.precision, pairs]).encode()).hexdigest()
    cache = RunDir(spec.run_dir).stage_dir(STAGE) / REFERENCE_FILE
    cached = json.loads(cache.read_text()) if cache.exists() else {}
    if cached.get("key") == key:
        return cached["logprobs"]
    dtype = PRECISION_DTYPES.get(config.deepspeed.precision, torch.float32)
    model = AutoModelForCausalLM.from_pretrained(spec.reference_model, dtype=dtype, **model_kwargs(config.model, config.deepspeed.precision))
    model.to(device).eval()
    logprobs = on_all_ranks(pairs, lambda share: logprobs_of(model, tokenizer, share, section.max_length, 4 * section.batch_size))
    model = None  # freed before the policy is built
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        atomic_write_json(cache, {"key": key, "logprobs": logprobs})
    barrier()
    return logprobs


def with_reference(groups: list[dict], logprobs: list[float]) -> list[dict]:
    records, start = [], 0
    for group in groups:
        records.append({**group, "reference_logprobs": logprobs[start : start + len(group["responses"])]})
        start += len(group["responses"])
    return records


def heldout_metrics(trainer: RankingDPOTrainer, tokenizer, groups: list[dict], section) -> dict[str, float]:
    """DPO's loss and the implicit reward's pairwise accuracy on the held-out rankings (every rank its share, the
    trained engine's ZeRO-3 shards staying sharded)."""
    ranked = [g for g in groups if len(g["tiers"]) > 1]
    if not ranked:
        return {}
    engine = trainer.model_wrapped
    engine.eval()
    pairs = [(g["prompt"], r) for g in ranked for r in g["responses"]]
    policy = on_all_ranks(pairs, lambda share: logprobs_of(engine, tokenizer, share, section.max_length, 4 * section.batch_size))
    reference = torch.tensor([x for g in ranked for x in g["reference_logprobs"]])
    rewards = implicit_rewards(torch.tensor(policy), reference, section.beta)
    loss, accuracy = dpo_loss(list(torch.split(rewards, [len(g["responses"]) for g in ranked])), [g["tiers"] for g in ranked],
                              section.loss)
    return {"dpo/heldout_loss": loss.item(), "dpo/heldout_accuracy": accuracy.item()}


def _worker(spec: DPOTrainingSpec, rank: int) -> None:
    from datasets import Dataset
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, TrainingArguments, set_seed

    from stages.models.loading import (
        disable_dropout,
        inference_device,
        load_tokenizer,
        model_kwargs,
        peft_config,
    )

    config, section = spec.config, spec.config.dpo
    run_dir = RunDir(spec.run_dir)

    # setup: the reference's log-probs, on the worker's device, before the training arguments exist (under ZeRO-3
    # they make every later from_pretrained build a partitioned model); then the policy (dropout off, as TRL's
    # DPO: the log-ratio is not noise)
    tokenizer = load_tokenizer(spec.tokenizer)
    logprobs = reference_logprobs(spec, tokenizer, inference_device(config.ray.use_gpu))
    args = TrainingArguments(**training_arguments(section, config, run_dir, STAGE, rank), remove_unused_columns=False)
    train = with_reference(spec.train_groups, logprobs)
    heldout = with_reference(spec.heldout_groups, logprobs[sum(len(g["responses"]) for g in spec.train_groups) :])
    if section.ptx_coef > 0:  # a group's pretraining documents are a function of its position: a resumed run reads the same
        docs, per = spec.pretraining, section.ptx_per_prompt
        train = [{**g, "ptx": [docs[(i * per + j) % len(docs)] for j in range(per)]} for i, g in enumerate(train)]
    set_seed(config.run.seed)
    model = AutoModelForCausalLM.from_pretrained(spec.init_model, **model_kwargs(config.model, config.deepspeed.precision))
    disable_dropout(model)
    if section.lora is not None:
        model = get_peft_model(model, peft_config(section.lora))
    trainer = RankingDPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train),
        data_collator=DPOCollator(tokenizer, section.max_length),
        callbacks=[StageFiles(run_dir, STAGE, rank)],
        beta=section.beta,
        loss=section.loss,
        ptx_coef=section.ptx_coef,
    )
    # train
    trainer.train(resume_from_checkpoint=resume_point(run_dir, STAGE, rank))

    # the held-out rankings, then DIR/dpo/model
    metrics = heldout_metrics(trainer, tokenizer, heldout, section)
    if rank == 0:
        atomic_write_json(run_dir.stage_dir(STAGE) / HELDOUT_FILE, metrics)
    save_final(trainer, tokenizer, run_dir, STAGE, spec.init_model, section.lora, rank, AutoModelForCausalLM)
