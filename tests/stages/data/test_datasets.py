"""The SFT and pretraining data loaders on small local files in every supported format."""

import json

import pytest
from datasets import Dataset, DatasetDict

from common.config import DataSection, DatasetSource, WorldSection
from common.errors import InputError
from stages.data.datasets import mix_pretraining, pretraining_text, sft_dataset
from stages.models.loading import train_char_tokenizer
from tiny_world import TinyWorld


@pytest.fixture(scope="module")
def tokenizer():
    world = TinyWorld()
    return train_char_tokenizer([world.alphabet(), *world.corpus(50)])


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


PLAIN = [{"prompt": "Q: Add 1 and 2.\nA: ", "completion": "3."}, {"prompt": "Q: Reverse the word cat.\nA: ", "completion": "tac"}]


def load(path, tokenizer, **kwargs):
    return sft_dataset(DataSection(sft=DatasetSource(path=str(path), **kwargs)), WorldSection(), tokenizer)


def test_prompt_completion_jsonl(tmp_path, tokenizer):
    dataset = load(write_jsonl(tmp_path / "d.jsonl", PLAIN), tokenizer)
    assert dataset.to_list() == PLAIN


def test_parquet_and_saved_dataset_dict(tmp_path, tokenizer):
    Dataset.from_list(PLAIN).to_parquet(str(tmp_path / "d.parquet"))
    assert load(tmp_path / "d.parquet", tokenizer).to_list() == PLAIN
    DatasetDict({"train": Dataset.from_list(PLAIN), "test": Dataset.from_list(PLAIN[:1])}).save_to_disk(str(tmp_path / "saved"))
    assert load(tmp_path / "saved", tokenizer).to_list() == PLAIN
    assert load(tmp_path / "saved", tokenizer, split="test").to_list() == PLAIN[:1]
    with pytest.raises(InputError, match=r"data.sft.split: .* has splits \['test', 'train'\]"):
        load(tmp_path / "saved", tokenizer, split="validation")


def test_conversational_messages_use_the_chat_template(tmp_path, tokenizer):
    records = [{"messages": [{"role": "user", "content": "Add 1 and 2."}, {"role": "assistant", "content": "3."}]}]
    dataset = load(write_jsonl(tmp_path / "m.jsonl", records), tokenizer)
    # the tiny chat template renders the same Q/A format as the tiny world's prompts
    assert dataset.to_list() == [{"prompt": "Q: Add 1 and 2.\nA: ", "completion": "3.<eos>"}]


def test_conversational_prompt_completion(tmp_path, tokenizer):
    records = [{"prompt": [{"role": "user", "content": "Spell cat backwards."}], "completion": [{"role": "assistant", "content": "tac"}]}]
    dataset = load(write_jsonl(tmp_path / "c.jsonl", records), tokenizer)
    assert dataset.to_list() == [{"prompt": "Q: Spell cat backwards.\nA: ", "completion": "tac<eos>"}]


@pytest.mark.parametrize(
    "lines, expected",
    [
        ([PLAIN[0], {"prompt": "Q: x\nA: "}], r"d.jsonl line 2: missing field 'completion' \(expected prompt/completion\)"),
        ([PLAIN[0], "{not json"], r"d.jsonl line 2: not valid JSON"),
        ([{"question": "x", "answer": "y"}], r"d.jsonl line 1: records have fields \['answer', 'question'\]; expected prompt/completion or messages"),
        ([[1, 2]], r"d.jsonl line 1: expected a JSON object, got list"),
    ],
)
def test_bad_jsonl_names_file_line_and_field(tmp_path, tokenizer, lines, expected):
    path = tmp_path / "d.jsonl"
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    with pytest.raises(InputError, match=expected):
        load(path, tokenizer)


def test_missing_or_unknown_files(tmp_path, tokenizer):
    with pytest.raises(InputError, match=r"data.sft.path: .*nope.jsonl does not exist"):
        load(tmp_path / "nope.jsonl", tokenizer)
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=r"expected a .jsonl, .json or .parquet file or a save_to_disk directory"):
        load(tmp_path / "d.csv", tokenizer)
    Dataset.from_list([{"prompt": "p", "completion": None}]).to_parquet(str(tmp_path / "n.parquet"))
    with pytest.raises(InputError, match=r"n.parquet record 0: missing field 'completion'"):
        load(tmp_path / "n.parquet", tokenizer)


def test_conversation_without_chat_template_is_refused(tmp_path, tokenizer):
    bare = train_char_tokenizer(["abc"])
    bare.chat_template = None
    records = [{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}]
    with pytest.raises(InputError, match="need a tokenizer with a chat template"):
        load(write_jsonl(tmp_path / "m.jsonl", records), bare)


def test_text_dataset_and_pretraining_mix(tmp_path, tokenizer):
    write_jsonl(tmp_path / "t.jsonl", [{"body": "7 plus 5 is 12."}, {"body": "cat backwards is tac."}])
    text = pretraining_text(DatasetSource(path=str(tmp_path / "t.jsonl"), format="text", text_field="body"), WorldSection())
    assert text["text"] == ["7 plus 5 is 12.", "cat backwards is tac."]
    demos = Dataset.from_list(PLAIN * 2)
    mixed = mix_pretraining(demos, text, ratio=1.5)
    assert len(mixed) == 4 + 6
    assert mixed.to_list()[4:7] == [
        {"prompt": "", "completion": "7 plus 5 is 12."},
        {"prompt": "", "completion": "cat backwards is tac."},
        {"prompt": "", "completion": "7 plus 5 is 12."},
    ]
    assert mix_pretraining(demos, text, ratio=0.0) is demos


def test_tiny_world_defaults(tokenizer):
    world = WorldSection(demonstrations=20, corpus_docs=10)
    demos = sft_dataset(DataSection(), world, tokenizer)
    assert len(demos) == 20 and all(p.startswith("Q: ") and p.endswith("\nA: ") for p in demos["prompt"])
    assert len(pretraining_text(None, world)) == 10
