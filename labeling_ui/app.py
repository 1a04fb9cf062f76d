"""The ranking app (`rlhf label serve`): a Gradio Blocks app over the ranking database.

What Gradio's known traps ask of it (labeling spec section 2): no module-level mutable state (every
session's work lives in the database, keyed by the authenticated user); the annotator id comes from
the authenticated request, never from a form field; drafts are saved on the server at every change,
so a refresh or a closed tab loses nothing; every submit carries an idempotency key; prompts and
candidates are shown in read-only text boxes, which render text and never HTML; admin actions check
the role on the server; bound to 127.0.0.1 with no share link and no file components.

The Write tab serves the other task type, demonstrations: the annotator writes the response to a
prompt (InstructGPT's SFT data), with the same server-side drafts, idempotent submit, skip and edit.

The Review tab, for reviewers and admins, shows the review queue (labeling spec 4.7) and takes a
decision on each item: accept, reject with a comment, or adjudicate with the reviewer's own tiers.

Programmatic clients (gradio_client) get the same operations as API endpoints: next_task,
submit_ranking, save_draft, skip_task, next_demonstration, submit_demonstration, review_queue,
review_assignment.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr

from labeling_ui.agreement import ranks_from_tiers, tiers_from_ranks
from labeling_ui.export import agreement, export_snapshot
from labeling_ui.quality import likert_contradictions, store_quality
from labeling_ui.review import REVIEWER_ROLES, describe, format_tiers, parse_tiers
from labeling_ui.schema import (
    DEMONSTRATION_SKIP_REASONS,
    FLAGS,
    MAX_COMPLETION,
    MAX_K,
    MAX_NOTE,
    SKIP_REASONS,
    LabelingError,
)
from labeling_ui.store import (
    DemonstrationTask,
    LabelStore,
    RankingTask,
    ReviewItem,
    blind_label,
)

LIKERT = list(range(1, 8))
CONFIDENCE = list(range(1, 10))
NO_TASK = "Nothing left to rank: thank you. New prompts appear here when they are imported."
NO_DEMONSTRATION = "No prompt left to write a response to: thank you. New ones appear here when they are imported."
NOT_YET_WRITING = "Writing demonstrations opens once you have passed the qualification (in the Rank tab)."
NOT_QUALIFIED = ("You did not pass the qualification (agreement with the reference rankings: {score}; needed: {threshold:.0%}), "
                 "so no prompts are assigned to you. An admin can let you take it again.")
QUALIFYING = ("Qualification item {item} of {needed}: your rankings of these items are compared with reference rankings "
              "before real prompts are assigned to you.")


class LoginThrottle:
    """At most `attempts` failed logins per user name in `window` seconds (slows password guessing)."""

    def __init__(self, attempts: int = 5, window: float = 300.0):
        self.attempts, self.window = attempts, window
        self.failures: dict[str, list[float]] = {}
        self.lock = threading.Lock()

    def allow(self, name: str) -> bool:
        with self.lock:
            recent = [t for t in self.failures.get(name, []) if time.monotonic() - t < self.window]
            self.failures[name] = recent
            return len(recent) < self.attempts

    def failed(self, name: str) -> None:
        with self.lock:
            self.failures.setdefault(name, []).append(time.monotonic())


@dataclass
class Slot:
    """One candidate's widgets; slot i shows the i-th candidate of the display order."""
    group: Any
    text: Any
    likert: Any
    rank: Any
    flags: Any


def refusals_shown(fn):
    """The store's refusals (LabelingError) reach the annotator as a message, in the browser or in the
    API response, instead of a server error."""
    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LabelingError as exc:
            raise gr.Error(str(exc)) from None
    return wrapped


def request_user(store: LabelStore, request: gr.Request):
    """The annotator of this request: the user name Gradio's login put there, never a form field."""
    if request is None or not request.username:
        raise gr.Error("Sign in first.")
    return store.user(request.username)


def is_complete(candidates: list[tuple[str, str]], values: dict) -> bool:
    ids = [c for c, _ in candidates]
    return all(values.get("likert", {}).get(c) in LIKERT for c in ids) and all(values.get("ranks", {}).get(c) for c in ids)


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def admin_row(name: str, counts: dict, quality: dict | None) -> list:
    """One annotator's line of the admin table (ADMIN_COLUMNS): their assignments (coverage's counts) and
    their quality figures (labeling_ui.quality; None for a user outside the report)."""
    quality = quality or {}
    qualification = quality.get("qualification", "n/a")
    if quality.get("qualification_score") is not None:
        qualification += f" ({quality['qualification_score']:.2f})"
    gold = fmt(quality.get("gold_accuracy")) + (" ALERT" if quality.get("gold_alert") else "")
    seconds = quality.get("median_seconds")
    too_fast = f"{quality['too_fast']} ({quality['too_fast_share']:.0%})" if quality.get("too_fast_share") is not None else "n/a"
    return [name, counts.get("submitted", 0), counts.get("skipped", 0), counts.get("reserved", 0),
            fmt(quality.get("pairwise_agreement")), qualification, gold, fmt(quality.get("kendall_tau_b")),
            fmt(quality.get("likert_consistency")), "n/a" if seconds is None else f"{seconds:.0f}", too_fast]


# ---- screens: each builds its widgets, in page order, and returns them -------------------------------

@dataclass
class SessionBar:
    state: Any  # the task on screen: assignment id, idempotency key, edit mode, time opened
    signed_in: Any


@dataclass
class RankScreen:
    progress: Any
    prompt: Any
    slots: list[Slot]
    confidence: Any
    note: Any
    consistency: Any
    submit_button: Any
    skip_reason: Any
    skip_button: Any
    mine: Any
    edit_button: Any

    def answers(self) -> list:
        """What the annotator fills in: every change is saved as a draft."""
        return [w for s in self.slots for w in (s.likert, s.rank, s.flags)] + [self.confidence, self.note]

    def shown(self) -> list:
        """What showing a task updates, after the session state (the order of `Annotation.render`)."""
        return [self.prompt, *[w for s in self.slots for w in (s.group, s.text, s.likert, s.rank, s.flags)],
                self.confidence, self.note, self.submit_button, self.skip_button, self.progress, self.mine]


@dataclass
class AdminTab:
    tab: Any
    summary: Any
    table: Any
    refresh_button: Any
    export_button: Any
    export_result: Any


def session_bar() -> SessionBar:
    state = gr.State({})
    with gr.Row():
        signed_in = gr.Markdown(elem_id="signed-in")
        gr.Button("Log out", link="/logout", size="sm", scale=0)
    return SessionBar(state, signed_in)


def candidate_slot(i: int) -> Slot:
    with gr.Group(visible=False) as group:
        text = gr.Textbox(label=f"Response {blind_label(i)}", interactive=False, elem_id=f"candidate-{i}")
        with gr.Row():
            likert = gr.Radio(LIKERT, label="Overall quality (1 = terrible, 7 = excellent)", elem_id=f"likert-{i}")
            rank = gr.Radio([], label="Rank (1 = best; give two responses the same rank to tie them)", elem_id=f"rank-{i}")
        flags = gr.CheckboxGroup([(meaning, name) for name, meaning in FLAGS.items()], label="Flags", elem_id=f"flags-{i}")
    return Slot(group, text, likert, rank, flags)


def rank_screen() -> RankScreen:
    with gr.Tab("Rank"):
        progress = gr.Markdown(elem_id="progress")
        prompt = gr.Textbox(label="Prompt", interactive=False, lines=2, elem_id="prompt")
        slots = [candidate_slot(i) for i in range(MAX_K)]
        confidence = gr.Radio(CONFIDENCE, label="Confidence in this ranking (1-9, optional)", elem_id="confidence")
        note = gr.Textbox(label="Note (optional)", max_length=MAX_NOTE, elem_id="note")
        consistency = gr.Markdown(elem_id="consistency")
        with gr.Row():
            submit_button = gr.Button("Submit", variant="primary", interactive=False, elem_id="submit")
            skip_reason = gr.Radio(list(SKIP_REASONS), label="Skip reason", elem_id="skip-reason")
            skip_button = gr.Button("Skip", elem_id="skip")
        with gr.Accordion("Edit one of your submissions", open=False):
            mine = gr.Dropdown([], label="Your submissions", elem_id="mine")
            edit_button = gr.Button("Edit", elem_id="edit")
    return RankScreen(progress, prompt, slots, confidence, note, consistency, submit_button, skip_reason, skip_button,
                      mine, edit_button)


@dataclass
class WriteScreen:
    state: Any  # the demonstration on screen: assignment id, idempotency key, edit mode, time opened
    progress: Any
    prompt: Any
    completion: Any
    submit_button: Any
    skip_reason: Any
    skip_button: Any
    mine: Any
    edit_button: Any

    def shown(self) -> list:
        """What showing a demonstration task updates (the order of `Writing.render`)."""
        return [self.state, self.prompt, self.completion, self.submit_button, self.skip_button, self.progress, self.mine]


def write_screen() -> WriteScreen:
    """Demonstrations: the annotator writes the response to a prompt (InstructGPT's SFT data)."""
    with gr.Tab("Write", elem_id="write-tab"):
        state = gr.State({})
        progress = gr.Markdown(elem_id="write-progress")
        prompt = gr.Textbox(label="Prompt", interactive=False, lines=2, elem_id="write-prompt")
        completion = gr.Textbox(label="Your response", lines=8, max_length=MAX_COMPLETION, elem_id="completion")
        with gr.Row():
            submit_button = gr.Button("Submit", variant="primary", interactive=False, elem_id="write-submit")
            skip_reason = gr.Radio(list(DEMONSTRATION_SKIP_REASONS), label="Skip reason", elem_id="write-skip-reason")
            skip_button = gr.Button("Skip", elem_id="write-skip")
        with gr.Accordion("Edit one of your demonstrations", open=False):
            mine = gr.Dropdown([], label="Your demonstrations", elem_id="write-mine")
            edit_button = gr.Button("Edit", elem_id="write-edit")
    return WriteScreen(state, progress, prompt, completion, submit_button, skip_reason, skip_button, mine, edit_button)


ADMIN_COLUMNS = ["annotator", "submitted", "skipped", "reserved", "agreement", "qualification", "gold accuracy", "tau-b",
                 "consistency", "median s/item", "too fast"]


def admin_tab() -> AdminTab:
    with gr.Tab("Admin", visible=False, elem_id="admin-tab") as tab:
        summary = gr.Markdown(elem_id="admin-summary")
        table = gr.Dataframe(headers=ADMIN_COLUMNS, interactive=False, elem_id="admin-table")
        with gr.Row():
            refresh_button = gr.Button("Refresh", elem_id="admin-refresh")
            export_button = gr.Button("Export snapshot", elem_id="export")
        export_result = gr.Markdown(elem_id="export-result")
    return AdminTab(tab, summary, table, refresh_button, export_button, export_result)


@dataclass
class ReviewTab:
    tab: Any
    summary: Any
    items: Any  # the queue: one choice per assignment awaiting a decision
    refresh_button: Any
    prompt: Any
    candidates: Any
    rankings: Any
    reasons: Any
    comment: Any
    tiers: Any
    accept_button: Any
    reject_button: Any
    adjudicate_button: Any
    result: Any

    def shown(self) -> list:
        """What showing a queue item updates (the order of `Reviewing.render_item`)."""
        return [self.prompt, self.candidates, self.rankings, self.reasons, self.comment, self.tiers]


def review_tab() -> ReviewTab:
    # text boxes throughout: prompts, candidates and notes are untrusted and must never render as HTML
    with gr.Tab("Review", visible=False, elem_id="review-tab") as tab:
        with gr.Row():
            summary = gr.Markdown(elem_id="review-summary")
            refresh_button = gr.Button("Refresh the queue", elem_id="review-refresh", scale=0)
        items = gr.Dropdown([], label="Awaiting review (oldest first)", elem_id="review-items")
        prompt = gr.Textbox(label="Prompt", interactive=False, lines=2, elem_id="review-prompt")
        candidates = gr.Textbox(label="Candidates", interactive=False, lines=4, elem_id="review-candidates")
        rankings = gr.Textbox(label="Rankings of this prompt (best first)", interactive=False, lines=2, elem_id="review-rankings")
        reasons = gr.Textbox(label="Why it is here", interactive=False, elem_id="review-reasons")
        comment = gr.Textbox(label="Comment (required to reject; the annotator reads it)", max_length=MAX_NOTE,
                             elem_id="review-comment")
        tiers = gr.Textbox(label="Adjudicated ranking, best first: '>' between ranks, '=' for a tie (c2 > c1 = c3 > c4)",
                           elem_id="review-tiers")
        with gr.Row():
            accept_button = gr.Button("Accept", variant="primary", elem_id="review-accept")
            reject_button = gr.Button("Reject (back to the pool)", variant="stop", elem_id="review-reject")
            adjudicate_button = gr.Button("Adjudicate (export my ranking)", elem_id="review-adjudicate")
        result = gr.Markdown(elem_id="review-result")
    return ReviewTab(tab, summary, items, refresh_button, prompt, candidates, rankings, reasons, comment, tiers,
                     accept_button, reject_button, adjudicate_button, result)


# ---- handlers: the annotator's task <-> the rank screen, and the admin's figures ---------------------

class TaskScreen:
    """What the Rank and Write tabs do alike: `render_next` shows the annotator's next task of the tab's kind."""
    store: LabelStore

    def render_next(self, user_id: str) -> list:
        raise NotImplementedError

    @refusals_shown
    def skip(self, session: dict, reason: str | None, request: gr.Request):
        user = request_user(self.store, request)
        if not reason:
            raise gr.Error("Choose a reason to skip.")
        self.store.skip(user.id, session.get("assignment_id", ""), reason)
        return self.render_next(user.id)


class Annotation(TaskScreen):
    def __init__(self, store: LabelStore, state: Any, screen: RankScreen):
        self.store, self.state, self.screen = store, state, screen

    def progress_text(self, user_id: str) -> str:
        p = self.store.progress(user_id)
        counts = f"Submitted {p['submitted']} · skipped {p['skipped']} · open prompts left {p['remaining']}"
        standing = self.store.qualification(user_id)
        if standing.state == "pending":
            return f"**{QUALIFYING.format(item=standing.done + 1, needed=standing.needed)}**  \n{counts}"
        return counts

    def no_task_text(self, user_id: str) -> str:
        """Why there is no task: a failed qualification, or nothing left."""
        standing = self.store.qualification(user_id)
        if standing.state == "failed":
            score = "n/a" if standing.score is None else f"{standing.score:.0%}"
            return NOT_QUALIFIED.format(score=score, threshold=standing.threshold)
        return NO_TASK

    def submitted_choices(self, user_id: str) -> list[tuple[str, str]]:
        return [(prompt[:80], aid) for aid, prompt in self.store.submitted(user_id)]

    def render(self, task: RankingTask | None, values: dict | None, user_id: str, editing: bool = False) -> list:
        """Updates for the session state and every widget of `RankScreen.shown`, showing `task` filled
        with `values` (a draft or a submission: likert, ranks, flags by candidate id; confidence; note)."""
        values = values or {}
        session = {"assignment_id": task.assignment_id, "key": str(uuid.uuid4()), "editing": editing,
                   "opened": time.time()} if task else {}
        updates: list = [session, gr.update(value=task.prompt if task else self.no_task_text(user_id))]
        candidates = task.candidates if task else []
        for i in range(MAX_K):
            if i < len(candidates):
                cid, text = candidates[i]
                updates += [gr.update(visible=True), gr.update(value=text),
                            gr.update(value=values.get("likert", {}).get(cid)),
                            gr.update(choices=list(range(1, len(candidates) + 1)), value=values.get("ranks", {}).get(cid)),
                            gr.update(value=values.get("flags", {}).get(cid, []))]
            else:
                updates += [gr.update(visible=False), gr.update(value=""), gr.update(value=None), gr.update(value=None),
                            gr.update(value=[])]
        complete = task is not None and is_complete(candidates, values)
        updates += [gr.update(value=values.get("confidence")), gr.update(value=values.get("note", "")),
                    gr.update(interactive=complete), gr.update(interactive=task is not None and not editing),
                    self.progress_text(user_id), gr.update(choices=self.submitted_choices(user_id), value=None)]
        return updates

    def render_next(self, user_id: str) -> list:
        """The annotator's next task, with its draft if they started it."""
        task = self.store.next_task(user_id)
        return self.render(task, self.store.draft(user_id, task.assignment_id) if task else None, user_id)

    def values_of(self, task: RankingTask, data: dict) -> dict:
        """likert, ranks and flags by candidate id, confidence and note, from the widgets' values."""
        screen = self.screen
        values: dict = {"likert": {}, "ranks": {}, "flags": {}, "confidence": data[screen.confidence],
                        "note": data[screen.note] or ""}
        for slot, (cid, _) in zip(screen.slots, task.candidates):
            likert, rank, flags = data[slot.likert], data[slot.rank], data[slot.flags]
            if likert is not None:
                values["likert"][cid] = int(likert)
            if rank is not None:
                values["ranks"][cid] = int(rank)
            if flags:
                values["flags"][cid] = list(flags)
        return values

    @refusals_shown
    def open_task(self, request: gr.Request):
        user = request_user(self.store, request)
        return [*self.render_next(user.id), gr.update(visible=user.role == "admin"), f"Signed in as **{user.name}** ({user.role})"]

    def autosave(self, data: dict, request: gr.Request):
        user = request_user(self.store, request)
        if not data[self.state].get("assignment_id"):
            return gr.update(interactive=False), ""
        task = self.store.task(user.id, data[self.state]["assignment_id"])
        values = self.values_of(task, data)
        self.store.save_draft(user.id, task.assignment_id, values)
        labels = {cid: blind_label(i) for i, (cid, _) in enumerate(task.candidates)}
        clashes = likert_contradictions(values["ranks"], values["likert"])
        warning = "; ".join(f"{labels[a]} is ranked above {labels[b]} but rated lower" for a, b in clashes)
        return gr.update(interactive=is_complete(task.candidates, values)), f"Check: {warning}." if warning else ""

    @refusals_shown
    def submit(self, data: dict, request: gr.Request):
        user = request_user(self.store, request)
        session = data[self.state]
        task = self.store.task(user.id, session["assignment_id"])
        values = self.values_of(task, data)
        self.store.submit(user.id, task.assignment_id, tiers_from_ranks(values["ranks"]), values["likert"], values["flags"],
                          int(values["confidence"]) if values["confidence"] else None, values["note"],
                          int(1000 * (time.time() - session["opened"])), idempotency_key=session["key"])
        gr.Info("Edit saved." if session.get("editing") else "Submitted.")
        return self.render_next(user.id)

    @refusals_shown
    def edit(self, assignment_id: str | None, request: gr.Request):
        user = request_user(self.store, request)
        if not assignment_id:
            raise gr.Error("Choose one of your submissions.")
        task, latest = self.store.task(user.id, assignment_id), self.store.latest_submission(user.id, assignment_id)
        return self.render(task, {**latest, "ranks": ranks_from_tiers(latest["tiers"])}, user.id, editing=True)


class Writing(TaskScreen):
    """The annotator's demonstration task <-> the write screen: the same draft, submit, skip and edit
    cycle as the rank screen, over the store's demonstration methods."""

    def __init__(self, store: LabelStore, screen: WriteScreen):
        self.store, self.screen = store, screen

    def render(self, task: DemonstrationTask | None, completion: str, user_id: str, editing: bool = False) -> list:
        """Updates for every widget of `WriteScreen.shown`, showing `task` with `completion` in the text box."""
        session = {"assignment_id": task.assignment_id, "key": str(uuid.uuid4()), "editing": editing,
                   "opened": time.time()} if task else {}
        p = self.store.progress(user_id, "demonstration")
        mine = [(prompt[:80], aid) for aid, prompt in self.store.submitted(user_id, "demonstration")]
        return [session, gr.update(value=task.prompt if task else self.no_task_text(user_id)),
                gr.update(value=completion, interactive=task is not None),
                gr.update(interactive=task is not None and bool(completion.strip())),
                gr.update(interactive=task is not None and not editing),
                f"Written {p['submitted']} · skipped {p['skipped']} · open prompts left {p['remaining']}",
                gr.update(choices=mine, value=None)]

    def no_task_text(self, user_id: str) -> str:
        if self.store.qualification(user_id).state != "passed":
            return NOT_YET_WRITING
        return NO_DEMONSTRATION

    def render_next(self, user_id: str) -> list:
        """The annotator's next demonstration, with its draft if they started it."""
        task = self.store.next_demonstration(user_id)
        draft = self.store.draft(user_id, task.assignment_id) if task else None
        return self.render(task, (draft or {}).get("completion", ""), user_id)

    @refusals_shown
    def open_task(self, request: gr.Request):
        return self.render_next(request_user(self.store, request).id)

    def autosave(self, session: dict, completion: str, request: gr.Request):
        user = request_user(self.store, request)
        if not session.get("assignment_id"):
            return gr.update(interactive=False)
        self.store.save_draft(user.id, session["assignment_id"], {"completion": completion})
        return gr.update(interactive=bool(completion.strip()))

    @refusals_shown
    def submit(self, session: dict, completion: str, request: gr.Request):
        user = request_user(self.store, request)
        self.store.submit_demonstration(user.id, session.get("assignment_id", ""), completion,
                                        int(1000 * (time.time() - session["opened"])), idempotency_key=session["key"])
        gr.Info("Edit saved." if session.get("editing") else "Submitted.")
        return self.render_next(user.id)

    @refusals_shown
    def edit(self, assignment_id: str | None, request: gr.Request):
        user = request_user(self.store, request)
        if not assignment_id:
            raise gr.Error("Choose one of your demonstrations.")
        task = self.store.demonstration_task(user.id, assignment_id)
        return self.render(task, self.store.latest_submission(user.id, assignment_id)["completion"], user.id, editing=True)


class Administration:
    def __init__(self, store: LabelStore, exports_dir: str | Path):
        self.store, self.exports_dir = store, exports_dir

    def admin_of(self, request: gr.Request):
        """The role is checked here, on the server: the hidden tab alone would not stop an API call."""
        user = request_user(self.store, request)
        if user.role != "admin":
            raise gr.Error("Only an admin can do this.")
        return user

    def admin_view(self, request: gr.Request):
        self.admin_of(request)
        coverage, report, quality = self.store.coverage(), agreement(self.store), store_quality(self.store)

        summary = (f"**Coverage**: {coverage['ranked_prompts']} of {coverage['prompts']} prompts ranked.  \n"
                   f"**Agreement** over {report['overlap_prompts']} prompts ranked twice: pairwise {fmt(report['pairwise_agreement'])}, "
                   f"Kendall tau-b {fmt(report['kendall_tau_b'])}, Krippendorff's alpha (ordinal) {fmt(report['krippendorff_alpha'])}")
        rows = [admin_row(name, coverage["per_annotator"].get(name, {}), quality["per_annotator"].get(name))
                for name in sorted(coverage["per_annotator"].keys() | quality["per_annotator"].keys())]
        return summary, rows

    def export(self, request: gr.Request):
        self.admin_of(request)
        snapshot = export_snapshot(self.store, self.exports_dir)
        counts = {name: sum(1 for _ in open(snapshot / f"{name}.jsonl")) for name in ("rankings", "demonstrations")}
        return f"Snapshot: `{snapshot.name}` ({counts['rankings']} rankings, {counts['demonstrations']} demonstrations)"


class Reviewing:
    """The Review tab (labeling spec 4.7). The store checks the role on every call, so the hidden tab
    is not the only guard; a reviewer sees annotator names and candidate ids, which the tiers use."""

    def __init__(self, store: LabelStore):
        self.store = store

    def reviewer_of(self, request: gr.Request):
        user = request_user(self.store, request)
        if user.role not in REVIEWER_ROLES:
            raise gr.Error("Only a reviewer or an admin can do this.")
        return user

    def open_tab(self, request: gr.Request):
        return gr.update(visible=request_user(self.store, request).role in REVIEWER_ROLES)

    def item(self, user_id: str, assignment_id: str) -> ReviewItem:
        item = next((item for item in self.store.review_queue(user_id) if item.assignment_id == assignment_id), None)
        if item is None:
            raise gr.Error("That item is no longer in the queue (someone decided on it): refresh the queue.")
        return item

    @staticmethod
    def render_item(item: ReviewItem | None) -> list:
        """Updates for `ReviewTab.shown`; the adjudication box starts from the ranking under review."""
        if item is None:
            return ["", "", "", "", "", ""]
        candidates = "\n\n".join(f"{cid}: {text}" for cid, text in item.candidates)
        if item.ranking is None:
            under_review = f"{item.annotator} skipped it ({item.status}): nothing was ranked"
        elif not item.ranking:
            under_review = f"{item.annotator} wrote (under review):\n{item.completion}"
        else:
            under_review = f"{item.annotator} (under review): {format_tiers(item.ranking)}"
        rankings = "\n".join([under_review, *(f"{name}: {format_tiers(tiers)}" for _, name, tiers in item.others)])
        return [item.prompt, candidates, rankings, "\n".join(describe(r) for r in item.reasons), "",
                format_tiers(item.ranking) if item.ranking else ""]

    @refusals_shown
    def queue_view(self, request: gr.Request):
        """The queue's size, its items (the oldest shown), and that item."""
        queue = self.store.review_queue(self.reviewer_of(request).id)
        choices = [(f"{item.prompt_id} · {item.annotator} · {', '.join(r['reason'] for r in item.reasons)}", item.assignment_id)
                   for item in queue]
        summary = f"**{len(queue)}** awaiting review" if queue else "Nothing awaits review."
        return [summary, gr.update(choices=choices, value=choices[0][1] if choices else None),
                *self.render_item(queue[0] if queue else None)]

    @refusals_shown
    def show(self, assignment_id: str | None, request: gr.Request):
        user = self.reviewer_of(request)
        return self.render_item(self.item(user.id, assignment_id) if assignment_id else None)

    def decision(self, action: str):
        """The handler of one action's button: that decision on the item on screen, then the queue again."""
        done = {"accept": "Accepted.", "reject": "Rejected: the prompt is back in the pool.", "adjudicate": "Adjudicated."}[action]

        @refusals_shown
        def decide(assignment_id: str | None, comment: str, tiers: str, request: gr.Request):
            user = self.reviewer_of(request)
            if not assignment_id:
                raise gr.Error("Choose an item of the queue.")
            adjudicated = parse_tiers(tiers or "") if action == "adjudicate" else None
            self.store.review(user.id, assignment_id, action, comment or "", adjudicated)
            return [done, *self.queue_view(request)]
        return decide

    def listen(self, screen: ReviewTab) -> None:
        """The tab's listeners, each with an API endpoint of its own name (review_*)."""
        fields = [screen.summary, screen.items, *screen.shown()]
        screen.refresh_button.click(self.queue_view, None, fields, api_name="review_refresh")
        screen.items.input(self.show, screen.items, screen.shown(), api_name="review_show")
        for action, button in (("accept", screen.accept_button), ("reject", screen.reject_button),
                               ("adjudicate", screen.adjudicate_button)):
            button.click(self.decision(action), [screen.items, screen.comment, screen.tiers],
                         [screen.result, *fields], api_name=f"review_{action}")


def add_review_api(store: LabelStore) -> None:
    """The queue and the decisions for programmatic reviewers: candidates by their ids, tiers as lists."""

    def review_queue(request: gr.Request) -> list:
        items = store.review_queue(request_user(store, request).id)
        return [{**dataclasses.asdict(item), "since": item.since.isoformat()} for item in items]

    def review_assignment(assignment_id: str, action: str, comment: str, tiers: list | None, request: gr.Request) -> dict:
        return {"review_id": store.review(request_user(store, request).id, assignment_id, action, comment or "", tiers)}

    for fn in (review_queue, review_assignment):
        gr.api(refusals_shown(fn), api_name=fn.__name__)


def build_app(store: LabelStore, exports_dir: str | Path) -> gr.Blocks:
    """Every screen first, then every listener, so that a handler never refers to a widget that is
    not built yet. Gradio names each listener's API endpoint after its handler (/admin_view, /export)."""
    with gr.Blocks(title="Rank responses") as app:
        session, rank, write, admin = session_bar(), rank_screen(), write_screen(), admin_tab()
        review, reviewing = review_tab(), Reviewing(store)
        annotation, administration = Annotation(store, session.state, rank), Administration(store, exports_dir)
        writing = Writing(store, write)
        shown, answers = [session.state, *rank.shown()], rank.answers()
        app.load(annotation.open_task, None, [*shown, admin.tab, session.signed_in])
        # one listener for every answer widget, always_last: the browser keeps one save in flight and sends one
        # more with the latest answers after it, so replies come back in order. A listener a widget let two
        # saves of one annotator run at once on the server, and under load an earlier one's reply (answers
        # incomplete: Submit disabled) could land after the last one's, or its draft overwrite the newer one.
        gr.on([widget.input for widget in answers], annotation.autosave, {session.state, *answers},
              [rank.submit_button, rank.consistency], show_progress="hidden", trigger_mode="always_last")
        rank.submit_button.click(annotation.submit, {session.state, *answers}, shown)
        rank.skip_button.click(annotation.skip, [session.state, rank.skip_reason], shown)
        rank.edit_button.click(annotation.edit, [rank.mine], shown)
        app.load(writing.open_task, None, write.shown(), api_name="write_open")
        # always_last: while one save runs, keystrokes queue into one more, so the last text is saved
        write.completion.input(writing.autosave, [write.state, write.completion], write.submit_button, show_progress="hidden",
                               trigger_mode="always_last", api_name="write_autosave")
        write.submit_button.click(writing.submit, [write.state, write.completion], write.shown(), api_name="write_submit")
        write.skip_button.click(writing.skip, [write.state, write.skip_reason], write.shown(), api_name="write_skip")
        write.edit_button.click(writing.edit, [write.mine], write.shown(), api_name="write_edit")
        admin.refresh_button.click(administration.admin_view, None, [admin.summary, admin.table])
        admin.export_button.click(administration.export, None, admin.export_result)
        app.load(reviewing.open_tab, None, review.tab, api_name="review_open")
        reviewing.listen(review)
        add_api(store)
        add_review_api(store)
    return app


def add_api(store: LabelStore) -> None:
    """The same operations for programmatic clients; candidates go by their blinded labels."""

    def user_id(request: gr.Request) -> str:
        return request_user(store, request).id

    def labels(task: RankingTask) -> dict[str, str]:
        return {blind_label(i): cid for i, (cid, _) in enumerate(task.candidates)}

    def next_task(request: gr.Request) -> dict:
        task = store.next_task(user_id(request))
        if task is None:
            return {}
        return {"assignment_id": task.assignment_id, "prompt": task.prompt,
                "candidates": [{"label": blind_label(i), "text": text} for i, (_, text) in enumerate(task.candidates)]}

    def submit_ranking(assignment_id: str, tiers: list, likert: dict, flags: dict, confidence: int | None, note: str,
                       idempotency_key: str, request: gr.Request) -> dict:
        uid = user_id(request)
        by_label = labels(store.task(uid, assignment_id))

        def ids(items):
            unknown = [label for label in items if label not in by_label]
            if unknown:
                raise LabelingError(f"no candidate labelled {unknown[0]!r}; the labels are {sorted(by_label)}")
            return [by_label[label] for label in items]

        submission = store.submit(uid, assignment_id, [ids(tier) for tier in tiers], dict(zip(ids(likert), likert.values())),
                                  dict(zip(ids(flags or {}), (flags or {}).values())), confidence, note or "",
                                  idempotency_key=idempotency_key)
        return {"submission_id": submission}

    def save_draft(assignment_id: str, draft: dict, request: gr.Request) -> dict:
        store.save_draft(user_id(request), assignment_id, draft)
        return {"saved": True}

    def skip_task(assignment_id: str, reason: str, request: gr.Request) -> dict:
        store.skip(user_id(request), assignment_id, reason)
        return {"skipped": True}

    def next_demonstration(request: gr.Request) -> dict:
        task = store.next_demonstration(user_id(request))
        return {"assignment_id": task.assignment_id, "prompt": task.prompt} if task else {}

    def submit_demonstration(assignment_id: str, completion: str, idempotency_key: str, request: gr.Request) -> dict:
        return {"submission_id": store.submit_demonstration(user_id(request), assignment_id, completion,
                                                            idempotency_key=idempotency_key)}

    for fn in (next_task, submit_ranking, save_draft, skip_task, next_demonstration, submit_demonstration):
        gr.api(refusals_shown(fn), api_name=fn.__name__)


def serve(store: LabelStore, exports_dir: str | Path, host: str = "127.0.0.1", port: int = 7860, concurrency: int = 32) -> None:
    """Run the app until interrupted: login against the store's users, no share link, no file access."""
    throttle = LoginThrottle()

    def login(name: str, password: str) -> bool:
        if not throttle.allow(name):
            return False
        ok = store.authenticate(name, password) is not None
        if not ok:
            throttle.failed(name)
        return ok

    # Gradio's queue rebuilds a pandas summary of its last 10,000 events after every event, for a monitoring
    # page we do not serve: under 20 annotators that was most of the server's time per submit. Once per
    # thousand events keeps the page's figures without the cost.
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
    app = build_app(store, exports_dir)
    app.queue(default_concurrency_limit=concurrency)
    print(f"[label] serving on http://{host}:{port}", flush=True)
    app.launch(server_name=host, server_port=port, auth=login, share=False, allowed_paths=[], ssr_mode=False,
               footer_links=[], quiet=True, show_error=True)
