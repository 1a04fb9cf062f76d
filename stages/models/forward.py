"""Forward passes of a causal LM that PPO and DPO need: the logits of a response's tokens given its prompt,
the summed log-prob of each completion of a right-padded batch, and the plain LM loss on pretraining text
(the ptx term).

Each moves its inputs to the model's device (`model.device`: a DeepSpeed engine's, or an HF model's), so
callers may hand over CPU tensors from a tokenizer or a rollout on another device."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stages.core.functional import IGNORE_INDEX, position_ids, token_logprobs


def response_logits(model, sequences: torch.Tensor, attention_mask: torch.Tensor, response_length: int,
                    temperature: float = 1.0) -> torch.Tensor:
    """Logits that predicted each response token, (B, T, V): position p's logits predict token p + 1,
    so the response's T tokens are predicted by positions P - 1 ... P + T - 2. Divided by the sampling
    temperature, so that log-probs match the distribution the rollout sampled from."""
    sequences, attention_mask = sequences.to(model.device), attention_mask.to(model.device)
    # the LM head runs on the last T + 1 positions only: the prompt's logits would be thrown away
    logits = model(input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                   logits_to_keep=response_length + 1).logits
    logits = logits[:, :-1].float()
    return logits / temperature if temperature != 1.0 else logits


def completion_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """log pi(y | x) of each right-padded row, summed over its completion tokens (completion_mask True, EOS
    included): (B, L) -> (B,), the quantity DPO's implicit reward compares."""
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    logprobs = token_logprobs(logits, input_ids[:, 1:])
    return torch.where(completion_mask[:, 1:].to(logprobs.device), logprobs, 0.0).sum(-1)


def lm_loss(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL over the real tokens of right-padded text: -mean log pi(x) (IG Eq. 2's
    pretraining term, per token)."""
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = input_ids[:, 1:].masked_fill(attention_mask[:, 1:] == 0, IGNORE_INDEX)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX)
