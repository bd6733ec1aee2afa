"""The Alembic revisions build exactly the schema the SQLAlchemy models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from groklab.store.database import make_engine
from groklab.store.migrate import upgrade
from groklab.store.models import metadata


def test_migrations_on_an_empty_database_match_the_models(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        drift = compare_metadata(context, metadata)
        tables = set(inspect(connection).get_table_names())
    engine.dispose()
    assert drift == []
    assert {"experiments", "runs", "metric_series", "metric_points", "run_events"} <= tables
