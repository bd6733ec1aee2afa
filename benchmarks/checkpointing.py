"""Checkpointing's cost to training: the paper's run with and without checkpoints in the store.

`python -m benchmarks.checkpointing [--steps N] [--device cpu|cuda]` trains the paper's model
(P = 113, D = 3,830, the default RunSpec transformer, AdamW; default evaluation interval) for N
steps (2,000) three times in one process: with no checkpoint storage (the baseline), then
checkpointing at the default cadence (RunSpec.resolved_checkpoint_every, 20 a run) to a worker's
storage (groklab/checkpoint_format.py over the checkpoint store) on SQLite and on PostgreSQL. It
prints each run's time against the baseline and its overhead: the time spent inside the
checkpoint storage (encode, put, prune) over the rest of that run's training time. On a shared
machine the wall-clock ratio moves with the load by more than the checkpoints cost; the
overhead, both of whose terms come from the same run, hardly does.

`python -m benchmarks.checkpointing --ensemble 8 16 [--steps 20] [--every 5]` instead trains
ensembles of K paper-model members (seeds 0..K-1) checkpointing every `--every` steps to folders
and to the SQLite-backed run store, and prints the seconds the training thread spends on
checkpoints: inside Ensemble._checkpoint plus, where there is a background writer, waiting for it
to drain at the end. The same file run against an older engine measures that engine's cost.

PostgreSQL: a database created for the run on the server of GROKLAB_TEST_PG_ADMIN (default
postgresql://postgres@127.0.0.1:5432/test) and dropped at the end; that line is skipped, saying
why, when the server is not reachable.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
import torch

from benchmarks.checkpoint_store import ADMIN_URL, running_run
from engine.checkpoint import Checkpoint, CheckpointStorage
from engine.device import configure_tf32
from engine.sink import MemorySink
from engine.spec import PhaseSpec, RunSpec, TaskSpec
import engine.checkpoint
from engine.checkpoint import CheckpointFolder
from engine.train import Ensemble, resolve_device, train_ensemble, train_run
from groklab.checkpoint_format import RunCheckpoints
from groklab.settings import Settings
from groklab.store.checkpoint_store import CheckpointStore
from groklab.store.database import create_database, drop_database
from groklab.store.migrate import upgrade


class TimedStorage:
    """A run's checkpoint storage that adds up the seconds spent in it."""

    def __init__(self, inner: CheckpointStorage) -> None:
        self.inner = inner
        self.seconds = 0.0
        self.saves = 0

    def save(self, ckpt: Checkpoint, keep: bool = False) -> None:
        started = time.perf_counter()
        self.inner.save(ckpt, keep=keep)
        self.seconds += time.perf_counter() - started
        self.saves += 1

    def load(self) -> Checkpoint | None:
        started = time.perf_counter()
        ckpt = self.inner.load()
        self.seconds += time.perf_counter() - started
        return ckpt


def train_seconds(spec: RunSpec, device: torch.device, storage: CheckpointStorage | None) -> float:
    started = time.perf_counter()
    train_run(spec, MemorySink(), checkpoint=storage, device=str(device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def store_storage(database_url: str) -> tuple[TimedStorage, CheckpointStore, int]:
    """A claimed run's checkpoint storage, as a worker builds it (worker/tasks.py)."""
    upgrade(database_url)
    store = CheckpointStore.from_settings(Settings(database_url=database_url))
    lease = running_run(database_url)
    return TimedStorage(RunCheckpoints(store, lease.run_id, lease)), store, lease.run_id


def postgres_database(admin_url: str) -> tuple[str | None, str]:
    """A fresh database on admin_url's server: (its name, its SQLAlchemy URL), or (None, why not)."""
    try:
        return create_database(admin_url, prefix="groklab_bench")
    except psycopg.OperationalError as exc:
        return None, f"skipped: no PostgreSQL at {admin_url} (set GROKLAB_TEST_PG_ADMIN): {' '.join(str(exc).split())}"


class _Stopwatch:
    """Adds up the seconds spent in one method of the engine, while in use, by the training step
    they were spent at (`step_of` the call's arguments; None: not counted)."""

    def __init__(self, owner: Any, name: str, step_of: Any = lambda *args: 0) -> None:
        self.owner, self.name, self.step_of = owner, name, step_of
        self.by_step: dict[int, float] = {}

    @property
    def seconds(self) -> float:
        return sum(self.by_step.values())

    def __enter__(self) -> _Stopwatch:
        if self.owner is not None:
            self.original = getattr(self.owner, self.name)
            setattr(self.owner, self.name, self._timed(self.original))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.owner is not None:
            setattr(self.owner, self.name, self.original)

    def _timed(self, method: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                step = self.step_of(*args)
                if step is not None:
                    self.by_step[step] = self.by_step.get(step, 0.0) + time.perf_counter() - started

        return timed


def _checkpoint_step(ensemble: Any, due: Any, *rest: Any) -> int | None:
    """The step of an Ensemble._checkpoint call: this engine's takes the members due at a step,
    an older one's a single member."""
    if isinstance(due, list):
        return due[0][0].step if due else None
    return int(due.step)


def ensemble_checkpointing(k: int, steps: int, every: int, device: torch.device, folder: Path) -> None:
    specs = [
        RunSpec(task=TaskSpec(p=113, train_size=3830), phases=[PhaseSpec(steps=steps)], seed=seed,
                checkpoint_every=every, device=device.type)
        for seed in range(k)
    ]  # fmt: skip
    sqlite_url = f"sqlite:///{folder / f'ensemble-{k}.db'}"
    upgrade(sqlite_url)
    store = CheckpointStore.from_settings(Settings(database_url=sqlite_url, data_dir=folder / f"store-{k}"))
    storages: dict[str, Any] = {
        "none": None,
        "folder": [CheckpointFolder(folder / f"k{k}" / str(i)) for i in range(k)],
        "sqlite run store": [RunCheckpoints(store, lease.run_id, lease) for lease in (running_run(sqlite_url) for _ in range(k))],
    }
    short = [spec.model_copy(update={"phases": [PhaseSpec(steps=1)]}) for spec in specs]
    train_ensemble(short, [MemorySink() for _ in specs], device=str(device))  # warm-up
    baseline = None
    for name, checkpoints in storages.items():
        writer = getattr(engine.checkpoint, "CheckpointWriter", None)  # None: an engine before it
        with _Stopwatch(Ensemble, "_checkpoint", _checkpoint_step) as taking, _Stopwatch(writer, "close") as draining:
            started = time.perf_counter()
            train_ensemble(specs, [MemorySink() for _ in specs], checkpoints=checkpoints, device=str(device))
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
        baseline = seconds if baseline is None else baseline
        by_event = list(taking.by_step.values()) or [0.0]  # an older engine's members of one step add up
        print(
            f"K={k:<3}{name:<18}{seconds:7.2f} s ({seconds - baseline:+6.2f} s)   training thread: "
            f"{statistics.median(by_event) * 1e3:6.0f} ms per checkpoint of all {k} (median of {len(by_event)}; "
            f"{statistics.median(by_event) / k * 1e3:5.1f} ms per member), {draining.seconds:5.2f} s draining at the end"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--ensemble", type=int, nargs="*", help="ensemble sizes K: the ensemble benchmark")
    parser.add_argument("--every", type=int, default=5, help="steps between an ensemble's checkpoints")
    args = parser.parse_args()
    device = resolve_device(args.device)
    configure_tf32(True)  # as a worker by default (GROKLAB_TF32)
    if args.ensemble:
        print(
            f"paper model ensembles, {args.steps} steps, checkpoint every {args.every}; device {device}, threads {torch.get_num_threads()}"
        )
        with tempfile.TemporaryDirectory(prefix="groklab-bench-") as folder:
            for k in args.ensemble:
                ensemble_checkpointing(k, args.steps, args.every, device, Path(folder))
        return
    spec = RunSpec(task=TaskSpec(p=113, train_size=3830), phases=[PhaseSpec(steps=args.steps)], device=device.type)
    every = spec.resolved_checkpoint_every
    print(
        f"paper model, {args.steps:,} steps, eval every {spec.resolved_eval_every}, checkpoint every {every} "
        f"({args.steps // every} checkpoints); device {device}, threads {torch.get_num_threads()}"
    )
    train_seconds(spec.model_copy(update={"phases": [PhaseSpec(steps=20)]}), device, None)  # warm-up
    baseline = train_seconds(spec, device, None)
    print(f"{'no checkpoint storage':<24}{baseline:8.1f} s   (baseline)")

    admin_url = ADMIN_URL.replace("postgresql+psycopg://", "postgresql://", 1)
    pg_name, pg_url = postgres_database(admin_url)
    with tempfile.TemporaryDirectory(prefix="groklab-bench-") as folder:
        try:
            for name, url in {"sqlite": f"sqlite:///{Path(folder) / 'groklab.db'}", "postgresql": pg_url}.items():
                if name == "postgresql" and pg_name is None:
                    print(f"{name:<24}{pg_url}")
                    continue
                storage, store, run_id = store_storage(url)
                seconds = train_seconds(spec, device, storage)
                (latest,) = store.list_checkpoints(run_id)
                overhead = storage.seconds / (seconds - storage.seconds)
                print(
                    f"{name:<24}{seconds:8.1f} s   {seconds / baseline:.3f}x baseline   "
                    f"{storage.saves} checkpoints of {latest.size_bytes / 1e6:.1f} MB, "
                    f"{storage.seconds / storage.saves * 1e3:.0f} ms each: {overhead:.2%} overhead"
                )
        finally:
            if pg_name is not None:
                drop_database(admin_url, pg_name)


if __name__ == "__main__":
    main()
