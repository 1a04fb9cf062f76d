"""Local dataset files in TRL's formats, read and checked record by record.

Accepted files: JSONL/JSON, Parquet, or a directory written by `datasets`' save_to_disk, holding
- prompt/completion records (plain strings, or conversational lists of {role, content});
- conversational `messages` records (the last message, from the assistant, is the completion);
- plain text (`text_field`), for pretraining.
Every SFT record is normalised to plain prompt/completion strings (conversations rendered with the
tokenizer's chat template), so one trainer path handles them all. Errors name the file and the line
(JSONL) or record, and the config key the path came from.
"""

from __future__ import annotations

from pathlib import Path

from datasets import Dataset, DatasetDict, load_dataset, load_from_disk

from common.config import DatasetSource
from common.errors import InputError
from common.files import numbered_jsonl_records

SFT_FORMATS = {"prompt_completion": ("prompt", "completion"), "messages": ("messages",)}
PROMPT_FORMATS = {"prompt": ("prompt",)}


def _required_fields(source: DatasetSource, columns: list[str], where: str, allowed: tuple[str, ...]) -> tuple[str, ...]:
    """The fields a record needs, from the configured format or detected from `columns`."""
    known = {**SFT_FORMATS, **PROMPT_FORMATS}
    formats = {name: known[name] for name in allowed if name in known}
    if "text" in allowed:
        formats["text"] = (source.text_field,)
    if source.format != "auto":
        if source.format not in formats:
            raise InputError(f"{where}: format {source.format!r} is not usable here; expected one of {sorted(formats)}")
        return formats[source.format]
    for fields in formats.values():
        if all(field in columns for field in fields):
            return fields
    expected = " or ".join("/".join(fields) for fields in formats.values())
    raise InputError(f"{where}: records have fields {sorted(columns)}; expected {expected}")



def _check_jsonl(path: Path, source: DatasetSource, allowed: tuple[str, ...]) -> None:
    """Line-by-line check, so a bad record is reported with its line number."""
    required = None
    for number, record in numbered_jsonl_records(path):
        if required is None:
            required = _required_fields(source, list(record), f"{path} line {number}", allowed)
        for field in required:
            if record.get(field) in (None, "", []):
                raise InputError(f"{path} line {number}: missing field {field!r} (expected {'/'.join(required)})")
    if required is None:
        raise InputError(f"{path}: no records")


def open_dataset(path: Path, key: str, split: str | None = None) -> Dataset:
    """A local dataset: a save_to_disk directory (`split` of a DatasetDict, default train), or a
    JSONL/JSON or Parquet file. Errors name `key`, the config key the path came from."""
    if not path.exists():
        raise InputError(f"{key}.path: {path} does not exist")
    if path.is_dir():
        try:
            loaded = load_from_disk(str(path))
        except FileNotFoundError:
            raise InputError(f"{key}.path: {path} is not a dataset saved with save_to_disk") from None
        if isinstance(loaded, DatasetDict):
            split = split or ("train" if "train" in loaded else None)
            if split not in loaded:
                raise InputError(f"{key}.split: {path} has splits {sorted(loaded)}; set {key}.split to one of them")
            loaded = loaded[split]
        return loaded
    if path.suffix in (".jsonl", ".json"):
        return load_dataset("json", data_files=str(path), split="train")
    if path.suffix == ".parquet":
        return load_dataset("parquet", data_files=str(path), split="train")
    raise InputError(f"{key}.path: {path}: expected a .jsonl, .json or .parquet file or a save_to_disk directory")


def load_records(source: DatasetSource, key: str, allowed: tuple[str, ...]) -> tuple[Dataset, tuple[str, ...]]:
    """Load a local dataset and check that every record has the fields of one allowed format."""
    path = Path(source.path)
    if path.is_file() and path.suffix == ".jsonl":
        _check_jsonl(path, source, allowed)
    dataset = open_dataset(path, key, source.split)
    required = _required_fields(source, dataset.column_names, str(path), allowed)
    for row, record in enumerate(dataset.select_columns(list(required))):
        for field in required:
            if record[field] in (None, "", []):
                raise InputError(f"{path} record {row}: missing field {field!r} (expected {'/'.join(required)})")
    return dataset, required


def render_conversation(tokenizer, context: list[dict], reply: list[dict], where: str) -> tuple[str, str]:
    """Split a rendered conversation into the prompt (up to the assistant's turn) and the reply."""
    if tokenizer is None or not tokenizer.chat_template:
        given = "none was given" if tokenizer is None else "this one has none"
        raise InputError(f"{where}: conversational records need a tokenizer with a chat template; {given}")
    prompt = tokenizer.apply_chat_template(context, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(context + reply, tokenize=False)
    if not full.startswith(prompt):
        raise InputError(f"{where}: the chat template does not render the prompt as a prefix of the conversation")
    completion = full[len(prompt) :]
    stripped = completion.rstrip()
    # the template's own end-of-turn token stands in for the EOS that TRL would otherwise append
    return prompt, stripped if stripped.endswith(tokenizer.eos_token) else completion


def sft_dataset_from_file(source: DatasetSource, tokenizer) -> Dataset:
    """SFT records from a local file, normalised to plain prompt/completion strings."""
    dataset, fields = load_records(source, "data.sft", allowed=("prompt_completion", "messages"))

    def normalise(record: dict, index: int) -> dict:
        where = f"{source.path} record {index}"
        if fields == ("messages",):
            messages = record["messages"]
            if messages[-1].get("role") != "assistant":
                raise InputError(f"{where}: the last message must be the assistant's reply")
            prompt, completion = render_conversation(tokenizer, messages[:-1], messages[-1:], where)
        elif isinstance(record["prompt"], list):
            prompt, completion = render_conversation(tokenizer, record["prompt"], record["completion"], where)
        else:
            prompt, completion = record["prompt"], record["completion"]
        return {"prompt": prompt, "completion": completion}

    return dataset.map(normalise, with_indices=True, remove_columns=dataset.column_names)


def prompts_from_file(source: DatasetSource, tokenizer, key: str) -> list[str]:
    """Prompts (a `prompt` field, a string or a list of messages rendered for the assistant's turn)."""
    dataset, _ = load_records(source, key, allowed=("prompt",))
    prompts = []
    for index, prompt in enumerate(dataset["prompt"]):
        if isinstance(prompt, list):
            if tokenizer is None or not tokenizer.chat_template:
                raise InputError(f"{source.path} record {index}: conversational prompts need a tokenizer with a chat template")
            prompt = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        prompts.append(prompt)
    return prompts


def text_dataset_from_file(source: DatasetSource) -> Dataset:
    dataset, (field,) = load_records(source, "data.pretrain", allowed=("text",))
    return dataset.select_columns([field]).rename_column(field, "text") if field != "text" else dataset.select_columns(["text"])
