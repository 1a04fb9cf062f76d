"""Rollout on a small random causal LM: masks through EOS, and log pi_old from the generation pass
equal to a separate forward pass over the same tokens."""

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from stages.core.functional import response_mask_through_eos, token_logprobs
from stages.models.forward import lm_loss, response_logits
from stages.scoring.rollout import HFRollout


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_layer=2, n_embd=32, n_head=2, n_positions=96,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # an EOS logit of about 2 everywhere: some rows end early, some run to the limit
        hidden = model.transformer(**tokenizer(["Q: Add 1 and 2.\nA: 3"], return_tensors="pt")).last_hidden_state.mean((0, 1))
        model.lm_head.weight[tokenizer.eos_token_id] = 2.0 * hidden / hidden.norm() ** 2
    return model


def test_mask_runs_through_the_first_eos():
    responses = torch.tensor([[5, 1, 7, 1], [5, 6, 7, 8], [1, 0, 0, 0]])
    mask, ended = response_mask_through_eos(responses, eos_token_id=1)
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert ended.tolist() == [True, False, True]
    mask, ended = response_mask_through_eos(responses, eos_token_id=None)
    assert mask.all() and not ended.any()


def test_generation_logprobs_equal_a_forward_pass_and_nothing_after_eos_counts(model, tokenizer):
    torch.manual_seed(1)
    prompts = ["Q: Add 1 and 2.\nA: ", "Q: Sort 3 1 2.\nA: ", "Q: x\nA: "] * 4
    batch = HFRollout(model, tokenizer, max_new_tokens=12, temperature=0.7).generate(prompts)
    T = batch.response_mask.shape[1]
    assert batch.sequences.shape == (12, batch.prompt_length + T)
    responses = batch.sequences[:, batch.prompt_length :]
    # EOS is the last real token of every ended row; rows without EOS run to the limit
    last_real = batch.response_mask.long().cumsum(-1).argmax(-1)
    assert (responses[batch.ended, :].gather(1, last_real[batch.ended, None]) == tokenizer.eos_token_id).all()
    assert batch.ended.any() and not batch.ended.all()
    assert batch.response_mask[~batch.ended].all()
    assert (batch.logprobs[~batch.response_mask] == 0).all()
    with torch.no_grad():
        forward = token_logprobs(response_logits(model, batch.sequences, batch.attention_mask, T, temperature=0.7), responses)
    torch.testing.assert_close(torch.where(batch.response_mask, forward, 0.0), batch.logprobs, atol=1e-4, rtol=1e-4)


def test_fixed_length_rollouts_ignore_eos(model, tokenizer):
    batch = HFRollout(model, tokenizer, max_new_tokens=6, stop_at_eos=False).generate(["Q: a\nA: "] * 3)
    assert batch.response_mask.shape == (3, 6) and batch.response_mask.all() and not batch.ended.any()


def test_lm_loss_ignores_padding(model, tokenizer):
    tokenizer.padding_side = "right"
    texts = ["7 plus 5 is 12.", "mouse backwards is esuom."]
    padded = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        alone = [lm_loss(model, **tokenizer([t], return_tensors="pt")) for t in texts]
        lengths = [len(t) - 1 for t in texts]  # char tokenizer: one token per character
        expected = sum(l * n for l, n in zip(alone, lengths)) / sum(lengths)
        torch.testing.assert_close(lm_loss(model, **padded), expected, atol=1e-5, rtol=1e-5)


def test_engine_replies_take_the_hf_rollout_layout():
    """vLLM's replies (response ids, log-probs, ended) re-padded: prompts left-padded, responses right-padded,
    the mask through EOS (a stop row) or to the end (a row cut at max_new_tokens)."""
    from stages.scoring.vllm_engines import pad_rollout

    pad, eos = 0, 1
    prompts = [[5, 6, 7], [8]]
    replies = [([9, 1], [-0.5, -0.25], True), ([4, 4, 4], [-1.0, -2.0, -3.0], False)]
    batch = pad_rollout(prompts, replies, pad, eos, version=3)
    assert batch.sequences.tolist() == [[5, 6, 7, 9, 1, 0], [0, 0, 8, 4, 4, 4]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1]]
    assert batch.response_mask.tolist() == [[True, True, False], [True, True, True]]
    assert batch.ended.tolist() == [True, False] and batch.prompt_length == 3
    assert batch.logprobs.tolist() == [[-0.5, -0.25, 0.0], [-1.0, -2.0, -3.0]]
    assert torch.equal(batch.rollout_logprobs, batch.logprobs) and batch.weight_version == 3
    # fixed length (no EOS): every generated token counts
    fixed = pad_rollout(prompts, replies, pad, None, version=0)
    assert fixed.response_mask.tolist() == [[True, True, False], [True, True, True]]
    assert batch.select(torch.tensor([1])).sequences.tolist() == [[0, 0, 8, 4, 4, 4]]
