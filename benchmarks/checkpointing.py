"""Checkpointing's cost to training: the paper's run with and without checkpoints in the store.

`python -m benchmarks.checkpointing [--steps N] [--device cpu|cuda]` trains the paper's model
(P = 113, D = 3,830, the default RunSpec transformer, AdamW; default evaluation interval) for N
steps (2,000) three times in one process: with no checkpoint storage (the baseline), then
checkpointing at the default cadence (RunSpec.resolved_checkpoint_every, 20 a run) to a worker's
storage (groklab/run_checkpoints.py over the checkpoint store) on SQLite and on PostgreSQL. It
prints each run's time against the baseline and its overhead: the time spent inside the
checkpoint storage (encode, put, prune) over the rest of that run's training time. On a shared
machine the wall-clock ratio moves with the load by more than the checkpoints cost; the
overhead, both of whose terms come from the same run, hardly does.

PostgreSQL: a database created for the run on the server of GROKLAB_TEST_PG_ADMIN (default
postgresql://postgres@127.0.0.1:5432/test) and dropped at the end; that line is skipped, saying
why, when the server is not reachable.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import psycopg
import torch

from benchmarks.checkpoint_store import ADMIN_URL, running_run
from engine.checkpoint import Checkpoint, CheckpointStorage
from engine.device import configure_tf32
from engine.sink import MemorySink
from engine.spec import PhaseSpec, RunSpec, TaskSpec
from engine.train import resolve_device, train_run
from groklab.run_checkpoints import RunCheckpoints
from groklab.settings import Settings
from groklab.store.checkpoints import CheckpointStore
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    configure_tf32(True)  # as a worker by default (GROKLAB_TF32)
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
