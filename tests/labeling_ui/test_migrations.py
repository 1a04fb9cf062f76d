"""Schema migrations (Alembic) on SQLite and PostgreSQL: a database made by an earlier version opens
in this one with its data, the migrated schema is exactly the models', and stores opened at once
on a new database migrate it once."""

from datetime import datetime

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, create_engine, null, text

from labeling_ui.migrations import FIRST_REVISION, alembic_config, upgrade
from labeling_ui.schema import Base, hash_password
from labeling_ui.store import LabelStore

from .conftest import run_concurrently

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()


def revision_of(url: str) -> str | None:
    engine = create_engine(url)
    with engine.connect() as connection:
        revision = MigrationContext.configure(connection).get_current_revision()
    engine.dispose()
    return revision


def first_version_database(url: str) -> None:
    """A database as the first version left it: its schema (revision 0001) and one submitted ranking,
    written with that version's columns only."""
    engine = create_engine(url)
    upgrade(engine, FIRST_REVISION)
    tables = MetaData()
    tables.reflect(engine)
    t = tables.tables
    at = datetime(2026, 11, 1, 10)
    with engine.begin() as c:
        c.execute(t["annotators"].insert(), {"id": "u1", "name": "ann", "role": "annotator", "password_hash": hash_password("password1"),
                                             "active": True, "created_at": at})
        for i in range(2):
            c.execute(t["prompts"].insert(), {"id": f"p{i}", "batch": "", "external_id": f"p{i}", "text": f"Q: {i}?", "split": "train",
                                              "overlap": False, "gold": null(), "meta": {}, "created_at": at})
            c.execute(t["candidates"].insert(), [{"id": f"p{i}c{j}", "prompt_id": f"p{i}", "external_id": f"c{j}", "text": f"answer {j}",
                                                  "policy": "sft", "sampling": {}} for j in (1, 2, 3)])
        c.execute(t["assignments"].insert(), {"id": "a1", "prompt_id": "p0", "annotator_id": "u1", "status": "submitted",
                                              "display_order": ["c2", "c1", "c3"], "is_gold": False, "reserved_at": at,
                                              "expires_at": at, "skip_reason": None})
        c.execute(t["submissions"].insert(), {"id": "s1", "assignment_id": "a1", "version": 1, "idempotency_key": "k1",
                                              "tiers": [["c2"], ["c1", "c3"]], "confidence": 7, "note": "", "time_spent_ms": 9000,
                                              "guideline_version": "v1", "submitted_at": at})
        c.execute(t["ratings"].insert(), [{"submission_id": "s1", "candidate_id": c, "likert": 4, "flags": []} for c in ("c1", "c2", "c3")])
    engine.dispose()


def test_a_database_of_the_first_version_opens_in_this_one_with_its_data(db_url):
    first_version_database(db_url)
    assert revision_of(db_url) == FIRST_REVISION
    store = LabelStore(db_url, overlap_fraction=0.0)
    assert revision_of(db_url) == HEAD
    [ranking] = store.rankings()
    assert ranking["ranking"] == [["c2"], ["c1", "c3"]] and ranking["annotator_id"] == "ann" and ranking["confidence"] == 7
    ann = store.authenticate("ann", "password1")
    assert ann is not None
    task = store.next_task(ann.id)  # the old annotator goes on with the prompt they never had
    assert task.prompt == "Q: 1?"
    ids = [c for c, _ in task.candidates]
    store.submit(ann.id, task.assignment_id, [[ids[0]], ids[1:]], {c: 5 for c in ids})
    assert len(store.rankings()) == 2


def test_a_database_made_before_migrations_existed_is_stamped_then_upgraded(db_url):
    first_version_database(db_url)
    engine = create_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE alembic_version"))  # as create_all left it: no revision recorded
    engine.dispose()
    store = LabelStore(db_url)
    assert revision_of(db_url) == HEAD and len(store.rankings()) == 1


def test_the_migrated_schema_is_exactly_the_models(db_url):
    # a model changed without a migration shows here, on each database
    engine = create_engine(db_url)
    upgrade(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    engine.dispose()
    assert differences == []


def test_stores_opened_at_once_on_a_new_database_migrate_it_once(db_url):
    errors = run_concurrently(lambda _: LabelStore(db_url), range(4))
    assert errors == []
    assert revision_of(db_url) == HEAD


def test_a_downgrade_to_the_first_version_keeps_its_data_and_upgrades_again(db_url):
    from alembic import command

    first_version_database(db_url)
    LabelStore(db_url).engine.dispose()
    engine = create_engine(db_url)
    config = alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, FIRST_REVISION)
    engine.dispose()
    assert revision_of(db_url) == FIRST_REVISION
    assert len(LabelStore(db_url).rankings()) == 1
