"""Review, annotator qualification and demonstrations: the reviews table, the annotators'
qualification, the prompts' kind (ranking | demonstration), a submission's written completion and
the reviewer who adjudicated it. Every new column has a server default or takes NULL, so the rows
of the first version keep their meaning: every prompt a ranking, every annotator pending
qualification (which passes at once where labeling.qualification_items is 0).

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

REVIEWER_KEY = "fk_submissions_reviewer_id_annotators"


def upgrade() -> None:
    op.create_table(
        "reviews",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("assignment_id", sa.String(length=36), nullable=False),
        sa.Column("submission_id", sa.String(length=36), nullable=True),
        sa.Column("reviewer_id", sa.String(length=36), nullable=False),
        sa.Column("action", sa.String(length=20), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("tiers", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["assignment_id"], ["assignments.id"]),
        sa.ForeignKeyConstraint(["reviewer_id"], ["annotators.id"]),
        sa.ForeignKeyConstraint(["submission_id"], ["submissions.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("assignment_id"),
    )
    op.create_index(op.f("ix_reviews_reviewer_id"), "reviews", ["reviewer_id"], unique=False)
    op.add_column("annotators", sa.Column("qualification", sa.String(length=20), server_default="pending", nullable=False))
    op.add_column("annotators", sa.Column("qualification_score", sa.Float(), nullable=True))
    op.add_column("annotators", sa.Column("qualification_at", sa.DateTime(), nullable=True))
    op.add_column("prompts", sa.Column("kind", sa.String(length=20), server_default="ranking", nullable=False))
    op.add_column("submissions", sa.Column("completion", sa.Text(), nullable=True))
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot add a constraint to a table that exists, but adds a column with its REFERENCES clause
        op.execute(f"ALTER TABLE submissions ADD COLUMN reviewer_id VARCHAR(36) CONSTRAINT {REVIEWER_KEY} REFERENCES annotators (id)")
    else:
        op.add_column("submissions", sa.Column("reviewer_id", sa.String(length=36), nullable=True))
        op.create_foreign_key(REVIEWER_KEY, "submissions", "annotators", ["reviewer_id"], ["id"])

def downgrade() -> None:
    with op.batch_alter_table("submissions") as batch:
        batch.drop_column("reviewer_id")  # its foreign key goes with it
        batch.drop_column("completion")
    op.drop_column("prompts", "kind")
    op.drop_column("annotators", "qualification_at")
    op.drop_column("annotators", "qualification_score")
    op.drop_column("annotators", "qualification")
    op.drop_index(op.f("ix_reviews_reviewer_id"), table_name="reviews")
    op.drop_table("reviews")
