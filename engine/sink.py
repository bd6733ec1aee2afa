"""Where a training run reports its metric points: the one interface between engine and callers."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol


class MetricSink(Protocol):
    """Receives metric points as training produces them.

    `log` may be called several times for one step with different names; a step's points come
    in non-decreasing step order per name. A resumed run may log again steps after its last
    checkpoint, with the same values: sinks must treat (name, step) as a key, not append twice.
    """

    def log(self, step: int, metrics: Mapping[str, float]) -> None: ...

    def progress(self, step: int, total_steps: int) -> None:
        """Called after every optimizer step; cheap sinks ignore it."""
        ...

    def flush(self) -> None:
        """Make every point logged so far durable; the engine calls it before each checkpoint.

        A sink whose class sets `flush_from_any_thread = True` may be flushed from the engine's
        checkpoint-writer thread while training goes on calling `log` and `progress`: its flush
        must then be safe against those, and it runs just before the checkpoint is saved, off the
        training thread. Without that attribute the engine flushes on the training thread.
        """
        ...


class MemorySink:
    """Keeps every series in memory: {name: {step: value}} (tests, notebooks)."""

    flush_from_any_thread = True  # its flush does nothing

    def __init__(self) -> None:
        self.series: dict[str, dict[int, float]] = {}
        self.last_step = 0

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self.series.setdefault(name, {})[step] = float(value)

    def progress(self, step: int, total_steps: int) -> None:
        self.last_step = step

    def flush(self) -> None:
        pass

    def points(self, name: str) -> list[tuple[int, float]]:
        return sorted(self.series.get(name, {}).items())


class CsvSink:
    """Appends points to a CSV file with columns run, name, step, value."""

    def __init__(self, path: Path, run: str = "0") -> None:
        self.path = path
        self.run = run
        self._file = path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(["run", "name", "step", "value"])

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            self._writer.writerow([self.run, name, step, repr(float(value))])

    def progress(self, step: int, total_steps: int) -> None:
        pass

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
