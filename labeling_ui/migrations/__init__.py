"""Schema migrations of the ranking database (Alembic), applied when a store opens a database, so
that a database made by one version of the app opens in the next.

A database made before migrations existed (by SQLAlchemy's create_all, the schema of revision 0001)
is stamped 0001 first. Concurrent openers take turns: PostgreSQL under an advisory lock held for the
migrating transaction, SQLite under its single writer (the store begins every write IMMEDIATE).

A change to the models in labeling_ui/schema.py comes with a new revision in versions/, in
Alembic's `op` API (alembic.autogenerate.produce_migrations, run on a database at the previous head,
drafts it); a test compares the migrated schema with the models on both databases.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

FIRST_REVISION = "0001"
# any fixed number: the key of PostgreSQL's advisory lock that serialises migrations
MIGRATION_LOCK = 0x726C6866


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).parent))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision` (default: the newest), in one transaction."""
    config = alembic_config()
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})")
        config.attributes["connection"] = connection
        tables = inspect(connection).get_table_names()
        if "annotators" in tables and "alembic_version" not in tables:
            command.stamp(config, FIRST_REVISION)  # made by create_all before migrations existed
        command.upgrade(config, revision)
