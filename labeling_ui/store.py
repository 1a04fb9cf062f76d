"""The ranking database's operations (the tables are in labeling_ui/schema.py): import, assignment
with reservations, drafts, submissions and their versions, skips, qualification, review,
demonstrations, and the figures and records that exports read.

SQLAlchemy, so any URL works; tested on SQLite (the default, in WAL mode at DIR/labels.db) and
PostgreSQL (for a team: postgresql+psycopg://...). The schema is migrated by Alembic when a store
opens (labeling_ui/migrations). Every method is one transaction, committed before it returns: what
the app acknowledges is on disk. Every method that touches an assignment takes the annotator id from
the caller (the app passes the authenticated user, never a form field) and checks ownership itself.
"""

from __future__ import annotations

import hashlib
import random
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Integer,
    create_engine,
    event,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.orm import Session, aliased, sessionmaker

from labeling_ui.agreement import pairwise_agreement
from labeling_ui.migrations import upgrade
from labeling_ui.review import (
    REVIEW_ACTIONS,
    REVIEW_SKIP_REASON,
    REVIEWER_ROLES,
    Reason,
    disagreement_reasons,
    flag_reason,
    gold_reason,
    skip_reason,
)
from labeling_ui.schema import (
    DEMONSTRATION_SKIP_REASONS,
    DEMONSTRATIONS_BATCH,
    KINDS,
    MAX_NOTE,
    NO_PASSWORD,
    RELEASED,
    ROLES,
    SKIP_REASONS,
    Annotator,
    Assignment,
    Candidate,
    Draft,
    Event,
    LabelingError,
    Prompt,
    Rating,
    Review,
    Submission,
    check_password,
    hash_password,
    new_id,
    now,
    validate_candidates,
    validate_completion,
    validate_ranking,
    validate_tiers,
)

# ---- what the app shows -------------------------------------------------------------------------

@dataclass(frozen=True)
class RankingTask:
    """One assignment as the annotator sees it: candidates in the stored display order, under blinded
    labels A, B, C, ... (no policy names)."""
    assignment_id: str
    prompt: str
    candidates: list[tuple[str, str]]  # (candidate external id, text) in display order
    status: str
    expires_at: datetime


@dataclass(frozen=True)
class Qualification:
    """Where an annotator stands: state is one of QUALIFICATION_STATES; `done` of the `needed` gold items
    ranked while pending (all of them once decided); `score` their agreement with the gold tiers once decided."""
    state: str
    score: float | None
    done: int
    needed: int
    threshold: float


@dataclass(frozen=True)
class DemonstrationTask:
    """One demonstration assignment as the annotator sees it: a prompt to write the response to."""
    assignment_id: str
    prompt: str
    status: str
    expires_at: datetime


@dataclass(frozen=True)
class ReviewItem:
    """One assignment awaiting a reviewer's decision (review_queue): what was submitted, why it is in the
    queue, and the other rankings of its prompt, under annotator names (a reviewer may see them)."""
    assignment_id: str
    annotator: str
    prompt_id: str  # the prompt's external id
    prompt: str
    candidates: list[tuple[str, str]]  # (candidate id, text) by id, as the tiers name them; none for a demonstration
    status: str  # submitted | skipped
    ranking: list[list[str]] | None  # the latest version's tiers; [] for a demonstration, None for a skip
    completion: str | None  # a demonstration's written response
    reasons: list[Reason]  # see labeling_ui.review
    others: list[tuple[str, str, list[list[str]]]]  # (assignment id, annotator, tiers) of the prompt's other rankings
    since: datetime  # when it was submitted (a skip: when it was reserved)


def of_kind(kind: str):
    """Assignments of prompts of one kind: the Rank and Write tabs each see their own. A correlated
    EXISTS, so that each of the annotator's assignments looks its prompt up by primary key instead of
    the database listing every prompt of the kind first."""
    return exists().where(Prompt.id == Assignment.prompt_id, Prompt.kind == kind)


def blind_label(position: int) -> str:
    return chr(ord("A") + position)


def sqlite_url(path) -> str:
    return f"sqlite:///{path}"


def open_run_store(labeling, run_root, batch: str) -> LabelStore:
    """The store of a run: `labeling` is the config's labeling section (its database URL, or SQLite
    at DIR/labels.db), serving the batch of candidates that the sample stage named `batch`."""
    url = labeling.database or sqlite_url(Path(run_root) / "labels.db")
    try:
        store = LabelStore(url, batch=batch, overlap_fraction=labeling.overlap_fraction, gold_every=labeling.gold_every,
                           ttl_minutes=labeling.reservation_minutes, guideline_version=labeling.guideline_version,
                           qualification_items=labeling.qualification_items,
                           qualification_threshold=labeling.qualification_threshold, gold_window=labeling.gold_window,
                           gold_alert=labeling.gold_alert, too_fast_seconds=labeling.too_fast_seconds,
                           review_tau=labeling.review_tau, review_gold_below=labeling.review_gold_below)
    except (ArgumentError, NoSuchModuleError, OperationalError) as exc:
        # a mistyped URL, a driver that is not installed, a server that does not answer: the key to fix
        where = "labeling.database" if labeling.database else f"{Path(run_root) / 'labels.db'}"
        raise LabelingError(f"{where}: cannot open the ranking database {url!r}: {str(exc).splitlines()[0]}") from None
    store.apply_overlap_fraction()  # the config's, even for candidates imported under another
    return store


class LabelStore:
    def __init__(self, url: str, batch: str = "", overlap_fraction: float = 0.1, gold_every: int = 0,
                 ttl_minutes: float = 30.0, guideline_version: str = "v1", qualification_items: int = 0,
                 qualification_threshold: float = 0.75, gold_window: int = 20, gold_alert: float = 0.7, too_fast_seconds: float = 3.0,
                 review_tau: float = 0.3, review_gold_below: float = 0.75):
        sqlite = url.startswith("sqlite")
        # a server's threads each hold a connection while they work: a pool as large as the app's concurrency
        self.engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}) if sqlite else \
            create_engine(url, pool_size=32, max_overflow=16)
        # reads take no write lock: under WAL they see the last commit while a writer works
        self.read_engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}) if sqlite else self.engine
        if sqlite:
            for engine, begin in ((self.engine, "BEGIN IMMEDIATE"), (self.read_engine, "BEGIN")):
                event.listen(engine, "connect", _sqlite_pragmas)
                event.listen(engine, "begin", lambda conn, begin=begin: conn.exec_driver_sql(begin))
        upgrade(self.engine)  # the schema of this version, from whichever version made the database
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)
        self.overlap_fraction, self.gold_every = overlap_fraction, gold_every
        self.ttl = timedelta(minutes=ttl_minutes)
        self.guideline_version = guideline_version
        self.batch = batch
        self.qualification_items, self.qualification_threshold = qualification_items, qualification_threshold
        # read by the quality report (labeling_ui.quality), not by the store
        self.gold_window, self.gold_alert, self.too_fast_seconds = gold_window, gold_alert, too_fast_seconds
        self.review_tau, self.review_gold_below = review_tau, review_gold_below  # what goes to the review queue
        self._one_writer = threading.Lock() if url.startswith("sqlite") else nullcontext()

    @contextmanager
    def reading(self) -> Iterator[Session]:
        """A read-only transaction: a consistent snapshot, no write lock."""
        with self.read_sessions() as session, session.begin():
            yield session

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        # SQLite has one writer at a time: threads queue on a lock here instead of in SQLite's busy
        # handler, whose growing back-off sleeps put seconds into the tail latency under load
        with self._one_writer, self.sessions() as session, session.begin():
            session.info["writes"] = True
            yield session

    # ---- annotators -----------------------------------------------------------------------------

    def add_user(self, name: str, role: str, password: str) -> str:
        if role not in ROLES:
            raise LabelingError(f"role must be one of {ROLES}, got {role!r}")
        if len(password) < 8:
            raise LabelingError("a password needs at least 8 characters")
        try:
            with self.transaction() as s:
                user = Annotator(name=name, role=role, password_hash=hash_password(password))
                s.add(user)
                s.flush()
                return user.id
        except IntegrityError:
            raise LabelingError(f"a user named {name!r} exists") from None

    def authenticate(self, name: str, password: str) -> Annotator | None:
        with self.reading() as s:
            user = s.scalar(select(Annotator).where(Annotator.name == name, Annotator.active))
        return user if user is not None and check_password(password, user.password_hash) else None

    def user(self, name: str) -> Annotator:
        with self.reading() as s:
            user = s.scalar(select(Annotator).where(Annotator.name == name))
        if user is None:
            raise LabelingError(f"no user named {name!r}")
        return user

    # ---- qualification --------------------------------------------------------------------------

    def qualification(self, annotator_id: str) -> Qualification:
        """Where the annotator stands: what the app tells them, and whether they get real work."""
        with self.reading() as s:
            return self._qualification(s, s.get(Annotator, annotator_id))

    def requalify(self, name: str) -> None:
        """An admin re-admits an annotator: pending again, they rank `qualification_items` gold items they
        have not had yet and are decided again. Logged as a qualification event."""
        with self.transaction() as s:
            user = s.scalar(select(Annotator).where(Annotator.name == name))
            if user is None:
                raise LabelingError(f"no user named {name!r}")
            if user.role != "annotator":
                raise LabelingError(f"{name} is a user of role {user.role}: only annotators take the qualification")
            was = user.qualification
            user.qualification, user.qualification_score, user.qualification_at = "pending", None, now()
            s.add(Event(annotator_id=user.id, type="qualification", payload={"state": "pending", "was": was, "reset": True}))

    def _takes_qualification(self, annotator: Annotator) -> bool:
        # admins (and any other role) work unscreened
        return self.qualification_items > 0 and annotator.role == "annotator"

    def _qualification(self, s: Session, annotator: Annotator) -> Qualification:
        """`done` counts gold items ranked while pending; with no qualification configured, or for a role
        that takes none, everyone has passed."""
        needed, threshold = self.qualification_items, self.qualification_threshold
        if not self._takes_qualification(annotator):
            return Qualification("passed", annotator.qualification_score, 0, 0, threshold)
        if annotator.qualification != "pending":
            return Qualification(annotator.qualification, annotator.qualification_score, needed, needed, threshold)
        return Qualification("pending", None, len(self._qualification_rankings(s, annotator)), needed, threshold)

    def _qualification_rankings(self, s: Session, annotator: Annotator) -> list[tuple[list[Any], list[Any]]]:
        """(latest ranking, gold tiers) of each gold item the annotator ranked since their qualification
        began (since an admin last reset it, else ever)."""
        theirs = select(Assignment.id).where(Assignment.annotator_id == annotator.id, Assignment.is_gold)
        if annotator.qualification_at is not None:
            theirs = theirs.where(Assignment.reserved_at >= annotator.qualification_at)
        latest = (select(Submission.assignment_id, func.max(Submission.version).label("version"))
                  .where(Submission.assignment_id.in_(theirs), Submission.reviewer_id.is_(None))
                  .group_by(Submission.assignment_id).subquery())
        rows = s.execute(select(Submission.tiers, Prompt.gold)
                         .join(latest, (latest.c.assignment_id == Submission.assignment_id) & (latest.c.version == Submission.version))
                         .join(Assignment, Assignment.id == Submission.assignment_id)
                         .join(Prompt, Prompt.id == Assignment.prompt_id))
        return [(tiers, gold) for tiers, gold in rows]

    def _qualification_item(self, s: Session, annotator: Annotator, standing: Qualification) -> Assignment:
        """A pending annotator's next gold item, in import order: every annotator is screened on the same set."""
        query, _ = self._open_prompts(annotator.id, gold=True)
        prompt = s.scalar(query.order_by(Prompt.created_at, Prompt.external_id).limit(1))
        if prompt is None:
            raise LabelingError(f"the qualification takes {standing.needed} gold items (labeling.qualification_items) and no "
                                f"gold item is left for {annotator.name} after {standing.done}: an admin must import more "
                                "gold items (prompts with 'gold' tiers) or lower labeling.qualification_items")
        return self._assign(s, prompt, annotator.id)

    def _decide_qualification(self, s: Session, annotator_id: str) -> None:
        """Once a pending annotator has ranked `qualification_items` gold items, their pooled pairwise
        agreement with the gold tiers passes or fails them (none at all, as when they tie everything,
        fails); logged as a qualification event."""
        annotator = s.get(Annotator, annotator_id)
        if not self._takes_qualification(annotator) or annotator.qualification != "pending":
            return
        ranked = self._qualification_rankings(s, annotator)
        if len(ranked) < self.qualification_items:
            return
        score = pairwise_agreement(ranked)
        state = "passed" if score is not None and score >= self.qualification_threshold else "failed"
        annotator.qualification, annotator.qualification_score, annotator.qualification_at = state, score, now()
        s.add(Event(annotator_id=annotator_id, type="qualification",
                    payload={"state": state, "score": score, "items": len(ranked), "threshold": self.qualification_threshold}))

    # ---- import ---------------------------------------------------------------------------------

    def import_records(self, records: Iterable[dict], source: str = "") -> int:
        """Prompts with their K candidates, in the sample stage's candidates.jsonl format
        ({prompt_id, prompt, candidates: [{id, text, policy, sampling?}], gold?, split?, ...}), and
        demonstration prompts ({prompt_id, prompt, kind: "demonstration", split?, ...}: no candidates,
        the annotator writes the response), which go to the pool of demonstrations.
        A prompt already imported is left as it is; returns how many were new."""
        added = 0
        with self.transaction() as s:
            known = set(s.scalars(select(Prompt.external_id).where(Prompt.batch == self.batch)))
            known_demonstrations = set(s.scalars(select(Prompt.external_id).where(Prompt.batch == DEMONSTRATIONS_BATCH)))
            for line, record in enumerate(records, 1):
                where = f"{source} record {line}" if source else f"record {line}"
                candidates = record.get("candidates")
                if not isinstance(record.get("prompt_id"), str) or not isinstance(record.get("prompt"), str):
                    raise LabelingError(f"{where}: expected string fields 'prompt_id' and 'prompt'")
                if record.get("kind", "ranking") not in KINDS:
                    raise LabelingError(f"{where}: 'kind' must be one of {KINDS}, got {record['kind']!r}")
                if record.get("kind") == "demonstration":
                    added += _add_demonstration_prompt(s, record, where, known_demonstrations)
                    continue
                validate_candidates(candidates, where)
                if record["prompt_id"] in known:
                    continue
                known.add(record["prompt_id"])
                overlap = self._overlap(record["prompt_id"])
                extra = {k: v for k, v in record.items() if k not in ("prompt_id", "prompt", "candidates", "gold", "split", "kind")}
                prompt = Prompt(batch=self.batch, external_id=record["prompt_id"], text=record["prompt"], split=record.get("split", "train"),
                                overlap=overlap, gold=record.get("gold"), meta=extra)
                s.add(prompt)
                s.flush()
                for candidate in candidates:
                    s.add(Candidate(prompt_id=prompt.id, external_id=candidate["id"], text=candidate["text"],
                                    policy=candidate.get("policy", ""), sampling=candidate.get("sampling", {})))
                added += 1
        return added

    def _overlap(self, external_id: str) -> bool:
        # by a hash of the id, so the choice depends neither on import order nor on the run
        return int(hashlib.sha256(external_id.encode()).hexdigest()[:8], 16) / 16**8 < self.overlap_fraction

    def apply_overlap_fraction(self) -> int:
        """Decide again from this store's overlap_fraction which prompts of the batch are ranked twice, so
        that a changed labeling.overlap_fraction applies to what is still open (a prompt ranked twice
        keeps both rankings). Returns how many prompts changed; the change is in the event log."""
        with self.transaction() as s:
            changed = [p for p in s.scalars(select(Prompt).where(Prompt.batch == self.batch)) if p.overlap != self._overlap(p.external_id)]
            for prompt in changed:
                prompt.overlap = not prompt.overlap
            if changed:
                s.add(Event(type="overlap", payload={"overlap_fraction": self.overlap_fraction, "prompts_changed": len(changed)}))
        return len(changed)

    def import_rankings(self, records: Iterable[tuple[str, dict]], source: str = "") -> dict[str, int]:
        """Rankings made in another tool (labeling_ui.interchange reads Argilla's and Label Studio's exports,
        `source`), each with where it stands in that file (named by errors), as K-way records: {prompt_id, prompt, candidates: [{id, text, policy?}], split?, ranking: tiers
        best first, annotator_id: a name, likert?: {candidate id: 1-7}, guideline_version?}; a record
        without ranking brings only its prompt. A new prompt joins this store's batch with its candidates;
        a known one must have the same candidate ids. A name the store does not know becomes an annotator
        account that cannot sign in (inactive, no password matches). Each ranking becomes a submitted
        assignment with a Submission version and an `import` event. A ranking equal to the annotator's
        latest one for that prompt adds nothing, so importing a file twice adds nothing; a changed one
        adds a version. Returns how many prompts, annotators and rankings were new."""
        added = {"prompts": 0, "annotators": 0, "rankings": 0}
        with self.transaction() as s:
            for where, record in records:
                prompt, order = self._imported_prompt(s, record, where, added)
                if record.get("ranking") is None:
                    continue
                annotator = self._imported_annotator(s, record.get("annotator_id"), where, added)
                tiers, likert = record["ranking"], record.get("likert") or {}
                try:
                    validate_tiers(order, tiers)
                    if likert:  # a tool that rates rates every candidate
                        validate_ranking(order, tiers, likert, {}, None, "")
                except LabelingError as exc:
                    raise LabelingError(f"{where} ({annotator.name} on prompt {prompt.external_id}): {exc}") from None
                assignment = s.scalar(select(Assignment).where(Assignment.prompt_id == prompt.id, Assignment.annotator_id == annotator.id)
                                      .with_for_update())  # a review of it waits (see _refuse_if_reviewed)
                if assignment is None:
                    assignment = Assignment(prompt_id=prompt.id, annotator_id=annotator.id, display_order=order,
                                            is_gold=prompt.gold is not None, expires_at=now())
                    s.add(assignment)
                    s.flush()
                else:
                    latest = s.scalar(select(Submission).where(Submission.assignment_id == assignment.id)
                                      .order_by(Submission.version.desc()).limit(1))
                    if latest is not None and latest.tiers == tiers and likert == {
                            r.candidate_id: r.likert for r in s.scalars(select(Rating).where(Rating.submission_id == latest.id))}:
                        continue
                    try:
                        _refuse_if_reviewed(s, assignment)
                    except LabelingError as exc:
                        raise LabelingError(f"{where} ({annotator.name} on prompt {prompt.external_id}): {exc}") from None
                version = _next_version(s, assignment.id)
                submission = Submission(assignment_id=assignment.id, version=version, idempotency_key=f"import:{new_id()}", tiers=tiers,
                                        guideline_version=str(record.get("guideline_version") or ""))
                s.add(submission)
                s.flush()
                s.add_all(Rating(submission_id=submission.id, candidate_id=c, likert=likert[c], flags=[]) for c in order if c in likert)
                assignment.status = "submitted"
                s.add(Event(annotator_id=annotator.id, assignment_id=assignment.id, type="import",
                            payload={"source": source, "tiers": tiers, "version": version}))
                added["rankings"] += 1
        return added

    def _imported_prompt(self, s: Session, record: dict, where: str, added: dict[str, int]) -> tuple[Prompt, list[str]]:
        """The batch's prompt of an imported record (added with its candidates if new), and its candidate ids."""
        prompt_id, candidates = record.get("prompt_id"), record.get("candidates")
        if not isinstance(prompt_id, str) or not prompt_id or not isinstance(record.get("prompt"), str):
            raise LabelingError(f"{where}: expected string fields 'prompt_id' and 'prompt'")
        validate_candidates(candidates, where)
        ids = [c["id"] for c in candidates]
        prompt = s.scalar(select(Prompt).where(Prompt.batch == self.batch, Prompt.external_id == prompt_id))
        if prompt is None:
            prompt = Prompt(batch=self.batch, external_id=prompt_id, text=record["prompt"], split=record.get("split") or "train",
                            overlap=self._overlap(prompt_id))
            s.add(prompt)
            s.flush()
            s.add_all(Candidate(prompt_id=prompt.id, external_id=c["id"], text=c["text"], policy=c.get("policy") or "") for c in candidates)
            added["prompts"] += 1
            return prompt, ids
        known = sorted(s.scalars(select(Candidate.external_id).where(Candidate.prompt_id == prompt.id)))
        if known != sorted(ids):
            raise LabelingError(f"{where}: prompt {prompt_id} is in the store with candidates {known}, not {sorted(ids)}")
        return prompt, ids

    def _imported_annotator(self, s: Session, name: Any, where: str, added: dict[str, int]) -> Annotator:
        """The annotator of that name, created as an account that cannot sign in if the store has none."""
        if not isinstance(name, str) or not name.strip() or len(name) > 100:
            raise LabelingError(f"{where}: expected 'annotator_id' as a name of 1 to 100 characters, got {name!r}")
        user = s.scalar(select(Annotator).where(Annotator.name == name))
        if user is None:
            user = Annotator(name=name, role="annotator", password_hash=NO_PASSWORD, active=False)
            s.add(user)
            s.flush()
            added["annotators"] += 1
        return user

    # ---- assignment -----------------------------------------------------------------------------

    def next_task(self, annotator_id: str) -> RankingTask | None:
        """The annotator's open reservation, or a new one: a prompt they never had, with open
        coverage (1 annotator, 2 for overlap prompts; a gold item every `gold_every` tasks), reserved
        for the TTL. Expired reservations return to the pool first. None when nothing is left, and for an
        annotator who failed the qualification; one who is pending gets only its gold items."""
        with self.transaction() as s:
            # one reservation at a time per annotator (two tabs); held here, so that later lookups of the
            # annotator in this transaction find it in the session instead of querying again
            annotator = s.get(Annotator, annotator_id, with_for_update=True)
            self._expire(s)
            if self._qualification(s, annotator).state == "failed":
                return None  # until an admin re-admits them (requalify)
            mine = s.scalar(select(Assignment).where(Assignment.annotator_id == annotator_id, Assignment.status == "reserved",
                                                     of_kind("ranking"))
                            .order_by(Assignment.reserved_at))
            if mine is None:
                mine = self._reserve(s, annotator_id)
                if mine is None:
                    return None
                s.add(Event(annotator_id=annotator_id, assignment_id=mine.id, type="open", payload={}))
            return self._task(s, mine)

    def _expire(self, s: Session) -> None:
        # one statement, and only what it changed is logged: two servers expiring at once log each expiry once
        expired = s.scalars(update(Assignment).where(Assignment.status == "reserved", Assignment.expires_at < now())
                            .values(status="expired").returning(Assignment.id)).all()
        s.add_all(Event(assignment_id=a, type="expire", payload={}) for a in expired)

    def _reserve(self, s: Session, annotator_id: str) -> Assignment | None:
        annotator = s.get(Annotator, annotator_id)
        standing = self._qualification(s, annotator)
        if standing.state == "pending":
            return self._qualification_item(s, annotator, standing)
        done = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.annotator_id == annotator_id,
                                                                           of_kind("ranking"))) or 0
        prompt = None
        if self.gold_every > 0 and (done + 1) % self.gold_every == 0:
            prompt = self._open_prompt(s, annotator_id, gold=True)
        prompt = prompt or self._open_prompt(s, annotator_id, gold=False)
        return self._assign(s, prompt, annotator_id) if prompt is not None else None

    def _open_prompts(self, annotator_id: str, gold: bool):
        """(query of the prompts this annotator never had, a gold item any, else one whose coverage is
        open; the number of live assignments of each)."""
        had = select(Assignment.prompt_id).where(Assignment.annotator_id == annotator_id)
        taken = (select(func.count()).select_from(Assignment)
                 .where(Assignment.prompt_id == Prompt.id, Assignment.status.in_(("reserved", "submitted"))).scalar_subquery())
        query = select(Prompt).where(Prompt.batch == self.batch, Prompt.id.not_in(had))
        if gold:
            return query.where(Prompt.gold.is_not(None)), taken
        return query.where(Prompt.gold.is_(None), taken < (Prompt.overlap.cast(Integer) + 1)), taken

    def _open_prompt(self, s: Session, annotator_id: str, gold: bool) -> Prompt | None:
        query, taken = self._open_prompts(annotator_id, gold)
        # an overlap prompt someone has started comes first: its agreement needs the second ranking
        return _lock_first_open(s, query, (taken.desc(), Prompt.created_at, Prompt.external_id))

    def _assign(self, s: Session, prompt: Prompt, annotator_id: str) -> Assignment:
        order = list(s.scalars(select(Candidate.external_id).where(Candidate.prompt_id == prompt.id).order_by(Candidate.external_id)))
        # random per (prompt, annotator) against position bias, and the same in every run of the pipeline
        random.Random(f"{self.batch}:{prompt.external_id}:{s.get(Annotator, annotator_id).name}").shuffle(order)
        assignment = Assignment(prompt_id=prompt.id, annotator_id=annotator_id, display_order=order, is_gold=prompt.gold is not None,
                                expires_at=now() + self.ttl)
        s.add(assignment)
        s.flush()
        return assignment

    def _task(self, s: Session, assignment: Assignment) -> RankingTask:
        prompt = s.get(Prompt, assignment.prompt_id)
        texts = dict(s.execute(select(Candidate.external_id, Candidate.text).where(Candidate.prompt_id == prompt.id)).all())
        return RankingTask(assignment.id, prompt.text, [(c, texts[c]) for c in assignment.display_order], assignment.status,
                    assignment.expires_at)

    def _own(self, s: Session, annotator_id: str, assignment_id: str) -> Assignment:
        # a write locks the assignment's row: two tabs submitting at once take their versions in turn
        assignment = s.get(Assignment, assignment_id, with_for_update=s.info.get("writes", False))
        if assignment is None or assignment.annotator_id != annotator_id:
            raise LabelingError("no such assignment for this annotator")
        return assignment

    def task(self, annotator_id: str, assignment_id: str) -> RankingTask:
        with self.reading() as s:
            return self._task(s, self._own(s, annotator_id, assignment_id))

    # ---- demonstrations: the annotator writes the response ----------------------------------------

    def next_demonstration(self, annotator_id: str) -> DemonstrationTask | None:
        """The annotator's open demonstration reservation, or a new one: a demonstration prompt they never
        had that no one holds or has written (one demonstration per prompt: overlap and gold items are
        for rankings), reserved for the TTL. A skipped, expired or rejected one goes back to the pool.
        Only for an annotator who passed the qualification or takes none: its gold items are rankings,
        which a pending one does first (InstructGPT screened its labelers before they wrote
        demonstrations). Apart from next_task: the Write and Rank tabs each hold a reservation of their own."""
        with self.transaction() as s:
            annotator = s.get(Annotator, annotator_id, with_for_update=True)  # one reservation at a time (two tabs)
            self._expire(s)
            if self._qualification(s, annotator).state != "passed":
                return None
            mine = s.scalar(select(Assignment).where(Assignment.annotator_id == annotator_id, Assignment.status == "reserved",
                                                     of_kind("demonstration"))
                            .order_by(Assignment.reserved_at))
            if mine is None:
                prompt = _lock_first_open(s, self._open_demonstrations(annotator_id), (Prompt.created_at, Prompt.external_id))
                if prompt is None:
                    return None
                mine = Assignment(prompt_id=prompt.id, annotator_id=annotator_id, display_order=[], expires_at=now() + self.ttl)
                s.add(mine)
                s.flush()
                s.add(Event(annotator_id=annotator_id, assignment_id=mine.id, type="open", payload={}))
            return _demonstration_task(s, mine)

    def _open_demonstrations(self, annotator_id: str):
        """Query of the demonstration prompts this annotator never had and no one holds or has written."""
        had = select(Assignment.prompt_id).where(Assignment.annotator_id == annotator_id)
        live = (select(func.count()).select_from(Assignment)
                .where(Assignment.prompt_id == Prompt.id, Assignment.status.not_in(RELEASED)).scalar_subquery())
        return select(Prompt).where(Prompt.kind == "demonstration", Prompt.id.not_in(had), live == 0)

    def demonstration_task(self, annotator_id: str, assignment_id: str) -> DemonstrationTask:
        with self.reading() as s:
            return _demonstration_task(s, self._own(s, annotator_id, assignment_id))

    def submit_demonstration(self, annotator_id: str, assignment_id: str, completion: str, time_spent_ms: int | None = None,
                             idempotency_key: str | None = None) -> str:
        """Store a written response (a first submission, or an edit: a new version), kept as a submission
        with no tiers. Returns the submission id; the same idempotency key again returns the first one's
        id and stores nothing."""

        def demonstration(s: Session, assignment: Assignment) -> Submission:
            validate_completion(completion)
            return Submission(tiers=[], completion=completion)

        return self._store_version(annotator_id, assignment_id, "demonstration", idempotency_key, time_spent_ms, demonstration,
                                   lambda *_: None, {"completion": completion})

    # ---- drafts, submissions, skips ---------------------------------------------------------------

    def save_draft(self, annotator_id: str, assignment_id: str, payload: dict) -> None:
        with self.transaction() as s:
            assignment = self._own(s, annotator_id, assignment_id)
            draft = s.get(Draft, assignment.id)
            if draft is None:
                s.add(Draft(assignment_id=assignment.id, payload=payload))
            else:
                draft.payload, draft.updated_at = payload, now()
            if assignment.status == "reserved":  # working on it keeps the reservation alive
                assignment.expires_at = now() + self.ttl
            s.add(Event(annotator_id=annotator_id, assignment_id=assignment.id, type="draft_save", payload=payload))

    def draft(self, annotator_id: str, assignment_id: str) -> dict | None:
        with self.reading() as s:
            draft = s.get(Draft, self._own(s, annotator_id, assignment_id).id)
            return draft.payload if draft else None

    def submit(self, annotator_id: str, assignment_id: str, tiers: list[list[str]], likert: dict[str, int],
               flags: dict[str, list[str]] | None = None, confidence: int | None = None, note: str = "",
               time_spent_ms: int | None = None, idempotency_key: str | None = None) -> str:
        """Store a ranking (a first submission, or an edit: a new version). Returns the submission id;
        the same idempotency key again returns the first one's id and stores nothing."""
        flags = flags or {}

        def ranking(s: Session, assignment: Assignment) -> Submission:
            validate_ranking(assignment.display_order, tiers, likert, flags, confidence, note)
            return Submission(tiers=tiers, confidence=confidence, note=note)

        def ratings(s: Session, assignment: Assignment, submission: Submission) -> None:
            # one INSERT for all K (executemany): the ratings' ids are never read back
            s.execute(insert(Rating), [{"submission_id": submission.id, "candidate_id": c, "likert": likert[c],
                                        "flags": sorted(flags.get(c, []))} for c in assignment.display_order])
            if assignment.is_gold:
                self._decide_qualification(s, annotator_id)

        return self._store_version(annotator_id, assignment_id, "ranking", idempotency_key, time_spent_ms, ranking, ratings,
                                   {"tiers": tiers})

    def _store_version(self, annotator_id: str, assignment_id: str, kind: str, idempotency_key: str | None,
                       time_spent_ms: int | None, build, after, logged: dict) -> str:
        """What a ranking's and a demonstration's submit share: the idempotency key (a retry returns the
        first one's id), ownership, the assignment's status and kind, the reviewer's lock, the next
        version, the event. `build(s, assignment)` validates and returns the new Submission's own fields;
        `after(s, assignment, submission)` adds what goes with it once it has an id."""
        key = idempotency_key or new_id()
        try:
            with self.transaction() as s:
                existing = _submitted_with_key(s, key, assignment_id)
                if existing is not None:
                    return existing
                assignment = self._own(s, annotator_id, assignment_id)
                if assignment.status not in ("reserved", "submitted", "expired"):
                    raise LabelingError(f"assignment is {assignment.status}")
                if s.get(Prompt, assignment.prompt_id).kind != kind:
                    raise LabelingError(WRONG_KIND[kind])
                _refuse_if_reviewed(s, assignment)
                submission = build(s, assignment)
                version = _next_version(s, assignment.id)
                submission.assignment_id, submission.version, submission.idempotency_key = assignment.id, version, key
                submission.time_spent_ms, submission.guideline_version = time_spent_ms, self.guideline_version
                s.add(submission)
                s.flush()
                after(s, assignment, submission)
                assignment.status = "submitted"
                s.add(Event(annotator_id=annotator_id, assignment_id=assignment.id, type="submit" if version == 1 else "edit",
                            payload={**logged, "version": version, "idempotency_key": key}))
                return submission.id
        except IntegrityError:
            # a retry racing its first attempt: the first one won, and it is the answer
            with self.transaction() as s:
                existing = _submitted_with_key(s, key, assignment_id)
            if existing is None:
                raise
            return existing

    def skip(self, annotator_id: str, assignment_id: str, reason: str) -> None:
        if reason not in SKIP_REASONS:
            raise LabelingError(f"skip reason must be one of {SKIP_REASONS}, got {reason!r}")
        with self.transaction() as s:
            assignment = self._own(s, annotator_id, assignment_id)
            if assignment.status != "reserved":
                raise LabelingError(f"assignment is {assignment.status}, not open")
            if assignment.is_gold and self._qualification(s, s.get(Annotator, annotator_id)).state == "pending":
                raise LabelingError("a qualification item cannot be skipped: rank it as well as you can")
            if s.get(Prompt, assignment.prompt_id).kind == "demonstration" and reason not in DEMONSTRATION_SKIP_REASONS:
                raise LabelingError(f"a demonstration's skip reason must be one of {DEMONSTRATION_SKIP_REASONS}, got {reason!r}")
            assignment.status, assignment.skip_reason = "skipped", reason
            s.add(Event(annotator_id=annotator_id, assignment_id=assignment.id, type="skip", payload={"reason": reason}))

    def latest_submission(self, annotator_id: str, assignment_id: str) -> dict | None:
        with self.reading() as s:
            assignment = self._own(s, annotator_id, assignment_id)
            sub = s.scalar(select(Submission).where(Submission.assignment_id == assignment.id).order_by(Submission.version.desc()))
            if sub is None:
                return None
            ratings = s.scalars(select(Rating).where(Rating.submission_id == sub.id)).all()
            return {"tiers": sub.tiers, "likert": {r.candidate_id: r.likert for r in ratings},
                    "flags": {r.candidate_id: r.flags for r in ratings if r.flags}, "confidence": sub.confidence,
                    "note": sub.note, "completion": sub.completion, "version": sub.version}

    def submitted(self, annotator_id: str, kind: str = "ranking") -> list[tuple[str, str]]:
        """(assignment id, prompt text) of the annotator's submitted assignments of one kind, newest first:
        what they may edit."""
        with self.reading() as s:
            rows = s.execute(select(Assignment.id, Prompt.text).join(Prompt, Prompt.id == Assignment.prompt_id)
                             .where(Assignment.annotator_id == annotator_id, Assignment.status == "submitted", Prompt.kind == kind,
                                    Assignment.id.not_in(select(Review.assignment_id)))  # a reviewed one is locked
                             .order_by(Assignment.reserved_at.desc())).all()
        return [tuple(r) for r in rows]

    # ---- figures --------------------------------------------------------------------------------

    def progress(self, annotator_id: str, kind: str = "ranking") -> dict[str, int]:
        """The annotator's assignments of one kind by status, and the prompts of that kind still open to them."""
        with self.reading() as s:
            counts = dict(s.execute(select(Assignment.status, func.count()).where(Assignment.annotator_id == annotator_id, of_kind(kind))
                                    .group_by(Assignment.status)).all())
            still_open = self._open_prompts(annotator_id, gold=False)[0] if kind == "ranking" else self._open_demonstrations(annotator_id)
            open_prompts = s.scalar(select(func.count()).select_from(still_open.subquery()))
        return {"submitted": counts.get("submitted", 0), "skipped": counts.get("skipped", 0),
                "reserved": counts.get("reserved", 0), "remaining": open_prompts}

    def coverage(self) -> dict[str, Any]:
        with self.reading() as s:
            prompts = s.scalar(select(func.count()).select_from(Prompt).where(Prompt.batch == self.batch, Prompt.gold.is_(None))) or 0
            in_batch = Assignment.prompt_id.in_(select(Prompt.id).where(Prompt.batch == self.batch))
            ranked = s.scalar(select(func.count(func.distinct(Assignment.prompt_id)))
                              .where(in_batch, Assignment.status == "submitted", ~Assignment.is_gold)) or 0
            per_annotator = s.execute(select(Annotator.name, Assignment.status, func.count())
                                      .join(Assignment, Assignment.annotator_id == Annotator.id).where(in_batch)
                                      .group_by(Annotator.name, Assignment.status)).all()
        by_user: dict[str, dict[str, int]] = {}
        for name, status, count in per_annotator:
            by_user.setdefault(name, {"submitted": 0, "skipped": 0, "reserved": 0, "expired": 0})[status] = count
        return {"prompts": prompts, "ranked_prompts": ranked, "per_annotator": by_user}

    def quality_records(self) -> dict[str, list[dict[str, Any]]]:
        """What the quality report reads (labeling_ui.quality), from one snapshot. annotators: every user's
        name, role, qualification state and score. submissions: the annotator's own latest version of
        every ranking of this batch (a reviewer's adjudication is not theirs), rejected or not, in the
        order they were served: annotator, prompt_id, tiers, gold (the reference tiers; None for a real
        prompt), likert and flags by candidate (flags only where given), seconds (spent over every
        version the annotator wrote; None where no client measured it)."""
        with self.reading() as s:
            annotators = []
            for user in s.scalars(select(Annotator).order_by(Annotator.name)):
                standing = self._qualification(s, user)
                annotators.append({"name": user.name, "role": user.role, "qualification": standing.state,
                                   "qualification_score": standing.score})
            own = (select(Submission.assignment_id, func.max(Submission.version).label("version"),
                          func.sum(Submission.time_spent_ms).label("time_spent_ms"))
                   .where(Submission.reviewer_id.is_(None)).group_by(Submission.assignment_id).subquery())
            latest = (select(Submission.id, Submission.tiers, own.c.time_spent_ms, Prompt.external_id, Prompt.gold, Annotator.name)
                      .join(own, (own.c.assignment_id == Submission.assignment_id) & (own.c.version == Submission.version))
                      .join(Assignment, Assignment.id == Submission.assignment_id)
                      .join(Prompt, Prompt.id == Assignment.prompt_id)
                      .join(Annotator, Annotator.id == Assignment.annotator_id)
                      .where(Prompt.batch == self.batch, Prompt.kind == "ranking"))
            rows = s.execute(latest.order_by(Assignment.reserved_at, Assignment.id)).all()
            ratings: dict[str, list[Rating]] = {}
            for rating in s.scalars(select(Rating).where(Rating.submission_id.in_(latest.with_only_columns(Submission.id)))):
                ratings.setdefault(rating.submission_id, []).append(rating)
        submissions = [{"annotator": annotator, "prompt_id": prompt_id, "tiers": tiers, "gold": gold,
                        "likert": {r.candidate_id: r.likert for r in ratings.get(submission_id, [])},
                        "flags": {r.candidate_id: r.flags for r in ratings.get(submission_id, []) if r.flags},
                        "seconds": None if spent_ms is None else spent_ms / 1000}
                       for submission_id, tiers, spent_ms, prompt_id, gold, annotator in rows]
        return {"annotators": annotators, "submissions": submissions}

    def rankings(self, include_gold: bool = False) -> list[dict[str, Any]]:
        """The latest version of every submitted ranking, in the K-way export format (spec 6.1), by prompt
        id then annotator: never by submission, whose order concurrent annotators change from run to run.
        A ranking a reviewer rejected is never among them, gold or not (the reviews keep it). One a
        reviewer adjudicated is the reviewer's tiers in the annotator's place (with the annotator's
        ratings), `adjudicated_by` naming the reviewer (null for every other ranking)."""
        reviewer = aliased(Annotator)
        with self.reading() as s:
            latest = latest_versions()
            rows = s.execute(
                select(Submission, Assignment, Prompt, Annotator.name, reviewer.name)
                .join(latest, (latest.c.assignment_id == Submission.assignment_id) & (latest.c.version == Submission.version))
                .join(Assignment, Assignment.id == Submission.assignment_id)
                .join(Prompt, Prompt.id == Assignment.prompt_id)
                .join(Annotator, Annotator.id == Assignment.annotator_id)
                .outerjoin(reviewer, reviewer.id == Submission.reviewer_id)
                .where(Prompt.batch == self.batch, Assignment.status != "rejected")
                .order_by(Prompt.external_id, Annotator.name)
            ).all()
            candidates: dict[str, list[Candidate]] = {}
            batch_prompts = select(Prompt.id).where(Prompt.batch == self.batch)
            for candidate in s.scalars(select(Candidate).where(Candidate.prompt_id.in_(batch_prompts)).order_by(Candidate.external_id)):
                candidates.setdefault(candidate.prompt_id, []).append(candidate)
            ratings: dict[str, list[Rating]] = {}
            for rating in s.scalars(select(Rating).join(Submission, Submission.id == Rating.submission_id)
                                    .join(Assignment, Assignment.id == Submission.assignment_id)
                                    .where(Assignment.prompt_id.in_(batch_prompts))):
                ratings.setdefault(rating.submission_id, []).append(rating)
        records = []
        for submission, assignment, prompt, annotator, adjudicator in rows:
            if assignment.is_gold and not include_gold:
                continue
            records.append({
                "prompt_id": prompt.external_id, "prompt": prompt.text, **prompt.meta,
                "candidates": [{"id": c.external_id, "text": c.text, "policy": c.policy} for c in candidates[prompt.id]],
                "ranking": submission.tiers, "annotator_id": annotator, "assignment_id": assignment.id,
                "confidence": submission.confidence, "note": submission.note,
                "likert": {r.candidate_id: r.likert for r in ratings.get(submission.id, [])},
                "flags": {r.candidate_id: r.flags for r in ratings.get(submission.id, []) if r.flags},
                "guideline_version": submission.guideline_version, "split": prompt.split, "version": submission.version,
                "submitted_at": submission.submitted_at.isoformat(), "adjudicated_by": adjudicator,
            })
        return records

    def demonstrations(self) -> list[dict[str, Any]]:
        """The latest version of every written demonstration (the whole pool, whichever batch this store
        serves) in the SFT format (spec 6.4: prompt, completion) with its provenance, by prompt id then
        annotator. A demonstration a reviewer rejected is never exported."""
        with self.reading() as s:
            latest = latest_versions()
            rows = s.execute(
                select(Submission, Assignment, Prompt, Annotator.name)
                .join(latest, (latest.c.assignment_id == Submission.assignment_id) & (latest.c.version == Submission.version))
                .join(Assignment, Assignment.id == Submission.assignment_id)
                .join(Prompt, Prompt.id == Assignment.prompt_id)
                .join(Annotator, Annotator.id == Assignment.annotator_id)
                .where(Prompt.kind == "demonstration", Assignment.status != "rejected")
                .order_by(Prompt.external_id, Annotator.name)
            ).all()
        return [{"prompt_id": prompt.external_id, **prompt.meta, "prompt": prompt.text, "completion": submission.completion,
                 "annotator_id": annotator, "assignment_id": assignment.id, "guideline_version": submission.guideline_version,
                 "split": prompt.split, "version": submission.version, "submitted_at": submission.submitted_at.isoformat()}
                for submission, assignment, prompt, annotator in rows]

    def events(self, assignment_id: str | None = None) -> list[Event]:
        with self.reading() as s:
            query = select(Event).order_by(Event.id)
            if assignment_id is not None:
                query = query.where(Event.assignment_id == assignment_id)
            return list(s.scalars(query))

    # ---- review (labeling spec 4.7) -------------------------------------------------------------

    def _reviewer(self, s: Session, reviewer_id: str) -> Annotator:
        reviewer = s.get(Annotator, reviewer_id)
        if reviewer is None or reviewer.role not in REVIEWER_ROLES or not reviewer.active:
            raise LabelingError(f"only a {' or an '.join(REVIEWER_ROLES)} can review")
        return reviewer

    def review_queue(self, reviewer_id: str | None = None) -> list[ReviewItem]:
        """What awaits a reviewer's decision, oldest first: each assignment of this store's batch (or of the
        pool of demonstrations) that nobody decided on yet and that has a reason (labeling_ui.review): its
        ranking's tau-b with another ranking of the prompt is below review_tau, it is a gold ranking
        below review_gold_below, a candidate has a harm flag, or it was skipped as offensive content.
        Given a reviewer, checks their role and leaves out their own work: nobody reviews themselves."""
        with self.reading() as s:
            if reviewer_id is not None:
                self._reviewer(s, reviewer_id)
            latest = latest_versions()
            in_pools = Prompt.batch.in_((self.batch, DEMONSTRATIONS_BATCH))
            rows = s.execute(
                select(Assignment, Prompt, Annotator.name, Submission)
                .join(Prompt, Prompt.id == Assignment.prompt_id)
                .join(Annotator, Annotator.id == Assignment.annotator_id)
                .outerjoin(latest, latest.c.assignment_id == Assignment.id)
                .outerjoin(Submission, (Submission.assignment_id == Assignment.id) & (Submission.version == latest.c.version))
                .where(in_pools, (Assignment.status == "submitted")
                       | ((Assignment.status == "skipped") & (Assignment.skip_reason == REVIEW_SKIP_REASON)))
            ).all()
            decided = set(s.scalars(select(Review.assignment_id).join(Assignment, Assignment.id == Review.assignment_id)
                                    .join(Prompt, Prompt.id == Assignment.prompt_id).where(in_pools)))
            flags: dict[str, dict[str, list[str]]] = defaultdict(dict)  # submission id -> candidate -> flags
            for submission_id, candidate, names in s.execute(
                    select(Rating.submission_id, Rating.candidate_id, Rating.flags)
                    .join(Submission, Submission.id == Rating.submission_id)
                    .join(latest, (latest.c.assignment_id == Submission.assignment_id) & (latest.c.version == Submission.version))
                    .join(Assignment, Assignment.id == Submission.assignment_id)
                    .join(Prompt, Prompt.id == Assignment.prompt_id).where(Prompt.batch == self.batch)):
                if names:
                    flags[submission_id][candidate] = names
            # every live ranking of each prompt, decided or not: an undecided one may disagree with an accepted one
            live: dict[str, dict[str, tuple[str, list]]] = defaultdict(dict)
            for assignment, prompt, annotator, submission in rows:
                if submission is not None and submission.tiers:
                    live[prompt.id][assignment.id] = (annotator, submission.tiers)
            disagreements = {prompt_id: disagreement_reasons(rankings, self.review_tau) for prompt_id, rankings in live.items()}
            queued = []
            for assignment, prompt, annotator, submission in rows:
                if assignment.id in decided or assignment.annotator_id == reviewer_id:
                    continue
                reasons = _review_reasons(assignment, prompt, submission, disagreements[prompt.id] if prompt.id in live else {},
                                          flags.get(submission.id, {}) if submission else {}, self.review_gold_below)
                if reasons:
                    queued.append((assignment, prompt, annotator, submission, reasons))
            candidates: dict[str, list[tuple[str, str]]] = defaultdict(list)
            for prompt_id, candidate, text in s.execute(
                    select(Candidate.prompt_id, Candidate.external_id, Candidate.text)
                    .where(Candidate.prompt_id.in_({prompt.id for _, prompt, *_ in queued})).order_by(Candidate.external_id)):
                candidates[prompt_id].append((candidate, text))
        items = [
            ReviewItem(assignment.id, annotator, prompt.external_id, prompt.text, candidates[prompt.id], assignment.status,
                       submission.tiers if submission else None, submission.completion if submission else None, reasons,
                       [] if prompt.gold is not None else  # a gold item's many rankings say nothing: its reason has the gold tiers
                       [(other, name, tiers) for other, (name, tiers) in sorted(live[prompt.id].items(), key=lambda kv: kv[1][0])
                        if other != assignment.id],
                       submission.submitted_at if submission else assignment.reserved_at)
            for assignment, prompt, annotator, submission, reasons in queued
        ]
        return sorted(items, key=lambda item: (item.since, item.prompt_id, item.annotator))

    def review(self, reviewer_id: str, assignment_id: str, action: str, comment: str = "",
               tiers: list[list[str]] | None = None) -> str:
        """A reviewer's decision on one submitted or skipped assignment (a ranking, a demonstration or a
        skip; queued or not), final and one per assignment:
          accept      it stays as it is, and leaves the queue
          reject      needs a comment; the assignment becomes rejected: out of every export, and its
                      prompt's coverage open again, so another annotator gets it (never the same one)
          adjudicate  rankings only: `tiers` over the prompt's candidates become a new version of the
                      submission, written by the reviewer, which exports carry in the annotator's place
        Any decision locks the annotator's edits. The event log gets review_<action> with the comment.
        Returns the review's id."""
        if action not in REVIEW_ACTIONS:
            raise LabelingError(f"a review's action must be one of {REVIEW_ACTIONS}, got {action!r}")
        if not isinstance(comment, str) or len(comment) > MAX_NOTE:
            raise LabelingError(f"the comment must be text of at most {MAX_NOTE} characters")
        if action == "reject" and not comment.strip():
            raise LabelingError("a rejection needs a comment saying what was wrong")
        if (tiers is not None) != (action == "adjudicate"):
            raise LabelingError("tiers come with adjudicate, and only with it")
        try:
            with self.transaction() as s:
                self._reviewer(s, reviewer_id)
                assignment = s.get(Assignment, assignment_id, with_for_update=True)  # an edit of it waits, then sees the review
                if assignment is None:
                    raise LabelingError(f"no assignment {assignment_id!r}")
                if assignment.annotator_id == reviewer_id:
                    raise LabelingError("nobody reviews their own work")
                if assignment.status not in ("submitted", "skipped"):
                    raise LabelingError(f"the assignment is {assignment.status}: a reviewer decides on a submission or a skip")
                earlier = s.scalar(select(Review).where(Review.assignment_id == assignment.id))
                if earlier is not None:
                    raise LabelingError(f"already reviewed ({earlier.action}, {earlier.created_at:%Y-%m-%d %H:%M} UTC): a decision is final")
                reviewed = s.scalar(select(Submission).where(Submission.assignment_id == assignment.id)
                                    .order_by(Submission.version.desc()).limit(1))
                payload: dict[str, Any] = {"comment": comment}
                if action == "adjudicate":
                    if reviewed is None or not reviewed.tiers:
                        raise LabelingError("only a submitted ranking can be adjudicated: accept or reject this one")
                    validate_tiers(assignment.display_order, tiers)
                    payload |= {"tiers": tiers, "version": _adjudicate(s, reviewed, reviewer_id, tiers, self.guideline_version)}
                elif action == "reject":
                    assignment.status = "rejected"
                decision = Review(assignment_id=assignment.id, submission_id=reviewed.id if reviewed else None,
                                  reviewer_id=reviewer_id, action=action, comment=comment, tiers=tiers)
                s.add(decision)
                s.flush()
                s.add(Event(annotator_id=reviewer_id, assignment_id=assignment.id, type=f"review_{action}",
                            payload=payload | {"review_id": decision.id}))
                return decision.id
        except IntegrityError:
            raise LabelingError("another reviewer decided on this assignment at the same moment") from None

    def reviews(self, assignment_id: str | None = None) -> list[Review]:
        """Every decision (of one assignment), oldest first: rejected rankings are here, never in rankings()."""
        with self.reading() as s:
            query = select(Review).order_by(Review.created_at, Review.id)
            if assignment_id is not None:
                query = query.where(Review.assignment_id == assignment_id)
            return list(s.scalars(query))


WRONG_KIND = {"ranking": "this is a demonstration task: it takes a written response, not a ranking",
              "demonstration": "this is a ranking task: it takes a ranking, not a written response"}


def _lock_first_open(s: Session, open_prompts, order) -> Prompt | None:
    """The first of `open_prompts` (a query whose conditions say a prompt is open to this annotator),
    locked (FOR UPDATE SKIP LOCKED) until the reservation commits, so that concurrent annotators each
    take another. Under PostgreSQL's read committed a row whose lock was released while the query ran
    is locked anyway, on a snapshot without the assignment just committed for it; so the conditions are
    checked again once the lock is held, by a new statement that sees every earlier commit (SQLite's
    single writer, whose snapshot is always the last commit, needs no second look)."""
    passed_over: list[str] = []
    while True:
        prompt = s.scalar(open_prompts.where(Prompt.id.not_in(passed_over)).order_by(*order).limit(1).with_for_update(skip_locked=True))
        if prompt is None or s.bind.dialect.name == "sqlite" or \
                s.scalar(open_prompts.where(Prompt.id == prompt.id).with_only_columns(func.count())):
            return prompt
        passed_over.append(prompt.id)


def _demonstration_task(s: Session, assignment: Assignment) -> DemonstrationTask:
    prompt = s.get(Prompt, assignment.prompt_id)
    if prompt.kind != "demonstration":
        raise LabelingError("this is a ranking task, not a demonstration")
    return DemonstrationTask(assignment.id, prompt.text, assignment.status, assignment.expires_at)


def _review_reasons(assignment: Assignment, prompt: Prompt, submission: Submission | None, disagreements: dict[str, list[Reason]],
                    flags: dict[str, list[str]], review_gold_below: float) -> list[Reason]:
    """Why this assignment goes to review, if at all: ranking reasons for a ranking (disagreement on an
    ordinary prompt, a failed gold item), harm flags for any submission, offensive content for a skip."""
    if submission is None:
        return [reason] if (reason := skip_reason(assignment.skip_reason)) else []
    reasons: list[Reason] = []
    if submission.tiers:
        if prompt.gold is None:
            reasons += disagreements.get(assignment.id, [])
        elif failed := gold_reason(submission.tiers, prompt.gold, review_gold_below):
            reasons.append(failed)
    if flagged := flag_reason(flags):
        reasons.append(flagged)
    return reasons


def _adjudicate(s: Session, reviewed: Submission, reviewer_id: str, tiers: list[list[str]], guideline_version: str) -> int:
    """The reviewer's tiers as the next version of the reviewed submission, with its ratings: likert and
    flags judge each candidate on its own, which the reviewer does not redo. Returns the version."""
    version = _next_version(s, reviewed.assignment_id)
    adjudicated = Submission(assignment_id=reviewed.assignment_id, version=version, idempotency_key=new_id(), tiers=tiers,
                             guideline_version=guideline_version, reviewer_id=reviewer_id)
    s.add(adjudicated)
    s.flush()
    ratings = s.scalars(select(Rating).where(Rating.submission_id == reviewed.id)).all()
    s.add_all(Rating(submission_id=adjudicated.id, candidate_id=r.candidate_id, likert=r.likert, flags=r.flags) for r in ratings)
    return version


def _refuse_if_reviewed(s: Session, assignment: Assignment) -> None:
    """The lock point of edits (labeling spec 4.5): a reviewer's decision. The caller holds the
    assignment's row lock (a write's _own takes it, and review() does too), so that an edit and a
    review of it never interleave."""
    decision = s.scalar(select(Review).where(Review.assignment_id == assignment.id))
    if decision is not None:
        raise LabelingError(f"this submission was reviewed ({decision.action}) and can no longer be edited")


def _next_version(s: Session, assignment_id: str) -> int:
    return (s.scalar(select(func.max(Submission.version)).where(Submission.assignment_id == assignment_id)) or 0) + 1


def latest_versions():
    """(assignment id, its latest submission version): an edit replaces a submission in every export."""
    return (select(Submission.assignment_id, func.max(Submission.version).label("version"))
            .group_by(Submission.assignment_id).subquery())


def _submitted_with_key(s: Session, key: str, assignment_id: str) -> str | None:
    """The id of the submission stored under this idempotency key (a retried submit), if any."""
    existing = s.scalar(select(Submission).where(Submission.idempotency_key == key))
    if existing is not None and existing.assignment_id != assignment_id:
        raise LabelingError("idempotency key reused for another assignment")
    return existing.id if existing is not None else None


def _add_demonstration_prompt(s: Session, record: dict, where: str, known: set[str]) -> int:
    """Add a demonstration prompt unless the pool has its id (then 0): one demonstration each, no
    overlap and no gold items, since there is no ranking to agree on or to check against a reference."""
    if record.get("candidates"):
        raise LabelingError(f"{where}: a demonstration prompt has no candidates (the annotator writes the response)")
    if not record["prompt"].strip():
        raise LabelingError(f"{where}: the prompt is empty")
    if record["prompt_id"] in known:
        return 0
    known.add(record["prompt_id"])
    extra = {k: v for k, v in record.items() if k not in ("prompt_id", "prompt", "kind", "split", "candidates")}
    s.add(Prompt(batch=DEMONSTRATIONS_BATCH, kind="demonstration", external_id=record["prompt_id"], text=record["prompt"],
                 split=record.get("split", "train"), meta=extra))
    return 1


def _sqlite_pragmas(connection, _record) -> None:
    # WAL: readers never block the writer; synchronous=FULL: a commit is on disk before it returns.
    # Transactions are begun explicitly (BEGIN IMMEDIATE) so that reservation is one writer at a time.
    connection.isolation_level = None
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
