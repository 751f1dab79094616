"""app_analyze(): ANALYZE of the app's tables for the tasks' role

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 07:40:00

Only a table's owner may ANALYZE it (PostgreSQL 15), and the tasks' role owns nothing: the
function runs as its owner (SECURITY DEFINER, a fixed search_path), the role the migrations act
as. EXECUTE stays with PUBLIC: only the app's two login roles may connect to the database.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION app_analyze() RETURNS void
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public
        AS $$
        DECLARE t text;
        BEGIN
            FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'public' LOOP
                EXECUTE format('ANALYZE public.%I', t);
            END LOOP;
        END $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION app_analyze()")
