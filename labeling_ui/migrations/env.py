"""Alembic's environment for the ranking database: run by labeling_ui.migrations.upgrade on a
connection the store opened, inside the store's transaction (so a migration applies whole or not
at all, on SQLite and PostgreSQL alike)."""

from alembic import context

from labeling_ui.schema import Base

connection = context.config.attributes["connection"]
# SQLite alters a table by copying it (batch mode); PostgreSQL alters it in place
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
