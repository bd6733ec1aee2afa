"""SQLAlchemy tables. Schema changes go through Alembic revisions in migrations/, never create_all."""

from __future__ import annotations

from datetime import datetime, UTC
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

LOCAL_OWNER = "local"
"""The owner of everything created while authentication is off (embedded mode on localhost)."""


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on PostgreSQL and SQLite alike (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


# Named constraints keep Alembic migrations identical on PostgreSQL and SQLite.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Base(DeclarativeBase):
    metadata = metadata


OPEN_SEARCHES = "kind = 'd_crit_search' AND search_ended_at IS NULL"
TAGS_COMMENT = "Free key -> value labels set by the owner (PATCH); null when none."
NOTE_COMMENT = "The owner's free-text note."


class Experiment(Base):
    __tablename__ = "experiments"
    __table_args__ = (
        Index("ix_experiments_owner_id", "owner", "id"),
        # The reconciler's pass looks for searches between rounds: these few, not every experiment.
        Index(
            "ix_experiments_open_searches",
            "id",
            postgresql_where=text(OPEN_SEARCHES),
            sqlite_where=text(OPEN_SEARCHES),
        ),  # fmt: skip
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(100), default=LOCAL_OWNER, server_default=LOCAL_OWNER)
    kind: Mapped[str] = mapped_column(String(32), default="sweep", server_default="sweep")
    name: Mapped[str | None] = mapped_column(String(200))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    search_ended_at: Mapped[datetime | None] = mapped_column(
        UtcDateTime, comment="When a d_crit_search planned its last round (it ended)."
    )
    tags: Mapped[dict[str, str] | None] = mapped_column(JSON, comment=TAGS_COMMENT)
    note: Mapped[str | None] = mapped_column(Text, comment=NOTE_COMMENT)

    runs: Mapped[list[Run]] = relationship(back_populates="experiment", order_by="Run.id")


class Run(Base):
    __tablename__ = "runs"
    __table_args__ = (
        # status in the leaves (PostgreSQL): a listing's run ids and status counts read from the
        # index alone, not from rows that carry their spec (migration 0011; SQLite has no INCLUDE).
        Index("ix_runs_experiment_id_id", "experiment_id", "id", postgresql_include=["status"]),
        Index("ix_runs_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    index: Mapped[int] = mapped_column(Integer, comment="Position within its experiment's sweep.")
    role: Mapped[str | None] = mapped_column(String(32), comment="e.g. phase1 / phase2 / memorise.")
    parent_run_id: Mapped[int | None] = mapped_column(
        ForeignKey("runs.id", ondelete="SET NULL"),
        comment="The run whose final checkpoint this run continues from (a fork).",
    )
    spec: Mapped[dict[str, Any]] = mapped_column(JSON, comment="The expanded engine RunSpec.")
    status: Mapped[str] = mapped_column(String(16), default="queued")
    step: Mapped[int] = mapped_column(BigInteger, default=0)
    total_steps: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    # The worker that holds the run's lease (or held it last).
    worker: Mapped[str | None] = mapped_column(String(200))
    lease_token: Mapped[int] = mapped_column(
        Integer, default=0, server_default="0", comment="Fencing token: bumped by every claim."
    )
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    enqueued_at: Mapped[datetime | None] = mapped_column(
        UtcDateTime, comment="Last time a message for this run was sent to the broker."
    )
    error: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    latest_metrics: Mapped[dict[str, Any]] = mapped_column(
        JSON, default=dict, comment="name -> [step, value] of each series' last point."
    )
    stopped_early_at_step: Mapped[int | None] = mapped_column(
        BigInteger, comment="The step at which a stop_when condition ended the run (it succeeded)."
    )
    search_round: Mapped[int | None] = mapped_column(Integer, comment="A d_crit_search probe's round (1, 2, ...).")
    stored_points: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0", comment="Metric points stored (write_points counts them)."
    )
    planned_points: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0", comment="Metric points its spec will store in all (groklab/storage.py)."
    )
    planned_checkpoint_bytes: Mapped[int] = mapped_column(
        BigInteger, default=0, server_default="0", comment="Checkpoint bytes its spec will keep at most."
    )
    tags: Mapped[dict[str, str] | None] = mapped_column(JSON, comment=TAGS_COMMENT)
    note: Mapped[str | None] = mapped_column(Text, comment=NOTE_COMMENT)

    experiment: Mapped[Experiment] = relationship(back_populates="runs")


class MetricSeries(Base):
    """One named series of one run; points refer to it by a small integer key."""

    __tablename__ = "metric_series"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))


class MetricPoint(Base):
    """Append-mostly, read by (series, step range): the primary key is that read's index.

    series_id has no foreign key: PostgreSQL checks one per inserted row, which cost more than
    half of the ingest time (benchmarks/metric_store.py). Points are only written for a series created
    in the same transaction, and a series is deleted only with its points (metric_writes.delete_series).
    """

    __tablename__ = "metric_points"
    __table_args__ = {"sqlite_with_rowid": False}

    series_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    value: Mapped[float | None] = mapped_column(Float(precision=53), comment="NULL for NaN.")


class MetricRollup(Base):
    """Aggregates of one series over an aligned block of steps: [block * width, (block + 1) * width - 1].

    Maintained by write_points on PostgreSQL only (SQLite downsamples the raw points), so that a
    downsampled read folds whole blocks instead of every point. min, max and sum are over the
    non-null values, value_count counts them; last_value is the value at last_step, the block's
    highest step. On PostgreSQL the primary key INCLUDEs every aggregate: a downsampled read is an
    index-only scan, whatever order the blocks were written in.
    """

    __tablename__ = "metric_rollups"
    __table_args__ = (
        PrimaryKeyConstraint(
            "series_id",
            "width",
            "block",
            name="pk_metric_rollups",
            postgresql_include=["count", "value_count", "min", "max", "sum", "last_step", "last_value"],
        ),  # fmt: skip
        {"sqlite_with_rowid": False},
    )

    series_id: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    block: Mapped[int] = mapped_column(BigInteger)
    count: Mapped[int] = mapped_column(Integer)
    value_count: Mapped[int] = mapped_column(Integer)
    min: Mapped[float | None] = mapped_column(Float(precision=53))
    max: Mapped[float | None] = mapped_column(Float(precision=53))
    sum: Mapped[float | None] = mapped_column(Float(precision=53))
    last_step: Mapped[int] = mapped_column(BigInteger)
    last_value: Mapped[float | None] = mapped_column(Float(precision=53))


class RunEvent(Base):
    """Every status transition of a run, with its time: the audit trail of the state machine."""

    __tablename__ = "run_events"
    __table_args__ = (Index("ix_run_events_run_id_id", "run_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    message: Mapped[str | None] = mapped_column(Text)


class ApiKey(Base):
    """A bearer key: only its SHA-256 is stored; the key itself is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    name: Mapped[str | None] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16), comment="First characters, to recognise a key.")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(100), comment="Comma-separated: read, write.")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class IdempotencyKey(Base):
    """An Idempotency-Key of POST /v1/experiments, remembered with the body it came with."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("owner", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(200))
    request_hash: Mapped[str] = mapped_column(String(64))
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class CheckpointRecord(Base):
    """One stored checkpoint of a run: the index row; its bytes live in the checkpoint store's blob.

    The blob key is unique per write (it names the writer's fencing token and a nonce), so a
    fenced-off writer's late blob can never replace the one this row points to.
    """

    __tablename__ = "checkpoints"
    __table_args__ = (PrimaryKeyConstraint("run_id", "step", name="pk_checkpoints"),)

    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    fencing_token: Mapped[int] = mapped_column(Integer, comment="The run's lease token of the writer.")
    blob_key: Mapped[str] = mapped_column(String(300))
    kept: Mapped[bool] = mapped_column(Boolean, default=False, comment="Spared by retention.")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class CheckpointChunk(Base):
    """A slice of a checkpoint blob when the database itself is the checkpoint store."""

    __tablename__ = "checkpoint_chunks"
    __table_args__ = (PrimaryKeyConstraint("blob_key", "seq", name="pk_checkpoint_chunks"),)

    blob_key: Mapped[str] = mapped_column(String(300))
    seq: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(
        # The database's clock, as S3's LastModified is the store's: the age of a blob that a
        # writer on another host left unindexed does not depend on that host's clock.
        UtcDateTime,
        server_default=func.now(),
        comment="An unindexed blob's age (orphans).",
    )


class CachedAnswer(Base):
    """An answer computed from finished runs only (a run's analysis, a downsampled metric query),
    gzip-compressed, under a key that names every input: the runs' ids, statuses, finish times and
    point counts, the request and the code's digest (groklab/store/answer_cache.py)."""

    __tablename__ = "cached_answers"
    __table_args__ = (
        Index("ix_cached_answers_experiment_id", "experiment_id"),
        Index("ix_cached_answers_run_id", "run_id"),
        Index("ix_cached_answers_created_at", "created_at"),
    )

    key: Mapped[str] = mapped_column(String(64), primary_key=True, comment="SHA-256 of the answer's inputs.")
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    run_id: Mapped[int | None] = mapped_column(
        ForeignKey("runs.id", ondelete="CASCADE"), comment="The run whose analysis this is; null for a query."
    )
    size_bytes: Mapped[int] = mapped_column(Integer)
    body: Mapped[bytes] = mapped_column(LargeBinary, comment="The answer, gzip-compressed.")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
