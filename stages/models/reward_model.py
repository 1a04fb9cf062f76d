"""The reward model: a scalar head on the policy architecture (`AutoModelForSequenceClassification`,
num_labels=1) whose score is read at the last real token of prompt + response + EOS.

Its normalisation bias (InstructGPT 3.5: demonstrations score 0 on average) is stored in the model's
config.json as `reward_bias`, so anyone loading the model gets normalised rewards:
    model = AutoModelForSequenceClassification.from_pretrained(path)
    reward = model(**batch).logits[:, 0] + model.config.reward_bias
The same per-token head serves PPO's critic (initialised from the reward model).
"""

from __future__ import annotations

import torch

from stages.core.functional import last_token_index, position_ids

BIAS_KEY = "reward_bias"


def reward_text(prompt: str, response: str, eos_token: str) -> str:
    """The text the reward model scores: prompt, response and one EOS, whose position is read."""
    return prompt + (response if response.endswith(eos_token) else response + eos_token)


def load_reward_model(path, **kwargs):
    """A reward model from a local directory (num_labels=1), in eval mode."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True, num_labels=1, **kwargs).eval()


def score_head(model) -> torch.nn.Module:
    """The scalar head under any wrapper: a DeepSpeed engine (.module) or a peft model (.get_base_model())."""
    inner = getattr(model, "module", model)
    if hasattr(inner, "get_base_model"):
        inner = inner.get_base_model()
    return inner.score



def token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The head's output at every position, (B, T).

    Read from the head with a forward hook rather than from the model's pooled logits: those are taken
    at the last token that is not the pad token, which is wrong when pad and EOS are one token (as in
    many tokenizers), and PPO's critic needs every position anyway."""
    captured = []
    input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
    handle = score_head(model).register_forward_hook(lambda module, args, output: captured.append(output))
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
    finally:
        handle.remove()
    return captured[0].squeeze(-1)


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """r_theta(x, y) at the last real token of each row (right or left padding), (B,), without the bias."""
    scores = token_scores(model, input_ids, attention_mask)
    return scores.gather(1, last_token_index(attention_mask.bool()).unsqueeze(1)).squeeze(1)


def encode(tokenizer, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; a text too long loses its beginning, never the response end that is scored."""
    ids = [row[-max_length:] for row in tokenizer(texts)["input_ids"]]
    return tokenizer.pad({"input_ids": ids}, padding=True, padding_side="right", return_tensors="pt")


@torch.no_grad()
def score_texts(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> list[float]:
    """Raw scores (bias not added) of `texts`, each already a `reward_text`."""
    scores: list[float] = []
    for start in range(0, len(texts), batch_size):
        batch = encode(tokenizer, texts[start : start + batch_size], max_length)
        scores.extend(sequence_scores(model, batch["input_ids"], batch["attention_mask"]).float().tolist())
    return scores
