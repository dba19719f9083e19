"""The feedback store's tables, as this code writes and reads them (``service.feedback``) and as Alembic compares a
migrated store against (``env.py``): here, below both, so that neither imports the other."""

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text

metadata = MetaData()

issued_cards = Table(
    "issued_cards",
    metadata,
    Column("uuid", String(36), primary_key=True),
    Column("service_id", String(100), nullable=False),
    Column("kind", String(100), nullable=False),
    Column("indicator", String(20), nullable=False),
    Column("issued_at", DateTime(timezone=True), nullable=False),
    # The override memory (service/memory.py): a keyed hash of the caller's issuer and the patient's id, never the
    # id; NULL when the memory is off.
    Column("patient_hash", String(64), nullable=True, index=True),
    # What each suggestion proposed (JSON: uuid -> label and code), so that an accepted one is named in the report.
    Column("suggestions", Text, nullable=True),
    # A keyed hash of the caller (issuer and tenant) the card was issued to; NULL when the memory is off (0003).
    Column("caller_hash", String(64), nullable=True),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(100), nullable=False),
    Column("card_uuid", String(100), nullable=False, index=True),
    Column("outcome", String(20), nullable=False),
    Column("accepted_suggestions", Text, nullable=True),
    Column("override_system", String(300), nullable=True),
    Column("override_code", String(300), nullable=True),
    Column("override_display", String(500), nullable=True),
    Column("user_comment", Text, nullable=True),
    Column("outcome_timestamp", String(64), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False),
    # A keyed hash of the caller that sent the feedback: it counts only for a card issued to the same caller (0003).
    Column("caller_hash", String(64), nullable=True),
)
