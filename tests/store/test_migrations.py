"""The Alembic revisions build exactly the schema the SQLAlchemy models describe, on both databases."""

from __future__ import annotations

import math

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from groklab.store import runs as run_store
from groklab.store.database import make_engine, session_scope
from groklab.store.metric_writes import write_points
from groklab.store.migrate import alembic_config, upgrade
from groklab.store.models import metadata
from groklab.store.rollups import ROLLUP_WIDTHS


def test_migrations_on_an_empty_database_match_the_models(empty_database_url: str) -> None:
    url = empty_database_url
    upgrade(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        drift = compare_metadata(context, metadata)
        inspector = inspect(connection)
        tables = set(inspector.get_table_names())
        built_includes = {
            (table, index["name"]): index["dialect_options"]["postgresql_include"]
            for table in tables
            for index in inspector.get_indexes(table)
            if index.get("dialect_options", {}).get("postgresql_include")
        }
    engine.dispose()
    assert drift == []
    # Alembic's comparison leaves out an index's INCLUDE columns (PostgreSQL only; SQLite has none).
    if url.startswith("postgresql"):
        declared_includes = {
            (table.name, index.name): list(index.dialect_kwargs["postgresql_include"])
            for table in metadata.tables.values()
            for index in table.indexes
            if index.dialect_kwargs.get("postgresql_include")
        }
        assert built_includes == declared_includes
    assert {"experiments", "runs", "metric_series", "metric_points", "run_events"} <= tables


def test_migration_0004_builds_the_new_rollup_levels_of_points_written_before_it(fresh_pg_url: str) -> None:
    """Downgrading to 0003 drops the 64-, 1,024- and 16,384-step blocks; upgrading rebuilds them
    from the blocks below, equal to what write_points keeps."""
    upgrade(fresh_pg_url)
    with session_scope(fresh_pg_url) as session:
        run_id = (
            run_store.create_experiment(session, name="t", spec={}, runs=[run_store.NewRun(spec={}, total_steps=1)]).runs[0].id
        )
        points = [("loss", step, math.sin(step / 700) if step % 501 else math.nan) for step in range(0, 40_000, 3)]
        write_points(session, run_id, points)
    rollups = "SELECT * FROM metric_rollups ORDER BY series_id, width, block"
    with session_scope(fresh_pg_url) as session:
        kept = session.execute(text(rollups)).all()
    command.downgrade(alembic_config(fresh_pg_url), "0003")
    with session_scope(fresh_pg_url) as session:
        assert {w for (w,) in session.execute(text("SELECT DISTINCT width FROM metric_rollups"))} == {16, 256, 4096, 65536}
    upgrade(fresh_pg_url)
    with session_scope(fresh_pg_url) as session:
        rebuilt = session.execute(text(rollups)).all()
    assert {row.width for row in rebuilt} == set(ROLLUP_WIDTHS)
    assert [row[:7] + row[8:] for row in rebuilt] == [row[:7] + row[8:] for row in kept]
    assert [row.sum for row in rebuilt] == pytest.approx([row.sum for row in kept])
