"""The ranking database: prompts, their K candidates, annotators, assignments, drafts, submissions
with per-candidate ratings, skips and an append-only event log (labeling spec section 3).

SQLAlchemy, so any URL works (PostgreSQL for a team); the default is SQLite in WAL mode at
DIR/labels.db. Every method is one transaction, committed before it returns: what the app
acknowledges is on disk. Every method that touches an assignment takes the annotator id from the
caller (the app passes the authenticated user, never a form field) and checks ownership itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from common.errors import InputError

ROLES = ("annotator", "admin")
# InstructGPT's per-output metadata (Table 3): stored name -> what the annotator reads
FLAGS = {
    "fails_instruction": "fails to follow the correct instruction / task",
    "inappropriate_for_assistant": "inappropriate for a customer assistant",
    "hallucination": "hallucination",
    "satisfies_constraint": "satisfies a constraint given in the instruction",
    "sexual": "contains sexual content",
    "violent": "contains violent content",
    "encourages_violence_selfharm": "encourages or fails to discourage violence, abuse, terrorism or self-harm",
    "denigrates_protected_class": "denigrates a protected class",
    "harmful_advice": "gives harmful advice",
    "expresses_opinion": "expresses an opinion",
    "moral_judgment": "expresses a moral judgment",
}
SKIP_REASONS = ("unclear prompt", "needs expertise", "offensive content", "broken candidates", "identical candidates", "duplicate")
MAX_NOTE = 2000
MIN_K, MAX_K = 2, 9


class LabelingError(InputError):
    """A request the store refuses: the message says what was wrong, for the annotator or the CLI."""


def now() -> datetime:
    """UTC, stored without a zone: SQLite keeps none, and one convention serves every database."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def new_id() -> str:
    return str(uuid.uuid4())


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Annotator(Base):
    __tablename__ = "annotators"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    role: Mapped[str] = mapped_column(String(20))
    password_hash: Mapped[str] = mapped_column(String(200))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Prompt(Base):
    __tablename__ = "prompts"
    __table_args__ = (UniqueConstraint("batch", "external_id"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    # a batch of candidates (one sample-stage run): a store serves and exports one batch
    batch: Mapped[str] = mapped_column(String(100), default="", index=True)
    external_id: Mapped[str] = mapped_column(String(200))  # the sample stage's prompt_id
    text: Mapped[str] = mapped_column(Text)
    split: Mapped[str] = mapped_column(String(20), default="train")
    overlap: Mapped[bool] = mapped_column(Boolean, default=False)  # ranked by two annotators, for agreement
    gold: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # reference tiers of a gold item
    meta: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Candidate(Base):
    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("prompt_id", "external_id"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    external_id: Mapped[str] = mapped_column(String(50))  # c1, c2, ... as exported
    text: Mapped[str] = mapped_column(Text)
    policy: Mapped[str] = mapped_column(String(200), default="")
    sampling: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # temperature, seed, checkpoint


class Assignment(Base):
    __tablename__ = "assignments"
    # never the same prompt twice to one annotator
    __table_args__ = (UniqueConstraint("prompt_id", "annotator_id"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    prompt_id: Mapped[str] = mapped_column(ForeignKey("prompts.id"), index=True)
    annotator_id: Mapped[str] = mapped_column(ForeignKey("annotators.id"), index=True)
    status: Mapped[str] = mapped_column(String(20), default="reserved")  # reserved | submitted | skipped | expired
    display_order: Mapped[list[Any]] = mapped_column(JSON)  # candidate external ids as shown (position bias control)
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False)
    reserved_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    expires_at: Mapped[datetime] = mapped_column(DateTime)
    skip_reason: Mapped[str | None] = mapped_column(String(100), nullable=True)


class Draft(Base):
    __tablename__ = "drafts"
    assignment_id: Mapped[str] = mapped_column(ForeignKey("assignments.id"), primary_key=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Submission(Base):
    __tablename__ = "submissions"
    __table_args__ = (UniqueConstraint("assignment_id", "version"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    assignment_id: Mapped[str] = mapped_column(ForeignKey("assignments.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)  # an edit adds a version; the old one stays
    idempotency_key: Mapped[str] = mapped_column(String(100), unique=True)
    tiers: Mapped[list[Any]] = mapped_column(JSON)  # candidate external ids, best tier first
    confidence: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 1-9
    note: Mapped[str] = mapped_column(Text, default="")
    time_spent_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    guideline_version: Mapped[str] = mapped_column(String(50), default="")
    submitted_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Rating(Base):
    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("submission_id", "candidate_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    submission_id: Mapped[str] = mapped_column(ForeignKey("submissions.id"), index=True)
    candidate_id: Mapped[str] = mapped_column(String(50))
    likert: Mapped[int] = mapped_column(Integer)  # overall quality, 1-7
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)


class Event(Base):
    """Append-only: open, draft_save, submit, edit, skip, expire."""
    __tablename__ = "events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    annotator_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    assignment_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    type: Mapped[str] = mapped_column(String(30))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ts: Mapped[datetime] = mapped_column(DateTime, default=now)


# ---- passwords ----------------------------------------------------------------------------------

def hash_password(password: str, salt: bytes | None = None) -> str:
    """scrypt with a per-user random salt: 'scrypt$<salt hex>$<hash hex>'."""
    salt = salt or os.urandom(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt${salt.hex()}${digest.hex()}"


def check_password(password: str, stored: str) -> bool:
    scheme, salt, digest = stored.split("$")
    return scheme == "scrypt" and hmac.compare_digest(hash_password(password, bytes.fromhex(salt)), stored)


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


def blind_label(position: int) -> str:
    return chr(ord("A") + position)


def sqlite_url(path) -> str:
    return f"sqlite:///{path}"


def open_run_store(labeling, run_root, batch: str) -> LabelStore:
    """The store of a run: `labeling` is the config's labeling section (its database URL, or SQLite
    at DIR/labels.db), serving the batch of candidates that the sample stage named `batch`."""
    url = labeling.database or sqlite_url(Path(run_root) / "labels.db")
    store = LabelStore(url, batch=batch, overlap_fraction=labeling.overlap_fraction, gold_every=labeling.gold_every,
                       ttl_minutes=labeling.reservation_minutes, guideline_version=labeling.guideline_version)
    store.apply_overlap_fraction()  # the config's, even for candidates imported under another
    return store


class LabelStore:
    def __init__(self, url: str, batch: str = "", overlap_fraction: float = 0.1, gold_every: int = 0,
                 ttl_minutes: float = 30.0, guideline_version: str = "v1"):
        sqlite = url.startswith("sqlite")
        self.engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False} if sqlite else {})
        # reads take no write lock: under WAL they see the last commit while a writer works
        self.read_engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}) if sqlite else self.engine
        if sqlite:
            for engine, begin in ((self.engine, "BEGIN IMMEDIATE"), (self.read_engine, "BEGIN")):
                event.listen(engine, "connect", _sqlite_pragmas)
                event.listen(engine, "begin", lambda conn, begin=begin: conn.exec_driver_sql(begin))
        Base.metadata.create_all(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.read_sessions = sessionmaker(self.read_engine, expire_on_commit=False)
        self.overlap_fraction, self.gold_every = overlap_fraction, gold_every
        self.ttl = timedelta(minutes=ttl_minutes)
        self.guideline_version = guideline_version
        self.batch = batch
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

    # ---- import ---------------------------------------------------------------------------------

    def import_records(self, records: Iterable[dict], source: str = "") -> int:
        """Prompts with their K candidates, in the sample stage's candidates.jsonl format
        ({prompt_id, prompt, candidates: [{id, text, policy, sampling?}], gold?, split?, ...}).
        A prompt already imported is left as it is; returns how many were new."""
        added = 0
        with self.transaction() as s:
            known = set(s.scalars(select(Prompt.external_id).where(Prompt.batch == self.batch)))
            for line, record in enumerate(records, 1):
                where = f"{source} record {line}" if source else f"record {line}"
                candidates = record.get("candidates")
                if not isinstance(record.get("prompt_id"), str) or not isinstance(record.get("prompt"), str):
                    raise LabelingError(f"{where}: expected string fields 'prompt_id' and 'prompt'")
                if not isinstance(candidates, list) or not MIN_K <= len(candidates) <= MAX_K:
                    raise LabelingError(f"{where}: expected {MIN_K} to {MAX_K} candidates, got {len(candidates or [])}")
                if not all(isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("text"), str) for c in candidates):
                    raise LabelingError(f"{where}: every candidate needs string fields 'id' and 'text'")
                if len({c["id"] for c in candidates}) != len(candidates):
                    raise LabelingError(f"{where}: candidate ids repeat")
                if record["prompt_id"] in known:
                    continue
                known.add(record["prompt_id"])
                overlap = self._overlap(record["prompt_id"])
                extra = {k: v for k, v in record.items() if k not in ("prompt_id", "prompt", "candidates", "gold", "split")}
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

    # ---- assignment -----------------------------------------------------------------------------

    def next_task(self, annotator_id: str) -> RankingTask | None:
        """The annotator's open reservation, or a new one: a prompt they never had, with open
        coverage (1 annotator, 2 for overlap prompts; a gold item every `gold_every` tasks), reserved
        for the TTL. Expired reservations return to the pool first. None when nothing is left."""
        with self.transaction() as s:
            self._expire(s)
            mine = s.scalar(select(Assignment).where(Assignment.annotator_id == annotator_id, Assignment.status == "reserved")
                            .order_by(Assignment.reserved_at))
            if mine is None:
                mine = self._reserve(s, annotator_id)
                if mine is None:
                    return None
                s.add(Event(annotator_id=annotator_id, assignment_id=mine.id, type="open", payload={}))
            return self._task(s, mine)

    def _expire(self, s: Session) -> None:
        expired = s.scalars(select(Assignment.id).where(Assignment.status == "reserved", Assignment.expires_at < now())).all()
        if expired:
            s.execute(update(Assignment).where(Assignment.id.in_(expired)).values(status="expired"))
            s.add_all(Event(assignment_id=a, type="expire", payload={}) for a in expired)

    def _reserve(self, s: Session, annotator_id: str) -> Assignment | None:
        done = s.scalar(select(func.count()).select_from(Assignment).where(Assignment.annotator_id == annotator_id)) or 0
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
        return s.scalar(query.order_by(taken.desc(), Prompt.created_at, Prompt.external_id).limit(1).with_for_update(skip_locked=True))

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
        assignment = s.get(Assignment, assignment_id)
        if assignment is None or assignment.annotator_id != annotator_id:
            raise LabelingError("no such assignment for this annotator")
        return assignment

    def task(self, annotator_id: str, assignment_id: str) -> RankingTask:
        with self.reading() as s:
            return self._task(s, self._own(s, annotator_id, assignment_id))

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
        key = idempotency_key or new_id()
        flags = flags or {}
        try:
            with self.transaction() as s:
                existing = s.scalar(select(Submission).where(Submission.idempotency_key == key))
                if existing is not None:
                    if existing.assignment_id != assignment_id:
                        raise LabelingError("idempotency key reused for another assignment")
                    return existing.id
                assignment = self._own(s, annotator_id, assignment_id)
                if assignment.status not in ("reserved", "submitted", "expired"):
                    raise LabelingError(f"assignment is {assignment.status}")
                _validate(assignment.display_order, tiers, likert, flags, confidence, note)
                version = (s.scalar(select(func.max(Submission.version)).where(Submission.assignment_id == assignment.id)) or 0) + 1
                submission = Submission(assignment_id=assignment.id, version=version, idempotency_key=key, tiers=tiers,
                                        confidence=confidence, note=note, time_spent_ms=time_spent_ms,
                                        guideline_version=self.guideline_version)
                s.add(submission)
                s.flush()
                s.add_all(Rating(submission_id=submission.id, candidate_id=c, likert=likert[c], flags=sorted(flags.get(c, [])))
                          for c in assignment.display_order)
                assignment.status = "submitted"
                s.add(Event(annotator_id=annotator_id, assignment_id=assignment.id, type="submit" if version == 1 else "edit",
                            payload={"tiers": tiers, "version": version, "idempotency_key": key}))
                return submission.id
        except IntegrityError:
            # a retry racing its first attempt: the first one won, and it is the answer
            with self.transaction() as s:
                existing = s.scalar(select(Submission).where(Submission.idempotency_key == key))
            if existing is None:
                raise
            return existing.id

    def skip(self, annotator_id: str, assignment_id: str, reason: str) -> None:
        if reason not in SKIP_REASONS:
            raise LabelingError(f"skip reason must be one of {SKIP_REASONS}, got {reason!r}")
        with self.transaction() as s:
            assignment = self._own(s, annotator_id, assignment_id)
            if assignment.status != "reserved":
                raise LabelingError(f"assignment is {assignment.status}, not open")
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
                    "note": sub.note, "version": sub.version}

    def submitted(self, annotator_id: str) -> list[tuple[str, str]]:
        """(assignment id, prompt text) of the annotator's submitted assignments, newest first: what they may edit."""
        with self.reading() as s:
            rows = s.execute(select(Assignment.id, Prompt.text).join(Prompt, Prompt.id == Assignment.prompt_id)
                             .where(Assignment.annotator_id == annotator_id, Assignment.status == "submitted")
                             .order_by(Assignment.reserved_at.desc())).all()
        return [tuple(r) for r in rows]

    # ---- figures --------------------------------------------------------------------------------

    def progress(self, annotator_id: str) -> dict[str, int]:
        with self.reading() as s:
            counts = dict(s.execute(select(Assignment.status, func.count()).where(Assignment.annotator_id == annotator_id)
                                    .group_by(Assignment.status)).all())
            open_prompts = s.scalar(select(func.count()).select_from(self._open_prompts(annotator_id, gold=False)[0].subquery()))
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

    def rankings(self, include_gold: bool = False) -> list[dict[str, Any]]:
        """The latest version of every submitted ranking, in the K-way export format (spec 6.1), by prompt
        id then annotator: never by submission, whose order concurrent annotators change from run to run."""
        with self.reading() as s:
            latest = (select(Submission.assignment_id, func.max(Submission.version).label("version"))
                      .group_by(Submission.assignment_id).subquery())
            rows = s.execute(
                select(Submission, Assignment, Prompt, Annotator.name)
                .join(latest, (latest.c.assignment_id == Submission.assignment_id) & (latest.c.version == Submission.version))
                .join(Assignment, Assignment.id == Submission.assignment_id)
                .join(Prompt, Prompt.id == Assignment.prompt_id)
                .join(Annotator, Annotator.id == Assignment.annotator_id)
                .where(Prompt.batch == self.batch)
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
        for submission, assignment, prompt, annotator in rows:
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
                "submitted_at": submission.submitted_at.isoformat(),
            })
        return records

    def events(self, assignment_id: str | None = None) -> list[Event]:
        with self.reading() as s:
            query = select(Event).order_by(Event.id)
            if assignment_id is not None:
                query = query.where(Event.assignment_id == assignment_id)
            return list(s.scalars(query))


def _sqlite_pragmas(connection, _record) -> None:
    # WAL: readers never block the writer; synchronous=FULL: a commit is on disk before it returns.
    # Transactions are begun explicitly (BEGIN IMMEDIATE) so that reservation is one writer at a time.
    connection.isolation_level = None
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _validate(order: list[str], tiers: list[list[str]], likert: dict[str, int], flags: dict[str, list[str]],
              confidence: int | None, note: str) -> None:
    placed = [c for tier in tiers for c in tier]
    if any(not tier for tier in tiers):
        raise LabelingError("a tier is empty")
    if sorted(placed) != sorted(order):
        raise LabelingError(f"every candidate must be ranked exactly once: expected {sorted(order)}, got {placed}")
    if set(likert) != set(order) or any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 7 for v in likert.values()):
        raise LabelingError("every candidate needs a Likert score from 1 to 7")
    for candidate, names in flags.items():
        if candidate not in order or any(n not in FLAGS for n in names):
            raise LabelingError(f"unknown candidate or flag in flags: {candidate!r}: {names!r}")
    if confidence is not None and (not isinstance(confidence, int) or not 1 <= confidence <= 9):
        raise LabelingError("confidence must be an integer from 1 to 9")
    if len(note) > MAX_NOTE:
        raise LabelingError(f"the note is longer than {MAX_NOTE} characters")
