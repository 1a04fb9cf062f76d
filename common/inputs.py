"""Cheap checks of what a user's config points at: files and model directories on disk. Each stage's
declaration runs them (`StageDeclaration.check_inputs`) before anything expensive starts (Ray, torch,
a model load), so a wrong path or an empty file is refused in a moment, naming the config key. The
stage's own loaders check every record later; these check only what needs no library to read."""

from __future__ import annotations

from pathlib import Path

from common.config import DatasetSource
from common.errors import InputError

# what a saved model directory holds: HF's config (or a peft adapter's), or an SFT method's settings
MODEL_MARKERS = ("config.json", "adapter_config.json", "bitune.json", "cmlm.json")


def _require_saved(path: str | Path | None, key: str, kind: str, markers: tuple[str, ...], expected: str) -> None:
    if path is None:
        return
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{key}: {kind} directory {path} does not exist (nothing is downloaded: give a local path)")
    if not any((path / name).exists() for name in markers):
        raise InputError(f"{key}: {path} has no {expected}; expected a {kind} saved with save_pretrained")


def require_model_dir(path: str | Path | None, key: str) -> None:
    _require_saved(path, key, "model", MODEL_MARKERS, "config.json")


def require_tokenizer_dir(path: str | Path | None, key: str) -> None:
    _require_saved(path, key, "tokenizer", ("tokenizer.json", "tokenizer_config.json"), "tokenizer.json or tokenizer_config.json")


def require_dataset(source: DatasetSource | None, key: str) -> None:
    """The file or save_to_disk directory exists, and a JSON or JSONL file has a record."""
    if source is None:
        return
    path = Path(source.path)
    if not path.exists():
        raise InputError(f"{key}.path: {path} does not exist")
    if path.is_file() and path.suffix in (".jsonl", ".json") and not path.read_text().strip():
        raise InputError(f"{key}.path: {path} is empty; expected records")


def require_causal_lm_for_vllm(path: str | Path | None, key: str) -> None:
    """rollout.engine vllm serves plain causal LMs saved with their tokenizer (vLLM reads both from one
    directory); a Bitune or cmlm model, or a bare LoRA adapter, it cannot."""
    if path is None:
        return
    path = Path(path)
    other = [name for name in MODEL_MARKERS[1:] if (path / name).exists()]
    if other:
        raise InputError(f"{key}: {path} holds {other[0]}, which vLLM cannot serve; use rollout.engine hf for it")
    require_tokenizer_dir(path, key)
