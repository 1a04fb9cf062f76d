"""Rollout: sample one response per prompt from the current policy, behind a small interface so that
the PPO trainer does not change when generation does (HF generate here; vLLM engines in vllm_engines.py).

A rollout returns the token ids, the masks, and log pi_old of every sampled token taken from the
generation pass itself (its logits at the sampling temperature), so PPO needs no extra forward pass
for the old log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

from stages.core.functional import response_mask_through_eos, token_logprobs


@dataclass
class RolloutBatch:
    sequences: torch.Tensor  # (B, P + T): prompt left-padded to P, response right-padded to T
    attention_mask: torch.Tensor  # (B, P + T): real prompt and response tokens (through EOS)
    response_mask: torch.Tensor  # (B, T) bool: response tokens through the first EOS
    logprobs: torch.Tensor  # (B, T) log pi_old(y_t | x, y_<t) of the sampled tokens, 0 after EOS
    ended: torch.Tensor  # (B,) bool: the response ended with EOS (not cut at max_new_tokens)
    # log-probs of the sampled tokens under the sampler's own numerics (vLLM), when pi_old is the trainer's
    rollout_logprobs: torch.Tensor | None = None
    weight_version: int = 0  # the engine weights' version that sampled the batch (vLLM)

    @property
    def prompt_length(self) -> int:
        return self.sequences.shape[1] - self.response_mask.shape[1]

    def select(self, index: torch.Tensor) -> RolloutBatch:
        return replace(self, **{name: tensor[index.to(tensor.device)] for name, tensor in self.tensors().items()})

    def to(self, device: torch.device) -> RolloutBatch:
        return replace(self, **{name: tensor.to(device) for name, tensor in self.tensors().items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}


class HFRollout:
    """HF `generate` on the actor (a DeepSpeed engine's module or a plain model).

    temperature: sampling temperature (InstructGPT: 1); greedy=True takes the most likely token
    instead (evaluation); stop_at_eos=False generates exactly max_new_tokens tokens (fixed-length
    rollouts for benchmarks); synced_gpus keeps ZeRO-3 ranks in step while their parameters are
    gathered layer by layer. The prompts go to `device` (default: the model's; a ZeRO-3 engine's own
    device when its parameters live elsewhere)."""

    def __init__(self, model, tokenizer, max_new_tokens: int, temperature: float = 1.0, stop_at_eos: bool = True,
                 synced_gpus: bool = False, greedy: bool = False, device: torch.device | None = None):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.max_new_tokens, self.temperature = max_new_tokens, 1.0 if greedy else temperature
        self.stop_at_eos, self.synced_gpus, self.greedy = stop_at_eos, synced_gpus, greedy

    @torch.no_grad()
    def generate(self, prompts: list[str]) -> RolloutBatch:
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left").to(self.device or self.model.device)
        eos = self.tokenizer.eos_token_id if self.stop_at_eos else None
        was_training = self.model.training
        self.model.eval()
        output = self.model.generate(
            **encoded,
            do_sample=not self.greedy,
            temperature=None if self.greedy else self.temperature,
            top_k=None if self.greedy else 0,
            top_p=None if self.greedy else 1.0,
            max_new_tokens=self.max_new_tokens,
            min_new_tokens=None if self.stop_at_eos else self.max_new_tokens,
            eos_token_id=eos,
            pad_token_id=self.tokenizer.pad_token_id,
            output_logits=True,
            return_dict_in_generate=True,
            synced_gpus=self.synced_gpus,
        )
        self.model.train(was_training)
        prompt_length = encoded["input_ids"].shape[1]
        responses = output.sequences[:, prompt_length:]
        response_mask, ended = response_mask_through_eos(responses, eos)
        logits = torch.stack(output.logits, dim=1).float() / self.temperature  # the sampling distribution
        logprobs = token_logprobs(logits, responses)
        return RolloutBatch(
            sequences=output.sequences,
            attention_mask=torch.cat([encoded["attention_mask"].bool(), response_mask], dim=1).long(),
            response_mask=response_mask,
            logprobs=torch.where(response_mask, logprobs, 0.0),
            ended=ended,
        )
