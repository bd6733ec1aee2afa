"""Response bodies of the HTTP API (requests are engine.spec models)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from groklab.metric_answers import MetricQuery
from groklab.store.downsample import Bucket
from groklab.store.metric_reads import GroupRow, PointRow, RunGroup
from groklab.store.runs import RunStatus


class RunOut(BaseModel):
    id: int
    experiment_id: int
    index: int
    status: RunStatus
    step: int = Field(description="Optimizer steps done so far.")
    total_steps: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    worker: str | None
    error: str | None
    cancel_requested: bool
    latest_metrics: dict[str, float | None] = Field(
        description="The last logged value of each metric series (null for non-finite values)."
    )
    latest_metrics_step: dict[str, int] = Field(description="The step of each latest value.")
    spec: dict[str, Any] = Field(description="The run's expanded engine spec.")
    role: str | None = Field(description="The run's part in its experiment (e.g. phase1, phase2).")
    parent_run_id: int | None = Field(
        description="The run whose final state this run continues (a fork); it starts when that run succeeds."
    )
    attempts: int = Field(description="How many times a worker started this run.")
    stopped_early_at_step: int | None = Field(
        description="Where a stop_when condition ended the run, which then succeeded before total_steps."
    )
    search_round: int | None = Field(description="A d_crit_search probe's round (1, 2, ...); null for other runs.")
    tags: dict[str, str] = Field(description="The owner's key -> value tags (PATCH /v1/runs/{id}).")
    note: str | None = Field(description="The owner's note.")

    @classmethod
    def from_row(cls, run: Any) -> RunOut:
        latest = run.latest_metrics or {}
        return cls.model_validate(
            {
                **{name: getattr(run, name) for name in _RUN_COLUMNS},
                "latest_metrics": {name: point[1] for name, point in latest.items()},
                "latest_metrics_step": {name: point[0] for name, point in latest.items()},
                "tags": run.tags or {},
            }
        )


_RUN_COLUMNS = (
    "id experiment_id index status step total_steps created_at started_at finished_at worker error "
    "cancel_requested spec role parent_run_id attempts stopped_early_at_step search_round note"
).split()


class RunEventOut(BaseModel):
    status: RunStatus
    at: datetime
    message: str | None


class RunDetailOut(RunOut):
    events: list[RunEventOut]


class ExperimentOut(BaseModel):
    id: int
    name: str | None
    kind: str = Field(description="sweep, grokking, ungrokking, semi_grokking, efficiency, toy or d_crit_search.")
    created_at: datetime
    run_ids: list[int]
    status_counts: dict[str, int]
    spec: dict[str, Any]
    tags: dict[str, str] = Field(description="The owner's key -> value tags (PATCH /v1/experiments/{id}).")
    note: str | None = Field(description="The owner's note.")


class ExperimentPlanOut(BaseModel):
    kind: str
    name: str | None
    runs: int = Field(description="Runs the experiment would store (a d_crit_search: its first round).")
    total_steps: int = Field(description="Their optimizer steps, as counted against the owner's queued-work bound.")


class WhoAmIOut(BaseModel):
    owner: str = Field(description="Whose experiments and runs this caller reaches ('local' when auth is off).")
    scopes: list[str] = Field(description="'read' and/or 'write'.")
    auth_required: bool = Field(description="Whether this api asks every request for an API key.")


class ExperimentDetailOut(ExperimentOut):
    runs: list[RunOut]


class ExperimentPage(BaseModel):
    items: list[ExperimentOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class RunPage(BaseModel):
    items: list[RunOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")


class MetricsOut(BaseModel):
    run_id: int
    series: dict[str, list[tuple[int, float | None]]] = Field(
        description="name -> [[step, value], ...] in step order; null values were NaN/inf."
    )


class HealthOut(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, bool] = {}


class MetricQueryOut(BaseModel):
    """The long layout: one row per (run, name, step), downsampled per (run, name, bucket), or with
    group_by per (group, name, bucket)."""

    mode: Literal["points", "buckets", "groups"]
    start_step: int
    end_step: int | None = Field(description="The resolved end; null when no series has points.")
    bucket_width: int | None = Field(description="Steps per bucket; null for raw points.")
    rows: list[PointRow] | list[Bucket] | list[GroupRow]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null at the end.")
    group_by: list[str] | None = Field(None, description="The query's group_by (mode groups).")
    groups: list[RunGroup] | None = Field(None, description="Each group's values and runs (mode groups).")


class OverlayQueryOut(BaseModel):
    """What the experiment page's overlay charts ask for (groklab/overlay_query.py)."""

    fields: list[str] = Field(
        description="Spec fields whose values differ among the runs, but the seed: what may colour the lines."
    )
    field: str = Field(description="The field that colours the lines: the one asked for, else the one the experiment varies.")
    query: MetricQuery = Field(description="The body to POST to /v1/metrics/query: one grouped query for every chart.")


class TagsPatch(BaseModel):
    """PATCH body of an experiment or a run: tags merge (a null value removes its key), note replaces."""

    model_config = {"extra": "forbid"}

    tags: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.:-]{0,63}$")], str | None] | None = Field(
        None,
        description="key -> value to set, or null to remove the key; keys are 1-64 letters, digits "
        "and _ . : - ; values are bounded by GROKLAB_MAX_TAG_LENGTH, tags by GROKLAB_MAX_TAGS.",
    )
    note: str | None = Field(None, description="Replaces the note; an empty string clears it.")


class UsageOut(BaseModel):
    """GET /v1/usage: the caller's storage, as GROKLAB_MAX_STORED_BYTES_PER_OWNER counts it."""

    owner: str
    runs: int = Field(description="The owner's runs, of every status.")
    unfinished_runs: int = Field(description="Queued and running: what 'planned' counts.")
    stored_points: int = Field(description="Metric points stored.")
    planned_points: int = Field(description="Metric points the unfinished runs' specs will still store.")
    stored_checkpoint_bytes: int
    planned_checkpoint_bytes: int = Field(description="Checkpoint bytes the unfinished runs may still keep.")
    stored_bytes: int = Field(description="Metric points at metric_point_bytes each, plus checkpoint bytes.")
    planned_bytes: int
    metric_point_bytes: int = Field(description="The bytes one stored metric point is counted as.")
    max_stored_bytes: int = Field(description="The bound on stored + planned bytes (GROKLAB_MAX_STORED_BYTES_PER_OWNER).")
