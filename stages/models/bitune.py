"""Bitune: instruction tuning with a bidirectional read of the prompt (Kopiczko, Blankevoort and
Asano, "Bitune: Bidirectional Instruction-Tuning", arXiv:2405.14862).

A frozen decoder-only LM carries two LoRA adapters. "prefill" reads the prompt with full
(bidirectional) attention, "default" reads it causally and then writes the answer. The two
passes' key/value caches are mixed per layer with learnable coefficients, and the answer is
decoded from the mixed cache:

    body    = prompt[:, :P-1]                                  the prompt without its last token
    bidir   = adapter "prefill" over body, bidirectional       keys, values (B, H, P-1, D) per layer
    causal  = adapter "default" over body, causal              same shapes
    alpha_l = |w_l| / (|w_l| + eps)     ("801": relu(w_l) for |w_l|)   w_k, w_v (L,) start at s_init = eps
    K_l     = (1 - alpha_k[l]) causal.K_l + alpha_k[l] bidir.K_l     (V_l alike, with alpha_v)
    logits  = adapter "default" over [prompt[:, P-1], answer], past (K, V)      (B, A+1, V)

B batch, P prompt width, A answer width, H key/value heads, D head dim, L layers, V vocabulary.
Batches put every prompt's last token in column P-1 (prompts left-padded, answers right-padded);
padding is folded into the 4D additive attention masks of all three passes, and positions count
from each row's first real token, so a padded example computes what it computes alone.

The paper's ablations are prefill plans: which adapter runs each pass, whether it is
bidirectional, and whether two caches are mixed (see PREFILL_PLANS).

Training: `BituneModel.forward(input_ids, attention_mask, prompt_mask, labels)` on batches from
`collate`, e.g. with transformers.Trainer. Inference: `BituneModel.generate`, which mirrors HF
generate for left-padded batches. Persistence: `BituneModel.save` / `BituneModel.from_pretrained`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers import AutoModelForCausalLM, DynamicCache
from transformers.generation import GenerateDecoderOnlyOutput
from transformers.modeling_outputs import CausalLMOutputWithPast

from stages.core.functional import IGNORE_INDEX, position_ids

VARIANTS = ("607", "801")
ABLATIONS = ("full", "naive_bidir", "no_mixing", "only_causal", "shared")
SETTINGS_FILE = "bitune.json"
COEFFICIENTS_FILE = "coefficients.safetensors"
ADAPTERS_DIR = "adapters"

_LLAMA_LIKE = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
DEFAULT_TARGET_MODULES = {
    "gpt2": ["c_attn", "c_proj", "c_fc"],
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
}


class PrefillPass(NamedTuple):
    adapter: str
    bidirectional: bool


# With two passes the first fills the cache alpha = 1 selects and the second the one alpha = 0
# selects; a single pass's cache is used as is.
PREFILL_PLANS: dict[str, tuple[PrefillPass, ...]] = {
    "full": (PrefillPass("prefill", True), PrefillPass("default", False)),
    "naive_bidir": (PrefillPass("default", True),),
    "no_mixing": (PrefillPass("prefill", True),),
    "only_causal": (PrefillPass("prefill", False), PrefillPass("default", False)),
    "shared": (PrefillPass("default", True), PrefillPass("default", False)),
}


@dataclass
class BituneSettings:
    """variant "607" mixes with |w|, "801" with relu(w); s_init is both the coefficients' initial
    value and the eps of the mixing ratio, so every alpha starts at 0.5. r and alpha are LoRA's;
    target_modules None picks the projections of the model type (DEFAULT_TARGET_MODULES)."""

    variant: str = "607"
    s_init: float = 0.01
    ablation: str = "full"
    r: int = 8
    alpha: float = 1
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        _check(self.variant in VARIANTS, "variant", f"one of {', '.join(VARIANTS)}", self.variant)
        _check(self.ablation in ABLATIONS, "ablation", f"one of {', '.join(ABLATIONS)}", self.ablation)
        _check(_is_number(self.s_init) and self.s_init > 0, "s_init", "a number > 0", self.s_init)
        _check(isinstance(self.r, int) and not isinstance(self.r, bool) and self.r > 0, "r", "an integer > 0", self.r)
        _check(_is_number(self.alpha) and self.alpha > 0, "alpha", "a number > 0", self.alpha)
        _check(
            self.target_modules is None
            or (isinstance(self.target_modules, list) and self.target_modules and all(isinstance(m, str) for m in self.target_modules)),
            "target_modules",
            "null or a non-empty list of module names",
            self.target_modules,
        )

    @property
    def mixes(self) -> bool:
        return len(PREFILL_PLANS[self.ablation]) == 2

    @property
    def adapters(self) -> list[str]:
        return sorted({"default"} | {p.adapter for p in PREFILL_PLANS[self.ablation]})


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(ok: bool, field: str, allowed: str, value) -> None:
    if not ok:
        raise ValueError(f"BituneSettings.{field}: must be {allowed}, got {value!r}")


def mixing_coefficients(w: torch.Tensor, eps: float, variant: str) -> torch.Tensor:
    """alpha in [0, 1), shape of w: the share of the bidirectional cache in each layer."""
    magnitude = w.abs() if variant == "607" else F.relu(w)
    return magnitude / (magnitude + eps)


def mix_caches(causal: DynamicCache, bidirectional: DynamicCache, alpha_k: torch.Tensor, alpha_v: torch.Tensor) -> DynamicCache:
    """Per layer l: (1 - alpha[l]) causal + alpha[l] bidirectional, keys and values apart."""
    mixed = DynamicCache()
    for layer, (c, b) in enumerate(zip(causal.layers, bidirectional.layers, strict=True)):
        mixed.update(_interpolate(c.keys, b.keys, alpha_k[layer]), _interpolate(c.values, b.values, alpha_v[layer]), layer)
    return mixed


def _interpolate(causal: torch.Tensor, bidirectional: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    # In fp32: under bf16 the small coefficient updates would round away.
    return ((1 - alpha) * causal.float() + alpha * bidirectional.float()).to(causal.dtype)


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # The dtype's minimum, not -inf: a left-padding query sees no key at all, and -inf would turn
    # its softmax into NaNs, which leak through the cache (0 * NaN) into real tokens.
    blocked = torch.tensor(torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, torch.zeros((), dtype=dtype, device=allowed.device), blocked)[:, None]


def bidirectional_mask(key_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, S, S) additive mask: every token sees every non-padding token of its row (key_mask (B, S))."""
    length = key_mask.shape[1]
    return _additive(key_mask.bool()[:, None, :].expand(-1, length, -1), dtype)


def causal_mask(key_mask: torch.Tensor, query_length: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, 1, Q, K) additive mask for Q queries that are the last Q of K keys (key_mask (B, K),
    covering the cache and the new tokens): each query sees the non-padding keys up to itself."""
    keys = key_mask.shape[1]
    key_index = torch.arange(keys, device=key_mask.device)
    query_index = torch.arange(keys - query_length, keys, device=key_mask.device)
    allowed = (key_index[None, :] <= query_index[:, None])[None] & key_mask.bool()[:, None, :]
    return _additive(allowed, dtype)



def prompt_end(prompt_mask: torch.Tensor) -> int:
    """P: one past the column of the prompts' last tokens, which must be the same in every row."""
    columns = prompt_mask.bool().any(0).nonzero()
    end = int(columns[-1]) + 1 if len(columns) else 0
    if end == 0 or not prompt_mask[:, end - 1].bool().all():
        raise ValueError(
            "prompt_mask: every prompt needs at least one token and all must end in the same column "
            "(prompts left-padded, as collate lays them out)"
        )
    return end


def answer_loss(logits: torch.Tensor, targets: torch.Tensor, num_items_in_batch: int | torch.Tensor | None = None) -> torch.Tensor:
    """Next-token cross-entropy of logits (B, A+1, V), from the last prompt token on, against
    targets (B, A) with IGNORE_INDEX on padding: the mean over answer tokens, or the sum over
    num_items_in_batch (Trainer's token count over all gradient accumulation steps)."""
    total = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    count = (targets != IGNORE_INDEX).sum() if num_items_in_batch is None else num_items_in_batch
    return total / (count.to(total.device) if torch.is_tensor(count) else count)


def lora_config(settings: BituneSettings, model_type: str, init_lora_weights: bool = True):
    from peft import LoraConfig

    return LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=0.0,
        target_modules=settings.target_modules or DEFAULT_TARGET_MODULES.get(model_type, "all-linear"),
        fan_in_fan_out=model_type == "gpt2",  # GPT-2's projections are Conv1D, weights stored transposed
        init_lora_weights=init_lora_weights,
        task_type="CAUSAL_LM",
    )


def next_token(logits: torch.Tensor, do_sample: bool, temperature: float | None, top_k: int | None) -> torch.Tensor:
    """(B,) tokens from last-position logits (B, V): argmax, or a sample at temperature among the top_k."""
    if not do_sample:
        return logits.argmax(-1)
    logits = logits / (1.0 if temperature is None else temperature)
    if top_k:
        kth = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1)[:, 0]


class BituneModel(nn.Module):
    """A causal LM wrapped with Bitune's adapters and mixing coefficients (see the module docstring).

    The base model is modified in place (peft injects the LoRA layers) and stays frozen; the
    LoRA weights of every adapter and, when the ablation mixes, w_k and w_v are trainable.
    """

    # Trainer then passes num_items_in_batch, which keeps the loss exact under gradient accumulation.
    accepts_loss_kwargs = True

    def __init__(self, base_model, settings: BituneSettings | None = None, *, init_lora_weights: bool = True):
        from peft import get_peft_model

        super().__init__()
        self.settings = settings or BituneSettings()
        config = base_model.config
        if config._attn_implementation not in ("eager", "sdpa"):
            raise ValueError(
                f"Bitune needs attn_implementation 'eager' or 'sdpa' (it passes 4D float masks), got {config._attn_implementation!r}"
            )
        self.peft = get_peft_model(base_model, lora_config(self.settings, config.model_type, init_lora_weights))
        if "prefill" in self.settings.adapters:
            self.peft.add_adapter("prefill", lora_config(self.settings, config.model_type, init_lora_weights))
        layers = config.get_text_config().num_hidden_layers
        self.w_k = nn.Parameter(torch.full((layers,), float(self.settings.s_init)), requires_grad=self.settings.mixes)
        self.w_v = nn.Parameter(torch.full((layers,), float(self.settings.s_init)), requires_grad=self.settings.mixes)
        # A plain list, not a ParameterList: these are already registered under self.peft.
        self._lora = [p for name, p in self.peft.named_parameters() if "lora_" in name]
        for p in self._lora:
            p.requires_grad_(True)

    @property
    def config(self):
        return self.peft.get_base_model().config

    @property
    def device(self) -> torch.device:
        return self.w_k.device

    @property
    def _dtype(self) -> torch.dtype:
        return self.peft.get_base_model().dtype

    def alphas(self) -> tuple[torch.Tensor, torch.Tensor]:
        """alpha_k, alpha_v, each (L,)."""
        eps, variant = self.settings.s_init, self.settings.variant
        return mixing_coefficients(self.w_k, eps, variant), mixing_coefficients(self.w_v, eps, variant)

    def _activate(self, adapter: str) -> None:
        # set_adapter also freezes every other adapter; Bitune trains them all, so restore the flags.
        flags = [p.requires_grad for p in self._lora]
        self.peft.set_adapter(adapter)
        for p, flag in zip(self._lora, flags):
            p.requires_grad_(flag)

    def prefill_pass(self, adapter: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     position_ids: torch.Tensor, *, bidirectional: bool) -> DynamicCache:
        """The key/value cache, (B, H, S, D) per layer, of one pass of `adapter` over input_ids (B, S)."""
        self._activate(adapter)
        length = input_ids.shape[1]
        mask = bidirectional_mask(attention_mask, self._dtype) if bidirectional else causal_mask(attention_mask, length, self._dtype)
        cache = DynamicCache(config=self.config)
        # The decoder without its LM head: prefill logits are never used.
        self.peft.get_base_model().base_model(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache, use_cache=True
        )
        return cache

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor) -> DynamicCache | None:
        """The cache the answer is decoded from, over prompt bodies (B, P-1); None if P is 1."""
        if input_ids.shape[1] == 0:
            return None
        caches = [
            self.prefill_pass(p.adapter, input_ids, attention_mask, position_ids, bidirectional=p.bidirectional)
            for p in PREFILL_PLANS[self.settings.ablation]
        ]
        if len(caches) == 1:
            return caches[0]
        bidirectional, causal = caches  # in the only_causal ablation "bidirectional" is the prefill adapter's causal pass
        return mix_caches(causal, bidirectional, *self.alphas())

    def _answer_pass(self, input_ids: torch.Tensor, key_mask: torch.Tensor, position_ids: torch.Tensor,
                     cache: DynamicCache | None) -> CausalLMOutputWithPast:
        self._activate("default")
        mask = causal_mask(key_mask, input_ids.shape[1], self._dtype)
        return self.peft(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache, use_cache=True)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_mask: torch.Tensor,
                labels: torch.Tensor | None = None, num_items_in_batch: int | torch.Tensor | None = None) -> CausalLMOutputWithPast:
        """Teacher-forced pass over batches laid out by `collate`, all (B, T): prompt_mask is 1 on
        prompt tokens (left-padded, ending in column P-1), labels hold the answer tokens and
        IGNORE_INDEX elsewhere. Returns loss (when labels are given) and logits (B, T-P+1, V) for
        columns P-1.. of input_ids, i.e. from the last prompt token on."""
        base = self.peft.get_base_model()
        # transformers renamed the flag (is_gradient_checkpointing before 5.20, is_activation_checkpointing after)
        if self.training and (getattr(base, "is_activation_checkpointing", False) or getattr(base, "is_gradient_checkpointing", False)):
            # Checkpointed layers drop past_key_values in training, so the answer would not see the prompt.
            raise ValueError("Bitune does not work with gradient checkpointing: its answer pass needs the prompt's cache")
        end = prompt_end(prompt_mask)
        positions = position_ids(attention_mask)
        cache = self.prefill(input_ids[:, : end - 1], attention_mask[:, : end - 1], positions[:, : end - 1])
        out = self._answer_pass(input_ids[:, end - 1 :], attention_mask, positions[:, end - 1 :], cache)
        loss = None if labels is None else answer_loss(out.logits, labels[:, end:], num_items_in_batch)
        return CausalLMOutputWithPast(loss=loss, logits=out.logits, past_key_values=out.past_key_values)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 20,
                 do_sample: bool = False, temperature: float | None = None, top_k: int | None = None,
                 pad_token_id: int | None = None, eos_token_id: int | list[int] | None = None,
                 output_logits: bool = False, return_dict_in_generate: bool = False, **ignored):
        """HF generate for left-padded prompts (B, P): (B, P + new) ids, the prompts followed by
        the new tokens, pad_token_id after a row's EOS, stopping early once every row has ended.
        With output_logits and return_dict_in_generate: a GenerateDecoderOnlyOutput whose logits
        are the raw (B, V) logits of each step. Other HF arguments are ignored."""
        if do_sample and temperature is not None and temperature <= 0:
            raise ValueError(f"generate: temperature must be > 0 when sampling, got {temperature}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        eos_ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
        pad_token_id = eos_ids[0] if pad_token_id is None and eos_ids else pad_token_id
        eos = torch.tensor(eos_ids, dtype=torch.long, device=input_ids.device)
        end = input_ids.shape[1]
        positions = position_ids(attention_mask)
        cache = self.prefill(input_ids[:, : end - 1], attention_mask[:, : end - 1], positions[:, : end - 1])
        step_ids, step_positions, key_mask = input_ids[:, end - 1 :], positions[:, end - 1 :], attention_mask
        finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        tokens, step_logits = [], []
        for _ in range(max_new_tokens):
            out = self._answer_pass(step_ids, key_mask, step_positions, cache)
            cache, logits = out.past_key_values, out.logits[:, -1].float()
            token = next_token(logits, do_sample, temperature, top_k)
            if eos_ids:
                token = torch.where(finished, pad_token_id, token)
                finished |= torch.isin(token, eos)
            tokens.append(token)
            step_logits.append(logits)
            if finished.all():
                break
            step_ids, step_positions = token[:, None], step_positions[:, -1:] + 1
            key_mask = torch.cat([key_mask, torch.ones_like(key_mask[:, :1])], dim=1)
        sequences = torch.cat([input_ids, *(t[:, None] for t in tokens)], dim=1)
        if output_logits and return_dict_in_generate:
            return GenerateDecoderOnlyOutput(sequences=sequences, logits=tuple(step_logits))
        return sequences

    def save(self, directory: str | Path, base_model_dir: str | Path | None = None) -> None:
        """Writes adapters/ (peft's layout: "default" at its root, "prefill" in a subfolder), the
        coefficients and bitune.json (settings and base model path, by default the base config's
        name_or_path). The frozen base model itself is not written."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.peft.save_pretrained(str(directory / ADAPTERS_DIR))
        coefficients = {"w_k": self.w_k.detach().float().cpu().contiguous(), "w_v": self.w_v.detach().float().cpu().contiguous()}
        save_file(coefficients, str(directory / COEFFICIENTS_FILE))
        meta = {"settings": asdict(self.settings), "base_model": str(base_model_dir or self.config.name_or_path or "")}
        (directory / SETTINGS_FILE).write_text(json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path, base_model_dir: str | Path | None = None, *,
                        is_trainable: bool = False) -> BituneModel:
        """A model written by `save`, on the base model at base_model_dir (default: the recorded
        path); frozen and in eval mode unless is_trainable."""
        from peft import load_peft_weights, set_peft_model_state_dict

        directory = Path(directory)
        meta = json.loads((directory / SETTINGS_FILE).read_text())
        base_dir = base_model_dir or meta["base_model"]
        if not base_dir:
            raise ValueError(f"{directory / SETTINGS_FILE} records no base model path: pass base_model_dir")
        base = AutoModelForCausalLM.from_pretrained(str(base_dir), local_files_only=True)
        model = cls(base, BituneSettings(**meta["settings"]))
        for adapter in model.settings.adapters:
            path = directory / ADAPTERS_DIR if adapter == "default" else directory / ADAPTERS_DIR / adapter
            result = set_peft_model_state_dict(model.peft, load_peft_weights(str(path)), adapter_name=adapter)
            if result.unexpected_keys:
                raise ValueError(f"{path}: weights that match no LoRA layer: {result.unexpected_keys[:3]}")
        coefficients = load_file(str(directory / COEFFICIENTS_FILE))
        with torch.no_grad():
            model.w_k.copy_(coefficients["w_k"])
            model.w_v.copy_(coefficients["w_v"])
        if not is_trainable:
            model.requires_grad_(False)
            model.eval()
        return model


def collate(examples: list[dict[str, str]], tokenizer, max_length: int | None = None) -> dict[str, torch.Tensor]:
    """A batch for BituneModel.forward from {"prompt", "completion"} examples, each tensor (B, P + A):
    input_ids and attention_mask with the prompts left-padded to end in column P-1 and the
    completions (plus EOS) right-padded after them; prompt_mask, 1 on prompt tokens; labels, the
    completion tokens and IGNORE_INDEX elsewhere. Past max_length a prompt loses tokens from its
    left (its end matters most to the answer); a completion that alone is too long is cut on the
    right, as every example keeps at least its last prompt token."""
    if tokenizer.pad_token_id is None or tokenizer.eos_token_id is None:
        raise ValueError("collate: the tokenizer needs a pad token and an EOS token")
    if max_length is not None and max_length < 2:
        raise ValueError(f"collate: max_length must be at least 2 (a prompt token and an answer token), got {max_length}")
    pairs = []
    for example in examples:
        prompt = tokenizer(example["prompt"])["input_ids"]
        completion = tokenizer(example["completion"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        if not prompt:
            raise ValueError(f"collate: prompt {example['prompt']!r} has no tokens; Bitune needs at least one")
        if max_length is not None:
            completion = completion[: max_length - 1]
            prompt = prompt[-(max_length - len(completion)) :]
        pairs.append((prompt, completion))
    width = max(len(p) for p, _ in pairs)
    answer_width = max(len(c) for _, c in pairs)
    pad = tokenizer.pad_token_id
    batch: dict[str, list[list[int]]] = {"input_ids": [], "attention_mask": [], "prompt_mask": [], "labels": []}
    for prompt, completion in pairs:
        left, right = width - len(prompt), answer_width - len(completion)
        batch["input_ids"].append([pad] * left + prompt + completion + [pad] * right)
        batch["attention_mask"].append([0] * left + [1] * (len(prompt) + len(completion)) + [0] * right)
        batch["prompt_mask"].append([0] * left + [1] * len(prompt) + [0] * answer_width)
        batch["labels"].append([IGNORE_INDEX] * width + completion + [IGNORE_INDEX] * right)
    return {key: torch.tensor(rows, dtype=torch.long) for key, rows in batch.items()}
