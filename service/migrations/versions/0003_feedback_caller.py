"""Feedback counts for the caller that received the card: a keyed hash of the caller on both tables.

``issued_cards.caller_hash`` and ``feedback.caller_hash``: HMAC-SHA256 (``CDS_OVERRIDE_KEY``) of the caller's issuer
and tenant, never the issuer in clear; NULL when the memory is off and for the rows written before. The override
memory counts a feedback only for a card issued to the same caller (through the same service): a client that learnt
another EHR's card uuid cannot quiet that EHR's warning. Both columns are new and empty: no row is rewritten.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issued_cards") as batch:
        batch.add_column(sa.Column("caller_hash", sa.String(64), nullable=True))
    with op.batch_alter_table("feedback") as batch:
        batch.add_column(sa.Column("caller_hash", sa.String(64), nullable=True))


def downgrade() -> None:
    """Never run by the service: dropping the columns would lose which caller each row belongs to."""
    raise NotImplementedError("the feedback store is not downgraded: restore a backup instead")
