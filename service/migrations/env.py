"""Alembic's environment: always run through service.migrations, on the connection (and transaction) it passes."""

from alembic import context

from service.migrations.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the feedback store's migrations with `alp-cds migrate`")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
