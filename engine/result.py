"""What a finished or stopped training run hands back to its caller."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RunResult:
    final_step: int
    total_steps: int
    stopped: bool = False
    """True when `should_stop` ended the run early (cancel, shutdown); a checkpoint was written."""
    final_metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    """Set when the run failed (its sink or checkpoint raised) and dropped out of its ensemble."""
    stopped_early_at_step: int | None = None
    """Set when a stop_when condition ended the run (a success) before its last step."""


class EngineError(RuntimeError):
    """A spec the engine cannot run on this machine (e.g. CUDA asked for but absent)."""
