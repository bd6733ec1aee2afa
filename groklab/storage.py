"""What a run will store, known from its spec before it is queued: its metric rows and checkpoints.

Submission refuses a run over the per-run bounds (422) and an owner whose stored and planned
bytes would pass theirs (429, groklab/store/quotas.py); `GET /v1/usage` reports the same figures.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.spec import RunSpec, parameter_count
from groklab.errors import InvalidInput
from groklab.settings import Settings

METRIC_POINT_BYTES = 100
"""Database bytes of one stored metric point on PostgreSQL: its metric_points row and primary-key
entry and its share of the rollup blocks (benchmarks/fleet.py measures it per million points)."""

# A checkpoint's bytes beyond its tensors: the safetensors header (names, shapes, the optimizer's
# JSON skeleton) and the minibatch sampler's state, a few KiB at any model size.
CHECKPOINT_OVERHEAD_BYTES = 16 * 1024


@dataclass(frozen=True)
class Footprint:
    """What one run stores over its whole spec."""

    evaluations: int
    loss_points: int
    metric_points: int
    """Stored rows: every series of each evaluation plus the train_loss points between them."""
    kept_checkpoints: int
    checkpoint_bytes: int
    """The kept checkpoints and the latest one, at checkpoint_size each."""

    @property
    def points(self) -> int:
        """What GROKLAB_MAX_POINTS_PER_RUN bounds: evaluations and loss points."""
        return self.evaluations + self.loss_points

    @property
    def bytes(self) -> int:
        return self.metric_points * METRIC_POINT_BYTES + self.checkpoint_bytes


def checkpoint_size(spec: RunSpec) -> int:
    """Bytes of one checkpoint (groklab.checkpoint_format): float32 weights with AdamW's two moments
    (SGD keeps none), the training-set indices as int64, and the header."""
    tensors_per_parameter = 3 if spec.optimizer.kind == "adamw" else 1
    largest_train_set = max([spec.task.resolved_train_size, *spec.phase_train_sizes()])
    return 4 * tensors_per_parameter * parameter_count(spec) + 8 * largest_train_set + CHECKPOINT_OVERHEAD_BYTES


def footprint(spec: RunSpec) -> Footprint:
    evaluations, loss_points, kept = spec.eval_step_count(), spec.loss_point_count(), spec.kept_checkpoint_count()
    return Footprint(
        evaluations=evaluations,
        loss_points=loss_points,
        metric_points=evaluations * len(spec.eval_metric_names()) + loss_points,
        kept_checkpoints=kept,
        checkpoint_bytes=(kept + 1) * checkpoint_size(spec),
    )


def bound_field(spec: RunSpec, planned: Footprint, settings: Settings) -> str | None:
    """The spec field that puts it (of that footprint) over a per-run bound, if any: what a 422 names."""
    if planned.points > settings.max_points_per_run:
        if planned.loss_points > planned.evaluations:
            return "train_loss_every"
        return "eval_schedule" if spec.eval_schedule is not None else "eval_every"
    if planned.kept_checkpoints > settings.max_kept_checkpoints_per_run:
        return "checkpoint_keep_every"
    return None


def check_run_bounds(
    spec: RunSpec, settings: Settings, *, field: str | None = None, under: str = "", run: str = "a run"
) -> Footprint:
    """The run's footprint; a 422 naming `field` (by default the one bound_field names, after the
    prefix `under`) when it is over a per-run bound; `run` says which run."""
    planned = footprint(spec)
    field = field or under + (bound_field(spec, planned, settings) or "")
    if planned.points > settings.max_points_per_run:
        raise InvalidInput(
            f"{run} would log {planned.evaluations:,} evaluations and {planned.loss_points:,} loss points, "
            f"{planned.points:,} in all, over the limit of {settings.max_points_per_run:,} per run "
            "(GROKLAB_MAX_POINTS_PER_RUN); evaluate less often, or use a log-spaced eval_schedule",
            field=field,
        )
    if planned.kept_checkpoints > settings.max_kept_checkpoints_per_run:
        raise InvalidInput(
            f"{run} would keep {planned.kept_checkpoints:,} checkpoints, over the limit of "
            f"{settings.max_kept_checkpoints_per_run:,} per run (GROKLAB_MAX_KEPT_CHECKPOINTS_PER_RUN); "
            "raise checkpoint_keep_every",
            field=field,
        )
    return planned


def human_bytes(count: int) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disks are sold)."""
    value = float(count)
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{count:,} bytes" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")
