"""Moving rankings to and from Argilla and Label Studio: pure conversions (and the reading and writing
of the files) between our K-way ranking records (`LabelStore.rankings()`, the rankings.jsonl of an export snapshot: prompt_id, prompt,
candidates [{id, text, policy}], ranking = tiers best first, ties sharing a tier, annotator_id,
likert, ...) and each tool's export, so a team can move between tools without losing rankings or ties.

Argilla (the `rg.RankingQuestion` of its "collecting comparison data" guide). A dataset with the
TextFields `prompt`, `response_1` ... `response_K` and the RankingQuestion `ranking` over the values
`response_1` ... `response_K`; the optional RatingQuestions `likert_1` ... `likert_K` (1-7) carry the
Likert scores. One Argilla record per prompt, each annotator's answers among its responses. We write
and read Argilla 2.x's record dictionaries as `dataset.records.to_list(flatten=False)` and
`dataset.records.to_json(path)` write them: {"id", "fields", "metadata", "suggestions", "responses":
{question: [{"value", "user_id"}]}, "vectors", "_server_id"}, with "status" beside "user_id" where
the SDK writes it (we do). We also read `to_list(flatten=True)` (what `to_datasets()` holds: fields and metadata at the top, a question's answers
in "<question>.responses", ".responses.users", ".responses.status") and Argilla 1.x FeedbackDataset
records ({"fields", "metadata", "external_id", "responses": [{"user_id", "values": {question: {"value"}},
"status"}]}). A ranking's value is the server's shape, a list of {"value", "rank"} (rank 1 best, ties
share a rank), which we write; a bare list of values (Argilla 2.x's SDK shape, a strict order) is read
too. Argilla identifies an annotator by `user_id`: we write the annotator's name there (map it to your
Argilla users' ids when logging) and read back whatever it holds. The metadata `prompt_id`,
`response_<i>_id` and `response_<i>_policy` keep our ids and policies; without them a record's id
and the field names stand in. Only submitted responses (or ones with no status) are rankings. Flags,
confidence and notes are not carried to Argilla.

Label Studio (its JSON export of a project: a list of tasks {"id", "data", "annotations": [{"id",
"completed_by", "result": [...], "was_cancelled", ...}]}), in two labeling configs:
- `label_studio_config(k)`: `<List>` + `<Ranker>` with `<Bucket>`s tier_1 ... tier_K, best first, the
  candidates of one bucket tied. data = {prompt_id, prompt, candidates: [{id, title, body}], policies};
  a result {"type": "ranker", "value": {"ranker": {"tier_1": [ids], ...}}}. Empty buckets are skipped;
  a candidate left in the list ("_") is unranked, which we refuse. A plain `<Ranker>` without buckets
  ({"ranker": [ids]}, a strict order, no ties) is read too.
- `label_studio_pairwise_config()`: `<Pairwise>` over two `<Text>`s, left and right (K = 2). Pairwise
  has no tie (selecting nothing removes its result), so the config adds `<Choices name="tie">` with one
  choice, "Equally good". data = {prompt_id, prompt, left, right, left_id, right_id, policies}; results
  {"type": "pairwise", "value": {"selected": "left" | "right"}} or {"type": "choices", "from_name": "tie",
  "value": {"choices": ["Equally good"]}}.
`completed_by` is the annotator: Label Studio writes a user id, or with annotator details an object
{id, email, ...}; we write {id, email: the annotator's name} and read the email, else
"label-studio-user-<id>". Cancelled (skipped) annotations are not rankings. Likert scores, flags,
confidence and notes are not carried to Label Studio.

A task or record with no ranking still carries its prompt and candidates: importing it adds the prompt
for annotators. Bad input raises LabelingError naming the file, the record (and the annotator or
annotation) and what was expected.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from common.files import atomic_write_json, atomic_write_text, numbered_jsonl_records
from labeling_ui.agreement import ranks_from_tiers, tiers_from_ranks
from labeling_ui.schema import LabelingError
from labeling_ui.store import blind_label

Located = tuple[str, dict]  # (where: "FILE record N" or "FILE line N", the record)

# ---- reading an export file -----------------------------------------------------------------------


def read_export(path: str | Path) -> list[Located]:
    """The records of an Argilla or Label Studio export: a JSON array (Argilla's to_json, Label Studio's
    JSON export) or JSON Lines (a `datasets` export of Argilla's records), each with where it stands."""
    path = Path(path)
    if not path.is_file():
        raise LabelingError(f"{path} does not exist")
    text = path.read_text()
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError:
        return [(f"{path} line {number}", record) for number, record in numbered_jsonl_records(path)]
    items = loaded if isinstance(loaded, list) else [loaded]
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise LabelingError(f"{path} record {index}: expected a JSON object, got {type(item).__name__}")
    return [(f"{path} record {index}", item) for index, item in enumerate(items)]



# ---- shared pieces --------------------------------------------------------------------------------


def _kway(prompt_id: str, prompt: str, candidates: list[dict], split: str | None) -> dict[str, Any]:
    record = {"prompt_id": prompt_id, "prompt": prompt, "candidates": candidates}
    if split is not None:
        record["split"] = split
    return record


def _by_prompt(rankings: Iterable[dict]) -> dict[str, list[dict]]:
    """A prompt's rankings (one per annotator) together, prompts in first-seen order."""
    grouped: dict[str, list[dict]] = {}
    for ranking in rankings:
        grouped.setdefault(ranking["prompt_id"], []).append(ranking)
    return grouped


def _string(value: Any, what: str, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise LabelingError(f"{where}: expected {what} as a non-empty string, got {value!r}")
    return value


# ---- Argilla -------------------------------------------------------------------------------------

ARGILLA_RANKING = "ranking"
ARGILLA_PROMPT = "prompt"
RESPONSE_FIELD = re.compile(r"^response_([1-9])$")
COUNTED_STATUSES = ("submitted", None)  # Argilla 2.x's to_dict leaves the status out


def to_argilla(rankings: Iterable[dict]) -> list[dict[str, Any]]:
    """One Argilla 2.x record dictionary per prompt (to_list(flatten=False) shape), every annotator's
    ranking (and Likert scores) among its responses."""
    records = []
    for prompt_id, group in _by_prompt(rankings).items():
        first = group[0]
        field_of = {c["id"]: f"response_{i}" for i, c in enumerate(first["candidates"], start=1)}
        metadata: dict[str, Any] = {"prompt_id": prompt_id, "split": first.get("split", "train")}
        for candidate in first["candidates"]:
            metadata[f"{field_of[candidate['id']]}_id"] = candidate["id"]
            metadata[f"{field_of[candidate['id']]}_policy"] = candidate.get("policy", "")
        responses: dict[str, list[dict]] = {}
        for ranking in group:
            ranks = ranks_from_tiers(ranking["ranking"])
            answer = {"user_id": ranking["annotator_id"], "status": "submitted"}
            responses.setdefault(ARGILLA_RANKING, []).append(
                {"value": [{"value": field_of[c], "rank": ranks[c]} for tier in ranking["ranking"] for c in tier], **answer})
            for candidate, score in (ranking.get("likert") or {}).items():
                responses.setdefault(f"likert_{field_of[candidate][len('response_'):]}", []).append({"value": score, **answer})
        records.append({
            "id": prompt_id,
            "fields": {ARGILLA_PROMPT: first["prompt"], **{field_of[c["id"]]: c["text"] for c in first["candidates"]}},
            "metadata": metadata, "suggestions": {}, "responses": responses, "vectors": {}, "_server_id": None,
        })
    return records


def from_argilla(records: Iterable[Located]) -> list[Located]:
    """K-way ranking records (one per submitted ranking; a prompt with none gives a record without
    ranking), each with where its Argilla record stands, from records of any shape the module docstring lists."""
    kway = []
    for where, record in records:
        fields, metadata, responses = _argilla_parts(record, where)
        prompt = _string(fields.get(ARGILLA_PROMPT), f"the text field {ARGILLA_PROMPT!r}", where)
        numbers = sorted(int(m.group(1)) for name in fields if (m := RESPONSE_FIELD.match(name)) and fields[name] is not None)
        if len(numbers) < 2:
            raise LabelingError(f"{where}: expected text fields {ARGILLA_PROMPT!r} and response_1 ... response_K (K >= 2), "
                                f"got fields {sorted(fields)}")
        id_of = {f"response_{n}": str(metadata.get(f"response_{n}_id") or f"response_{n}") for n in numbers}
        candidates = [{"id": id_of[f"response_{n}"], "text": _string(fields[f"response_{n}"], f"field 'response_{n}'", where),
                       "policy": str(metadata.get(f"response_{n}_policy") or "")} for n in numbers]
        prompt_id = str(metadata.get("prompt_id") or record.get("id") or record.get("external_id") or "")
        if not prompt_id:
            raise LabelingError(f"{where}: expected the record's 'id' (or metadata 'prompt_id') to name the prompt")
        base = _kway(prompt_id, prompt, candidates, metadata.get("split"))
        likert = _argilla_likert(responses, id_of, where)
        rankings = []
        for answer in responses.get(ARGILLA_RANKING, []):
            if answer.get("status") not in COUNTED_STATUSES:
                continue  # a draft or a discarded record is no ranking
            user = str(answer.get("user_id") or "")
            if not user:
                raise LabelingError(f"{where}: a {ARGILLA_RANKING!r} response has no user_id")
            tiers = _argilla_tiers(answer.get("value"), id_of, f"{where}, user {user}")
            rankings.append((f"{where}, user {user}", {**base, "ranking": tiers, "annotator_id": user, "likert": likert.get(user, {})}))
        kway.extend(rankings or [(where, base)])
    return kway


def _argilla_parts(record: dict, where: str) -> tuple[dict, dict, dict[str, list[dict]]]:
    """(fields, metadata, responses by question: [{value, user_id, status}]) of any accepted shape."""
    metadata = record.get("metadata") or {}
    responses = record.get("responses")
    if isinstance(record.get("fields"), dict) and isinstance(responses, list):  # Argilla 1.x FeedbackRecord
        by_question: dict[str, list[dict]] = {}
        for answer in responses:
            values = answer.get("values") if isinstance(answer, dict) else None
            if not isinstance(values, dict):
                raise LabelingError(f"{where}: expected each response as {{user_id, values: {{question: {{value}}}}, status}}")
            for question, value in values.items():
                by_question.setdefault(question, []).append(
                    {"value": (value or {}).get("value"), "user_id": answer.get("user_id"), "status": answer.get("status")})
        return record["fields"], metadata, by_question
    if isinstance(record.get("fields"), dict):  # Argilla 2.x, nested
        if not isinstance(responses or {}, dict):
            raise LabelingError(f"{where}: expected 'responses' as {{question: [{{value, user_id, status}}]}}")
        return record["fields"], metadata, responses or {}
    flat_questions = [key[: -len(".responses")] for key in record if key.endswith(".responses")]
    if ARGILLA_PROMPT not in record:
        raise LabelingError(f"{where}: expected an Argilla record: 'fields' (to_list, to_json) or a flattened record "
                            f"with the field {ARGILLA_PROMPT!r} at the top (to_datasets)")
    by_question = {}
    for question in flat_questions:
        values = record[f"{question}.responses"] or []
        users = record.get(f"{question}.responses.users") or []
        statuses = record.get(f"{question}.responses.status") or [None] * len(values)
        if len(users) != len(values) or len(statuses) != len(values):
            raise LabelingError(f"{where}: '{question}.responses' and its '.users' and '.status' differ in length")
        by_question[question] = [{"value": v, "user_id": u, "status": s} for v, u, s in zip(values, users, statuses)]
    reserved = {"id", "_server_id", "status"}
    fields = {k: v for k, v in record.items() if k == ARGILLA_PROMPT or RESPONSE_FIELD.match(k)}
    flat_metadata = {k: v for k, v in record.items() if k not in fields and k not in reserved and "." not in k}
    return fields, flat_metadata, by_question


def _argilla_tiers(value: Any, id_of: dict[str, str], where: str) -> list[list[str]]:
    """Tiers from a RankingQuestion value: [{value, rank}] (equal ranks tie) or [values] best first."""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = [{"value": v, "rank": number} for number, v in enumerate(value, start=1)]
    if not isinstance(value, list) or not all(isinstance(v, dict) and isinstance(v.get("rank"), int) for v in value):
        raise LabelingError(f"{where}: expected the {ARGILLA_RANKING!r} value as a list of {{value, rank}} (rank an integer) "
                            f"or of response names best first, got {value!r}")
    ranks: dict[str, int] = {}
    for item in value:
        if item.get("value") not in id_of:
            raise LabelingError(f"{where}: the ranking names {item.get('value')!r}, which is not a response field ({', '.join(id_of)})")
        if id_of[item["value"]] in ranks:
            raise LabelingError(f"{where}: the ranking names {item['value']} twice; rank each response exactly once")
        ranks[id_of[item["value"]]] = item["rank"]
    if len(ranks) != len(id_of):
        missing = [field for field, candidate in id_of.items() if candidate not in ranks]
        raise LabelingError(f"{where}: the ranking leaves out {', '.join(missing)}; rank every response")
    return tiers_from_ranks(ranks)


def _argilla_likert(responses: dict[str, list[dict]], id_of: dict[str, str], where: str) -> dict[str, dict[str, int]]:
    """Submitted Likert scores by user, then candidate id, from the questions likert_<i>."""
    by_user: dict[str, dict[str, int]] = {}
    for field, candidate in id_of.items():
        for answer in responses.get(f"likert_{field[len('response_'):]}", []):
            if answer.get("status") not in COUNTED_STATUSES:
                continue
            score = answer.get("value")
            if not isinstance(score, int) or isinstance(score, bool) or not 1 <= score <= 7:
                raise LabelingError(f"{where}: likert of {field} by {answer.get('user_id')} must be an integer from 1 to 7, got {score!r}")
            by_user.setdefault(str(answer.get("user_id")), {})[candidate] = score
    return by_user


# ---- Label Studio ---------------------------------------------------------------------------------

RANKER, BUCKET_PREFIX, UNPLACED = "rank", "tier_", "_"
TIE_CHOICE = "Equally good"
TITLES = ("best", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth")


def label_studio_config(k: int) -> str:
    """The labeling config of `to_label_studio`'s tasks: the prompt, the K candidates as a list under
    blinded titles, and K buckets, tier 1 best; responses of similar quality share a bucket."""
    buckets = "\n".join(f'    <Bucket name="{BUCKET_PREFIX}{n}" title="Tier {n} ({TITLES[n - 1]})" />' for n in range(1, k + 1))
    return ("<View>\n"
            '  <Header value="Prompt" />\n'
            '  <Text name="prompt" value="$prompt" />\n'
            '  <Header value="Drag every response into a tier: tier 1 is the best; responses of similar quality share a tier" />\n'
            '  <List name="candidates" value="$candidates" title="Responses" />\n'
            f'  <Ranker name="{RANKER}" toName="candidates">\n{buckets}\n  </Ranker>\n'
            "</View>\n")


def label_studio_pairwise_config() -> str:
    """The labeling config of `to_label_studio_pairwise`'s tasks: pick the better of two, or call a tie."""
    return ("<View>\n"
            '  <Header value="Prompt" />\n'
            '  <Text name="prompt" value="$prompt" />\n'
            '  <Header value="Click the better response, or mark them equally good" />\n'
            '  <Pairwise name="preference" toName="left,right" />\n'
            '  <Text name="left" value="$left" />\n'
            '  <Text name="right" value="$right" />\n'
            f'  <Choices name="tie" toName="left" showInline="true">\n    <Choice value={quoteattr(TIE_CHOICE)} />\n  </Choices>\n'
            "</View>\n")


def _completed_by(names: list[str], name: str) -> dict[str, Any]:
    # Label Studio's export with annotator details; its accounts are e-mail addresses, ours names
    return {"id": names.index(name) + 1, "email": name, "first_name": "", "last_name": ""}


def _annotation(number: int, task: int, names: list[str], ranking: dict, result: list[dict]) -> dict[str, Any]:
    return {"id": number, "task": task, "completed_by": _completed_by(names, ranking["annotator_id"]), "result": result,
            "was_cancelled": False, "ground_truth": False, "created_at": ranking.get("submitted_at"),
            "updated_at": ranking.get("submitted_at"), "lead_time": None}


def to_label_studio(rankings: Iterable[dict]) -> list[dict[str, Any]]:
    """Label Studio tasks (its JSON export) for `label_studio_config`: one task per prompt, one
    annotation per annotator, the tiers as buckets."""
    grouped = _by_prompt(rankings)
    names = sorted({r["annotator_id"] for group in grouped.values() for r in group})
    tasks, annotations = [], 0
    for number, (prompt_id, group) in enumerate(grouped.items(), start=1):
        first = group[0]
        data = {"prompt_id": prompt_id, "prompt": first["prompt"], "split": first.get("split", "train"),
                "candidates": [{"id": c["id"], "title": blind_label(i), "body": c["text"]} for i, c in enumerate(first["candidates"])],
                "policies": {c["id"]: c.get("policy", "") for c in first["candidates"]}}
        task_annotations = []
        for ranking in group:
            annotations += 1
            buckets = {f"{BUCKET_PREFIX}{n}": list(tier) for n, tier in enumerate(ranking["ranking"], start=1)}
            result = [{"id": f"result-{annotations}", "from_name": RANKER, "to_name": "candidates", "type": "ranker",
                       "origin": "manual", "value": {"ranker": buckets}}]
            task_annotations.append(_annotation(annotations, number, names, ranking, result))
        tasks.append({"id": number, "data": data, "annotations": task_annotations, "predictions": []})
    return tasks


def to_label_studio_pairwise(rankings: Iterable[dict]) -> list[dict[str, Any]]:
    """Label Studio tasks for `label_studio_pairwise_config` (K = 2 only): the first candidate on the
    left; a tie is the "Equally good" choice."""
    grouped = _by_prompt(rankings)
    names = sorted({r["annotator_id"] for group in grouped.values() for r in group})
    tasks, annotations = [], 0
    for number, (prompt_id, group) in enumerate(grouped.items(), start=1):
        first = group[0]
        if len(first["candidates"]) != 2:
            raise LabelingError(f"prompt {prompt_id} has {len(first['candidates'])} candidates: Label Studio's Pairwise takes "
                                "exactly 2; export K > 2 with --format label-studio (Ranker with buckets)")
        left, right = first["candidates"]
        data = {"prompt_id": prompt_id, "prompt": first["prompt"], "split": first.get("split", "train"),
                "left": left["text"], "right": right["text"], "left_id": left["id"], "right_id": right["id"],
                "policies": {c["id"]: c.get("policy", "") for c in first["candidates"]}}
        task_annotations = []
        for ranking in group:
            annotations += 1
            if len(ranking["ranking"]) == 1:
                result = {"from_name": "tie", "to_name": "left", "type": "choices", "value": {"choices": [TIE_CHOICE]}}
            else:
                selected = "left" if ranking["ranking"][0] == [left["id"]] else "right"
                result = {"from_name": "preference", "to_name": "left,right", "type": "pairwise", "value": {"selected": selected}}
            task_annotations.append(_annotation(annotations, number, names, ranking,
                                                [{"id": f"result-{annotations}", "origin": "manual", **result}]))
        tasks.append({"id": number, "data": data, "annotations": task_annotations, "predictions": []})
    return tasks


def from_label_studio(tasks: Iterable[Located]) -> list[Located]:
    """K-way ranking records (one per annotation that is not cancelled; a task with none gives a record
    without ranking), each with where its annotation stands, from Label Studio tasks of either config."""
    kway = []
    for where, task in tasks:
        data = task.get("data")
        if not isinstance(data, dict):
            raise LabelingError(f"{where}: expected a Label Studio task with 'data' and 'annotations'")
        prompt = _string(data.get("prompt"), "data.prompt", where)
        prompt_id = str(data.get("prompt_id") or f"label-studio-task-{task.get('id')}")
        pairwise = "left" in data and "right" in data
        candidates = _pairwise_candidates(data, where) if pairwise else _list_candidates(data, where)
        base = _kway(prompt_id, prompt, candidates, data.get("split"))
        rankings = []
        for index, annotation in enumerate(task.get("annotations") or []):
            if not isinstance(annotation, dict):
                raise LabelingError(f"{where}, annotation {index}: expected an object with 'result' and 'completed_by'")
            if annotation.get("was_cancelled"):
                continue  # skipped by the annotator: no ranking
            at = f"{where}, annotation {annotation.get('id', index)}"
            results = annotation.get("result") or []
            tiers = _pairwise_tiers(results, candidates, at) if pairwise else _ranker_tiers(results, candidates, at)
            rankings.append((at, {**base, "ranking": tiers, "annotator_id": _annotator(annotation.get("completed_by"), at)}))
        kway.extend(rankings or [(where, base)])
    return kway


def _list_candidates(data: dict, where: str) -> list[dict]:
    items = data.get("candidates", data.get("items"))
    if not isinstance(items, list) or not all(isinstance(i, dict) and i.get("id") not in (None, "") for i in items):
        raise LabelingError(f"{where}: expected data.candidates (the List's items: [{{id, title, body}}]) "
                            "or data.left and data.right (Pairwise)")
    policies = data.get("policies") or {}
    return [{"id": str(i["id"]), "text": _string(i.get("body"), f"the body of item {i['id']}", where),
             "policy": str(policies.get(str(i["id"]), ""))} for i in items]


def _pairwise_candidates(data: dict, where: str) -> list[dict]:
    policies = data.get("policies") or {}
    sides = [(str(data.get(f"{side}_id") or side), _string(data.get(side), f"data.{side}", where)) for side in ("left", "right")]
    return [{"id": cid, "text": text, "policy": str(policies.get(cid, ""))} for cid, text in sides]


def _annotator(completed_by: Any, where: str) -> str:
    if isinstance(completed_by, dict) and completed_by.get("email"):
        return str(completed_by["email"])
    user = completed_by.get("id") if isinstance(completed_by, dict) else completed_by
    if isinstance(user, int) and not isinstance(user, bool):
        return f"label-studio-user-{user}"
    raise LabelingError(f"{where}: expected completed_by as a user id or {{id, email}}, got {completed_by!r}")


def _ranker_tiers(results: list, candidates: list[dict], where: str) -> list[list[str]]:
    found = [r for r in results if isinstance(r, dict) and r.get("type") == "ranker"]
    if len(found) != 1 or not isinstance(found[0].get("value"), dict) or "ranker" not in found[0]["value"]:
        raise LabelingError(f"{where}: expected one result of type 'ranker' with value {{'ranker': ...}}, got {len(found)}")
    ranker = found[0]["value"]["ranker"]
    ids = [c["id"] for c in candidates]
    if isinstance(ranker, list):  # a List + Ranker without buckets: a strict order
        tiers = [[str(c)] for c in ranker]
    elif isinstance(ranker, dict):
        buckets = {name: members for name, members in ranker.items() if members}
        if UNPLACED in buckets:
            raise LabelingError(f"{where}: candidates {buckets[UNPLACED]} were left in the list; place every candidate in a tier")
        numbered = {}
        for name, members in buckets.items():
            number = name[len(BUCKET_PREFIX):] if name.startswith(BUCKET_PREFIX) else ""
            if not number.isdigit() or not isinstance(members, list):
                raise LabelingError(f"{where}: unknown bucket {name!r}: expected buckets {BUCKET_PREFIX}1 ... {BUCKET_PREFIX}9, "
                                    "each a list of candidate ids (the labeling config of rlhf label export)")
            numbered[int(number)] = [str(c) for c in members]
        tiers = [numbered[n] for n in sorted(numbered)]
    else:
        raise LabelingError(f"{where}: expected the ranker value as a list of ids or {{bucket: [ids]}}, got {ranker!r}")
    placed = [c for tier in tiers for c in tier]
    if sorted(placed) != sorted(ids):
        raise LabelingError(f"{where}: every candidate must be in exactly one tier: expected {ids}, got {placed}")
    return tiers


def _pairwise_tiers(results: list, candidates: list[dict], where: str) -> list[list[str]]:
    left, right = (c["id"] for c in candidates)
    selected = [r["value"].get("selected") for r in results
                if isinstance(r, dict) and r.get("type") == "pairwise" and isinstance(r.get("value"), dict)]
    tie = any(isinstance(r, dict) and r.get("type") == "choices" and TIE_CHOICE in (r.get("value") or {}).get("choices", [])
              for r in results)
    if len(selected) > 1 or (selected and tie) or (not selected and not tie):
        raise LabelingError(f"{where}: expected one pairwise choice (left or right) or the {TIE_CHOICE!r} choice, "
                            f"got {len(selected)} pairwise results{' and a tie' if tie else ''}")
    if tie:
        return [[left, right]]
    if selected[0] not in ("left", "right"):
        raise LabelingError(f"{where}: a pairwise result selects 'left' or 'right', got {selected[0]!r}")
    return [[left], [right]] if selected[0] == "left" else [[right], [left]]


# ---- writing an export ----------------------------------------------------------------------------

EXPORTS = {"argilla": to_argilla, "label-studio": to_label_studio, "label-studio-pairwise": to_label_studio_pairwise}


def write_export(rankings: list[dict], tool_format: str, folder: str | Path) -> list[Path]:
    """Write `rankings` in one of EXPORTS' formats into `folder`, each file whole or not at all:
    FORMAT-TIME.json, and for Label Studio the labeling config the tasks need, FORMAT-TIME.xml.
    Returns the files written."""
    if not rankings:
        raise LabelingError("there is no submitted ranking to export")
    stem = Path(folder) / f"{tool_format}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}"
    atomic_write_json(stem.with_suffix(".json"), EXPORTS[tool_format](rankings))
    if tool_format == "argilla":
        return [stem.with_suffix(".json")]
    k = max(len(r["candidates"]) for r in rankings)
    config = label_studio_pairwise_config() if tool_format == "label-studio-pairwise" else label_studio_config(k)
    atomic_write_text(stem.with_suffix(".xml"), config)
    return [stem.with_suffix(".json"), stem.with_suffix(".xml")]
