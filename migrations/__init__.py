"""Alembic revisions: the only way groklab's schema changes."""
