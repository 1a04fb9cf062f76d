"""The reward-model data readers on small local files in every supported format."""

import json
import random

import pytest
from datasets import Dataset

from common.errors import InputError
from stages.core.ranking import strict_pairs
from stages.data.rankings import RankingGroup, load_rankings, split_by_prompt
from stages.models.loading import train_char_tokenizer

EXPECTED = r"\(expected K-way prompt/candidates/ranking, pairwise prompt/chosen/rejected, or chosen/rejected\)"


@pytest.fixture(scope="module")
def tokenizer():
    # its chat template renders a user turn as "Q: {user}\nA: " and ends the assistant's with <eos>
    return train_char_tokenizer(["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,:?!\n"])


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


K_WAY = {
    "prompt_id": "p1",
    "prompt": "Q: Add 1 and 2.\nA: ",
    "candidates": [
        {"id": "c1", "text": "4.", "policy": "sft"},
        {"id": "c2", "text": "3.", "policy": "sft"},
        {"id": "c3", "text": "3", "policy": "ppo"},
        {"id": "c4", "text": "three", "policy": "ppo"},
        {"id": "c5", "text": "banana", "policy": "sft"},
    ],
    "ranking": [["c2"], ["c3", "c4"], ["c1"]],  # c5 unranked
    "annotator_id": "a7",
    "likert": {"c1": 2, "c2": 7},
    "flags": {"c1": {"hallucination": True}},
}


def test_k_way_export_keeps_ties_and_drops_unranked(tmp_path):
    nine = {
        "prompt_id": "p2",
        "prompt": "Q: Reverse the word cat.\nA: ",
        "candidates": [{"id": f"c{i}", "text": f"answer {i}"} for i in range(9)],
        "ranking": [[f"c{i}"] for i in reversed(range(9))],  # K = 9, no cap
    }
    groups = load_rankings(str(write_jsonl(tmp_path / "rankings.jsonl", [K_WAY, nine]))).groups
    assert groups[0] == RankingGroup(
        prompt="Q: Add 1 and 2.\nA: ",
        responses=("4.", "3.", "3", "three"),  # candidate order, c5 dropped
        tiers=((1,), (2, 3), (0,)),  # c2 > c3 = c4 > c1
        group_id="p1:a7",
        annotator_id="a7",
    )
    # the tie c3 = c4 forms no pair: 1x2 + 1x1 + 2x1 = 5 strict pairs, not C(4, 2) = 6
    assert len(strict_pairs(groups[0].tiers, len(groups[0].responses))) == 5
    assert groups[1].group_id == "p2" and groups[1].annotator_id is None
    assert len(groups[1].responses) == 9 and groups[1].tiers == tuple((i,) for i in reversed(range(9)))


def test_k_way_with_a_conversational_prompt_renders_each_candidate(tmp_path, tokenizer):
    record = {**K_WAY, "prompt": [user("Add 1 and 2.")], "ranking": [["c2"], ["c1"]]}
    (group,) = load_rankings(str(write_jsonl(tmp_path / "r.jsonl", [record])), tokenizer).groups
    assert group.prompt == "Q: Add 1 and 2.\nA: "
    assert group.responses == ("4.<eos>", "3.<eos>") and group.tiers == ((1,), (0,))


def test_pairwise_explicit_prompt_plain_strings(tmp_path):
    records = [
        {"prompt": "Q: Add 1 and 2.\nA: ", "chosen": "3.", "rejected": "4.", "margin": 2.0},
        {"prompt": "Q: Add 1 and 2.\nA: ", "chosen": "3", "rejected": "5", "prompt_id": "p1", "annotator_id": "a2"},
        {"prompt": "Q: Add 2 and 2.\nA: ", "chosen": "4.", "rejected": "5.", "group_id": "p9:a1"},
    ]
    groups = load_rankings(str(write_jsonl(tmp_path / "pairs.jsonl", records))).groups
    assert [(g.prompt, g.responses, g.tiers) for g in groups] == [
        ("Q: Add 1 and 2.\nA: ", ("3.", "4."), ((0,), (1,))),  # margin ignored
        ("Q: Add 1 and 2.\nA: ", ("3", "5"), ((0,), (1,))),
        ("Q: Add 2 and 2.\nA: ", ("4.", "5."), ((0,), (1,))),
    ]
    # no prompt_id: a hash of the prompt text, shared by every record of that prompt
    assert groups[0].group_id.startswith("prompt-")
    assert groups[1].group_id == "p1:a2" and groups[1].annotator_id == "a2"
    assert groups[2].group_id == "p9:a1"


def test_pairwise_conversational_uses_the_chat_template(tmp_path, tokenizer):
    records = [
        # explicit prompt
        {"prompt": [user("Add 1 and 2.")], "chosen": [assistant("3.")], "rejected": [assistant("4.")]},
        # implicit prompt: the shared messages, here two turns
        {
            "chosen": [user("Hi"), assistant("Hello."), user("Add 1 and 2."), assistant("3.")],
            "rejected": [user("Hi"), assistant("Hello."), user("Add 1 and 2."), assistant("12.")],
        },
    ]
    explicit, implicit = load_rankings(str(write_jsonl(tmp_path / "conv.jsonl", records)), tokenizer).groups
    assert explicit.prompt == "Q: Add 1 and 2.\nA: "
    assert explicit.responses == ("3.<eos>", "4.<eos>") and explicit.tiers == ((0,), (1,))
    assert implicit.prompt == "Q: Hi\nA: Hello.<eos>\nQ: Add 1 and 2.\nA: "
    assert implicit.responses == ("3.<eos>", "12.<eos>")


def test_implicit_prompt_plain_strings_split_at_a_word_boundary(tmp_path):
    records = [
        {"chosen": "Q: Add 1 and 2.\nA: 3.", "rejected": "Q: Add 1 and 2.\nA: 4."},
        {"chosen": "The cat sat.", "rejected": "The cow sat."},  # common prefix "The c", cut back to "The "
    ]
    groups = load_rankings(str(write_jsonl(tmp_path / "implicit.jsonl", records))).groups
    assert [(g.prompt, g.responses) for g in groups] == [
        ("Q: Add 1 and 2.\nA: ", ("3.", "4.")),
        ("The ", ("cat sat.", "cow sat.")),
    ]


def test_anthropic_hh_transcripts_with_two_turns(tmp_path):
    context = "\n\nHuman: Hi\n\nAssistant: Hello, how can I help?\n\nHuman: Add 1 and 2.\n\nAssistant:"
    records = [{"chosen": context + " It is 3.", "rejected": context + " It is 4."}]
    (group,) = load_rankings(str(write_jsonl(tmp_path / "hh.jsonl", records))).groups
    # the prompt runs through the last "\n\nAssistant:"; prompt + response is the whole transcript
    assert group.prompt == context
    assert group.responses == (" It is 3.", " It is 4.") and group.tiers == ((0,), (1,))


def test_parquet_json_and_saved_dataset(tmp_path):
    pairs = [{"prompt": "Q: Add 1 and 2.\nA: ", "chosen": "3.", "rejected": "4."}]
    Dataset.from_list(pairs).to_parquet(str(tmp_path / "pairs.parquet"))
    assert load_rankings(str(tmp_path / "pairs.parquet")).groups[0].responses == ("3.", "4.")

    # Arrow fills absent struct fields (policy) with None, and the ranking's lists survive
    other = {"prompt_id": "p3", "prompt": "Q: x\nA: ", "candidates": [{"id": "c1", "text": "a"}, {"id": "c2", "text": "b"}]}
    Dataset.from_list([K_WAY | {"flags": None, "likert": None}, other | {"ranking": [["c1", "c2"], []]}]).save_to_disk(
        str(tmp_path / "saved")
    )
    with pytest.raises(InputError, match=r"saved record 1: ranking tier 1 must be a non-empty list"):
        load_rankings(str(tmp_path / "saved"))
    Dataset.from_list([K_WAY | {"flags": None, "likert": None}]).save_to_disk(str(tmp_path / "saved_ok"))
    (group,) = load_rankings(str(tmp_path / "saved_ok")).groups
    assert group.tiers == ((1,), (2, 3), (0,)) and group.responses == ("4.", "3.", "3", "three")

    # a JSON array may mix formats: it is read record by record, not through one Arrow schema
    (tmp_path / "mixed.json").write_text(json.dumps([K_WAY, pairs[0]]))
    assert [len(g.responses) for g in load_rankings(str(tmp_path / "mixed.json")).groups] == [4, 2]


PAIR = {"prompt": "Q: Add 1 and 2.\nA: ", "chosen": "3.", "rejected": "4."}
HH = "\n\nHuman: Add 1 and 2.\n\nAssistant:"


@pytest.mark.parametrize(
    "bad, expected",
    [
        ({"prompt": "Q: x\nA: ", "chosen": "a"}, r"rankings.jsonl line 3: missing field 'rejected' " + EXPECTED),
        ({"question": "x", "answer": "y"}, r"line 3: missing field 'chosen' " + EXPECTED),
        ({"chosen": "a", "rejected": ""}, r"line 3: missing field 'rejected' "),
        ({k: v for k, v in K_WAY.items() if k != "ranking"}, r"line 3: missing field 'ranking' " + EXPECTED),
        ({**K_WAY, "candidates": []}, r"line 3: missing field 'candidates' "),
        ({**K_WAY, "ranking": [["c2"], ["c9"]]}, r"line 3: ranking names c9, which is not a candidate \(c1, c2, c3, c4, c5\)"),
        ({**K_WAY, "ranking": [["c2"], ["c3", "c1"], ["c1"]]}, r"line 3: candidate c1 appears in two tiers; rank each"),
        ({**K_WAY, "ranking": [["c2", "c2"], ["c1"]]}, r"line 3: candidate c2 appears twice in one tier"),
        ({**K_WAY, "ranking": ["c2", "c1"]}, r"line 3: ranking tier 0 must be a non-empty list of candidate ids"),
        ({**K_WAY, "candidates": [{"id": "c1"}]}, r"line 3: candidate 0 must be an object with an 'id' and a 'text'"),
        ({"chosen": HH + " 3.", "rejected": "\n\nHuman: Add 2 and 2.\n\nAssistant: 3."}, r"line 3: .* differ before their last"),
        ({"chosen": HH + " 3.", "rejected": "3 or 4"}, r"line 3: field 'rejected' is not an HH transcript"),
        ({**PAIR, "chosen": [assistant("3.")]}, r"line 3: 'prompt' is a string, so 'chosen' must be one too, not list"),
        ({"chosen": "3.", "rejected": 4}, r"line 3: field 'rejected' must be a string or a list of messages, not int"),
        (
            {"chosen": [user("a"), assistant("b")], "rejected": [user("c"), assistant("d")]},
            r"line 3: 'chosen' and 'rejected' must share every message but the last",
        ),
        ({"chosen": [user("a"), assistant("b")], "rejected": [user("a")]}, r"line 3: field 'rejected' must end with"),
        ({"prompt": [user("a")], "chosen": [{"content": "b"}], "rejected": [assistant("c")]}, r"'chosen' must be a list of"),
        ("{not json", r"rankings.jsonl line 3: not valid JSON"),
        ([PAIR], r"rankings.jsonl line 3: expected a JSON object, got list"),
    ],
)
def test_bad_records_name_file_line_and_problem(tmp_path, tokenizer, bad, expected):
    path = write_jsonl(tmp_path / "rankings.jsonl", [PAIR, "", bad])  # the blank line 2 still counts
    with pytest.raises(InputError, match=expected):
        load_rankings(str(path), tokenizer)


def test_a_tie_at_line_16_of_a_trl_conversational_file_is_dropped_and_counted(tmp_path, tokenizer):
    # 400 explicit-prompt conversational records; line 16 chose what it rejected, as real files do
    records = [{"prompt": [user(f"Add {i} and 1.")], "chosen": [assistant(f"{i + 1}.")], "rejected": [assistant(f"{i}.")]}
               for i in range(400)]
    records[15]["rejected"] = records[15]["chosen"]
    loaded = load_rankings(str(write_jsonl(tmp_path / "trl.jsonl", records)), tokenizer)
    assert loaded.ties_dropped == 1 and len(loaded.groups) == 399
    assert "Q: Add 15 and 1.\nA: " not in {g.prompt for g in loaded.groups}
    assert loaded.groups[15].prompt == "Q: Add 16 and 1.\nA: " and loaded.groups[15].responses == ("17.<eos>", "16.<eos>")


def test_ties_of_every_format_are_dropped_and_counted(tmp_path, tokenizer):
    ties = [
        {**K_WAY, "ranking": [["c2", "c3"]]},  # one tier: all tied
        {**PAIR, "rejected": "3."},  # explicit prompt, chosen = rejected
        {"chosen": "Q: x\nA: same", "rejected": "Q: x\nA: same"},  # implicit prompt: equal after extraction
        {"chosen": HH + " 3.", "rejected": HH + " 3."},
    ]
    loaded = load_rankings(str(write_jsonl(tmp_path / "mixed.jsonl", [PAIR, *ties, K_WAY])), tokenizer)
    assert loaded.ties_dropped == 4 and [len(g.responses) for g in loaded.groups] == [2, 4]


def test_a_file_of_ties_only_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "ties.jsonl", [{**PAIR, "rejected": "3."}, {**K_WAY, "ranking": [["c1", "c2"]]}])
    with pytest.raises(InputError, match=r"ties.jsonl: all 2 records are ties \(chosen equals rejected, or a ranking with a single tier\)"):
        load_rankings(str(path))


def test_conversation_without_a_chat_template_is_refused(tmp_path, tokenizer):
    path = write_jsonl(tmp_path / "c.jsonl", [{"prompt": [user("a")], "chosen": [assistant("b")], "rejected": [assistant("c")]}])
    with pytest.raises(InputError, match=r"c.jsonl line 1: conversational records need .* chat template; none was given"):
        load_rankings(str(path))
    bare = train_char_tokenizer(["abc"])
    bare.chat_template = None
    with pytest.raises(InputError, match=r"line 1: conversational records need .* chat template; this one has none"):
        load_rankings(str(path), bare)


def test_parquet_errors_name_the_record_and_missing_files(tmp_path):
    Dataset.from_list([PAIR, {**PAIR, "rejected": None}]).to_parquet(str(tmp_path / "p.parquet"))
    with pytest.raises(InputError, match=r"p.parquet record 1: missing field 'rejected' " + EXPECTED):
        load_rankings(str(tmp_path / "p.parquet"))
    with pytest.raises(InputError, match=r"data.rankings.path: .*nope.jsonl does not exist"):
        load_rankings(str(tmp_path / "nope.jsonl"))
    (tmp_path / "d.csv").write_text("a,b\n")
    with pytest.raises(InputError, match=r"rm.data.path: .*expected a .jsonl, .json or .parquet file"):
        load_rankings(str(tmp_path / "d.csv"), key="rm.data")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(InputError, match=r"empty.jsonl: no records"):
        load_rankings(str(tmp_path / "empty.jsonl"))


def groups_for(n_prompts, annotators=2):
    return [
        RankingGroup(f"Q: prompt {p}\nA: ", ("good", "bad"), ((0,), (1,)), f"p{p}:a{a}", f"a{a}")
        for p in range(n_prompts)
        for a in range(annotators)
    ]


def test_split_by_prompt_keeps_each_prompt_on_one_side():
    groups = groups_for(100)
    train, heldout = split_by_prompt(groups, heldout_fraction=0.2, seed=0)
    train_prompts, heldout_prompts = {g.prompt for g in train}, {g.prompt for g in heldout}
    assert not train_prompts & heldout_prompts
    assert len(heldout_prompts) == 20 and len(heldout) == 40 and len(train) == 160  # both annotators go together
    assert sorted(train + heldout, key=groups.index) == groups and train == sorted(train, key=groups.index)

    # deterministic by seed, whatever the record order; another seed picks other prompts
    shuffled = groups[:]
    random.Random(1).shuffle(shuffled)
    assert {g.prompt for g in split_by_prompt(shuffled, 0.2, seed=0)[1]} == heldout_prompts
    assert split_by_prompt(groups, 0.2, seed=0) == (train, heldout)
    assert {g.prompt for g in split_by_prompt(groups, 0.2, seed=1)[1]} != heldout_prompts


def test_split_by_prompt_edges():
    three = groups_for(3, annotators=1)
    assert len(split_by_prompt(three, 0.1, seed=0)[1]) == 1  # round(0.3) = 0, but a positive fraction holds out one
    assert len(split_by_prompt(three, 0.9, seed=0)[0]) == 1  # and keeps one for training
    assert split_by_prompt(three, 0.0, seed=0) == (three, [])
    assert split_by_prompt(three, 1.0, seed=0) == ([], three)
    with pytest.raises(ValueError, match=r"heldout_fraction must be in \[0, 1\], got 1.5"):
        split_by_prompt(three, 1.5, seed=0)
