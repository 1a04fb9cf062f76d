"""Conditional-MLM instruction following for BERT-family encoders, decoded with Mask-Predict.

Instruct-XLMR: Xiao et al., "Are Bert Family Good Instruction Followers? A Study on Their Potential
and Limitations", ICLR 2024. Mask-Predict: Ghazvininejad et al., "Mask-Predict: Parallel Decoding of
Conditional Masked Language Models", EMNLP 2019. Reimplemented from the papers' descriptions.

One masked LM reads [source; target] as a single sequence:
- target positions restart at 0 (plus RoBERTa's padding offset), and for BERT the token types are
  0 for the source and 1 for the target;
- dynamic mixed attention: source rows see only the source, target rows see everything, so the
  source is encoded exactly as it would be alone and the target is predicted from both;
- training masks k ~ U{1..L} target tokens and a fraction of the source tokens; the loss is the
  label-smoothed cross-entropy over the masked target tokens plus a weighted length NLL from a
  length head over the mean-pooled source states;
- Mask-Predict: predict the length, start from all <mask>, then for t = 1..T-1 re-mask and
  re-predict the n(t) = floor(L (T - t) / T) least confident tokens.

Shapes: B batch, S source, T target, L = S + T sequence, V vocabulary, C length classes.
The batch layout (see `pack_pairs`) is [source padded to S; target padded to T], with
`segment_ids` 0 on the source and 1 on the target; positions and masks are derived from
`attention_mask` and `segment_ids`, so a left-padded source (as in `generate`) works unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForMaskedLM
from transformers.utils import ModelOutput

from common.errors import InputError
from stages.core.functional import IGNORE_INDEX

LENGTH_MODES = ("meanpool", "fixed")
ROBERTA_TYPES = ("roberta", "xlm-roberta")
ENCODER_TYPES = (*ROBERTA_TYPES, "bert")
MASK_TOKEN = "<mask>"
SETTINGS_FILE = "cmlm.json"
LENGTH_HEAD_FILE = "length_head.safetensors"


@dataclass
class CMLMSettings:
    """Training and decoding settings of a `CMLMModel` (saved with it)."""

    src_mask_ratio: float = 0.15  # fraction of (non-special) source tokens masked in training
    label_smoothing: float = 0.1
    length_loss_weight: float = 0.1
    length_mode: str = "meanpool"  # "meanpool": the length head predicts it; "fixed": given
    fixed_length: int | None = None  # the target length in "fixed" mode (else max_new_tokens)
    decode_iters: int = 10
    length_beam: int = 1  # decode the top-b predicted lengths, keep the most probable result
    max_length: int = 512  # length classes 0..max_length-1

    def __post_init__(self):
        def check(ok: bool, field: str, allowed: str):
            if not ok:
                raise ValueError(f"CMLMSettings.{field}: got {getattr(self, field)!r}, expected {allowed}")

        check(0 <= self.src_mask_ratio < 1, "src_mask_ratio", "a float in [0, 1)")
        check(0 <= self.label_smoothing < 1, "label_smoothing", "a float in [0, 1)")
        check(self.length_loss_weight >= 0, "length_loss_weight", "a float >= 0")
        check(self.length_mode in LENGTH_MODES, "length_mode", f"one of {', '.join(LENGTH_MODES)}")
        check(self.fixed_length is None or (isinstance(self.fixed_length, int) and self.fixed_length >= 1),
              "fixed_length", "None or an int >= 1")
        check(isinstance(self.decode_iters, int) and self.decode_iters >= 1, "decode_iters", "an int >= 1")
        check(isinstance(self.length_beam, int) and self.length_beam >= 1, "length_beam", "an int >= 1")
        check(isinstance(self.max_length, int) and self.max_length >= 2, "max_length", "an int >= 2")


# ---- tokenizer and encoder ----------------------------------------------------------------------


def add_mask_token(tokenizer) -> int:
    """The tokenizer's mask token id, adding `<mask>` as a special token if it has none (the char
    tokenizer has only <pad>, <eos>, <unk>). Resize the encoder afterwards (`CMLMModel.from_tokenizer`)."""
    if tokenizer.mask_token is None:
        tokenizer.add_special_tokens({"mask_token": MASK_TOKEN})
    return tokenizer.mask_token_id


def build_encoder(init: dict, tokenizer):
    """A randomly initialised masked LM (model_type roberta, xlm-roberta or bert) from transformers
    config kwargs, sized to the tokenizer."""
    kwargs = dict(init)
    model_type = kwargs.pop("model_type", None)
    if model_type not in ENCODER_TYPES:
        raise InputError(f"sft.cmlm.init.model_type: got {model_type!r}, expected one of {', '.join(ENCODER_TYPES)}")
    if model_type in ROBERTA_TYPES:
        # RoBERTa positions start after padding_idx; keep room for 512 real positions, and one
        # token type as the pretrained RoBERTa/XLM-R checkpoints have.
        kwargs.setdefault("max_position_embeddings", 512 + tokenizer.pad_token_id + 1)
        kwargs.setdefault("type_vocab_size", 1)
    try:
        config = AutoConfig.for_model(
            model_type,
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **kwargs,
        )
    except (ValueError, TypeError) as exc:
        raise InputError(f"sft.cmlm.init: {exc}") from None
    return AutoModelForMaskedLM.from_config(config)


def position_offset(config) -> int:
    """RoBERTa/XLM-R count positions from padding_idx + 1; BERT from 0."""
    return config.pad_token_id + 1 if config.model_type in ROBERTA_TYPES else 0


# ---- batch layout -------------------------------------------------------------------------------


def pack_pairs(sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """[source right-padded to S; target right-padded to T]: input_ids, attention_mask, segment_ids (B, L)."""
    def pad(rows):
        width = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        ok = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            ok[i, : len(row)] = 1
        return ids, ok

    source_ids, source_ok = pad(sources)
    target_ids, target_ok = pad(targets)
    return {
        "input_ids": torch.cat([source_ids, target_ids], 1),
        "attention_mask": torch.cat([source_ok, target_ok], 1),
        "segment_ids": torch.cat([torch.zeros_like(source_ids), torch.ones_like(target_ids)], 1),
    }


def mixed_attention_mask(attention_mask: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """(B, 1, L, L) bool, True = query row may attend to key column: every row sees the real keys,
    except that source rows never see target columns."""
    key_ok = attention_mask.bool()[:, None, :]
    is_target = segment_ids.bool()
    source_row_target_col = ~is_target[:, :, None] & is_target[:, None, :]
    allowed = key_ok & ~source_row_target_col
    # Pad rows (e.g. all of an empty source) would otherwise have no key at all; some attention
    # kernels return NaN for such a row, and a NaN leaks into real rows through 0 * NaN.
    allowed |= torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    return allowed[:, None]


def position_ids(attention_mask: torch.Tensor, segment_ids: torch.Tensor, offset: int) -> torch.Tensor:
    """(B, L): each real token's index within its own segment, plus `offset`, so the target restarts
    at 0 and a left-padded source still starts at 0 (equals cat(arange(S), arange(T)) + offset on
    the real tokens of a right-padded batch)."""
    real = attention_mask.bool()
    is_target = segment_ids.bool()
    in_source = (real & ~is_target).long().cumsum(1)
    in_target = (real & is_target).long().cumsum(1)
    return (torch.where(is_target, in_target, in_source) - 1).clamp(min=0) + offset


# ---- training-time masking and loss -------------------------------------------------------------


def _random_subset(eligible: torch.Tensor, k: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """(B, N) bool: k[b] positions of row b drawn uniformly without replacement among `eligible`."""
    # Ineligible positions score above every uniform draw, so they rank last.
    scores = torch.rand(eligible.shape, generator=generator, device=eligible.device).masked_fill(~eligible, 2.0)
    return scores.argsort(1).argsort(1) < k[:, None]


def sample_target_mask(target_ok: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, T) bool: per row, k = floor(L U) + 1 of its L real target tokens (k uniform on 1..L)."""
    lengths = target_ok.sum(1)
    k = (lengths * torch.rand(lengths.shape, generator=generator, device=lengths.device)).floor().long() + 1
    return _random_subset(target_ok, k.minimum(lengths), generator)


def sample_source_mask(maskable: torch.Tensor, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, S) bool: per row, floor(ratio * n) of its n maskable (real, non-special) source tokens."""
    k = (maskable.sum(1) * ratio).floor().long()
    return _random_subset(maskable, k, generator)


def cmlm_loss(logits: torch.Tensor, labels: torch.Tensor, length_logits: torch.Tensor | None,
              length_labels: torch.Tensor | None, label_smoothing: float, length_loss_weight: float) -> torch.Tensor:
    """Label-smoothed token cross-entropy averaged over the labelled (masked target) positions,
    plus length_loss_weight x the length NLL when there is a length head."""
    token_sum = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                                label_smoothing=label_smoothing, reduction="sum")
    # A batch of empty completions has no labelled tokens; averaging over at least one keeps it finite.
    loss = token_sum / (labels != IGNORE_INDEX).sum().clamp(min=1)
    if length_logits is not None:
        loss = loss + length_loss_weight * F.cross_entropy(length_logits.float(), length_labels)
    return loss


def batch_generator(seed: int, examples: list[dict]) -> torch.Generator:
    """A generator seeded by `seed` and the examples' texts."""
    digest = hashlib.sha256(json.dumps([seed, [[e["prompt"], e["completion"]] for e in examples]]).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


class CMLMCollator:
    """Turns [{"prompt": str, "completion": str}] into a training batch: input_ids, attention_mask,
    segment_ids (B, L); labels (B, L), the target ids at masked target positions, -100 elsewhere;
    length_labels (B,), the target lengths. The prompt gets the tokenizer's special tokens (as in
    `generate`), the completion none.

    The masks come from `generator`, or with `seed` from a generator seeded by the seed and the batch's
    texts: a resumed training run then masks each batch as the uninterrupted run did (the data loader
    collates a batch ahead, so a shared generator's state at a checkpoint is already one batch on)."""

    def __init__(self, tokenizer, settings: CMLMSettings | None = None, generator: torch.Generator | None = None,
                 max_source_length: int | None = None, max_target_length: int | None = None, seed: int | None = None):
        if tokenizer.mask_token_id is None:
            raise ValueError("CMLMCollator: the tokenizer has no mask token; call add_mask_token(tokenizer) first")
        if generator is not None and seed is not None:
            raise ValueError("CMLMCollator: give a generator or a seed, not both")
        self.tokenizer = tokenizer
        self.settings = settings or CMLMSettings()
        self.generator = generator
        self.seed = seed
        self.max_source_length = max_source_length
        # Longer targets would have no length class.
        self.max_target_length = min(max_target_length or self.settings.max_length - 1, self.settings.max_length - 1)
        self.special_ids = torch.tensor(tokenizer.all_special_ids, dtype=torch.long)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        sources = [self.tokenizer(e["prompt"])["input_ids"][: self.max_source_length] for e in examples]
        targets = [self.tokenizer(e["completion"], add_special_tokens=False)["input_ids"][: self.max_target_length]
                   for e in examples]
        batch = pack_pairs(sources, targets, self.tokenizer.pad_token_id)
        ids, real = batch["input_ids"], batch["attention_mask"].bool()
        width = max((len(s) for s in sources), default=0)
        maskable_source = (real & ~torch.isin(ids, self.special_ids))[:, :width]
        generator = self.generator if self.seed is None else batch_generator(self.seed, examples)
        masked = torch.cat([sample_source_mask(maskable_source, self.settings.src_mask_ratio, generator),
                            sample_target_mask(real[:, width:], generator)], 1)
        labels = ids.masked_fill(~masked, IGNORE_INDEX)
        labels[:, :width] = IGNORE_INDEX  # masked source tokens are context noise, not predicted
        batch["input_ids"] = ids.masked_fill(masked, self.tokenizer.mask_token_id)
        batch["labels"] = labels
        batch["length_labels"] = real[:, width:].sum(1)
        return batch


# ---- Mask-Predict -------------------------------------------------------------------------------


def remask_count(length, t: int, iters: int):
    """n(t) = floor(length (iters - t) / iters) tokens to re-mask before iteration t (0 at t = iters)."""
    return length * (iters - t) // iters


def lowest_confidence(scores: torch.Tensor, eligible: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """(B, T) bool: per row, the n[b] eligible positions with the lowest scores (fewer if fewer are eligible)."""
    n = n.minimum(eligible.sum(1))
    width = int(n.max()) if n.numel() else 0
    lowest = scores.masked_fill(~eligible, math.inf).topk(width, dim=1, largest=False).indices
    chosen = torch.zeros_like(eligible)
    return chosen.scatter(1, lowest, torch.arange(width, device=n.device)[None, :] < n[:, None])


@dataclass
class CMLMOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # (B, L, V)
    length_logits: torch.Tensor | None = None  # (B, C); None in "fixed" length mode


class CMLMModel(nn.Module):
    """A masked LM plus a length head, trained as a conditional MLM and decoded with Mask-Predict.
    `forward(**collator_batch)` returns `loss` (trainable with transformers.Trainer); `generate`
    mimics HF generate on left-padded prompts."""

    def __init__(self, encoder, mask_token_id: int, special_token_ids: Sequence[int] = (),
                 settings: CMLMSettings | None = None):
        super().__init__()
        model_type = encoder.config.model_type
        if model_type not in ENCODER_TYPES:
            raise ValueError(f"CMLMModel: encoder model_type {model_type!r}, expected one of {', '.join(ENCODER_TYPES)}")
        self.encoder = encoder
        self.settings = settings or CMLMSettings()
        self.mask_token_id = mask_token_id
        self.special_token_ids = sorted(set(special_token_ids) - {mask_token_id})
        self.length_head = nn.Linear(encoder.config.hidden_size, self.settings.max_length)
        self.offset = position_offset(encoder.config)
        self.uses_token_types = model_type not in ROBERTA_TYPES

    @classmethod
    def from_tokenizer(cls, encoder, tokenizer, settings: CMLMSettings | None = None) -> CMLMModel:
        """Wrap `encoder` for `tokenizer` (which needs a mask token: see add_mask_token), resizing the
        encoder's embeddings to the tokenizer's vocabulary if they differ."""
        if tokenizer.mask_token_id is None:
            raise ValueError("CMLMModel.from_tokenizer: the tokenizer has no mask token; call add_mask_token(tokenizer) first")
        if encoder.get_input_embeddings().num_embeddings != len(tokenizer):
            encoder.resize_token_embeddings(len(tokenizer))
        return cls(encoder, tokenizer.mask_token_id, tokenizer.all_special_ids, settings)

    @property
    def pad_token_id(self) -> int:
        return self.encoder.config.pad_token_id

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    @property
    def max_positions(self) -> int:
        return self.encoder.config.max_position_embeddings - self.offset

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, segment_ids: torch.Tensor):
        """Token logits (B, L, V) and final hidden states (B, L, D) under the mixed attention."""
        allowed = mixed_attention_mask(attention_mask, segment_ids)
        dtype = self.encoder.dtype
        # An additive float mask means the same to the eager and sdpa attention implementations.
        additive = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)
        output = self.encoder(
            input_ids=input_ids,
            attention_mask=additive,
            position_ids=position_ids(attention_mask, segment_ids, self.offset),
            token_type_ids=segment_ids if self.uses_token_types else torch.zeros_like(segment_ids),
            output_hidden_states=True,
        )
        return output.logits, output.hidden_states[-1]

    def length_logits(self, hidden: torch.Tensor, attention_mask: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
        """(B, C) from the final hidden states mean-pooled over the real source tokens."""
        source = (attention_mask.bool() & ~segment_ids.bool()).unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * source).sum(1) / source.sum(1).clamp(min=1)
        return self.length_head(pooled)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, segment_ids: torch.Tensor,
                labels: torch.Tensor | None = None, length_labels: torch.Tensor | None = None) -> CMLMOutput:
        logits, hidden = self.encode(input_ids, attention_mask, segment_ids)
        length_logits = None
        if self.settings.length_mode == "meanpool":
            length_logits = self.length_logits(hidden, attention_mask, segment_ids)
        loss = None
        if labels is not None:
            loss = cmlm_loss(logits, labels, length_logits, length_labels, self.settings.label_smoothing,
                             self.settings.length_loss_weight)
        return CMLMOutput(loss=loss, logits=logits, length_logits=length_logits)

    # ---- decoding ----

    def _target_batch(self, source_ids: torch.Tensor, source_mask: torch.Tensor, target: torch.Tensor, target_ok: torch.Tensor):
        return {
            "input_ids": torch.cat([source_ids, target], 1),
            "attention_mask": torch.cat([source_mask.long(), target_ok.long()], 1),
            "segment_ids": torch.cat([torch.zeros_like(source_ids), torch.ones_like(target)], 1),
        }

    @torch.no_grad()
    def predict_lengths(self, source_ids: torch.Tensor, source_mask: torch.Tensor, beam: int, cap: int) -> torch.Tensor:
        """(B, beam) the most probable target lengths in 1..cap."""
        segment_ids = torch.zeros_like(source_ids)
        # Source rows never see the target, so encoding the source alone gives the training-time states.
        _, hidden = self.encode(source_ids, source_mask, segment_ids)
        logits = self.length_logits(hidden, source_mask, segment_ids)
        classes = torch.arange(logits.shape[-1], device=logits.device)
        logits = logits.masked_fill((classes < 1) | (classes > cap), -math.inf)
        return logits.topk(min(beam, cap), dim=1).indices

    @torch.no_grad()
    def mask_predict(self, source_ids: torch.Tensor, source_mask: torch.Tensor, lengths: torch.Tensor,
                     iters: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Target tokens (B, T = max length; pads beyond each length) and their mean log-probability (B,)."""
        iters = iters or self.settings.decode_iters
        width = int(lengths.max())
        target_ok = torch.arange(width, device=lengths.device)[None, :] < lengths[:, None]
        target = torch.full(target_ok.shape, self.mask_token_id, device=lengths.device).masked_fill(~target_ok, self.pad_token_id)
        log_probs = torch.zeros(target_ok.shape, device=lengths.device)
        special = torch.tensor(self.special_token_ids, dtype=torch.long, device=lengths.device)
        remasked = target_ok
        for t in range(iters):
            logits, _ = self.encode(**self._target_batch(source_ids, source_mask, target, target_ok))
            logits = logits[:, source_ids.shape[1] :].float()
            # Training never labels <pad> or <mask>, so predicting them would only leave holes.
            logits[..., [self.pad_token_id, self.mask_token_id]] = -math.inf
            best_log_prob, best = logits.log_softmax(-1).max(-1)
            target = torch.where(remasked, best, target)
            log_probs = torch.where(remasked, best_log_prob, log_probs)
            if t == iters - 1:
                break
            eligible = target_ok & ~torch.isin(target, special)
            remasked = lowest_confidence(log_probs, eligible, remask_count(lengths, t + 1, iters))
            target = target.masked_fill(remasked, self.mask_token_id)
        mean_log_prob = (log_probs * target_ok).sum(1) / lengths.clamp(min=1)
        return target, mean_log_prob

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int | None = None,
                 pad_token_id: int | None = None, eos_token_id: int | None = None, **ignored) -> torch.Tensor:
        """Like HF generate on LEFT-padded prompts: (B, P + T) = the prompts, then each predicted
        target, then EOS if there is room, then pads. Sampling arguments are ignored (decoding is
        Mask-Predict's argmax)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pad_token_id = self.pad_token_id if pad_token_id is None else pad_token_id
        eos_token_id = self.encoder.config.eos_token_id if eos_token_id is None else eos_token_id
        cap = min(max_new_tokens or math.inf, self.settings.max_length - 1, self.max_positions)
        batch = input_ids.shape[0]
        if self.settings.length_mode == "fixed":
            length = self.settings.fixed_length or max_new_tokens
            if length is None:
                raise ValueError("CMLMModel.generate: length_mode 'fixed' needs settings.fixed_length or max_new_tokens")
            candidates = torch.full((batch, 1), min(length, cap), dtype=torch.long, device=input_ids.device)
        else:
            candidates = self.predict_lengths(input_ids, attention_mask, self.settings.length_beam, cap)
        beam = candidates.shape[1]
        target, score = self.mask_predict(input_ids.repeat_interleave(beam, 0), attention_mask.repeat_interleave(beam, 0),
                                          candidates.flatten())
        best = score.view(batch, beam).argmax(1) + torch.arange(batch, device=input_ids.device) * beam
        target, lengths = target[best], candidates.flatten()[best]
        width = int(lengths.max())
        columns = torch.arange(target.shape[1], device=target.device)[None, :]
        target = target.masked_fill(columns >= lengths[:, None], pad_token_id)[:, :width]
        if eos_token_id is not None:
            has_room = lengths < width
            target[has_room, lengths[has_room]] = eos_token_id
        return torch.cat([input_ids, target], 1)

    # ---- persistence ----

    def save(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """The masked LM via save_pretrained, plus the length head and the settings (cmlm.json).
        `state_dict` (this module's keys) replaces the live weights, e.g. the one a Trainer's `_save`
        receives after gathering ZeRO-3 shards."""
        directory = Path(directory)
        state_dict = self.state_dict() if state_dict is None else state_dict

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}

        self.encoder.save_pretrained(directory, state_dict=part("encoder."))
        save_file({k: v.contiguous() for k, v in part("length_head.").items()}, directory / LENGTH_HEAD_FILE)
        meta = {"settings": asdict(self.settings), "mask_token_id": self.mask_token_id,
                "special_token_ids": self.special_token_ids}
        (directory / SETTINGS_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> CMLMModel:
        """A model `save` wrote (local files only)."""
        directory = Path(directory)
        meta = json.loads((directory / SETTINGS_FILE).read_text())
        encoder = AutoModelForMaskedLM.from_pretrained(str(directory), local_files_only=True)
        model = cls(encoder, meta["mask_token_id"], meta["special_token_ids"], CMLMSettings(**meta["settings"]))
        model.length_head.load_state_dict(load_file(directory / LENGTH_HEAD_FILE))
        return model
