"""Reward-model training data: human comparisons from local files, normalised to RankingGroup records.

Accepted files, as in stages/data.py: JSONL/JSON, Parquet, or a directory written by `datasets`'
save_to_disk. The format is detected per record:
1. K-way labeling export (labeling spec §6.1): {"prompt_id", "prompt", "candidates": [{"id", "text", ...}],
   "ranking": [["c2"], ["c3", "c4"], ["c1"]], "annotator_id"?, ...}. Tiers are best first and the
   candidates of one tier are tied. Candidates in no tier are dropped from `responses` (they would
   form no pair anyway); the other fields (policy, flags, likert, ...) are not read.
2. TRL pairwise with an explicit prompt: {"prompt", "chosen", "rejected"}, all plain strings, or
   conversational (prompt a list of {role, content} messages, chosen/rejected lists ending with the
   assistant's reply).
3. TRL implicit prompt: {"chosen", "rejected"} conversations sharing every message but the last (the
   shared messages are the prompt); or plain strings, split at their longest common prefix cut back to
   a whitespace boundary (so no word straddles prompt and response), as TRL's `extract_prompt` does.
4. Anthropic HH transcripts: {"chosen", "rejected"} strings "\\n\\nHuman: ...\\n\\nAssistant: ...", possibly
   several turns; the prompt runs up to and including the last "\\n\\nAssistant:" and must be the same in
   both; the response is the rest (prompt + response is the transcript).
Pairwise records become K = 2 groups, chosen first: tiers ((0,), (1,)). Their optional `margin` is
ignored for now. Conversations are rendered with the tokenizer's chat template, as for SFT.

Ties: a record with no strict pair (a pairwise record whose chosen equals its rejected once the prompt
is taken off, or a K-way ranking with a single tier, all candidates tied) says nothing the loss can
use. It is dropped and counted (LoadedRankings.ties_dropped, which the reward and DPO stages report),
as the K-way loss drops tied pairs; real preference files carry such records, and one of them is no
reason to refuse the file. A file whose every record is a tie is refused: there is nothing to train on.

Multi-annotator policy (labeling spec §6.3 (a)): each annotator's ranking stays its own group, with
group_id = prompt_id + ":" + annotator_id. A pairwise record may carry its own `group_id`; a record
with no prompt_id gets one from a hash of its rendered prompt text.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.config import Config
from common.errors import InputError
from common.files import numbered_jsonl_records
from common.run_dir import RunDir
from stages.data.files import open_dataset, render_conversation

EXPECTED = "expected K-way prompt/candidates/ranking, pairwise prompt/chosen/rejected, or chosen/rejected"
HH_HUMAN, HH_ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


@dataclass(frozen=True)
class RankingGroup:
    """One prompt's ranked candidates: every strict pair of it forms one batch element (IG Eq. 1)."""

    prompt: str  # rendered prompt text
    responses: tuple[str, ...]  # K >= 2 candidate responses
    tiers: tuple[tuple[int, ...], ...]  # indices into responses, best tier first; a tier holds tied candidates
    group_id: str  # prompt id (+ annotator id when known): keeps a prompt's pairs in one batch element
    annotator_id: str | None = None


@dataclass(frozen=True)
class LoadedRankings:
    """What a rankings file holds: its informative records, and how many records were ties (no strict pair)."""

    groups: list[RankingGroup]
    ties_dropped: int


# ---- reading files ----------------------------------------------------------------------------


def _json_records(path: Path) -> Iterator[tuple[str, dict]]:
    """Records of a .json file: an array of objects, one object, or JSON Lines (as `datasets` accepts)."""
    try:
        loaded = json.loads(path.read_text())
    except json.JSONDecodeError:
        for number, record in numbered_jsonl_records(path):
            yield f"{path} line {number}", record
        return
    for index, record in enumerate(loaded if isinstance(loaded, list) else [loaded]):
        if not isinstance(record, dict):
            raise InputError(f"{path} record {index}: expected a JSON object, got {type(record).__name__}")
        yield f"{path} record {index}", record


def _records(path: Path, key: str, split: str | None) -> Iterator[tuple[str, dict]]:
    """(where, record) pairs; `where` names the file and the line (JSONL) or the record index.

    JSON files are parsed here rather than through Arrow, which would force one schema on records
    of mixed formats and on per-candidate dicts such as flags and likert."""
    if path.is_file() and path.suffix == ".jsonl":
        for number, record in numbered_jsonl_records(path):
            yield f"{path} line {number}", record
    elif path.is_file() and path.suffix == ".json":
        yield from _json_records(path)
    else:
        for index, record in enumerate(open_dataset(path, key, split)):
            yield f"{path} record {index}", record


def _field(record: dict, name: str, where: str):
    value = record.get(name)
    if value is None or (isinstance(value, (str, list)) and not value):
        raise InputError(f"{where}: missing field {name!r} ({EXPECTED})")
    return value


def _messages(value, name: str, where: str, reply: bool = False) -> list[dict]:
    """A list of {role, content} messages; a reply (chosen/rejected) must end with the assistant's."""
    if not isinstance(value, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        raise InputError(f"{where}: field {name!r} must be a list of {{role, content}} messages")
    if reply and (not value or value[-1]["role"] != "assistant"):
        raise InputError(f"{where}: field {name!r} must end with the assistant's reply")
    return value


def _group_id(record: dict, prompt: str, annotator_id: str | None) -> str:
    if record.get("group_id") not in (None, ""):
        return str(record["group_id"])
    prompt_id = record.get("prompt_id")
    if prompt_id in (None, ""):
        prompt_id = "prompt-" + hashlib.sha256(prompt.encode()).hexdigest()[:16]
    return f"{prompt_id}:{annotator_id}" if annotator_id is not None else str(prompt_id)


# ---- one record per format ----------------------------------------------------------------------


def _k_way(record: dict, where: str, tokenizer) -> tuple[str, tuple[str, ...], tuple[tuple[int, ...], ...]]:
    """Prompt, ranked responses (candidate order, unranked dropped) and tiers of a labeling export."""
    prompt = _field(record, "prompt", where)
    candidates = _field(record, "candidates", where)
    ranking = _field(record, "ranking", where)
    if not isinstance(candidates, list):
        raise InputError(f"{where}: field 'candidates' must be a list of {{id, text}} objects")
    texts: dict[str, str] = {}
    for index, candidate in enumerate(candidates):
        has_id = isinstance(candidate, dict) and candidate.get("id") not in (None, "")
        if not (has_id and isinstance(candidate.get("text"), str)):
            raise InputError(f"{where}: candidate {index} must be an object with an 'id' and a 'text' string")
        if str(candidate["id"]) in texts:
            raise InputError(f"{where}: candidate id {candidate['id']} is used twice; give each candidate its own id")
        texts[str(candidate["id"])] = candidate["text"]
    if not isinstance(ranking, list):
        raise InputError(f"{where}: field 'ranking' must be a list of tiers, each a list of candidate ids")
    tier_of: dict[str, int] = {}
    for number, tier in enumerate(ranking):
        if not isinstance(tier, list) or not tier:
            raise InputError(f"{where}: ranking tier {number} must be a non-empty list of candidate ids, got {tier!r}")
        for candidate_id in map(str, tier):
            if candidate_id not in texts:
                raise InputError(f"{where}: ranking names {candidate_id}, which is not a candidate ({', '.join(texts)})")
            if candidate_id in tier_of:
                twice = "twice in one tier" if tier_of[candidate_id] == number else "in two tiers"
                raise InputError(f"{where}: candidate {candidate_id} appears {twice}; rank each candidate exactly once")
            tier_of[candidate_id] = number

    kept = [candidate_id for candidate_id in texts if candidate_id in tier_of]
    position = {candidate_id: index for index, candidate_id in enumerate(kept)}
    tiers = tuple(tuple(position[str(c)] for c in tier) for tier in ranking)
    if isinstance(prompt, str):
        return prompt, tuple(texts[c] for c in kept), tiers
    context = _messages(prompt, "prompt", where)
    rendered = [render_conversation(tokenizer, context, [{"role": "assistant", "content": texts[c]}], where) for c in kept]
    return rendered[0][0], tuple(response for _, response in rendered), tiers


def _hh_split(transcript: str, name: str, where: str) -> tuple[str, str]:
    cut = transcript.rfind(HH_ASSISTANT)
    if cut < 0:
        raise InputError(f"{where}: field {name!r} is not an HH transcript: it has no {HH_ASSISTANT!r} turn")
    cut += len(HH_ASSISTANT)
    return transcript[:cut], transcript[cut:]  # prompt + response is the transcript the RM scores


def _pairwise(record: dict, where: str, tokenizer) -> tuple[str, tuple[str, str]]:
    """Prompt and (chosen, rejected) responses of a TRL or HH pairwise record."""
    chosen, rejected = _field(record, "chosen", where), _field(record, "rejected", where)
    prompt = record.get("prompt")
    if prompt not in (None, "", []):  # explicit prompt
        if isinstance(prompt, str):
            for name, value in (("chosen", chosen), ("rejected", rejected)):
                if not isinstance(value, str):
                    raise InputError(f"{where}: 'prompt' is a string, so {name!r} must be one too, not {type(value).__name__}")
            return prompt, (chosen, rejected)
        context = _messages(prompt, "prompt", where)
        prompt, chosen = render_conversation(tokenizer, context, _messages(chosen, "chosen", where, reply=True), where)
        _, rejected = render_conversation(tokenizer, context, _messages(rejected, "rejected", where, reply=True), where)
        return prompt, (chosen, rejected)

    if isinstance(chosen, list) or isinstance(rejected, list):  # implicit prompt, conversational
        chosen = _messages(chosen, "chosen", where, reply=True)
        rejected = _messages(rejected, "rejected", where, reply=True)
        if chosen[:-1] != rejected[:-1]:
            raise InputError(f"{where}: 'chosen' and 'rejected' must share every message but the last (the prompt)")
        prompt, chosen = render_conversation(tokenizer, chosen[:-1], chosen[-1:], where)
        _, rejected = render_conversation(tokenizer, rejected[:-1], rejected[-1:], where)
        return prompt, (chosen, rejected)

    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise InputError(f"{where}: field {name!r} must be a string or a list of messages, not {type(value).__name__}")
    if any(HH_ASSISTANT in t or t.startswith(HH_HUMAN) for t in (chosen, rejected)):  # Anthropic HH
        prompt, chosen = _hh_split(chosen, "chosen", where)
        rejected_prompt, rejected = _hh_split(rejected, "rejected", where)
        if prompt != rejected_prompt:
            raise InputError(
                f"{where}: 'chosen' and 'rejected' differ before their last {HH_ASSISTANT!r}; both must share the prompt"
            )
        return prompt, (chosen, rejected)

    # implicit prompt, plain strings: the longest common prefix, cut after its last whitespace
    prefix = os.path.commonprefix([chosen, rejected])
    cut = max(prefix.rfind(space) for space in " \n\t") + 1
    return chosen[:cut], (chosen[cut:], rejected[cut:])


def _ranking_group(record: dict, where: str, tokenizer) -> RankingGroup | None:
    """The record as a RankingGroup, or None for a tie (no strict pair: one tier, or chosen = rejected)."""
    if record.get("candidates") is not None or record.get("ranking") is not None:
        prompt, responses, tiers = _k_way(record, where, tokenizer)
        if len(tiers) < 2:
            return None
    else:
        prompt, responses = _pairwise(record, where, tokenizer)
        if responses[0] == responses[1]:
            return None
        tiers = ((0,), (1,))
    annotator_id = None if record.get("annotator_id") in (None, "") else str(record["annotator_id"])
    return RankingGroup(prompt, responses, tiers, _group_id(record, prompt, annotator_id), annotator_id)


# ---- public API ---------------------------------------------------------------------------------


def load_rankings(path: str, tokenizer=None, key: str = "data.rankings", split: str | None = None) -> LoadedRankings:
    """Every record of a local file or save_to_disk directory (`split` of a DatasetDict, default
    train) as a RankingGroup, ties dropped and counted. `tokenizer` (with a chat template) is needed
    only for conversational records. Bad records raise InputError naming the file and the line (JSONL)
    or record index; so does a file with no record, or with ties only."""
    path = Path(path)
    read = [_ranking_group(record, where, tokenizer) for where, record in _records(path, key, split)]
    if not read:
        raise InputError(f"{path}: no records")
    groups = [group for group in read if group is not None]
    if not groups:
        raise InputError(
            f"{path}: all {len(read)} records are ties (chosen equals rejected, or a ranking with a single tier), "
            "so there is no strict pair to learn from"
        )
    return LoadedRankings(groups, ties_dropped=len(read) - len(groups))


def split_by_prompt(
    groups: Sequence[RankingGroup], heldout_fraction: float, seed: int
) -> tuple[list[RankingGroup], list[RankingGroup]]:
    """(train, heldout) at the prompt level: groups with the same prompt text land on the same side.

    The held-out prompts are the round(heldout_fraction x P) distinct prompts with the smallest
    sha256(seed, prompt), so the split depends only on the seed and the set of prompts (not on record
    order), and a prompt mostly keeps its side when more data arrives. With 0 < heldout_fraction < 1
    and two prompts or more, each side gets at least one prompt. Both lists keep the input order.
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    prompts = sorted({g.prompt for g in groups}, key=lambda p: hashlib.sha256(f"{seed}\0{p}".encode()).hexdigest())
    n_heldout = round(heldout_fraction * len(prompts))
    if 0.0 < heldout_fraction < 1.0 and len(prompts) >= 2:
        n_heldout = min(max(n_heldout, 1), len(prompts) - 1)
    heldout_prompts = set(prompts[:n_heldout])
    train = [g for g in groups if g.prompt not in heldout_prompts]
    heldout = [g for g in groups if g.prompt in heldout_prompts]
    return train, heldout


def rankings_path(config: Config, run_dir: RunDir) -> tuple[Path, str | None]:
    """The rankings the reward model and DPO read: data.rankings (and its split), or the label stage's export."""
    if config.data.rankings is not None:
        return Path(config.data.rankings.path), config.data.rankings.split
    return run_dir.stage_dir("label") / "rankings.jsonl", None


@dataclass(frozen=True)
class TrainingRankings:
    """The rankings a stage trains on, split by prompt, and where they came from."""

    path: Path
    train: list[RankingGroup]
    heldout: list[RankingGroup]
    ties_dropped: int


def training_rankings(config: Config, run_dir: RunDir, tokenizer, stage: str) -> TrainingRankings:
    """What the reward model and DPO read (rankings_path), tie records dropped, counted and logged, split
    by prompt as rm.heldout_fraction says (so both stages hold out the same prompts)."""
    path, split = rankings_path(config, run_dir)
    loaded = load_rankings(str(path), tokenizer, split=split)
    if loaded.ties_dropped:
        print(f"[{stage}] {path}: dropped {loaded.ties_dropped} tie records (no strict pair)", flush=True)
    train, heldout = split_by_prompt(loaded.groups, config.rm.heldout_fraction, config.run.seed)
    return TrainingRankings(path, train, heldout, loaded.ties_dropped)

