"""Alembic's environment: runs the revisions on the connection :func:`dsr.migrations.upgrade` hands it.

No offline (SQL script) mode and no URL of its own: migrations run through the engine, on the ledger's
database, inside the transaction that holds the schema lock.
"""

from alembic import context

from dsr.migrations import render_item

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through dsr.migrations.upgrade (or `dsr db upgrade`), not the alembic CLI")

context.configure(
    connection=connection,
    target_metadata=context.config.attributes.get("target_metadata"),  # set when comparing (autogenerate)
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters a table by copying it
    render_item=render_item,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
