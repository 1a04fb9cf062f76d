"""The ranking database's schema (labeling spec section 3): annotators, prompts and their K
candidates, assignments, drafts, submissions with per-candidate ratings, reviews and an append-only
event log; the fixed vocabularies (roles, flags, skip reasons, task kinds); password hashing; and what
makes a submission valid. Alembic's revisions (labeling_ui/migrations) build exactly these tables.

Two task kinds share the tables: a ranking prompt has K candidates to rank; a demonstration prompt
has none, and its submissions hold the response the annotator wrote (`completion`, no tiers).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from common.errors import InputError

ROLES = ("annotator", "reviewer", "admin")  # a reviewer and an admin review (REVIEWER_ROLES); all three annotate
# an annotator ranks labeling.qualification_items gold items before real work (InstructGPT B.1): pending
# until then, then passed or failed by their agreement with the gold tiers; a failed one gets no task
QUALIFICATION_STATES = ("pending", "passed", "failed")
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
# a ranking prompt has K candidates to rank; a demonstration prompt has none: the annotator writes the
# response (InstructGPT's SFT data)
KINDS = ("ranking", "demonstration")
# Demonstrations feed SFT, which runs before any batch of candidates exists, so they are one pool of
# their own: served and exported whichever batch of candidates a store serves.
DEMONSTRATIONS_BATCH = "demonstrations"
DEMONSTRATION_SKIP_REASONS = ("unclear prompt", "needs expertise", "offensive content", "duplicate")
MAX_COMPLETION = 8000
# statuses that give a prompt back to the pool (a reviewer's rejection among them)
RELEASED = ("skipped", "expired", "rejected")


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
    # one of QUALIFICATION_STATES; only annotators take it, and only while labeling.qualification_items > 0
    qualification: Mapped[str] = mapped_column(String(20), default="pending", server_default="pending")
    qualification_score: Mapped[float | None] = mapped_column(Float, nullable=True)  # pairwise agreement with the gold tiers
    # when the qualification was last decided or reset by an admin: it counts the gold items served since
    qualification_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


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
    kind: Mapped[str] = mapped_column(String(20), default="ranking", server_default="ranking")  # one of KINDS


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
    # reserved | submitted | skipped | expired | rejected (by a reviewer: its prompt is open to another annotator)
    status: Mapped[str] = mapped_column(String(20), default="reserved")
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
    tiers: Mapped[list[Any]] = mapped_column(JSON)  # candidate external ids, best tier first; [] for a demonstration
    completion: Mapped[str | None] = mapped_column(Text, nullable=True)  # the response a demonstration's annotator wrote
    confidence: Mapped[int | None] = mapped_column(Integer, nullable=True)  # 1-9
    note: Mapped[str] = mapped_column(Text, default="")
    time_spent_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    guideline_version: Mapped[str] = mapped_column(String(50), default="")
    submitted_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    # the reviewer who wrote this version by adjudicating; null: the assignment's annotator wrote it
    reviewer_id: Mapped[str | None] = mapped_column(ForeignKey("annotators.id", name="fk_submissions_reviewer_id_annotators"), nullable=True)


class Rating(Base):
    __tablename__ = "ratings"
    __table_args__ = (UniqueConstraint("submission_id", "candidate_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    submission_id: Mapped[str] = mapped_column(ForeignKey("submissions.id"), index=True)
    candidate_id: Mapped[str] = mapped_column(String(50))
    likert: Mapped[int] = mapped_column(Integer)  # overall quality, 1-7
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)


class Review(Base):
    """A reviewer's decision on one assignment (labeling spec 4.7): accept, reject (the assignment becomes
    rejected and its prompt goes back to the pool) or adjudicate (the reviewer's tiers become a new
    version of the submission). One per assignment: a decision is final, and it locks the annotator's edits."""
    __tablename__ = "reviews"
    __table_args__ = (UniqueConstraint("assignment_id"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    assignment_id: Mapped[str] = mapped_column(ForeignKey("assignments.id"))
    # the version reviewed (an adjudication's is the annotator's, before the reviewer's); null: a skip
    submission_id: Mapped[str | None] = mapped_column(ForeignKey("submissions.id"), nullable=True)
    reviewer_id: Mapped[str] = mapped_column(ForeignKey("annotators.id"), index=True)
    action: Mapped[str] = mapped_column(String(20))  # one of REVIEW_ACTIONS
    comment: Mapped[str] = mapped_column(Text, default="")
    tiers: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True), nullable=True)  # adjudicated tiers
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


class Event(Base):
    """Append-only: open, draft_save, submit, edit, skip, expire, review_accept, review_reject, review_adjudicate,
    import (a ranking made in another tool)."""
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


# the password hash of an annotator imported from another tool: no password matches it (its scheme is not scrypt)
NO_PASSWORD = "none$$"


# ---- what a valid submission is ----------------------------------------------------------------

def validate_candidates(candidates: Any, where: str) -> None:
    """A ranking prompt's candidates: MIN_K to MAX_K of {id, text, ...} with distinct string ids."""
    if not isinstance(candidates, list) or not MIN_K <= len(candidates) <= MAX_K:
        raise LabelingError(f"{where}: expected {MIN_K} to {MAX_K} candidates, got {len(candidates or [])}")
    if not all(isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("text"), str) for c in candidates):
        raise LabelingError(f"{where}: every candidate needs string fields 'id' and 'text'")
    if len({c["id"] for c in candidates}) != len(candidates):
        raise LabelingError(f"{where}: candidate ids repeat")


def validate_tiers(order: list[str], tiers: Any) -> None:
    """Tiers (a list of lists of candidate ids) that place every candidate of `order` exactly once."""
    if not isinstance(tiers, list) or not all(isinstance(tier, list) and all(isinstance(c, str) for c in tier) for tier in tiers):
        raise LabelingError(f"tiers must be a list of lists of candidate ids, got {tiers!r}")
    placed = [c for tier in tiers for c in tier]
    if any(not tier for tier in tiers):
        raise LabelingError("a tier is empty")
    if sorted(placed) != sorted(order):
        raise LabelingError(f"every candidate must be ranked exactly once: expected {sorted(order)}, got {placed}")


def validate_ranking(order: list[str], tiers: list[list[str]], likert: dict[str, int], flags: dict[str, list[str]],
              confidence: int | None, note: str) -> None:
    validate_tiers(order, tiers)
    if set(likert) != set(order) or any(not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 7 for v in likert.values()):
        raise LabelingError("every candidate needs a Likert score from 1 to 7")
    for candidate, names in flags.items():
        if candidate not in order or any(n not in FLAGS for n in names):
            raise LabelingError(f"unknown candidate or flag in flags: {candidate!r}: {names!r}")
    if confidence is not None and (not isinstance(confidence, int) or not 1 <= confidence <= 9):
        raise LabelingError("confidence must be an integer from 1 to 9")
    if len(note) > MAX_NOTE:
        raise LabelingError(f"the note is longer than {MAX_NOTE} characters")


def validate_completion(completion: Any) -> None:
    if not isinstance(completion, str) or not completion.strip():
        raise LabelingError("the response is empty: write the response to the prompt")
    if len(completion) > MAX_COMPLETION:
        raise LabelingError(f"the response has {len(completion)} characters; at most {MAX_COMPLETION} are allowed")
