"""Training finished runs further: a succeeded run continued with a new phase, and an experiment's
failed and cancelled runs re-queued. Either way the run is queued again under its own id and a
worker resumes it from its latest stored checkpoint (groklab.checkpoint_format), on any host, so its
series go on where they ended and the analyses read the whole run.
"""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from pydantic import Field, ValidationError
from sqlalchemy.orm import Session

from engine.spec import PhaseSpec, RunSpec, StopCondition, StrictModel, error_field
from groklab import storage
from groklab.dispatch import dispatch_runs
from groklab.errors import Conflict, InvalidInput
from groklab.run_specs import run_spec
from groklab.settings import Settings
from groklab.store import answer_cache, quotas
from groklab.store import runs as run_store
from groklab.store.models import Experiment, Run

RETRIED_STATUSES = (run_store.FAILED, run_store.CANCELLED)


class ContinueRequest(StrictModel):
    """The phase a continued run trains next."""

    steps: Annotated[int, Field(ge=1, le=100_000_000)]
    weight_decay: Annotated[float, Field(ge=0, le=100)] | None = Field(
        None, description="The new phase's weight decay; none keeps the optimizer's."
    )
    subset_size: Annotated[int, Field(ge=1)] | None = Field(
        None, description="Train the new phase on a subset D' of the run's last training set."
    )
    stop_when: Annotated[list[StopCondition], Field(max_length=16)] = Field(
        [], description="Stop conditions for the continued run; the earlier ones are not kept."
    )


def continued_spec(run: Run, request: ContinueRequest) -> RunSpec:
    """The run's spec with the new phase appended. A run that stopped early ends its phases at
    the step it stopped at (its last checkpoint), so the new phase starts there."""
    spec = run_spec(run)
    phases = list(spec.phases)
    if run.stopped_early_at_step is not None:
        phases = _phases_ending_at(phases, run.stopped_early_at_step)
    phase = PhaseSpec(
        steps=request.steps,
        train_set="subset" if request.subset_size is not None else "full",
        subset_size=request.subset_size,
        weight_decay=request.weight_decay,
    )
    changed = {**spec.model_dump(), "phases": [p.model_dump() for p in [*phases, phase]]}
    changed["stop_when"] = [c.model_dump() for c in request.stop_when]
    try:
        return RunSpec.model_validate(changed)
    except ValidationError as exc:
        field, message = error_field(exc.errors()[0])
        named = "subset_size" if "subset_size" in field else "steps" if field in ("model", "phases") else field
        raise InvalidInput(f"{field}: {message}", field=named) from exc


def _phases_ending_at(phases: list[PhaseSpec], step: int) -> list[PhaseSpec]:
    kept, start = [], 0
    for phase in phases:
        if start >= step:
            break
        kept.append(phase if start + phase.steps <= step else phase.model_copy(update={"steps": step - start}))
        start += phase.steps
    return kept


def continue_run(
    session: Session, celery: Celery, settings: Settings, run_id: int, request: ContinueRequest, *, owner: str
) -> Run:
    """succeeded -> queued with the new phase; 409 for a run that is not succeeded."""
    run = run_store.get_run(session, run_id, owner=owner)
    if run.status != run_store.SUCCEEDED:
        raise Conflict(f"run {run_id} is {run.status}; only a succeeded run can be continued", field="run_id")
    spec = continued_spec(run, request)
    planned = storage.check_run_bounds(spec, settings, field="steps", run=f"run {run_id} continued")
    quotas.check_queued_work(session, owner, new_steps=request.steps, limit=settings.max_queued_steps_per_owner)
    quotas.check_stored_bytes(
        session, owner, new_bytes=_still_to_store(run, planned.metric_points, planned.checkpoint_bytes),
        limit=settings.max_stored_bytes_per_owner, field="steps",
    )  # fmt: skip
    previous_end = spec.total_steps - request.steps
    moved = run_store.move(
        session,
        run_id,
        from_statuses=[run_store.SUCCEEDED],
        to_status=run_store.QUEUED,
        message=f"continued from step {previous_end:,} for {request.steps:,} more steps",
        spec=spec.model_dump(mode="json"),
        total_steps=spec.total_steps,
        finished_at=None,
        stopped_early_at_step=None,
        planned_points=planned.metric_points,
        planned_checkpoint_bytes=planned.checkpoint_bytes,
    )
    if not moved:  # another request continued or deleted it in between
        raise Conflict(f"run {run_id} changed while it was being continued; try again", field="run_id")
    answer_cache.forget(session, run.experiment_id, [run_id])
    dispatch_runs(session, celery, [run_id], ensemble_size=settings.ensemble_size)
    session.refresh(run)
    return run


def _still_to_store(run: Run, planned_points: int, planned_checkpoint_bytes: int) -> int:
    """Bytes a finished run queued again will add to its owner's usage: the points its spec plans
    beyond those stored, and its checkpoints (counted whole: the stored ones are replaced)."""
    return max(0, planned_points - run.stored_points) * storage.METRIC_POINT_BYTES + planned_checkpoint_bytes


def retry_experiment(session: Session, celery: Celery, settings: Settings, experiment: Experiment) -> list[int]:
    """Re-queues the experiment's failed and cancelled runs; 409 when it has none. A fork whose
    parent is not (yet) succeeded waits for it, as at submission (groklab.forks hands it on)."""
    retried = [run for run in experiment.runs if run.status in RETRIED_STATUSES]
    if not retried:
        raise Conflict(f"experiment {experiment.id} has no failed or cancelled runs to retry", field="experiment_id")
    steps = sum(run.total_steps - run.step for run in retried)
    quotas.check_queued_work(session, experiment.owner, new_steps=steps, limit=settings.max_queued_steps_per_owner)
    quotas.check_stored_bytes(
        session, experiment.owner, limit=settings.max_stored_bytes_per_owner, field="experiment_id",
        new_bytes=sum(_still_to_store(run, run.planned_points, run.planned_checkpoint_bytes) for run in retried),
    )  # fmt: skip
    for run in retried:
        run_store.move(
            session,
            run.id,
            from_statuses=list(RETRIED_STATUSES),
            to_status=run_store.QUEUED,
            message=f"retried (was {run.status} at step {run.step:,}); resumes from its latest checkpoint",
            error=None,
            finished_at=None,
            cancel_requested=False,
        )
    retried_ids = {run.id for run in retried}
    answer_cache.forget(session, experiment.id, sorted(retried_ids))
    ready = [
        run.id
        for run in retried
        if run.parent_run_id is None
        or (run.parent_run_id not in retried_ids and run_store.get_run(session, run.parent_run_id).status == run_store.SUCCEEDED)
    ]
    dispatch_runs(session, celery, ready, ensemble_size=settings.ensemble_size)
    return sorted(retried_ids)
