"""Response bodies of the HTTP API (requests are engine.spec models)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, model_validator

from engine.spec import spec_path_error
from groklab.store.downsample import Bucket
from groklab.store.metric_reads import LABEL, GroupRow, PointRow, RunGroup
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


MetricFormat = Literal["json", "csv", "ndjson"]


class MetricQuery(BaseModel):
    """Runs (by id, or an experiment filtered by status and spec fields) x series names x steps."""

    model_config = {"extra": "forbid"}

    run_ids: list[int] | None = Field(None, max_length=1000, description="At most 1,000 run ids.")
    experiment_id: int | None = Field(None, ge=1, description="All runs of this experiment.")
    status: list[RunStatus] | None = Field(None, description="Keep runs in these statuses only.")
    where: dict[str, str | int | float | bool | None] | None = Field(
        None,
        max_length=20,
        description="Dotted spec paths and the values runs must have, e.g. "
        '{"task.train_size": 1000, "optimizer.weight_decay": 1.0}.',
    )
    names: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=100, description="Series names; all when omitted. Unknown names give no rows."
    )
    start_step: int = Field(0, ge=0, description="First step, inclusive.")
    end_step: int | None = Field(None, ge=0, description="Inclusive; default the last step of the selected series.")
    max_points: int | None = Field(None, ge=1, le=10_000, description="Downsample each series to at most this many buckets.")
    limit: int = Field(10_000, ge=1, le=100_000, description="Raw points per page (no max_points).")
    cursor: str | None = Field(None, max_length=40, description="next_cursor of the previous page.")
    format: MetricFormat | None = Field(None, description="Overrides the Accept header.")
    group_by: list[Annotated[str, Field(max_length=200)]] | None = Field(
        None,
        min_length=1,
        max_length=4,
        description="Dotted spec paths (or `label`, the run's analysis label) whose values group the "
        "runs; each group's buckets are folded across its runs (mean, min and max of the runs' "
        'bucket means, n runs). Needs max_points. E.g. ["task.train_size"].',
    )

    @model_validator(mode="after")
    def _coherent(self) -> MetricQuery:
        if self.run_ids is None and self.experiment_id is None:
            raise ValueError("run_ids: give run_ids or experiment_id")
        check_spec_paths("where", self.where or {})
        if self.group_by is not None:
            check_spec_paths("group_by", [path for path in self.group_by if path != LABEL])
            if self.max_points is None:
                raise ValueError("group_by: needs max_points (groups are folded bucket by bucket)")
        if self.end_step is not None and self.end_step < self.start_step:
            raise ValueError("end_step: is before start_step")
        if self.max_points is not None and self.cursor is not None:
            raise ValueError("cursor: downsampled queries return one page")
        return self


def check_spec_paths(field: str, paths: Any) -> None:
    """A ValueError naming `field` for the first path that names no RunSpec field."""
    for path in paths:
        problem = spec_path_error(path)
        if problem:
            raise ValueError(f"{field}: {problem}")


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
