"""Tensor helpers every model-facing layer shares: masked reductions, token log-probs, positions and
masks of padded batches, and the label ignore index. Pure torch; nothing knows about models or devices.

Shapes: B batch, T tokens, V vocabulary. Masks are bool, True = a real token.
"""

import torch

# labels at this value add nothing to a cross-entropy loss (torch's and HF's default ignore_index)
IGNORE_INDEX = -100

# ---------------------------------------------------------------------------
# Masked reductions (every loss and metric of core/ reduces through these)
# ---------------------------------------------------------------------------



def masked_mean(x, mask, dim=None, keepdim=False):
    """Mean of ``x`` over positions where ``mask`` is True.

    x: any shape; mask: bool, same shape. ``dim=None`` reduces over everything.
    Masked positions are replaced by 0 before summing, so NaN/inf in padding cannot leak.
    An all-False mask gives 0 rather than NaN, so an empty slice adds no gradient.
    """
    x = torch.where(mask, x, 0.0)
    if dim is None:
        return x.sum() / mask.sum().clamp(min=1)
    return x.sum(dim, keepdim=keepdim) / mask.sum(dim, keepdim=keepdim).clamp(min=1)


def masked_var(x, mask, dim=None):
    """Population variance (divide by n, not n-1) of ``x`` over True positions of ``mask``."""
    mean = masked_mean(x, mask, dim, keepdim=True)
    return masked_mean((x - mean) ** 2, mask, dim)


def masked_whiten(x, mask, shift_mean=True, eps=1e-8, moments=None):
    """(x - mean) / sqrt(var + eps) over all real positions of the batch.

    Population variance, as ``tf.nn.moments`` in lm-human-preferences ``whiten``.
    ``shift_mean=False`` adds the mean back (LHP's reward whitening keeps the level).
    ``moments``: (mean, var) taken over a larger batch (every rank's, for REINFORCE++); default: this one's.
    x, mask: (B, T); returns (B, T) with zeros at masked positions.
    """
    mean, var = moments if moments is not None else (masked_mean(x, mask), masked_var(x, mask))
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, 0.0)


# ---------------------------------------------------------------------------
# Tokens, positions and masks of padded batches
# ---------------------------------------------------------------------------


def token_logprobs(logits, tokens):
    """log softmax(logits) at ``tokens``: logits (B, T, V), tokens (B, T) -> (B, T).

    As z_token - logsumexp(z): no (B, T, V) log-softmax is materialised (TRL's selective_log_softmax)."""
    return logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def last_token_index(response_mask):
    """Index of the last real token (EOS, or the last token of a truncated response). (B, T) -> (B,)."""
    positions = torch.arange(response_mask.shape[-1], device=response_mask.device)
    last = torch.where(response_mask, positions, -1).amax(-1)
    if (last < 0).any():
        raise ValueError("response_mask has a row with no real token; every response needs at least one")
    return last


def position_ids(attention_mask):
    """Positions counted from each row's first real token, (B, T), so left padding does not shift them."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_mask_through_eos(responses, eos_token_id):
    """(mask, ended) of sampled responses (B, T): True up to and including each row's first EOS (every
    token when there is none, or when eos_token_id is None); ended (B,) says which rows reached an EOS."""
    if eos_token_id is None:
        return torch.ones_like(responses, dtype=torch.bool), torch.zeros(responses.shape[0], dtype=torch.bool, device=responses.device)
    is_eos = responses == eos_token_id
    eos_before = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # an EOS strictly earlier in the row
    return ~eos_before, is_eos.any(-1)
