"""Builders for tokenizers and models: the tiny world's char-level tokenizer and GPT-style model,
and loading real ones from local directories (nothing downloads: local_files_only everywhere)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from common.config import LoraSection, ModelSection
from common.errors import InputError

# Renders messages as the tiny world's "Q: ...\nA: ..." format, so conversational data and
# prompt/completion data mean the same thing to the tiny model.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}Q: {{ message['content'] }}\n"
    "{% elif message['role'] == 'assistant' %}A: {{ message['content'] }}{{ eos_token }}\n"
    "{% else %}{{ message['content'] }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}A: {% endif %}"
)


def train_char_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    """A character-level tokenizer trained with the `tokenizers` library on `texts`."""
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tokenizer.decoder = decoders.Fuse()
    tokenizer.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<pad>", "<eos>", "<unk>"]))
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        chat_template=TINY_CHAT_TEMPLATE,
    )


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout module of `model` at p = 0 (TRL's disable_dropout_in_model, without importing TRL's
    trainers and their datasets into a process that needs neither)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def attention_implementation(choice: str, precision: str = "fp32") -> str:
    """The `attn_implementation` HF is given (model.attn_implementation): `auto` takes flash-attention 2 where it
    can run (its package imports, CUDA, a 16-bit precision), else torch's sdpa."""
    if choice != "auto":
        return choice
    if torch.cuda.is_available() and precision in ("bf16", "fp16") and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


def model_kwargs(model: ModelSection, precision: str = "fp32") -> dict:
    """What every `from_pretrained` of the stages passes: local files only, the configured attention."""
    return {"local_files_only": True, "attn_implementation": attention_implementation(model.attn_implementation, precision)}


def inference_device(use_gpu: bool) -> torch.device:
    """Where a stage that runs no DeepSpeed engine (sample, eval) puts its models: the worker's GPU under
    ray.use_gpu (Ray sets CUDA_VISIBLE_DEVICES to the GPUs it reserved), else the CPU."""
    if use_gpu and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def build_model(init: dict, tokenizer: PreTrainedTokenizerFast, attn_implementation: str = "sdpa"):
    """A randomly initialised causal LM from transformers config kwargs (with model_type)."""
    kwargs = dict(init)
    model_type = kwargs.pop("model_type", None)
    if model_type is None:
        raise InputError("model.init: missing model_type (e.g. gpt2 or llama)")
    try:
        config = AutoConfig.for_model(
            model_type,
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.eos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
    except (ValueError, TypeError) as exc:
        raise InputError(f"model.init: {exc}") from None
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


def check_model_dir(path: str | Path, key: str) -> Path:
    """A local model directory that exists and holds a config.json, or an InputError naming `key`."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{key}: model directory {path} does not exist (nothing is downloaded: give a local path)")
    saved = any((path / name).exists() for name in ("config.json", "adapter_config.json"))
    if not saved and sft_method_of(path) == "causal_lm":
        raise InputError(f"{key}: {path} has no config.json; expected a model saved with save_pretrained")
    return path.resolve()  # absolute, because Ray workers run in directories of their own


def load_tokenizer(path: str | Path, key: str = "model.tokenizer"):
    """A local tokenizer that has a pad token (an InputError otherwise: guessing one hides bugs).

    Its padding side stays the right (what HF's trainers and collators assume); code that needs left
    padding (generation) says so in its own call, so no result depends on who used the tokenizer before."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"{key}: cannot load a tokenizer from {path}: {str(exc).splitlines()[0]}") from None
    if tokenizer.pad_token is None:
        raise InputError(
            f"{key}: the tokenizer at {path} has no pad token; add one (e.g. tokenizer.pad_token = tokenizer.eos_token, "
            "then save_pretrained) so padded batches are masked correctly"
        )
    tokenizer.padding_side = "right"
    return tokenizer


def tokenizer_path(model: ModelSection, model_dir: str | Path) -> Path:
    return Path(model.tokenizer).resolve() if model.tokenizer else Path(model_dir).resolve()


def peft_config(lora: LoraSection, task_type: str = "CAUSAL_LM"):
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
    )


def sft_method_of(model_dir: str | Path) -> str:
    """The SFT method that wrote `model_dir`: bitune and cmlm leave their settings file; anything else is
    a causal LM."""
    from stages.models.bitune import SETTINGS_FILE as BITUNE_FILE
    from stages.models.cmlm import SETTINGS_FILE as CMLM_FILE

    for method, marker in (("bitune", BITUNE_FILE), ("cmlm", CMLM_FILE)):
        if (Path(model_dir) / marker).exists():
            return method
    return "causal_lm"


def load_policy(model_dir: str | Path, attn_implementation: str = "sdpa"):
    """A model to generate with (its `generate` mirrors HF's), from a directory the SFT stage or
    save_pretrained wrote: a causal LM, or a Bitune or cmlm model (which keep their own attention)."""
    method = sft_method_of(model_dir)
    if method == "bitune":
        from stages.models.bitune import BituneModel

        return BituneModel.from_pretrained(model_dir)
    if method == "cmlm":
        from stages.models.cmlm import CMLMModel

        return CMLMModel.from_pretrained(model_dir)
    return AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True, attn_implementation=attn_implementation)


def require_causal_lm(model_dir: str | Path, key: str) -> Path:
    """`model_dir`, unless a non-causal SFT method wrote it: the reward model and PPO start from one causal LM."""
    method = sft_method_of(model_dir)
    if method != "causal_lm":
        raise InputError(
            f"{key}: {model_dir} is a {method} model (sft.method {method}), which the reward model and PPO cannot start "
            "from; keep sft.method causal_lm and compare methods with eval.compare_sft_methods, or give a causal LM "
            "(rm.model, ppo.actor)"
        )
    return Path(model_dir)
