"""Response bodies of the HTTP API (requests are engine.spec models)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

RunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


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

    @classmethod
    def from_row(cls, run: Any) -> RunOut:
        latest = run.latest_metrics or {}
        return cls.model_validate(
            {
                **{name: getattr(run, name) for name in _RUN_COLUMNS},
                "latest_metrics": {name: point[1] for name, point in latest.items()},
                "latest_metrics_step": {name: point[0] for name, point in latest.items()},
            }
        )


_RUN_COLUMNS = (
    "id experiment_id index status step total_steps created_at started_at finished_at worker error "
    "cancel_requested spec"
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
    created_at: datetime
    run_ids: list[int]
    status_counts: dict[str, int]
    spec: dict[str, Any]


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
