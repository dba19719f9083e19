"""The override memory and the committee's report: each issued card's keyed patient hash and suggestions.

``issued_cards.patient_hash``: HMAC-SHA256 (``CDS_OVERRIDE_KEY``) of the caller's issuer and the patient's id, never
the id; NULL when the memory is off and for the cards issued before. ``issued_cards.suggestions``: JSON, each
suggestion's uuid -> what it proposed (its label, the test's LOINC code or ``delete``), so that an accepted
suggestion is named in the report. Both columns are new and empty: no row is rewritten. The index finds a patient's
cards at hook time.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("issued_cards") as batch:
        batch.add_column(sa.Column("patient_hash", sa.String(64), nullable=True))
        batch.add_column(sa.Column("suggestions", sa.Text, nullable=True))
    op.create_index("ix_issued_cards_patient_hash", "issued_cards", ["patient_hash"])


def downgrade() -> None:
    """Never run by the service: dropping the columns would lose what the memory and the report read."""
    raise NotImplementedError("the feedback store is not downgraded: restore a backup instead")
