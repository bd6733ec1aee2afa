"""Query plans of the statements groklab runs, for the fleet benchmark and the plan regression test:
capture what a piece of code sends to PostgreSQL, then EXPLAIN each statement with its parameters."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from groklab.store.database import session_factory

# Statements a plan is worth reading for; INSERTs and COPYs have no access path to choose.
_READS_AND_UPDATES = ("SELECT", "UPDATE", "DELETE", "WITH")


@contextmanager
def captured_statements(database_url: str) -> Iterator[list[tuple[str, Any]]]:
    """The (SQL, parameters) of every read, update and delete sent to the database meanwhile."""
    engine = session_factory(database_url).kw["bind"]
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if not executemany and statement.lstrip().upper().startswith(_READS_AND_UPDATES):
            seen.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def explain(database_url: str, statement: str, parameters: Any) -> dict[str, Any]:
    """PostgreSQL's plan of the statement (EXPLAIN, FORMAT JSON: nothing is executed)."""
    engine = session_factory(database_url).kw["bind"]
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()
        cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
        plan = cursor.fetchone()[0][0]["Plan"]
        conn.rollback()
    return plan


def nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from nodes(child)


def sequential_scans(plan: dict[str, Any]) -> list[str]:
    """The tables the plan reads whole."""
    return [node["Relation Name"] for node in nodes(plan) if node["Node Type"] == "Seq Scan"]


def summary(plan: dict[str, Any]) -> str:
    """'Limit > Index Scan on runs (ix_runs_status_id)': the plan's nodes, outermost first."""
    parts = []
    for node in nodes(plan):
        text = node["Node Type"]
        if "Relation Name" in node:
            text += f" on {node['Relation Name']}"
        if "Index Name" in node:
            text += f" ({node['Index Name']})"
        parts.append(text)
    return " > ".join(parts)
